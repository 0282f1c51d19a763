# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The evaluation plot, drawn with PIL: concept score (left axis) and preservation distance (right axis) against
strength, the per-seed scores as dots, the recommended range shaded and the saturation points marked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .metrics import SliderMetrics

__all__ = ["plot_metrics"]

_SIZE = (720, 440)
_MARGIN = (70, 60, 70, 60)  # left, top, right, bottom
_SCORE = (31, 119, 180)
_DISTANCE = (214, 39, 40)
_SATURATION = (90, 90, 90)
_RANGE = (232, 242, 232)


def _pillow() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("The evaluation plot needs Pillow: pip install pillow") from None
    return Image, ImageDraw, ImageFont


def _limits(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return low - pad, high + pad


def _dashed(draw: Any, x: float, top: float, bottom: float, colour: tuple[int, int, int]) -> None:
    y = top
    while y < bottom:
        draw.line([(x, y), (x, min(y + 6, bottom))], fill=colour, width=2)
        y += 11


def plot_metrics(
    metrics: SliderMetrics,
    *,
    concept: str = "concept",
    distance: str = "distance",
    title: str | None = None,
    x_label: str = "strength",
    scores: Sequence[Sequence[float]] | None = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Draws the plot; returns the PIL image, saved as PNG to `path` when given.

    Args:
        metrics ([`SliderMetrics`]): What to draw.
        concept, distance (`str`, *optional*): Axis names.
        title (`str`, *optional*): A line above the plot; by default the diagnosis.
        x_label (`str`, *optional*, defaults to `"strength"`): The x axis name.
        scores (`list[list[float]]`, *optional*): Per-sample scores, drawn as dots.
        path (`str` or `os.PathLike`, *optional*): Where to save the PNG.

    Example:

    ```py
    >>> from peft_slider.evaluation import compute_metrics, plot_metrics
    >>> image = plot_metrics(compute_metrics([-1, 0, 1], [[0, 1, 3], [0, 2, 3]], [[0.2, 0, 0.3], [0.1, 0, 0.2]]))
    >>> image.size, image.mode
    ((720, 440), 'RGB')

    ```
    """
    Image, ImageDraw, ImageFont = _pillow()
    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = _MARGIN[0], _MARGIN[1], _SIZE[0] - _MARGIN[2], _SIZE[1] - _MARGIN[3]
    strengths = metrics.strengths
    x_low, x_high = strengths[0], strengths[-1]
    all_scores = list(metrics.mean_scores) + [v for row in scores or [] for v in row]
    y_low, y_high = _limits(all_scores)
    d_low, d_high = (0.0, 1.0) if metrics.mean_distances is None else _limits([0.0, *metrics.mean_distances])

    def x_of(value: float) -> float:
        return left + (value - x_low) / (x_high - x_low) * (right - left)

    def y_of(value: float, low: float = y_low, high: float = y_high) -> float:
        return bottom - (value - low) / (high - low) * (bottom - top)

    # The recommended range, shaded.
    r_low, r_high = metrics.recommended_range
    draw.rectangle([x_of(r_low), top, x_of(r_high), bottom], fill=_RANGE)
    # Axes and ticks.
    draw.rectangle([left, top, right, bottom], outline="black")
    for s in strengths:
        x = x_of(s)
        draw.line([(x, bottom), (x, bottom + 4)], fill="black")
        draw.text((x, bottom + 6), f"{s:g}", fill="black", font=font, anchor="ma")
    for i in range(5):
        value = y_low + (y_high - y_low) * i / 4
        y = y_of(value)
        draw.line([(left - 4, y), (left, y)], fill="black")
        draw.text((left - 6, y), f"{value:.3g}", fill=_SCORE, font=font, anchor="rm")
        if metrics.mean_distances is not None:
            d_value = d_low + (d_high - d_low) * i / 4
            draw.line([(right, y), (right + 4, y)], fill="black")
            draw.text((right + 6, y), f"{d_value:.3g}", fill=_DISTANCE, font=font, anchor="lm")
    draw.text(((left + right) / 2, bottom + 24), x_label, fill="black", font=font, anchor="ma")
    draw.text((left, top - 16), f"{concept} score (mean, dots per seed)", fill=_SCORE, font=font, anchor="ls")
    if metrics.mean_distances is not None:
        draw.text((right, top - 16), f"{distance} distance to strength 0", fill=_DISTANCE, font=font, anchor="rs")
    draw.text((left, 12), title or metrics.diagnosis, fill="black", font=font, anchor="la")
    # Saturation points.
    for value, reason in (
        (metrics.saturation_minus, metrics.saturation_minus_reason),
        (metrics.saturation_plus, metrics.saturation_plus_reason),
    ):
        if value is not None:
            x = x_of(value)
            _dashed(draw, x, top, bottom, _SATURATION)
            draw.text((x + 3, top + 3), f"saturates {value:g}", fill=_SATURATION, font=font, anchor="la")
            draw.text((x + 3, top + 15), f"({reason})", fill=_SATURATION, font=font, anchor="la")
    # Per-seed dots, then the mean curves.
    for row in scores or []:
        for s, v in zip(strengths, row):
            x, y = x_of(s), y_of(v)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(160, 190, 220))
    points = [(x_of(s), y_of(v)) for s, v in zip(strengths, metrics.mean_scores)]
    draw.line(points, fill=_SCORE, width=3)
    for x, y in points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_SCORE)
    if metrics.mean_distances is not None:
        d_points = [(x_of(s), y_of(v, d_low, d_high)) for s, v in zip(strengths, metrics.mean_distances)]
        draw.line(d_points, fill=_DISTANCE, width=2)
        for x, y in d_points:
            draw.rectangle([x - 3, y - 3, x + 3, y + 3], fill=_DISTANCE)
    if path is not None:
        image.save(os.fspath(path), format="PNG")
    return image
