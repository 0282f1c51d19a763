# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Inference: dialling a trained slider on a diffusers pipeline.

- `pipeline`: `SliderPipelineMixin` and `enable_sliders`: `generate_at`, `sweep`, `generate_library`, `sweep_grid`.
- `prompts`: prompt libraries (`load_prompt_library`, `PromptEntry`).
- `grid`: labelled strength-sweep grids (`make_sweep_grid`, `save_sweep_grid`).
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "PromptEntry",
    "SliderPipelineMixin",
    "enable_sliders",
    "format_strength",
    "load_prompt_library",
    "make_sweep_grid",
    "save_sweep_grid",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "grid": ["format_strength", "make_sweep_grid", "save_sweep_grid"],
        "pipeline": ["SliderPipelineMixin", "enable_sliders"],
        "prompts": ["PromptEntry", "load_prompt_library"],
    },
)

if TYPE_CHECKING:
    from .grid import format_strength, make_sweep_grid, save_sweep_grid
    from .pipeline import SliderPipelineMixin, enable_sliders
    from .prompts import PromptEntry, load_prompt_library
