# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""LoKr and LoHa sliders (PEFT's versions of the LyCORIS methods): save, load and convert.

Two formats:

- ``"peft"``: `adapter_config.json` (a plain `LoKrConfig` / `LoHaConfig`) + `adapter_model.safetensors`, exactly what
  `PeftModel.from_pretrained` reads, with the slider metadata in the header.
- ``"comfyui"``: the LyCORIS layout ComfyUI (`comfy/weight_adapter/lokr.py`, `loha.py`) and A1111 read: the PEFT
  parameter names (`lokr_w1`, `lokr_w2_a`, ..., `hada_w1_a`, ...) under the family's ComfyUI module keys
  (`lora_unet_<name>` for SD 1.x/SDXL, `transformer.<name>` for the DiTs, `diffusion_model.<original name>` for
  the table's `comfyui_names`). The strength-1 scale is baked into the first factor (`lokr_w1` or `lokr_w1_a`,
  `hada_w1_a`, both linear in the update) and no `.alpha` is written, so every reader applies scale 1 and gets the
  trained strength. The PEFT config (with `alpha = r`) and the module names are recorded in the header
  (`HEADER_KEY`), which is how the file reads back.

There is no diffusers format: diffusers' `load_lora_weights` builds a `LoraConfig`, which cannot hold a Kronecker or
Hadamard product update. Nor can a LoKr/LoHa slider be written for ComfyUI where the original checkpoint fuses q/k/v
into one weight (Lumina 2): a sum of Kronecker (or Hadamard) products stacked by rows is not one of them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import kohya
from .files import PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME, SliderFileError, comfyui_file_name
from .metadata import SliderMetadata, read_safetensors_header

__all__ = ["HEADER_KEY", "LYCORIS_WEIGHTS", "from_comfyui_lycoris", "to_comfyui_lycoris"]

LYCORIS_WEIGHTS: dict[str, tuple[str, ...]] = {
    "LOKR": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "LOHA": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
}
"""The weight names of each PEFT type, which are also the LyCORIS key suffixes ComfyUI reads."""
# The factor the scale is baked into: the update is linear in it (kron(s * w1, w2), (s * w1a @ w1b) * (w2a @ w2b)).
_SCALED = ("lokr_w1", "lokr_w1_a", "hada_w1_a")
HEADER_KEY = "peft_slider.formats.lycoris"
"""Header entry of a LyCORIS ComfyUI file: JSON `{"config": PEFT config with alpha = r, "modules": {key stem:
module}}`."""
PEFT_PREFIX = "base_model.model."


def _split(state_dict: Mapping[str, torch.Tensor], peft_type: str) -> dict[str, dict[str, torch.Tensor]]:
    pattern = re.compile(rf"(.+)\.({'|'.join(LYCORIS_WEIGHTS[peft_type])})")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = pattern.fullmatch(key)
        if match is None:
            raise ValueError(
                f"Key {key!r} is not a {peft_type} weight (`<module>.<{LYCORIS_WEIGHTS[peft_type][0]}...>`)."
            )
        modules.setdefault(match.group(1), {})[match.group(2)] = tensor
    return modules


def _stem(module: str, layout: str, names: Sequence[tuple[str, str]]) -> str:
    """The ComfyUI key stem of a module in `layout`."""
    if layout == "kohya":
        return kohya.kohya_module_name(module)
    for pattern, template in names:
        match = re.fullmatch(pattern, module)
        if match is not None:
            if sum(other == template for _, other in names) > 1:
                raise ValueError(
                    f"ComfyUI reads {module!r} only as part of a fused weight; a LoKr/LoHa update cannot be fused "
                    "with others (stacked Kronecker or Hadamard products are not one). Train a LoRA slider for this "
                    "family, or use the PEFT format."
                )
            return kohya.NATIVE_PREFIX + match.expand(template)
    if layout == "native":
        raise ValueError(f"Module {module!r} has no original (ComfyUI) name in the architecture table.")
    return kohya.TRANSFORMER_PREFIX + module


