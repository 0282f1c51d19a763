# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Targeting: which modules of a denoiser a slider adapts, and the configs that pick them.

- `architectures`: the architecture table, one row per diffusers model class (`ARCHITECTURES`).
- `targets`: reading the table against a model (`resolve_targets`, `find_architecture`, the denoiser finders).
- `config`: `SliderLoraConfig`, `SliderLoKrConfig`, `SliderLoHaConfig`: PEFT configs that choose their own targets.
- `full_rank`: full-rank sliders (`make_full_rank_trainable`).
- `full_size`: real-size module trees of known models on the meta device (`build_meta_model`).
- `inspect_model`: the `peft-slider inspect` report (`inspect_report`, `load_meta_model`).
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "ARCHITECTURES",
    "ArchitectureSpec",
    "DENOISER_ATTRIBUTES",
    "FAMILY_ALIASES",
    "FULL_SIZE_MODELS",
    "FullSizeModel",
    "REFUSED_PEFT_OPTIONS",
    "Rule",
    "SCOPES",
    "SLIDER_ONLY_FIELDS",
    "SliderLoHaConfig",
    "SliderLoKrConfig",
    "SliderLoraConfig",
    "SliderTargets",
    "TREES_FILE",
    "TargetingError",
    "base_modules",
    "build_meta_model",
    "build_module_tree",
    "count_lora_parameters",
    "denoiser_attr",
    "denoiser_of",
    "find_architecture",
    "format_report",
    "group_module_names",
    "inspect_report",
    "load_meta_model",
    "make_full_rank_trainable",
    "resolve_targets",
    "text_path_modules",
    "universal_target_regex",
    "unwrap_denoiser",
    "write_module_trees",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "architectures": ["ARCHITECTURES", "ArchitectureSpec", "FAMILY_ALIASES", "Rule", "SCOPES"],
        "config": [
            "REFUSED_PEFT_OPTIONS",
            "SLIDER_ONLY_FIELDS",
            "SliderLoHaConfig",
            "SliderLoKrConfig",
            "SliderLoraConfig",
        ],
        "full_rank": ["make_full_rank_trainable"],
        "full_size": [
            "FULL_SIZE_MODELS",
            "FullSizeModel",
            "TREES_FILE",
            "build_meta_model",
            "build_module_tree",
            "write_module_trees",
        ],
        "inspect_model": ["format_report", "inspect_report", "load_meta_model"],
        "targets": [
            "DENOISER_ATTRIBUTES",
            "SliderTargets",
            "TargetingError",
            "base_modules",
            "count_lora_parameters",
            "denoiser_attr",
            "denoiser_of",
            "find_architecture",
            "group_module_names",
            "resolve_targets",
            "text_path_modules",
            "universal_target_regex",
            "unwrap_denoiser",
        ],
    },
)

if TYPE_CHECKING:
    from .architectures import ARCHITECTURES, FAMILY_ALIASES, SCOPES, ArchitectureSpec, Rule
    from .config import REFUSED_PEFT_OPTIONS, SLIDER_ONLY_FIELDS, SliderLoHaConfig, SliderLoKrConfig, SliderLoraConfig
    from .full_rank import make_full_rank_trainable
    from .full_size import (
        FULL_SIZE_MODELS,
        TREES_FILE,
        FullSizeModel,
        build_meta_model,
        build_module_tree,
        write_module_trees,
    )
    from .inspect_model import format_report, inspect_report, load_meta_model
    from .targets import (
        DENOISER_ATTRIBUTES,
        SliderTargets,
        TargetingError,
        base_modules,
        count_lora_parameters,
        denoiser_attr,
        denoiser_of,
        find_architecture,
        group_module_names,
        resolve_targets,
        text_path_modules,
        universal_target_regex,
        unwrap_denoiser,
    )
