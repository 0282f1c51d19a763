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
from .full_rank import make_full_rank_trainable
from .scaling import SliderScaler, slider_strength
from .targets import SliderTargets, TargetingError, find_architecture, resolve_targets

__version__ = "0.1.0.dev0"

__all__ = [
    "ARCHITECTURES",
    "FAMILY_ALIASES",
    "ArchitectureSpec",
    "Rule",
    "SliderLoHaConfig",
    "SliderLoKrConfig",
    "SliderLoraConfig",
    "SliderScaler",
    "SliderTargets",
    "TargetingError",
    "activate_adapters",
    "add_assistant_adapter",
    "find_architecture",
    "freeze_adapter",
    "frozen_adapter_names",
    "make_full_rank_trainable",
    "resolve_targets",
    "slider_adapter_names",
    "slider_strength",
]
