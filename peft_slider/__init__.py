"""peft_slider: concept-slider LoRAs for diffusers and PEFT.

Importing the package imports nothing but the standard library: each public name loads its module on first use (PEP
562), so `peft-slider --help` starts at once. `from peft_slider import SliderLoraConfig` imports torch and peft, and
no name imports diffusers: diffusers is imported where a diffusers feature is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
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
    from .export import SliderFile, SliderFileError, convert_slider, load_slider, read_slider, save_slider
    from .full_rank import make_full_rank_trainable
    from .grid import format_strength, make_sweep_grid, save_sweep_grid
    from .hub import HubError, build_model_card, push_slider_to_hub, write_model_card
    from .metadata import SliderMetadata
    from .objectives import (
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
    from .pipeline import SliderPipelineMixin, enable_sliders
    from .prompts import PromptEntry, load_prompt_library
    from .sampler import SliderBackend, SliderBatchInfo, SliderBatchSampler
    from .scaling import SliderScaler, slider_strength
    from .targets import SliderTargets, TargetingError, find_architecture, resolve_targets

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

# Public name -> the module that defines it.
_EXPORTS = {
    # adapters
    "activate_adapters": "adapters",
    "add_assistant_adapter": "adapters",
    "freeze_adapter": "adapters",
    "frozen_adapter_names": "adapters",
    "slider_adapter_names": "adapters",
    # architectures
    "ARCHITECTURES": "architectures",
    "ArchitectureSpec": "architectures",
    "FAMILY_ALIASES": "architectures",
    "Rule": "architectures",
    # config
    "SliderLoHaConfig": "config",
    "SliderLoKrConfig": "config",
    "SliderLoraConfig": "config",
    # data
    "ImageCaptionFolder": "data",
    "SliderConcatDataset": "data",
    "SliderDataset": "data",
    "batch_strength": "data",
    "load_simpletuner_backends": "data",
    # export
    "SliderFile": "export",
    "SliderFileError": "export",
    "convert_slider": "export",
    "load_slider": "export",
    "read_slider": "export",
    "save_slider": "export",
    # full_rank
    "make_full_rank_trainable": "full_rank",
    # grid
    "format_strength": "grid",
    "make_sweep_grid": "grid",
    "save_sweep_grid": "grid",
    # hub
    "HubError": "hub",
    "build_model_card": "hub",
    "push_slider_to_hub": "hub",
    "write_model_card": "hub",
    # metadata
    "SliderMetadata": "metadata",
    # objectives
    "DenoisingObjective": "objectives",
    "EpsilonObjective": "objectives",
    "FlowMatchingObjective": "objectives",
    "NEUTRAL_OBJECTIVES": "objectives",
    "NeutralObjective": "objectives",
    "NoisyBatch": "objectives",
    "SliderStep": "objectives",
    "VPredictionObjective": "objectives",
    "is_flow_matching_scheduler": "objectives",
    "neutral_strength": "objectives",
    "objective_from_scheduler": "objectives",
    # pipeline
    "SliderPipelineMixin": "pipeline",
    "enable_sliders": "pipeline",
    # prompts
    "PromptEntry": "prompts",
    "load_prompt_library": "prompts",
    # sampler
    "SliderBackend": "sampler",
    "SliderBatchInfo": "sampler",
    "SliderBatchSampler": "sampler",
    # scaling
    "SliderScaler": "scaling",
    "slider_strength": "scaling",
    # targets
    "SliderTargets": "targets",
    "TargetingError": "targets",
    "find_architecture": "targets",
    "resolve_targets": "targets",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name.isidentifier() and not name.startswith("__"):
        # `peft_slider.tiny_pipelines` after a bare `import peft_slider`, as when the package imported its modules.
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
