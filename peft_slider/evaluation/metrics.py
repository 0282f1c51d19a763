# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Slider metrics from a table of scores: range, monotonicity, smoothness, preservation, saturation. Standard library only.

The input is a sweep per sample (a sample is one prompt with one seed): strengths `s_1 < ... < s_J` holding 0 (index
`z`), the concept score `S[n][j]` of sample `n` at strength `s_j`, and optionally the preservation distance `D[n][j]` of
that image to the same sample's strength-0 image. `m_j = mean_n S[n][j]` is the mean score curve, `P_j = mean_n D[n][j]`
the mean distance curve. The metrics:

- **seed spread** `sigma = sqrt(mean_j var_n S[n][j])` (sample variance, `N >= 2`): how much the score moves between
  seeds at a fixed strength, the noise floor a slider has to beat.
- **concept change** `Delta = m_J - m_1` (score at the largest strength minus at the smallest), and **concept range**
  `Delta / sigma`: the change in seed spreads. `None` when `sigma` is undefined or 0.
- **monotonicity** `mean_n rho_n`, where `rho_n` is Spearman's rank correlation between the strengths and the scores of
  sample `n` (ties get average ranks; a sample whose scores are all equal counts 0). 1: the score rises with strength for
  every seed, -1: it falls, 0: no order.
- **smoothness** `(sum_j w_j |g_j| / W)^2 / (sum_j w_j g_j^2 / W)`, with `g_j = (m_{j+1} - m_j) / w_j` the slope of the
  mean curve over step `j`, `w_j = s_{j+1} - s_j` and `W = sum_j w_j`: 1 when every step moves the concept equally, `1/K`
  when one of `K` equal steps carries all the change. `None` when the curve is flat. **Smoothness in range** is the same
  over the steps inside the recommended range (what calibration evens out).
- **preservation** `P_j`, and its summary `mean_{j != z} P_j`: how far the images move from the strength-0 image (lower
  is better preserved). With a distance that masks the concept's region it measures what changes outside the concept.
- **saturation**, on each side of 0: going outwards from 0, the last strength before the first step whose slope in the
  slider's direction, `sign(Delta) * g_j`, falls below `stall_fraction` (default 0.25) times the side's mean slope
  `|c_peak - c_z| / |s_peak|` (from 0 to the strength where that side's concept, `c = sign(Delta) * m`, goes furthest);
  or before the first strength whose `P_j` exceeds `max_distance` (when given), whichever comes first. `None` when the
  side never saturates within the sweep.
- **recommended range** `(saturation_minus or s_1, saturation_plus or s_J)`.

A slider has **no effect** when the mean score never leaves its strength-0 value (`max_j |m_j - m_z| == 0`, or the images
are identical at every strength), **no detectable effect** when it moves by less than `min_effect` (default 0.5) seed
spreads (`max_j |m_j - m_z| < min_effect * sigma`), and **no net effect** when it moves but both ends of the sweep are
that close (`|Delta| < min_effect * sigma`, or `Delta == 0`): it moves the concept both ways, not in one direction.
[`SliderMetrics.effect`] is then `False` and [`SliderMetrics.diagnosis`] says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..utils.checks import check_finite, is_finite_number

__all__ = [
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
]


class NoEffectError(ValueError):
    """The slider does not move its concept (or not beyond seed-to-seed noise), so it has nothing to calibrate."""


def _check_strengths(strengths: Any) -> list[float]:
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence) or len(strengths) < 2:
        raise ValueError(
            f"`strengths` must be a list of two or more numbers holding 0, such as [-2, -1, 0, 1, 2], got {strengths!r}."
        )
    values = [check_finite(s, argument=f"`strengths[{i}]`") for i, s in enumerate(strengths)]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"`strengths` must be strictly increasing, got {values}; sort them and drop repeats.")
    if 0.0 not in values:
        raise ValueError(
            f"`strengths` must hold 0 (the base model, the reference of preservation and calibration), got {values}."
        )
    return values


