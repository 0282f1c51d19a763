# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""A slider's files: their names, finding the weight file in a folder or a Hub repo's listing, reading its tensors and
header and a PEFT file's `adapter_config.json`, and the error for a file that cannot be read.

The writers, the readers of each layout and the loader (`peft_slider.formats.export`), the Hub (`peft_slider.formats.hub`)
and the assistant-adapter loader (`peft_slider.training.adapters`) all find and read files through these helpers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .metadata import read_safetensors_header

__all__ = ["DIFFUSERS_WEIGHT_NAME", "PEFT_CONFIG_NAME", "PEFT_WEIGHT_NAME", "SliderFileError"]

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
# The key prefix of a PeftModel's state dict (`get_peft_model_state_dict` of a `PeftModel`), and of PEFT files.
PEFT_PREFIX = "base_model.model."


class SliderFileError(ValueError):
    """A slider file cannot be read or does not fit the model: truncated, corrupted, wrong keys, wrong architecture."""


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the header of a safetensors file; `SliderFileError` for an unreadable one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        header = read_safetensors_header(path)
    except ValueError as error:
        raise SliderFileError(str(error)) from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise SliderFileError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupted): {error}. Save or download it "
            "again."
        ) from None
    return tensors, header


def weight_candidates(names: Iterable[str]) -> list[str]:
    """The slider weight file among a folder's (or Hub repo's) file names: `pytorch_lora_weights.safetensors`, else
    `adapter_model.safetensors`, else every `.safetensors` file, sorted (one is the slider; several are ambiguous)."""
    names = set(names)
    for name in (DIFFUSERS_WEIGHT_NAME, PEFT_WEIGHT_NAME):
        if name in names:
            return [name]
    return sorted(name for name in names if name.endswith(".safetensors"))


def weights_file(folder: Path, weight_name: str | None) -> Path:
    """The slider weight file in `folder`: `weight_name`, else the one `weight_candidates` picks."""
    if weight_name is not None:
        path = folder / weight_name
        if not path.is_file():
            raise SliderFileError(f"{str(folder)!r} has no file {weight_name!r}.")
        return path
    candidates = weight_candidates(path.name for path in folder.iterdir() if path.is_file())
    if len(candidates) == 1:
        return folder / candidates[0]
    if not candidates:
        raise SliderFileError(f"{str(folder)!r} holds no .safetensors slider file.")
    raise SliderFileError(f"{str(folder)!r} holds several .safetensors files {candidates}; pass `weight_name=`.")


def read_peft_config(path: Path, source: str) -> dict[str, Any]:
    """The `adapter_config.json` beside a PEFT weights file, as a dict."""
    config_path = path.with_name(PEFT_CONFIG_NAME)
    try:
        return json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SliderFileError(
            f"{source} is a PEFT adapter file but {str(config_path)!r} could not be read ({error}); PEFT files "
            f"need their {PEFT_CONFIG_NAME} beside them."
        ) from None