def to_comfyui_lycoris(
    state_dict: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    *,
    peft_type: str,
    layout: str,
    names: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A PEFT LoKr/LoHa state dict (`<module>.<weight name>`, no prefix) in the LyCORIS layout ComfyUI reads.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): The adapter's weights.
        scales (`Mapping[str, float]`): Per module, the scale at strength 1 (PEFT's `alpha / r`), baked in.
        peft_type (`str`): ``"LOKR"`` or ``"LOHA"``.
        layout (`str`): The family's ComfyUI layout (`kohya.COMFYUI_LAYOUTS`).
        names (`Sequence[tuple[str, str]]`, *optional*): The family's `kohya.COMFYUI_NAMES`.

    Returns:
        `tuple`: the tensors, and `{key stem: module}` for reading back.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.formats.lycoris import to_comfyui_lycoris
    >>> sd = {"conv_in.hada_w1_a": torch.ones(4, 2), "conv_in.hada_w1_b": torch.ones(2, 9),
    ...       "conv_in.hada_w2_a": torch.ones(4, 2), "conv_in.hada_w2_b": torch.ones(2, 9)}
    >>> tensors, _ = to_comfyui_lycoris(sd, {"conv_in": 0.5}, peft_type="LOHA", layout="kohya")
    >>> sorted(tensors)[0], tensors["lora_unet_conv_in.hada_w1_a"][0, 0].item()
    ('lora_unet_conv_in.hada_w1_a', 0.5)
    ```
    """
    output: dict[str, torch.Tensor] = {}
    stems: dict[str, str] = {}
    for module, weights in _split(state_dict, peft_type).items():
        if module not in scales:
            raise ValueError(f"`scales` has no entry for module {module!r}.")
        stem = _stem(module, layout, names)
        stems[stem] = module
        scaled = next(name for name in _SCALED if name in weights)
        for name, tensor in weights.items():
            if name == scaled:
                # In float32 and cast back: a half-precision file loses no more than one rounding.
                tensor = (tensor.float() * float(scales[module])).to(tensor.dtype)
            output[f"{stem}.{name}"] = tensor
    return output, stems


def from_comfyui_lycoris(
    state_dict: Mapping[str, torch.Tensor], header: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A LyCORIS file `to_comfyui_lycoris` wrote, back as a PEFT state dict and config dict (scale 1: `alpha = r`).

    Raises:
        `ValueError`: the header has no (or a bad) `HEADER_KEY` record, or a key names a module it does not record.
    """
    try:
        record = json.loads(header[HEADER_KEY])
        config, stems = dict(record["config"]), dict(record["modules"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"LyCORIS keys without a readable {HEADER_KEY!r} header entry ({error!r}); only LoKr/LoHa files written by "
            "peft_slider can be read back."
        ) from None
    tensors = {}
    for key, tensor in state_dict.items():
        stem, _, name = key.rpartition(".")
        if stem not in stems:
            raise ValueError(f"Key {key!r} names a module the file's header does not record.")
        tensors[f"{stems[stem]}.{name}"] = tensor
    return tensors, config


# ---------------------------------------------------------------------------------------------------------------------
# Saving, loading and converting


def lycoris_type(config: Any) -> str | None:
    """``"LOKR"`` / ``"LOHA"`` for a LoKr/LoHa config (object or dict), else `None`."""
    peft_type = config.get("peft_type") if isinstance(config, Mapping) else getattr(config, "peft_type", None)
    peft_type = getattr(peft_type, "value", peft_type)
    return peft_type if peft_type in LYCORIS_WEIGHTS else None


def _config_class(peft_type: str) -> type:
    from peft import LoHaConfig, LoKrConfig

    return {"LOKR": LoKrConfig, "LOHA": LoHaConfig}[peft_type]


def _plain_config(config: Any, peft_type: str) -> dict[str, Any]:
    """The fields of PEFT's own config class, JSON-ready (slider-only fields dropped), so it loads anywhere."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    fields = {item.name for item in dataclasses.fields(_config_class(peft_type)) if item.init}
    ready = json.loads(json.dumps({key: raw[key] for key in raw if key in fields}, default=_json_default))
    ready["peft_type"] = peft_type
    return ready


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return getattr(value, "value", str(value))


def _scales(config: Mapping[str, Any], modules: Sequence[str]) -> dict[str, float]:
    from peft.utils.other import get_pattern_key

    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    scales = {}
    for module in modules:
        rank = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), config.get("r", 8))
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("alpha", 8))
        scales[module] = alpha / rank
    return scales


def _save(tensors: Mapping[str, torch.Tensor], path: Path, header: Mapping[str, str]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(temporary), metadata=dict(header))
    os.replace(temporary, path)
    return path


def _write(
    tensors: Mapping[str, torch.Tensor],
    config: dict[str, Any],
    metadata: SliderMetadata | None,
    directory: Path,
    formats: Sequence[str],
    *,
    comfyui_path: Path | None = None,
) -> dict[str, Path]:
    peft_type = config["peft_type"]
    if "diffusers" in formats:
        raise ValueError(
            f"A {peft_type} slider has no diffusers format: diffusers' `load_lora_weights` builds a LoraConfig, which "
            "cannot hold a LoKr/LoHa update. Save with formats=('peft', 'comfyui'); load_slider loads both into a "
            "pipeline."
        )
    header = {"format": "pt", **({} if metadata is None else metadata.to_header())}
    architecture = None if metadata is None else metadata.architecture
    modules = sorted(_split(tensors, peft_type))
    if "comfyui" in formats:
        layout = kohya.COMFYUI_LAYOUTS.get(architecture or "")
        if layout is None:
            known = ", ".join(sorted(kohya.COMFYUI_LAYOUTS))
            raise ValueError(f"No ComfyUI layout is known for architecture {architecture!r} (known: {known}).")
        names = kohya.COMFYUI_NAMES.get(architecture or "", ())
        comfy_tensors, stems = to_comfyui_lycoris(
            tensors, _scales(config, modules), peft_type=peft_type, layout=layout, names=names
        )
    paths = {}
    if "peft" in formats:
        config_object = _config_class(peft_type)(**{k: v for k, v in config.items() if k != "peft_type"})
        directory.mkdir(parents=True, exist_ok=True)
        config_object.save_pretrained(str(directory))
        weights = {PEFT_PREFIX + key: value for key, value in tensors.items()}
        paths["peft"] = _save(weights, directory / PEFT_WEIGHT_NAME, header)
    if "comfyui" in formats:
        # Scale 1 for every module: alpha = r, no per-module alpha.
        unit = {**config, "alpha": config.get("r", 8), "alpha_pattern": dict(config.get("rank_pattern") or {})}
        record = json.dumps({"config": unit, "modules": stems}, separators=(",", ":"))
        path = comfyui_path or directory / comfyui_file_name(metadata)
        paths["comfyui"] = _save(comfy_tensors, path, {**header, HEADER_KEY: record})
    return paths


def save_lycoris_slider(
    model: nn.Module,
    directory: Path,
    *,
    adapter_name: str,
    formats: Sequence[str],
    metadata: SliderMetadata | None,
    class_name: str | None,
) -> dict[str, Path]:
    """`save_slider` for a LoKr/LoHa adapter of `model` (see the module docstring for the formats)."""
    from peft import get_peft_model_state_dict

    config = model.peft_config[adapter_name]
    peft_type = lycoris_type(config)
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {key.removeprefix(PEFT_PREFIX): value.detach().cpu().contiguous() for key, value in state.items()}
    plain = _plain_config(config, peft_type)
    metadata = metadata or SliderMetadata()
    if metadata.architecture is not None and class_name is not None and metadata.architecture != class_name:
        raise ValueError(
            f"`metadata.architecture` is {metadata.architecture!r} but the model is a {class_name}; fix the metadata."
        )
    metadata = dataclasses.replace(
        metadata,
        architecture=metadata.architecture or class_name,
        rank=metadata.rank if metadata.rank is not None else plain.get("r"),
        alpha=metadata.alpha if metadata.alpha is not None else plain.get("alpha"),
        base_model=metadata.base_model or plain.get("base_model_name_or_path"),
        scope=metadata.scope or getattr(config, "scope", None),
    )
    return _write(tensors, plain, metadata, directory, formats)


def read_lycoris_slider(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], SliderMetadata | None] | None:
    """`(tensors, config, metadata)` of a LoKr/LoHa slider file (PEFT or ComfyUI), or `None` for any other file."""
    from safetensors.torch import load_file

    if path.is_dir():
        candidates = [path / PEFT_WEIGHT_NAME] + sorted(path.glob("*.safetensors"))
        path = next((candidate for candidate in candidates if candidate.is_file()), path / PEFT_WEIGHT_NAME)
    if not path.is_file():
        return None
    try:
        header = read_safetensors_header(path)
    except ValueError:
        return None
    source = repr(str(path))
    config = None
    if HEADER_KEY not in header:
        try:
            config = json.loads(path.with_name(PEFT_CONFIG_NAME).read_text())
        except (OSError, ValueError):
            return None
        if lycoris_type(config) is None or path.name != PEFT_WEIGHT_NAME:
            return None
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated or corrupted data
        raise SliderFileError(
            f"{source} is not a readable safetensors file (truncated or corrupted): {error}"
        ) from None
    try:
        if config is None:
            tensors, config = from_comfyui_lycoris(tensors, header)
        else:
            tensors = {key.removeprefix(PEFT_PREFIX): value for key, value in tensors.items()}
        _split(tensors, lycoris_type(config))
        metadata = SliderMetadata.from_header(header)
    except ValueError as error:
        raise SliderFileError(f"{source}: {error}") from None
    return tensors, config, metadata


def lycoris_peft_config(config: Mapping[str, Any]) -> Any:
    """The PEFT `LoKrConfig` / `LoHaConfig` of a LoKr/LoHa slider's config dict, the fields PEFT does not know dropped."""
    peft_type = lycoris_type(config)
    plain = _plain_config(config, peft_type)
    return _config_class(peft_type)(**{k: v for k, v in plain.items() if k != "peft_type"})


def convert_lycoris_slider(
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: SliderMetadata | None,
    dst: Path,
    *,
    to: str,
) -> Path:
    """`convert_slider` for a LoKr/LoHa slider: to ``"peft"`` or ``"comfyui"``."""
    comfyui_path = dst if to == "comfyui" and dst.suffix == ".safetensors" else None
    directory = dst.parent if comfyui_path is not None else dst
    return _write(tensors, config, metadata, directory, [to], comfyui_path=comfyui_path)[to]