def _check_table(table: Any, name: str, width: int) -> list[list[float]]:
    if isinstance(table, (str, bytes)) or not isinstance(table, Sequence) or not table:
        raise ValueError(f"`{name}` must be a non-empty list of rows (one per prompt and seed), got {table!r}.")
    rows = []
    for n, row in enumerate(table):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != width:
            raise ValueError(f"`{name}[{n}]` must hold {width} numbers, one per strength, got {row!r}.")
        if not all(is_finite_number(v) for v in row):
            raise ValueError(f"`{name}[{n}]` must hold finite numbers, got {list(row)!r}; check the scorer.")
        rows.append([float(v) for v in row])
    return rows


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged); `None` if either is constant.

    Example:

    ```py
    >>> from peft_slider.evaluation import spearman
    >>> spearman([1, 2, 3, 4], [10, 20, 25, 100]), spearman([1, 2, 3], [3, 2, 1]), spearman([1, 2, 3], [5, 5, 5])
    (1.0, -1.0, None)

    ```
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman() needs two sequences of the same length >= 2, got {len(x)} and {len(y)}.")
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = _mean(rx), _mean(ry)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = math.fsum((a - mx) ** 2 for a in rx)
    syy = math.fsum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def seed_spread(scores: Sequence[Sequence[float]]) -> float | None:
    """`sqrt(mean_j var_n S[n][j])`: the pooled seed-to-seed standard deviation; `None` with fewer than 2 samples."""
    if len(scores) < 2:
        return None
    columns = list(zip(*scores))
    variances = []
    for column in columns:
        mean = _mean(column)
        variances.append(math.fsum((v - mean) ** 2 for v in column) / (len(column) - 1))
    return math.sqrt(_mean(variances))


def concept_range(mean_curve: Sequence[float], spread: float | None) -> float | None:
    """`(m_J - m_1) / sigma`: the concept change across the sweep in seed spreads; `None` if `sigma` is None or 0."""
    if spread is None or spread == 0:
        return None
    return (mean_curve[-1] - mean_curve[0]) / spread


def monotonicity(strengths: Sequence[float], scores: Sequence[Sequence[float]]) -> float:
    """`mean_n spearman(strengths, S[n])`, a constant row counting 0.

    Example:

    ```py
    >>> from peft_slider.evaluation import monotonicity
    >>> monotonicity([-1, 0, 1], [[0, 1, 2], [0, 1, 3], [2, 1, 0]])
    0.3333333333333333

    ```
    """
    values = [spearman(strengths, row) for row in scores]
    return _mean([0.0 if v is None else v for v in values])


def _slopes(strengths: Sequence[float], curve: Sequence[float]) -> tuple[list[float], list[float]]:
    widths = [b - a for a, b in zip(strengths, strengths[1:])]
    return widths, [(curve[j + 1] - curve[j]) / widths[j] for j in range(len(widths))]


def smoothness(strengths: Sequence[float], mean_curve: Sequence[float]) -> float | None:
    """`(sum w|g| / W)^2 / (sum w g^2 / W)` over the steps of the mean curve; 1 for even steps, `None` for a flat curve.

    Example:

    ```py
    >>> from peft_slider.evaluation import smoothness
    >>> smoothness([0, 1, 2, 3], [0, 1, 2, 3]), smoothness([0, 1, 2, 3], [0, 3, 3, 3])
    (1.0, 0.3333333333333333)

    ```
    """
    widths, slopes = _slopes(strengths, mean_curve)
    total = math.fsum(widths)
    square = math.fsum(w * g * g for w, g in zip(widths, slopes)) / total
    if square == 0:
        return None
    absolute = math.fsum(w * abs(g) for w, g in zip(widths, slopes)) / total
    return min(1.0, absolute * absolute / square)


def saturation(
    strengths: Sequence[float],
    mean_curve: Sequence[float],
    *,
    distances: Sequence[float] | None = None,
    stall_fraction: float = 0.25,
    max_distance: float | None = None,
) -> tuple[tuple[float | None, str | None], tuple[float | None, str | None]]:
    """Where each side of the sweep saturates: `((strength_minus, reason), (strength_plus, reason))`.

    Going outwards from 0, a side saturates at the last strength before the first step whose slope in the slider's
    direction is below `stall_fraction` times the side's mean slope up to its peak (reason `"concept stops moving"`;
    a side that never moves the concept the right way saturates at 0), or before the first
    strength whose mean distance exceeds `max_distance` (reason `"preservation collapses"`). `(None, None)` for a side
    that does not saturate within the sweep.

    Example:

    ```py
    >>> import math
    >>> from peft_slider.evaluation import saturation
    >>> strengths = [-3, -2, -1, 0, 1, 2, 3]
    >>> saturation(strengths, [math.tanh(s) for s in strengths])
    ((-2, 'concept stops moving'), (2, 'concept stops moving'))
    >>> saturation(strengths, [float(s) for s in strengths], distances=[0.9, 0.4, 0.1, 0, 0.1, 0.4, 0.9], max_distance=0.5)
    ((-2, 'preservation collapses'), (2, 'preservation collapses'))

    ```
    """
    zero = list(strengths).index(0)
    _, slopes = _slopes(strengths, mean_curve)
    direction = math.copysign(1.0, mean_curve[-1] - mean_curve[0]) if mean_curve[-1] != mean_curve[0] else 0.0
    sides = []
    for outward in (range(zero - 1, -1, -1), range(zero + 1, len(strengths))):
        found: tuple[float | None, str | None] = (None, None)
        previous = zero
        # The side's reference slope: from 0 to where its concept goes furthest in the slider's direction.
        moved = {j: direction * (mean_curve[j] - mean_curve[zero]) * math.copysign(1.0, strengths[j]) for j in outward}
        peak = max(moved, key=moved.get, default=None)
        reference = 0.0 if peak is None else moved[peak] / abs(strengths[peak])
        for j in outward:
            if max_distance is not None and distances is not None and distances[j] > max_distance:
                found = (strengths[previous], "preservation collapses")
                break
            step = min(j, previous)  # the step between `previous` and `j`
            if reference <= 0.0 or direction * slopes[step] < stall_fraction * reference:
                found = (strengths[previous], "concept stops moving")
                break
            previous = j
        sides.append(found)
    return sides[0], sides[1]


