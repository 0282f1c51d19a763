# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Testing helpers for your own tests, like diffusers' testing utilities.

- `tiny_pipelines`: tiny, random-weight diffusers pipelines built from configs in code (no download), for tests,
  examples and benchmarks. They need `transformers` and `tokenizers` (`pip install "peft_slider[test]"`).
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "TINY_FAMILIES",
    "build_tiny_pipeline",
    "capture_denoiser_inputs",
    "denoiser_attr",
    "denoiser_of",
    "save_tiny_pipeline",
    "tiny_call_kwargs",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "tiny_pipelines": [
            "TINY_FAMILIES",
            "build_tiny_pipeline",
            "capture_denoiser_inputs",
            "denoiser_attr",
            "denoiser_of",
            "save_tiny_pipeline",
            "tiny_call_kwargs",
        ],
    },
)

if TYPE_CHECKING:
    from .tiny_pipelines import (
        TINY_FAMILIES,
        build_tiny_pipeline,
        capture_denoiser_inputs,
        denoiser_attr,
        denoiser_of,
        save_tiny_pipeline,
        tiny_call_kwargs,
    )
