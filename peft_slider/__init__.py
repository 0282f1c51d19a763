"""peft_slider: concept-slider LoRAs for diffusers and PEFT.

Importing the package imports torch and peft, never diffusers: diffusers is imported where a diffusers feature is used.
"""

from .adapters import (
    activate_adapters,
    add_assistant_adapter,
    freeze_adapter,
    frozen_adapter_names,
    slider_adapter_names,
)
from .architectures import ARCHITECTURES, FAMILY_ALIASES, ArchitectureSpec, Rule
from .config import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
from .data import ImageCaptionFolder, SliderConcatDataset, SliderDataset, batch_strength, load_simpletuner_backends
from .full_rank import make_full_rank_trainable
from .sampler import SliderBackend, SliderBatchInfo, SliderBatchSampler
from .scaling import SliderScaler, slider_strength
from .targets import SliderTargets, TargetingError, find_architecture, resolve_targets

__version__ = "0.1.0.dev0"

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "FAMILY_ALIASES",
    "ImageCaptionFolder",
    "Rule",
    "SliderBackend",
    "SliderBatchInfo",
    "SliderBatchSampler",
    "SliderConcatDataset",
    "SliderDataset",
    "SliderLoHaConfig",
    "SliderLoKrConfig",
    "SliderLoraConfig",
    "SliderScaler",
    "SliderTargets",
    "TargetingError",
    "activate_adapters",
    "add_assistant_adapter",
    "batch_strength",
    "find_architecture",
    "freeze_adapter",
    "frozen_adapter_names",
    "load_simpletuner_backends",
    "make_full_rank_trainable",
    "resolve_targets",
    "slider_adapter_names",
    "slider_strength",
]