@dataclass
class SliderMetrics:
    """What [`compute_metrics`] finds; every field is defined in the `peft_slider.evaluation.metrics` docstring.

    Args:
        strengths (`list[float]`): The strengths of the sweep, increasing, holding 0.
        mean_scores (`list[float]`): `m_j`, the mean concept score per strength.
        mean_distances (`list[float]`, *optional*): `P_j`, the mean distance to the strength-0 image per strength.
        seed_spread (`float`, *optional*): `sigma`.
        concept_change (`float`): `m_J - m_1`.
        concept_range (`float`, *optional*): `(m_J - m_1) / sigma`.
        monotonicity (`float`): mean Spearman over samples, in [-1, 1].
        smoothness (`float`, *optional*): evenness of the mean curve's steps, in (0, 1].
        range_smoothness (`float`, *optional*): the same within the recommended range.
        preservation (`float`, *optional*): `mean_{j != z} P_j`.
        saturation_minus, saturation_plus (`float`, *optional*): where each side saturates.
        saturation_minus_reason, saturation_plus_reason (`str`, *optional*): why.
        recommended_range (`tuple[float, float]`): the strengths between the saturation points.
        effect (`bool`): whether the slider moves its concept beyond seed noise.
        diagnosis (`str`): one line for people.
    """

    strengths: list[float]
    mean_scores: list[float]
    mean_distances: list[float] | None
    seed_spread: float | None
    concept_change: float
    concept_range: float | None
    monotonicity: float
    smoothness: float | None
    range_smoothness: float | None
    preservation: float | None
    saturation_minus: float | None
    saturation_minus_reason: str | None
    saturation_plus: float | None
    saturation_plus_reason: str | None
    recommended_range: tuple[float, float]
    effect: bool
    diagnosis: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        data = asdict(self)
        data["recommended_range"] = list(self.recommended_range)
        return data

    def summary(self) -> dict[str, Any]:
        """The one-number metrics, for a table or a model card."""
        return {
            "concept change": self.concept_change,
            "concept range (seed spreads)": self.concept_range,
            "monotonicity": self.monotonicity,
            "smoothness": self.smoothness,
            "smoothness in range": self.range_smoothness,
            "preservation distance": self.preservation,
            "saturation -": self.saturation_minus,
            "saturation +": self.saturation_plus,
            "recommended range": self.recommended_range,
        }


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"({_format(value[0])}, {_format(value[1])})"
    if isinstance(value, float):
        return f"{value:+.4g}" if value else "0"
    return str(value)


def _diagnosis(
    strengths: list[float],
    mean_curve: list[float],
    distances: list[list[float]] | None,
    spread: float | None,
    rho: float,
    min_effect: float,
) -> tuple[bool, str]:
    zero = strengths.index(0.0)
    moved = max(abs(m - mean_curve[zero]) for m in mean_curve)
    if distances is not None and all(d == 0 for row in distances for d in row):
        return False, (
            "no effect: the images are identical at every strength; the slider is not active in the denoiser or its "
            "weights are zero (an untrained LoRA's B matrix is zero)."
        )
    if moved <= 1e-12 * (1 + abs(mean_curve[zero])):  # float noise of the mean, not a change
        return (
            False,
            "no effect: the concept score is the same at every strength; the slider does not move this concept.",
        )
    if spread is not None and spread > 0 and moved < min_effect * spread:
        return False, (
            f"no detectable effect: the mean concept score moves at most {moved / spread:.2f} seed spreads "
            f"(< min_effect={min_effect}); train longer or stronger, or check the scorer measures the concept."
        )
    change = abs(mean_curve[-1] - mean_curve[0])
    if change == 0 or (spread is not None and spread > 0 and change < min_effect * spread):
        size = "the same" if change == 0 else f"within {change / spread:.2f} seed spreads"
        return False, (
            f"no net effect: the concept score is {size} at both ends of the sweep (monotonicity {rho:.2f}); the "
            "slider moves it both ways, not in one direction."
        )
    direction = "raises" if mean_curve[-1] > mean_curve[0] else "lowers"
    if rho < 0.5 and rho > -0.5:
        return True, f"not monotonic: the slider {direction} the score overall, but monotonicity is only {rho:.2f}."
    return True, f"works: the slider {direction} the concept score with strength (monotonicity {rho:.2f})."


