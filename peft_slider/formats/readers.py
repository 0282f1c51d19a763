# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Reading a slider back from any layout: diffusers, PEFT, ComfyUI / kohya, LyCORIS, trainer checkpoints."""

from __future__ import annotations

import copy
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..utils.checks import check_finite
from . import kohya
from .files import (
    PEFT_PREFIX,
    PEFT_WEIGHT_NAME,
    SAVE_ID_KEY,
    SliderFileError,
    load_tensors,
    read_peft_config,
    weights_file,
)
from .metadata import SliderMetadata
from .slider_file import (
    LORA_ADAPTER_METADATA_KEY,
    SliderFile,
    check_config,
    check_lora_tensors,
    config_from_alphas,
    lora_config_dict,
)

__all__ = ["read_slider"]


# The file a trainer checkpoint (`checkpoint-N/`, examples/train_slider) holds the slider's weights in: PEFT keys without
# prefix, no config and no header metadata.
CHECKPOINT_WEIGHT_NAME = "slider_adapter.safetensors"
# The name of a trainer checkpoint folder.
_CHECKPOINT_FOLDER = re.compile(r"checkpoint-\d+")


# ---------------------------------------------------------------------------------------------------------------------
# Readers


def _packed_config(raw: str, source: str) -> dict[str, Any]:
    """The LoraConfig dict diffusers keeps in the `lora_adapter_metadata` header entry."""
    try:
        packed = json.loads(raw)
    except ValueError as error:  # not JSON, or an int of more than 4300 digits
        raise SliderFileError(f"{source}: header entry {LORA_ADAPTER_METADATA_KEY!r} is not JSON: {error}.") from None
    if not isinstance(packed, dict):
        raise SliderFileError(
            f"{source}: header entry {LORA_ADAPTER_METADATA_KEY!r} holds a JSON {type(packed).__name__}, not a "
            "LoraConfig object; save the slider again."
        )
    return packed


def _is_checkpoint_folder(folder: Path) -> bool:
    """Whether `folder` is a trainer checkpoint (`checkpoint-N/` holding `slider_adapter.safetensors`)."""
    return _CHECKPOINT_FOLDER.fullmatch(folder.name) is not None and (folder / CHECKPOINT_WEIGHT_NAME).is_file()


def _run_slider(path: Path) -> SliderFile | None:
    """The finished slider of the training run a checkpoint file belongs to (`<run>/checkpoint-N/<file>`), if any: its
    PEFT file, the one format that keeps the trained alpha (the diffusers file bakes the scale into its weights)."""
    run_file = path.parent.parent / PEFT_WEIGHT_NAME
    if not _CHECKPOINT_FOLDER.fullmatch(path.parent.name) or not run_file.is_file():
        return None
    try:
        return read_slider(run_file)
    except SliderFileError:
        return None


def _read_checkpoint(
    path: Path,
    tensors: dict[str, torch.Tensor],
    header: Mapping[str, str],
    metadata: SliderMetadata | None,
    lora_alpha: float | None,
) -> SliderFile:
    """A trainer checkpoint: PEFT keys without prefix. Its alpha comes from `lora_alpha`, a `lora_adapter_metadata`
    entry, or the finished slider of the same run when that has the same modules and ranks; never from a guess."""
    source = repr(str(path))
    check_lora_tensors(tensors, source)
    ranks = {key.rsplit(".", 2)[0]: tensor.shape[0] for key, tensor in tensors.items() if ".lora_A." in key}
    run = _run_slider(path)
    if run is not None:
        run_ranks = {module: run.tensors[f"{module}.lora_A.weight"].shape[0] for module in run.modules}
        if run_ranks != ranks:
            run = None  # another run (or another rank) wrote the folder's slider
    if metadata is None and run is not None:
        metadata = run.metadata
    raw = header.get(LORA_ADAPTER_METADATA_KEY)
    if lora_alpha is not None:
        config = config_from_alphas(tensors, dict.fromkeys(ranks, lora_alpha))
        if metadata is not None:
            metadata = copy.copy(metadata)
            metadata.alpha = lora_alpha
    elif raw is not None:
        config = lora_config_dict(_packed_config(raw, source))
    elif run is not None:
        config = dict(run.config)
    else:
        rank = Counter(ranks.values()).most_common(1)[0][0]
        raise SliderFileError(
            f"{source} is a trainer checkpoint, which records no LoRA alpha, and no finished slider of the same run "
            "(same modules and ranks) lies beside its folder. Pass `lora_alpha=` (`--lora_alpha` on the command "
            f"line): the training's --lora_alpha, which defaults to the rank ({rank})."
        )
    return SliderFile(tensors, config, metadata, source, "checkpoint", save_id=header.get(SAVE_ID_KEY))


