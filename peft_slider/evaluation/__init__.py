# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Evaluation and calibration: does a slider work, where does it saturate, what does a strength mean.

- `scorers`: concept scorers (image -> float) and preservation distances (image pair -> float); built-ins need no
  weights, `ClipScore` reads a local CLIP model.
- `metrics`: concept range, monotonicity, smoothness, preservation, saturation, from a table of scores.
- `calibration`: a `StrengthMap` from the metrics (`calibrate`), written into a slider's files (`write_calibration`).
- `evaluate`: `evaluate_slider`, one batched sweep per prompt and seed; `SliderEvaluation` (table, JSON, plot).
- `plot`: the evaluation plot, drawn with PIL.
"""

from typing import TYPE_CHECKING

from ..utils.imports import lazy_exports

__all__ = [
    "CONCEPT_SCORERS",
    "ClipScore",
    "DISTANCES",
    "NoEffectError",
    "SliderEvaluation",
    "SliderMetrics",
    "calibrate",
    "compute_metrics",
    "concept_range",
    "evaluate_slider",
    "format_summary",
    "isotonic",
    "monotonicity",
    "outside_mask",
    "plot_metrics",
    "resolve_scorer",
    "saturation",
    "seed_spread",
    "smoothness",
    "spearman",
    "to_image_tensor",
    "write_calibration",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "calibration": ["calibrate", "isotonic", "write_calibration"],
        "evaluate": ["SliderEvaluation", "evaluate_slider"],
        "metrics": [
            "NoEffectError",
            "SliderMetrics",
            "compute_metrics",
            "concept_range",
            "format_summary",
            "monotonicity",
            "saturation",
            "seed_spread",
            "smoothness",
            "spearman",
        ],
        "plot": ["plot_metrics"],
        "scorers": ["CONCEPT_SCORERS", "ClipScore", "DISTANCES", "outside_mask", "resolve_scorer", "to_image_tensor"],
    },
)

if TYPE_CHECKING:
    from .calibration import calibrate, isotonic, write_calibration
    from .evaluate import SliderEvaluation, evaluate_slider
    from .metrics import (
        NoEffectError,
        SliderMetrics,
        compute_metrics,
        concept_range,
        format_summary,
        monotonicity,
        saturation,
        seed_spread,
        smoothness,
        spearman,
    )
    from .plot import plot_metrics
    from .scorers import CONCEPT_SCORERS, DISTANCES, ClipScore, outside_mask, resolve_scorer, to_image_tensor
