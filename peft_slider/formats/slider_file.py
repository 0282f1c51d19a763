# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""The slider file model: `SliderFile` (PEFT keys, a LoraConfig dict, the metadata), its config dicts and the checks
of its tensors and config that every writer and reader runs."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..utils.checks import is_finite_number
from .files import SliderFileError
from .metadata import SliderMetadata

__all__ = ["SliderFile"]


# |alpha / r| beyond this is a corrupted number, not a slider (trained sliders sit around 0.1 to 10).
_MAX_SCALE = 1e4
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the one header key diffusers reads


@dataclass
class SliderFile:
    """A slider as read from (or about to be written to) any format.

    Args:
        tensors (`dict[str, torch.Tensor]`):
            PEFT layout without prefix: `<module>.lora_A.weight` and `<module>.lora_B.weight`.
        config (`dict`):
            `peft.LoraConfig` keyword arguments (only LoraConfig fields); `r`, `lora_alpha`, `rank_pattern`,
            `alpha_pattern` and `use_rslora` give each module's scale.
        metadata (`SliderMetadata`, *optional*):
            The slider metadata from the header.
        source (`str`):
            Where it was read from, for messages.
        format (`str`):
            The format it was read from: ``"diffusers"``, ``"peft"``, ``"comfyui"`` (kohya or `transformer.` keys
            without config), ``"checkpoint"`` (a trainer checkpoint's `slider_adapter.safetensors`) or ``"model"``.
        component (`str`, *optional*):
            The pipeline component the file's keys name (``"unet"`` or ``"transformer"``), when they name one.
        save_id (`str`, *optional*):
            The id every file of one `save_slider` call shares (header key `peft_slider.save_id`).
    """

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    metadata: SliderMetadata | None = None
    source: str = "<memory>"
    format: str = "model"
    component: str | None = None
    save_id: str | None = None

    @property
    def modules(self) -> list[str]:
        """The adapted module names, sorted."""
        return sorted({key.rsplit(".", 2)[0] for key in self.tensors})

    @property
    def architecture(self) -> str | None:
        """The denoiser class the slider was made for, from its metadata."""
        return None if self.metadata is None else self.metadata.architecture

    def scales(self) -> dict[str, float]:
        """Per module, the factor the LoRA update is multiplied by at strength 1 (PEFT's `scaling`)."""
        from peft.utils.other import get_pattern_key

        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        scales = {}
        for module in self.modules:
            rank = self.tensors[f"{module}.lora_A.weight"].shape[0]
            expected = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), self.config.get("r", 8))
            if expected != rank:
                raise SliderFileError(
                    f"{self.source}: the config gives module {module!r} rank {expected}, its weights have rank {rank}."
                )
            alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), self.config.get("lora_alpha", 8))
            scales[module] = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        return scales


# ---------------------------------------------------------------------------------------------------------------------
# Configs and state dicts


def _lora_config_fields() -> set[str]:
    from peft import LoraConfig

    return {item.name for item in dataclasses.fields(LoraConfig) if item.init}


def _json_ready(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if hasattr(value, "value") and isinstance(value, str):  # str enums (PeftType, TaskType)
        return value.value
    return value


def lora_config_dict(config: Any) -> dict[str, Any]:
    """The LoraConfig fields of a config (object or dict), JSON-ready; slider-only or unknown fields dropped."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    fields = _lora_config_fields()
    return {key: _json_ready(value) for key, value in raw.items() if key in fields}


def _exact_pattern(name: str) -> str:
    # PEFT matches pattern keys with re.match(rf"(.*\.)?({key})$", name); a leading ^ makes the key match one name only.
    return "^" + re.escape(name)


def config_from_alphas(tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> dict[str, Any]:
    """A LoraConfig dict reproducing per-module ranks and alphas read from a file that had no config."""
    ranks = {module: tensors[f"{module}.lora_A.weight"].shape[0] for module in alphas}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    names = sorted(alphas)
    return {
        "r": rank,
        "lora_alpha": alpha,
        # A string is fullmatched by PEFT: exactly these modules, never a name that merely ends like one of them.
        "target_modules": "(?:" + "|".join(re.escape(name) for name in names) + ")",
        "rank_pattern": {_exact_pattern(m): r for m, r in ranks.items() if r != rank},
        "alpha_pattern": {_exact_pattern(m): a for m, a in alphas.items() if a != alpha},
    }


def check_lora_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Every module has both LoRA matrices with matching rank, and nothing else is in the file."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)\.weight", key)
        if match is None:
            unexpected.append(key)
        else:
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise SliderFileError(
            f"{source}: {len(unexpected)} unexpected key(s) that are not LoRA weights: {shown}. Only "
            "`<module>.lora_A.weight` / `.lora_B.weight` keys are read; remove the others or re-export the slider."
        )
    if not pairs:
        raise SliderFileError(f"{source}: holds no LoRA weights.")
    for module, pair in sorted(pairs.items()):
        if len(pair) != 2:
            missing = "lora_B" if "lora_A" in pair else "lora_A"
            raise SliderFileError(f"{source}: module {module!r} is missing its {missing} weight (key dropped?).")
        lora_a, lora_b = pair["lora_A"], pair["lora_B"]
        if lora_a.ndim < 2 or lora_b.ndim < 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise SliderFileError(
                f"{source}: module {module!r} has lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)}, "
                "whose ranks do not match."
            )
        for name, tensor in pair.items():
            if not torch.isfinite(tensor).all():
                raise SliderFileError(
                    f"{source}: module {module!r} has NaN or infinite values in its {name} weight; the file is "
                    "corrupted or the training diverged. Use an earlier checkpoint or save the slider again."
                )


def check_config(slider: SliderFile) -> None:
    """The LoRA config builds a peft `LoraConfig`, and gives every module a finite, sane scale."""
    from peft import LoraConfig

    config, source = slider.config, slider.source
    rank = config.get("r", 8)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SliderFileError(f"{source}: its LoRA config has `r` {rank!r}; a rank is a positive int.")
    numbers = {"lora_alpha": config.get("lora_alpha", 8)}
    for pattern_name in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(pattern_name) or {}
        if not isinstance(pattern, dict) or not all(isinstance(key, str) for key in pattern):
            raise SliderFileError(
                f"{source}: its LoRA config has `{pattern_name}` {pattern!r}; it must map module names to numbers."
            )
        numbers.update({f"{pattern_name}[{key!r}]": value for key, value in pattern.items()})
    for name, value in numbers.items():
        if not is_finite_number(value) or (isinstance(value, int) and abs(value) > 2**53):
            raise SliderFileError(
                f"{source}: its LoRA config has `{name}` {value!r}; it must be a finite number. The file is "
                "corrupted: save or download it again."
            )
    try:
        LoraConfig(**config)
    except (TypeError, ValueError) as error:
        raise SliderFileError(f"{source}: its LoRA config does not build a peft LoraConfig: {error}") from None
    scales = slider.scales()
    absurd = {module: scale for module, scale in scales.items() if not abs(scale) <= _MAX_SCALE}
    if absurd:
        module, scale = next(iter(absurd.items()))
        raise SliderFileError(
            f"{source}: its LoRA config scales module {module!r} by alpha / r = {scale:g} (and {len(absurd) - 1} more "
            f"modules beyond +-{_MAX_SCALE:g}); no trained slider has such a scale, so the alpha is corrupted. Save "
            "or download the file again."
        )