def read_slider(
    path: str | os.PathLike,
    *,
    weight_name: str | None = None,
    module_names: Iterable[str] | None = None,
    lora_alpha: float | None = None,
) -> SliderFile:
    """Read a slider in any supported format, checking the file as it goes.

    Args:
        path (`str` or `os.PathLike`):
            A `.safetensors` file or a folder: its only `.safetensors` file, or, when one `save_slider` call wrote
            several, its `pytorch_lora_weights.safetensors`, else `adapter_model.safetensors`, else the ComfyUI file.
            A trainer checkpoint folder (`checkpoint-N/`, holding `slider_adapter.safetensors`) is read too.
        weight_name (`str`, *optional*):
            The file to read in a folder; needed when the folder's files are not from one save.
        module_names (`Iterable[str]`, *optional*):
            The target model's module names, to rebuild kohya names exactly.
        lora_alpha (`float`, *optional*):
            For a trainer checkpoint only (it records no alpha): the training's `--lora_alpha`. Without it the alpha
            of the run's finished slider (its `adapter_model.safetensors`) beside the checkpoint folder is used, when
            that has the same modules and ranks.

    Raises:
        `SliderFileError`: the file is truncated or corrupted, its keys are in no known layout, a LoRA matrix is
        missing, extra keys are present, a weight is NaN or infinite, the LoRA config is malformed or its scale absurd,
        a PEFT file has no readable `adapter_config.json`, or a folder's files are not from one save.

    Example:

    ```py
    >>> import tempfile
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.formats import read_slider, save_slider
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("sd15")
    >>> pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, model=pipe.unet))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = save_slider(pipe, folder, comfyui=True)
    ...     slider = read_slider(f"{folder}/slider_comfyui.safetensors")
    >>> slider.format, slider.architecture, set(slider.scales().values())
    ('comfyui', 'UNet2DConditionModel', {2.0})
    ```
    """
    if lora_alpha is not None:
        lora_alpha = check_finite(lora_alpha, argument="lora_alpha", expected="a finite number such as 16.0")
    path = Path(path)
    if path.is_dir() and weight_name is None and _is_checkpoint_folder(path):
        path = path / CHECKPOINT_WEIGHT_NAME  # the slider; the optimizer state beside it is not one
    elif path.is_dir():
        path = weights_file(path, weight_name)
    elif not path.is_file():
        raise SliderFileError(f"{str(path)!r} does not exist (no such file or folder); check the path.")
    slider = _read_file(path, module_names, lora_alpha)
    if lora_alpha is not None and slider.format != "checkpoint":
        raise SliderFileError(
            f"`lora_alpha` is for trainer checkpoints, which record no alpha; {slider.source} is a {slider.format} "
            "file that records its own. Drop the option."
        )
    check_config(slider)
    return slider


def _read_file(path: Path, module_names: Iterable[str] | None, lora_alpha: float | None) -> SliderFile:
    source = repr(str(path))
    tensors, header = load_tensors(path)
    save_id = header.get(SAVE_ID_KEY)
    try:
        metadata = SliderMetadata.from_header(header)
    except ValueError as error:
        raise SliderFileError(f"{source}: bad slider metadata in the header: {error}") from None
    keys = list(tensors)
    if keys and all(key.startswith(kohya.KOHYA_UNET_PREFIX) for key in keys):
        try:
            try:
                tensors, alphas = kohya.from_kohya(tensors, module_names=module_names)
            except ValueError:
                # Names the model lacks: rebuild them from the UNet vocabulary, and let the fit check report them.
                tensors, alphas = kohya.from_kohya(tensors)
        except ValueError as error:
            raise SliderFileError(f"{source}: {error}") from None
        check_lora_tensors(tensors, source)
        config = config_from_alphas(tensors, alphas)
        return SliderFile(tensors, config, metadata, source, "comfyui", "unet", save_id)
    if keys and all(key.startswith(PEFT_PREFIX) for key in keys):
        tensors = {key.removeprefix(PEFT_PREFIX): value for key, value in tensors.items()}
        check_lora_tensors(tensors, source)
        config = read_peft_config(path, source)
        return SliderFile(tensors, lora_config_dict(config), metadata, source, "peft", save_id=save_id)
    if keys and any(key.startswith(kohya.NATIVE_PREFIX) for key in keys):
        # A ComfyUI file with modules under their original names (`diffusion_model.`), the rest `transformer.`.
        try:
            tensors, alphas = kohya.from_comfyui_transformer(tensors, header=header)
        except ValueError as error:
            raise SliderFileError(f"{source}: {error}") from None
        check_lora_tensors(tensors, source)
        return SliderFile(
            tensors, config_from_alphas(tensors, alphas), metadata, source, "comfyui", "transformer", save_id=save_id
        )
    for component in ("unet", "transformer"):
        prefix = component + "."
        if keys and all(key.startswith(prefix) for key in keys):
            raw = header.get(LORA_ADAPTER_METADATA_KEY)
            if raw is None:
                # No config: a `transformer.` file from ComfyUI-style export (scale baked, or `.alpha` keys).
                try:
                    tensors, alphas = kohya.from_comfyui_transformer(tensors, prefix=prefix)
                except ValueError as error:
                    raise SliderFileError(f"{source}: {error}") from None
                check_lora_tensors(tensors, source)
                config = config_from_alphas(tensors, alphas)
                return SliderFile(tensors, config, metadata, source, "comfyui", component, save_id)
            tensors = {key.removeprefix(prefix): value for key, value in tensors.items()}
            check_lora_tensors(tensors, source)
            packed = _packed_config(raw, source)
            config = {key.removeprefix(prefix): value for key, value in packed.items() if key.startswith(prefix)}
            return SliderFile(tensors, lora_config_dict(config), metadata, source, "diffusers", component, save_id)
    if keys and all(re.fullmatch(r".+\.lora_[AB]\.weight", key) for key in keys):
        return _read_checkpoint(path, tensors, header, metadata, lora_alpha)
    shown = ", ".join(keys[:3]) if keys else "none"
    raise SliderFileError(
        f"{source}: keys are in no slider layout peft_slider reads (diffusers `unet.`/`transformer.`, PEFT "
        f"`base_model.model.`, kohya `lora_unet_`, a trainer checkpoint's bare `<module>.lora_A.weight`, all in one "
        f"file); first keys: {shown}."
    )
