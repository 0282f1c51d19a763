# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""What a saved slider says about itself, and how that is written into a safetensors header.

A safetensors header holds a flat `str -> str` map. diffusers reads exactly one key of it, `lora_adapter_metadata` (a
JSON `LoraConfig` dict: any extra field there breaks loading), and kohya/A1111 tools read `ss_*` keys. Slider metadata
therefore lives under its own keys, `peft_slider.<field>`, each value a JSON text, next to those and never inside them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from ..targeting.architectures import SCOPES
from ..utils.checks import check_finite, is_finite_number, show_value
from .strength_map import StrengthMap

__all__ = ["HEADER_PREFIX", "SliderMetadata", "public_model_name", "read_safetensors_header"]

HEADER_PREFIX = "peft_slider."
"""Prefix of the slider keys in a safetensors header (`peft_slider.concept`, `peft_slider.architecture`, ...)."""


def _package_version() -> str:
    from .. import __version__

    return __version__


# Local paths to a Hub snapshot (huggingface_hub's cache layout) still name the repo: models--owner--name/snapshots/...
_CACHE_FOLDER = re.compile(r"models--(?P<owner>[\w.-]+?)--(?P<name>[\w.-]+)")
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")


def public_model_name(value: str) -> str:
    """What a saved slider records for its base model: a Hub id as it is; for a local path, the Hub id of the cached
    snapshot it points into (`.../models--owner--name/snapshots/<sha>`), else only the folder's name.

    Example:

    ```py
    >>> from peft_slider.formats.metadata import public_model_name
    >>> public_model_name("black-forest-labs/FLUX.1-dev")
    'black-forest-labs/FLUX.1-dev'
    >>> public_model_name("/home/me/.cache/huggingface/hub/models--stabilityai--sdxl-turbo/snapshots/abc123")
    'stabilityai/sdxl-turbo'
    >>> public_model_name("/home/me/models/my-sdxl")
    'my-sdxl'
    ```
    """
    local = (
        os.path.isabs(value)
        or "\\" in value
        or value.startswith(("~", "."))
        or value.count("/") > 1
        or (value.count("/") == 1 and not _HUB_ID.fullmatch(value))
        or os.path.isdir(value)
    )
    if not local:
        return value
    parts = PureWindowsPath(value).parts if "\\" in value else Path(value).parts
    for part in reversed(parts):
        match = _CACHE_FOLDER.fullmatch(part)
        if match:
            return f"{match['owner']}/{match['name']}"
    names = [part for part in parts if part not in ("", ".", "..", "/", "~") and not part.endswith((":\\", ":"))]
    return names[-1] if names else "local model"


def _check_number(value: Any, name: str) -> float:
    # A huge int is finite, but no float holds it: say so instead of raising OverflowError.
    try:
        return check_finite(value, argument=name)
    except OverflowError:
        raise ValueError(f"`{name}` must be a finite number, got an integer of {len(str(value))} digits.") from None


def _check_range(value: Any, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"`{name}` must be a (min, max) pair of numbers such as (-2.0, 2.0), got {value!r}.")
    low, high = value
    if not (is_finite_number(low) and is_finite_number(high)):
        raise ValueError(
            f"`{name}` must hold two finite numbers such as (-2.0, 2.0), got {show_value(low)} and {show_value(high)}."
        )
    low, high = _check_number(low, name), _check_number(high, name)
    if low > high:
        raise ValueError(f"`{name}` must be (min, max) with min <= max, got {value!r}; swap the two numbers.")
    return low, high


def _check_text(value: Any, name: str) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"`{name}` must be a non-empty string or None, got {value!r}.")


def _known_class_name(architecture: str) -> str | None:
    from ..targeting.targets import TargetingError, find_architecture

    try:
        return find_architecture(architecture).class_name
    except TargetingError:
        return None


