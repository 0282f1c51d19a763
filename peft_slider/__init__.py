"""peft_slider: concept-slider LoRAs for diffusers and PEFT.

Importing the package imports torch and peft, never diffusers: diffusers is imported where a diffusers feature is used.
"""

from .formats.export import SliderFile, SliderFileError, convert_slider, load_slider, read_slider, save_slider
from .formats.hub import HubError, build_model_card, push_slider_to_hub, write_model_card
from .formats.metadata import SliderMetadata
from .inference.grid import format_strength, make_sweep_grid, save_sweep_grid
from .inference.pipeline import SliderPipelineMixin, enable_sliders
from .inference.prompts import PromptEntry, load_prompt_library
from .targeting.architectures import ARCHITECTURES, FAMILY_ALIASES, ArchitectureSpec, Rule
from .targeting.config import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
from .targeting.full_rank import make_full_rank_trainable
from .targeting.targets import SliderTargets, TargetingError, find_architecture, resolve_targets
from .training.adapters import (
    activate_adapters,
    add_assistant_adapter,
    freeze_adapter,
    frozen_adapter_names,
    slider_adapter_names,
)
from .training.data import (
    ImageCaptionFolder,
    SliderConcatDataset,
    SliderDataset,
    batch_strength,
    load_simpletuner_backends,
)
from .training.objectives import (
    NEUTRAL_OBJECTIVES,
    DenoisingObjective,
    EpsilonObjective,
    FlowMatchingObjective,
    NeutralObjective,
    NoisyBatch,
    SliderStep,
    VPredictionObjective,
    is_flow_matching_scheduler,
    neutral_strength,
    objective_from_scheduler,
)
from .training.sampler import SliderBackend, SliderBatchInfo, SliderBatchSampler
from .training.scaling import SliderScaler, slider_strength

__version__ = "0.1.0.dev0"

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "DenoisingObjective",
    "EpsilonObjective",
    "FAMILY_ALIASES",
    "FlowMatchingObjective",
    "HubError",
    "ImageCaptionFolder",
    "NEUTRAL_OBJECTIVES",
    "NeutralObjective",
    "NoisyBatch",
    "PromptEntry",
    "Rule",
    "SliderBackend",
    "SliderBatchInfo",
    "SliderBatchSampler",
    "SliderConcatDataset",
    "SliderDataset",
    "SliderFile",
    "SliderFileError",
    "SliderLoHaConfig",
    "SliderLoKrConfig",
    "SliderLoraConfig",
    "SliderMetadata",
    "SliderPipelineMixin",
    "SliderScaler",
    "SliderStep",
    "SliderTargets",
    "TargetingError",
    "VPredictionObjective",
    "activate_adapters",
    "add_assistant_adapter",
    "batch_strength",
    "build_model_card",
    "convert_slider",
    "enable_sliders",
    "find_architecture",
    "format_strength",
    "freeze_adapter",
    "frozen_adapter_names",
    "is_flow_matching_scheduler",
    "load_prompt_library",
    "load_simpletuner_backends",
    "load_slider",
    "make_full_rank_trainable",
    "make_sweep_grid",
    "neutral_strength",
    "objective_from_scheduler",
    "push_slider_to_hub",
    "read_slider",
    "resolve_targets",
    "save_slider",
    "save_sweep_grid",
    "slider_adapter_names",
    "slider_strength",
    "write_model_card",
]
