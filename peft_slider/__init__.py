"""peft_slider: concept-slider LoRAs for diffusers and PEFT.

The names of the quick paths are here; everything else is in its room (see ARCHITECTURE.md):
`peft_slider.targeting` (what a slider adapts), `peft_slider.training` (sampler, datasets, objectives, strength,
assistant adapters), `peft_slider.formats` (files and the Hub), `peft_slider.inference` (the pipeline mixin, prompt
libraries, grids), `peft_slider.testing` (tiny pipelines for your tests) and `peft_slider.cli`.

Importing the package imports nothing heavy: each name imports its module (torch, PEFT; diffusers only where a diffusers
feature is used) the first time it is used.
"""

from typing import TYPE_CHECKING

from .utils.imports import lazy_exports

__version__ = "0.1.0.dev0"

__all__ = [
    "HubError",
    "SliderBatchSampler",
    "SliderFileError",
    "SliderLoHaConfig",
    "SliderLoKrConfig",
    "SliderLoraConfig",
    "SliderMetadata",
    "SliderPipelineMixin",
    "SliderScaler",
    "TargetingError",
    "convert_slider",
    "enable_sliders",
    "load_slider",
    "push_slider_to_hub",
    "save_slider",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "formats.loading": ["load_slider"],
        "formats.files": ["SliderFileError"],
        "formats.hub": ["HubError", "push_slider_to_hub"],
        "formats.metadata": ["SliderMetadata"],
        "formats.writers": ["convert_slider", "save_slider"],
        "inference.pipeline": ["SliderPipelineMixin", "enable_sliders"],
        "targeting.config": ["SliderLoHaConfig", "SliderLoKrConfig", "SliderLoraConfig"],
        "targeting.targets": ["TargetingError"],
        "training.sampler": ["SliderBatchSampler"],
        "training.scaling": ["SliderScaler"],
    },
)

if TYPE_CHECKING:
    from .formats.files import SliderFileError
    from .formats.hub import HubError, push_slider_to_hub
    from .formats.loading import load_slider
    from .formats.metadata import SliderMetadata
    from .formats.writers import convert_slider, save_slider
    from .inference.pipeline import SliderPipelineMixin, enable_sliders
    from .targeting.config import SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
    from .targeting.targets import TargetingError
    from .training.sampler import SliderBatchSampler
    from .training.scaling import SliderScaler
