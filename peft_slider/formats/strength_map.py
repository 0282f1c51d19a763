# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""A slider's calibrated strength scale: `StrengthMap`, stored in the file's `SliderMetadata` and read back with it.

A raw strength is the adapter weight (`set_adapters`' `adapter_weights`); concept change per unit of it is rarely even
(fast near 0, flat near saturation). A calibrated strength `x` is the raw strength that gives `x` units of concept change,
where one unit is the mean concept change of raw strength 1 over the recommended range. `StrengthMap` holds the knots
`(calibrated[i], raw[i])` of that monotone piecewise-linear map, made by
[`~peft_slider.evaluation.calibrate`]; calibrated 0 is raw 0 exactly, so strength 0 stays the base model bitwise.

`load_slider` records the map of a slider file for its adapter ([`set_strength_map`]), so the pipeline mixin's
`calibrated=True` finds it; `set_adapters` users call `strength_map.strength_for(x)` themselves.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.checks import check_finite, is_finite_number

__all__ = ["StrengthMap", "get_strength_map", "set_strength_map"]


@dataclass(frozen=True)
class StrengthMap:
    """A monotone piecewise-linear map from calibrated strength to raw adapter weight.

    Between knots the map is linear; `calibrated` and `raw` are both strictly increasing and pass through `(0, 0)`. The
    calibrated range `(calibrated[0], calibrated[-1])` ends where the concept saturates (or the evaluated sweep ended):
    beyond it more raw strength gives no more concept, so there is no calibrated strength to give.

    Args:
        calibrated (`tuple[float, ...]`):
            Calibrated strengths of the knots, strictly increasing, holding 0.
        raw (`tuple[float, ...]`):
            The raw strengths (adapter weights) at those knots, strictly increasing, 0 where `calibrated` is 0.

    Example:

    ```py
    >>> from peft_slider.formats import StrengthMap
    >>> strength_map = StrengthMap(calibrated=(-2.0, 0.0, 1.0, 2.0), raw=(-2.0, 0.0, 0.5, 2.0))
    >>> strength_map.strength_for(1.5), strength_map.strength_for(0), strength_map.calibrated_for(0.5)
    (1.25, 0.0, 1.0)
    >>> StrengthMap.from_dict(strength_map.to_dict()) == strength_map
    True

    ```
    """

    calibrated: tuple[float, ...]
    raw: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("calibrated", "raw"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
                raise ValueError(f"`{name}` of a StrengthMap must be a list of numbers, got {value!r}.")
            if not all(is_finite_number(v) for v in value):
                raise ValueError(f"`{name}` of a StrengthMap must hold finite numbers, got {list(value)!r}.")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if len(self.calibrated) != len(self.raw) or len(self.raw) < 2:
            raise ValueError(
                f"A StrengthMap needs two or more knots, as many `calibrated` as `raw` values; got {len(self.calibrated)} "
                f"and {len(self.raw)}."
            )
        for name in ("calibrated", "raw"):
            value = getattr(self, name)
            if any(b <= a for a, b in zip(value, value[1:])):
                raise ValueError(f"`{name}` of a StrengthMap must be strictly increasing, got {list(value)!r}.")
        if 0.0 not in self.calibrated or self.raw[self.calibrated.index(0.0)] != 0.0:
            raise ValueError(
                f"A StrengthMap must map calibrated 0 to raw 0 (the base model), got calibrated={list(self.calibrated)} "
                f"raw={list(self.raw)}."
            )

    @property
    def range(self) -> tuple[float, float]:
        """The calibrated strengths the map covers, `(min, max)`."""
        return self.calibrated[0], self.calibrated[-1]

    @property
    def raw_range(self) -> tuple[float, float]:
        """The raw strengths the map covers, `(min, max)`: the recommended range it was calibrated on."""
        return self.raw[0], self.raw[-1]

    def strength_for(self, strength: float) -> float:
        """The raw adapter weight for a calibrated `strength` (linear between knots; 0 gives exactly 0.0).

        Raises:
            `ValueError`: `strength` is not a finite number, or lies outside [`range`](#range).
        """
        return _interpolate(check_finite(strength, argument="strength"), self.calibrated, self.raw, "calibrated")

    def calibrated_for(self, raw_strength: float) -> float:
        """The calibrated strength of a raw adapter weight: the inverse of [`strength_for`]."""
        return _interpolate(check_finite(raw_strength, argument="raw_strength"), self.raw, self.calibrated, "raw")

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready: `{"calibrated": [...], "raw": [...]}`."""
        return {"calibrated": list(self.calibrated), "raw": list(self.raw)}

    @classmethod
    def from_dict(cls, data: Any) -> StrengthMap:
        """The map from [`to_dict`]'s output (as read back from a slider file's header)."""
        if not isinstance(data, Mapping) or set(data) != {"calibrated", "raw"}:
            raise ValueError(
                f"A strength map must be a mapping with exactly the keys 'calibrated' and 'raw', got {data!r}."
            )
        return cls(calibrated=data["calibrated"], raw=data["raw"])


def _interpolate(value: float, xs: tuple[float, ...], ys: tuple[float, ...], kind: str) -> float:
    if value == 0.0:
        return 0.0  # exact: the base model
    low, high = xs[0], xs[-1]
    if not low - 1e-9 * max(1.0, abs(low)) <= value <= high + 1e-9 * max(1.0, abs(high)):
        raise ValueError(
            f"The {kind} strength {value} is outside the calibrated map's {kind} range [{low:.4g}, {high:.4g}]: beyond it "
            "the concept saturates (or was not evaluated). Stay within the range, or use raw strengths "
            "(calibrated=False) to go further."
        )
    value = min(max(value, low), high)
    index = min(max(bisect.bisect_right(xs, value) - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[index], xs[index + 1], ys[index], ys[index + 1]
    return y0 + (value - x0) * (y1 - y0) / (x1 - x0)


# The strength maps of loaded sliders, per denoiser (weakly, so a deleted model takes its maps with it).
_MAPS: weakref.WeakKeyDictionary[Any, dict[str, StrengthMap]] = weakref.WeakKeyDictionary()


def set_strength_map(denoiser: Any, adapter_name: str, strength_map: StrengthMap | None) -> None:
    """Records (or, with `None`, forgets) the strength map of adapter `adapter_name` of `denoiser`.

    `load_slider` calls it for a file with a map; the pipeline mixin's `calibrated=True` reads it back.

    Args:
        denoiser (`torch.nn.Module`):
            The pipeline's denoiser (`pipe.transformer` or `pipe.unet`).
        adapter_name (`str`):
            The slider's adapter name.
        strength_map (`StrengthMap`, *optional*):
            The map, or `None` to drop it.
    """
    if strength_map is not None and not isinstance(strength_map, StrengthMap):
        raise TypeError(f"`strength_map` must be a StrengthMap or None, got {type(strength_map).__name__}.")
    maps = _MAPS.setdefault(denoiser, {})
    if strength_map is None:
        maps.pop(adapter_name, None)
    else:
        maps[adapter_name] = strength_map


def get_strength_map(denoiser: Any, adapter_name: str) -> StrengthMap | None:
    """The strength map recorded for adapter `adapter_name` of `denoiser` ([`set_strength_map`]), or `None`."""
    return _MAPS.get(denoiser, {}).get(adapter_name)
