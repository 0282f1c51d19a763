# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""A slider's files: their names, finding the weight file in a folder or a Hub repo's listing, reading its tensors and
header and a PEFT file's `adapter_config.json`, and the error for a file that cannot be read.

The writers (`peft_slider.formats.writers`), the readers of each layout (`peft_slider.formats.readers`), the loader
(`peft_slider.formats.loading`), the Hub (`peft_slider.formats.hub`) and the assistant-adapter loader (`peft_slider.training.adapters`) all find and read files through these helpers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .metadata import HEADER_PREFIX, read_safetensors_header

if TYPE_CHECKING:
    from .metadata import SliderMetadata

__all__ = ["DIFFUSERS_WEIGHT_NAME", "PEFT_CONFIG_NAME", "PEFT_WEIGHT_NAME", "SliderFileError"]

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
# The key prefix of a PeftModel's state dict (`get_peft_model_state_dict` of a `PeftModel`), and of PEFT files.
PEFT_PREFIX = "base_model.model."
# The header key every file of one save shares (a fresh id per save), so a folder's files are known to belong together.
SAVE_ID_KEY = HEADER_PREFIX + "save_id"


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


def slider_files(folder: Path) -> list[str]:
    """The `.safetensors` files of a folder, sorted; hidden ones (a save's staging) are not sliders."""
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.suffix == ".safetensors" and not path.name.startswith(".") and path.is_file()
    )


def _save_ids(folder: Path, names: Iterable[str]) -> dict[str, str | None]:
    """Each file's save id (None when it has none or cannot be read)."""
    ids = {}
    for name in names:
        try:
            ids[name] = read_safetensors_header(folder / name).get(SAVE_ID_KEY)
        except ValueError:
            ids[name] = None
    return ids


def check_one_save(folder: Path, names: Sequence[str]) -> None:
    """Raise `SliderFileError` unless the named slider files of `folder` were all written by one `save_slider` call
    (they share one `peft_slider.save_id`), so a folder is never read (or pushed) as a mix of sliders or of ages."""
    if len(names) < 2:
        return
    ids = _save_ids(folder, names)
    if len(set(ids.values())) == 1 and None not in ids.values():
        return
    described = "; ".join(
        f"{name} (save {ids[name][:8] if ids[name] else 'unknown'}, modified {_mtime_text(folder / name)})"
        for name in names
    )
    raise SliderFileError(
        f"{str(folder)!r} holds {len(names)} slider files that were not written by one save: {described}. Pass "
        "`weight_name=` (`--weight_name` on the command line) naming the file you mean, or delete the stale ones."
    )


def _mtime_text(path: Path) -> str:
    import datetime

    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def weights_file(folder: Path, weight_name: str | None) -> Path:
    """The slider weight file in `folder`: `weight_name`, else the one `weight_candidates` picks among files of one
    save (`check_one_save`)."""
    if weight_name is not None:
        path = folder / weight_name
        if not path.is_file():
            raise SliderFileError(
                f"`weight_name` {weight_name!r}: {str(folder)!r} has no such file; its .safetensors files are "
                f"{slider_files(folder)}."
            )
        return path
    names = slider_files(folder)
    if not names:
        raise SliderFileError(f"{str(folder)!r} holds no .safetensors slider file.")
    # Several files are read as one slider only when one save wrote them all; then any of them is the slider.
    check_one_save(folder, names)
    return folder / weight_candidates(names)[0]


def read_peft_config(path: Path, source: str) -> dict[str, Any]:
    """The `adapter_config.json` beside a PEFT weights file, as a dict."""
    config_path = path.with_name(PEFT_CONFIG_NAME)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise SliderFileError(
            f"{source} is a PEFT adapter file but {str(config_path)!r} could not be read ({error}); PEFT files "
            f"need their {PEFT_CONFIG_NAME} beside them."
        ) from None
    if not isinstance(config, dict):
        raise SliderFileError(
            f"{str(config_path)!r} holds a JSON {type(config).__name__}, not a LoraConfig object; save the slider again."
        )
    return config


def comfyui_file_name(metadata: SliderMetadata | None) -> str:
    """`<concept>_comfyui.safetensors` (`slider_comfyui.safetensors` without a concept), safe as a file name."""
    concept = metadata.concept if metadata is not None else None
    stem = re.sub(r"[^A-Za-z0-9]+", "_", concept or "").strip("_").lower() or "slider"
    return f"{stem}_comfyui.safetensors"