@dataclass
class SliderMetadata:
    """What a slider file records about itself, in its safetensors header.

    Every field is optional, so a file saved without knowing (say) the base model still carries the rest. Values are
    checked when the object is made, so a file never records a range with min > max or a start fraction of 1.5.

    Args:
        concept (`str`, *optional*):
            The concept the slider moves, as users should read it ("smiling", "age").
        base_model (`str`, *optional*):
            The base model's Hub id or path ("black-forest-labs/FLUX.1-dev").
        architecture (`str`, *optional*):
            The diffusers class of the denoiser ("FluxTransformer2DModel"); a family alias ("flux") is turned into
            the class name.
        scope (`str`, *optional*):
            The targeting scope the slider was trained with, ``"visual"`` or ``"joint"``.
        trained_strengths (`tuple[float, float]`, *optional*):
            The (min, max) strengths seen in training.
        recommended_range (`tuple[float, float]`, *optional*):
            The (min, max) strengths that give good images at inference.
        slider_start (`float`, *optional*):
            The fraction of the denoising schedule to run without the slider before switching it on (in [0, 1)), which
            keeps the base image's composition.
        rank (`int`, *optional*):
            The LoRA rank.
        alpha (`float`, *optional*):
            The LoRA alpha; strength 1 scales the update by `alpha / rank`.
        strength_map (`StrengthMap`, *optional*):
            The calibrated strength scale ([`~peft_slider.evaluation.calibrate`]): equal steps of calibrated strength give
            equal steps of concept change within the recommended range. A dict (as read from JSON) is turned into one.
        peft_slider_version (`str`, *optional*, defaults to the installed version):
            The peft_slider version that wrote the file.

    Example:

    ```py
    >>> from peft_slider.formats import SliderMetadata
    >>> metadata = SliderMetadata(concept="smiling", architecture="flux", recommended_range=(-2, 2))
    >>> header = metadata.to_header()
    >>> header["peft_slider.architecture"]
    '"FluxTransformer2DModel"'
    >>> SliderMetadata.from_header(header) == metadata
    True
    ```
    """

    concept: str | None = field(default=None, metadata={"help": "The concept the slider moves."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id or path of the base model."})
    architecture: str | None = field(default=None, metadata={"help": "diffusers class name of the denoiser."})
    scope: str | None = field(default=None, metadata={"help": "Targeting scope: 'visual' or 'joint'."})
    trained_strengths: tuple[float, float] | None = field(
        default=None, metadata={"help": "(min, max) strengths seen in training."}
    )
    recommended_range: tuple[float, float] | None = field(
        default=None, metadata={"help": "(min, max) strengths recommended at inference."}
    )
    slider_start: float | None = field(
        default=None, metadata={"help": "Fraction of the schedule run before the slider is switched on, in [0, 1)."}
    )
    rank: int | None = field(default=None, metadata={"help": "LoRA rank."})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha."})
    strength_map: StrengthMap | None = field(
        default=None, metadata={"help": "Calibrated strength -> raw strength map (see peft_slider.evaluation)."}
    )
    peft_slider_version: str | None = field(
        default_factory=_package_version, metadata={"help": "peft_slider version that wrote the file."}
    )

    def __post_init__(self):
        for name in ("concept", "base_model", "architecture", "peft_slider_version"):
            _check_text(getattr(self, name), name)
        if self.architecture is not None:
            from ..targeting.targets import TargetingError, find_architecture

            try:
                self.architecture = find_architecture(self.architecture).class_name
            except TargetingError as error:
                raise ValueError(f"`architecture` {self.architecture!r} is not known: {error}") from None
        if self.scope is not None and self.scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {list(SCOPES)} or None, got {self.scope!r}.")
        self.trained_strengths = _check_range(self.trained_strengths, "trained_strengths")
        self.recommended_range = _check_range(self.recommended_range, "recommended_range")
        if self.slider_start is not None:
            start = self.slider_start
            if not is_finite_number(start) or not 0 <= start < 1:
                raise ValueError(
                    f"`slider_start` must be a fraction of the schedule in [0, 1) such as 0.2, got {start!r}."
                )
            self.slider_start = float(start)
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"`rank` must be a positive int, got {self.rank!r}.")
        if self.alpha is not None:
            self.alpha = _check_number(self.alpha, "alpha")
        if self.strength_map is not None and not isinstance(self.strength_map, StrengthMap):
            self.strength_map = StrengthMap.from_dict(self.strength_map)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as JSON-ready values (ranges as lists)."""
        output = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is not None:
                output[item.name] = list(value) if isinstance(value, tuple) else value
                if isinstance(value, StrengthMap):
                    output[item.name] = value.to_dict()
        return output

    def to_header(self) -> dict[str, str]:
        """The safetensors header entries: `peft_slider.<field>` -> JSON text, for the fields that are set."""
        return {HEADER_PREFIX + name: json.dumps(value) for name, value in self.to_dict().items()}

    @classmethod
    def from_header(cls, header: Mapping[str, str] | None) -> SliderMetadata | None:
        """Read the slider entries back from a safetensors header; `None` when the header has none.

        Keys this version does not know (written by a newer peft_slider) are ignored, and an architecture its table
        does not know is kept as written, so old readers keep working.

        Raises:
            `ValueError`: a `peft_slider.*` value is not valid JSON or not a valid field value.
        """
        if not header:
            return None
        known = {item.name for item in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, text in header.items():
            if not key.startswith(HEADER_PREFIX):
                continue
            name = key[len(HEADER_PREFIX) :]
            if name not in known:
                continue
            try:
                values[name] = json.loads(text)
            except (TypeError, ValueError) as error:  # ValueError also for an int of more than 4300 digits
                shown = text if len(str(text)) <= 80 else f"{str(text)[:80]}..."
                raise ValueError(f"Header entry {key!r} is not valid JSON ({error}): {shown!r}.") from None
        if not values:
            return None
        values.setdefault("peft_slider_version", None)
        # An architecture this version's table lacks (a file from a newer peft_slider) is kept as written: only
        # user input is held to the table.
        architecture = values.pop("architecture", None)
        metadata = cls(**values)
        if architecture is not None:
            _check_text(architecture, "architecture")
            metadata.architecture = _known_class_name(architecture) or architecture
        return metadata


def read_safetensors_header(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` map of a safetensors file, checked to be a complete, readable file.

    Args:
        path (`str` or `os.PathLike`): The `.safetensors` file.

    Raises:
        `ValueError`: the file is truncated, corrupted or not a safetensors file; the message names the file.

    Example:

    ```py
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> from peft_slider.formats import read_safetensors_header
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_file({"x": torch.zeros(1)}, f"{folder}/a.safetensors", metadata={"peft_slider.concept": '"age"'})
    ...     read_safetensors_header(f"{folder}/a.safetensors")["peft_slider.concept"]
    '"age"'
    ```
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{path!r} is not a readable safetensors file (truncated, corrupted or another format): {error}. "
            "Save it again or download it again."
        ) from None
