"""peft_slider: concept-slider LoRAs for diffusers and PEFT.

Importing the package imports torch and peft, never diffusers: diffusers is imported where a diffusers feature is used.
"""

from .architectures import ARCHITECTURES, FAMILY_ALIASES, ArchitectureSpec, Rule
from .config import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
from .full_rank import make_full_rank_trainable
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
    "SliderTargets",
    "TargetingError",
    "find_architecture",
    "make_full_rank_trainable",
    "resolve_targets",
]
