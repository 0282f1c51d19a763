# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Calibration: from a slider's metrics to a [`~peft_slider.formats.StrengthMap`], and into the slider's files.

Over the recommended range `[lo, hi]` (the strengths between the saturation points), take the mean score curve `m_j` in
the slider's direction, `c_j = sign(Delta) * m_j`, make it non-decreasing by isotonic regression (pool adjacent
violators), and measure it from strength 0: `c_j - c_z`. One calibrated unit is the mean concept change per unit of raw
strength over the range, `k = (c_hi - c_lo) / (hi - lo)`, so the calibrated strength of raw `s_j` is
`u_j = (c_j - c_z) / k`; the knots `(u_j, s_j)` (flat stretches kept at their strength nearest 0) make the map, linear in
between. Equal steps of `u` then give equal steps of mean concept change up to saturation, calibrated 0 is raw 0, and
the calibrated range is as wide as the raw one. A slider without effect raises [`NoEffectError`] with the diagnosis.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..formats.strength_map import StrengthMap
from .metrics import NoEffectError, SliderMetrics

__all__ = ["calibrate", "isotonic", "write_calibration"]


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing sequence nearest to `values` in least squares (pool adjacent violators, equal weights).

    Example:

    ```py
    >>> from peft_slider.evaluation import isotonic
    >>> isotonic([0.0, 2.0, 1.0, 3.0])
    [0.0, 1.5, 1.5, 3.0]

    ```
    """
    blocks: list[list[float]] = []  # [sum, count]
    for value in values:
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    result = []
    for total, count in blocks:
        result.extend([total / count] * int(count))
    return result


def calibrate(metrics: SliderMetrics) -> StrengthMap:
    """The strength map that makes equal calibrated steps equal steps of concept change (see the module docstring).

    Args:
        metrics ([`SliderMetrics`]):
            The slider's metrics, from [`compute_metrics`] or [`evaluate_slider`].

    Returns:
        [`~peft_slider.formats.StrengthMap`]

    Raises:
        [`NoEffectError`]: the slider does not move the concept (the message is the diagnosis), or does not move it in
        one direction within the recommended range.

    Example:

    ```py
    >>> import math
    >>> from peft_slider.evaluation import calibrate, compute_metrics
    >>> strengths = [-2, -1, -0.5, 0, 0.5, 1, 2]
    >>> metrics = compute_metrics(strengths, [[math.copysign(abs(s) ** 0.5, s) for s in strengths]])
    >>> strength_map = calibrate(metrics)
    >>> strength_map.range, strength_map.strength_for(0.0)
    ((-2.0, 2.0), 0.0)
    >>> # a square-root concept: the knots lie on u = sqrt(2 s), the map is linear between them
    >>> [round(strength_map.calibrated_for(s), 3) for s in (0.5, 1, 2)], strength_map.strength_for(1.0)
    ([1.0, 1.414, 2.0], 0.5)

    ```
    """
    if not isinstance(metrics, SliderMetrics):
        raise TypeError(f"`metrics` must be SliderMetrics (from compute_metrics), got {type(metrics).__name__}.")
    if not metrics.effect:
        raise NoEffectError(f"Nothing to calibrate: {metrics.diagnosis}")
    low, high = metrics.recommended_range
    sign = 1.0 if metrics.concept_change > 0 else -1.0
    inside = [j for j, s in enumerate(metrics.strengths) if low <= s <= high]
    strengths = [metrics.strengths[j] for j in inside]
    curve = isotonic([sign * metrics.mean_scores[j] for j in inside])
    zero = strengths.index(0.0)
    change = [c - curve[zero] for c in curve]
    slope = (change[-1] - change[0]) / (strengths[-1] - strengths[0]) if strengths[-1] > strengths[0] else 0.0
    if not slope > 0:
        raise NoEffectError(
            f"Nothing to calibrate: within the recommended range {metrics.recommended_range} the concept does not move "
            f"in the slider's direction ({metrics.diagnosis}). Evaluate a wider or finer sweep of strengths."
        )
    knots = [(0.0, 0.0)]
    for side in (range(zero + 1, len(strengths)), range(zero - 1, -1, -1)):
        last = 0.0
        for j in side:
            u = change[j] / slope
            if abs(u) > abs(last) * (1 + 1e-9) + 1e-12:  # a flat stretch keeps its strength nearest 0
                knots.append((u, strengths[j]))
                last = u
    if len(knots) < 2:
        raise NoEffectError(f"Nothing to calibrate: the monotone concept curve is flat ({metrics.diagnosis}).")
    knots.sort()
    return StrengthMap(calibrated=tuple(u for u, _ in knots), raw=tuple(s for _, s in knots))


def write_calibration(path: str | os.PathLike, metrics: SliderMetrics, strength_map: StrengthMap) -> list[Path]:
    """Writes the recommended range and the strength map into a slider's safetensors headers, in place.

    Every slider file at `path` (a `.safetensors` file, or every `.safetensors` file directly in a folder written by
    `save_slider`: diffusers, PEFT, ComfyUI) gets `peft_slider.recommended_range` and `peft_slider.strength_map`; the
    tensors and the other header keys are kept. Each file is written to a temporary name and then renamed over the old.

    Args:
        path (`str` or `os.PathLike`):
            A slider file or folder.
        metrics ([`SliderMetrics`]):
            The evaluation; its `recommended_range` is recorded.
        strength_map ([`~peft_slider.formats.StrengthMap`]):
            The map from [`calibrate`].

    Returns:
        `list[Path]`: the files written.
    """
    import dataclasses

    from safetensors.torch import load_file, save_file

    from ..formats.metadata import SliderMetadata, read_safetensors_header

    if not isinstance(strength_map, StrengthMap):
        raise TypeError(f"`strength_map` must be a StrengthMap, got {type(strength_map).__name__}.")
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"`path` {str(path)!r} is neither a slider file nor a folder; check the path.")
    if not files:
        raise FileNotFoundError(f"`path` {str(path)!r} holds no .safetensors file; give the folder save_slider wrote.")
    written = []
    for file in files:
        header = read_safetensors_header(file)
        metadata = SliderMetadata.from_header(header) or SliderMetadata(peft_slider_version=None)
        metadata = dataclasses.replace(
            metadata, recommended_range=metrics.recommended_range, strength_map=strength_map
        )
        tensors = load_file(str(file))
        temporary = file.with_name(file.name + ".tmp")
        save_file(tensors, str(temporary), metadata={**header, **metadata.to_header()})
        os.replace(temporary, file)
        written.append(file)
    return written