def compute_metrics(
    strengths: Sequence[float],
    scores: Sequence[Sequence[float]],
    distances: Sequence[Sequence[float]] | None = None,
    *,
    stall_fraction: float = 0.25,
    max_distance: float | None = None,
    min_effect: float = 0.5,
) -> SliderMetrics:
    """Every metric of the module docstring, from a table of scores (and distances).

    Args:
        strengths (`list[float]`):
            The strengths, strictly increasing, holding 0.
        scores (`list[list[float]]`):
            `S[n][j]`: one row per sample (prompt and seed), one concept score per strength.
        distances (`list[list[float]]`, *optional*):
            `D[n][j]`: the distance of each image to its sample's strength-0 image.
        stall_fraction (`float`, *optional*, defaults to `0.25`):
            A step moving the concept slower than this fraction of its side's mean slope (up to the side's peak) is
            saturated.
        max_distance (`float`, *optional*):
            A strength whose mean distance exceeds this is past saturation (preservation collapses).
        min_effect (`float`, *optional*, defaults to `0.5`):
            A slider moving the mean score (or its net change across the sweep) less than this many seed spreads has
            no detectable (net) effect.

    Returns:
        [`SliderMetrics`]

    Example:

    ```py
    >>> from peft_slider.evaluation import compute_metrics
    >>> metrics = compute_metrics([-2, -1, 0, 1, 2], [[-2, -1, 0, 1, 2], [-1, 0, 1, 2, 3]])
    >>> metrics.concept_change, metrics.monotonicity, metrics.smoothness, metrics.recommended_range
    (4.0, 1.0, 1.0, (-2.0, 2.0))
    >>> metrics.diagnosis
    'works: the slider raises the concept score with strength (monotonicity 1.00).'

    ```
    """
    values = _check_strengths(strengths)
    rows = _check_table(scores, "scores", len(values))
    distance_rows = None if distances is None else _check_table(distances, "distances", len(values))
    if distance_rows is not None and len(distance_rows) != len(rows):
        raise ValueError(
            f"`distances` has {len(distance_rows)} rows but `scores` has {len(rows)}; give one per sample."
        )
    stall_fraction = check_finite(stall_fraction, argument="stall_fraction")
    if not 0 < stall_fraction < 1:
        raise ValueError(f"`stall_fraction` must be in (0, 1), such as 0.25, got {stall_fraction}.")
    if max_distance is not None:
        max_distance = check_finite(max_distance, argument="max_distance")
    min_effect = check_finite(min_effect, argument="min_effect")

    mean_curve = [_mean(column) for column in zip(*rows)]
    mean_distances = None if distance_rows is None else [_mean(column) for column in zip(*distance_rows)]
    spread = seed_spread(rows)
    rho = monotonicity(values, rows)
    effect, diagnosis = _diagnosis(values, mean_curve, distance_rows, spread, rho, min_effect)
    zero = values.index(0.0)
    if effect:
        (minus, minus_reason), (plus, plus_reason) = saturation(
            values, mean_curve, distances=mean_distances, stall_fraction=stall_fraction, max_distance=max_distance
        )
    else:
        (minus, minus_reason), (plus, plus_reason) = (None, None), (None, None)
    recommended = (
        values[0] if minus is None else float(minus),
        values[-1] if plus is None else float(plus),
    )
    others = [d for j, d in enumerate(mean_distances or []) if j != zero]
    inside = [j for j, s in enumerate(values) if recommended[0] <= s <= recommended[1]]
    range_smoothness = (
        smoothness([values[j] for j in inside], [mean_curve[j] for j in inside]) if len(inside) > 1 else None
    )
    return SliderMetrics(
        strengths=values,
        mean_scores=mean_curve,
        mean_distances=mean_distances,
        seed_spread=spread,
        concept_change=mean_curve[-1] - mean_curve[0],
        concept_range=concept_range(mean_curve, spread),
        monotonicity=rho,
        smoothness=smoothness(values, mean_curve),
        range_smoothness=range_smoothness,
        preservation=_mean(others) if others else None,
        saturation_minus=None if minus is None else float(minus),
        saturation_minus_reason=minus_reason,
        saturation_plus=None if plus is None else float(plus),
        saturation_plus_reason=plus_reason,
        recommended_range=recommended,
        effect=effect,
        diagnosis=diagnosis,
    )


def format_summary(metrics: SliderMetrics) -> str:
    """The one-number metrics as an aligned two-column text table."""
    summary = metrics.summary()
    width = max(len(name) for name in summary)
    return "\n".join(f"  {name:<{width}}  {_format(value)}" for name, value in summary.items())
