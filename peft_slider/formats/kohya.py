# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""ComfyUI / A1111 key layouts for LoRA files, as pure functions over state dicts.

Two layouts, chosen per denoiser class by `COMFYUI_LAYOUTS`:

- ``"kohya"`` (SD 1.x / 2.x / SDXL UNets): `lora_unet_<module name with '.' replaced by '_'>.lora_down.weight`
  (= PEFT `lora_A`), `.lora_up.weight` (= `lora_B`) and `.alpha` (a 0-d float tensor). Loaders scale the update by
  `alpha / rank`, rank being `lora_down`'s first dimension, which is PEFT's `lora_alpha / r`. The module names are the
  diffusers UNet's (`down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`), the names kohya's sd-scripts write
  for SD 1.x and the ones ComfyUI (`comfy/lora.py`, via its UNet-to-diffusers key map), A1111 and diffusers
  (`_convert_non_diffusers_lora_to_diffusers`) all map.
- ``"transformer"`` (the DiTs ComfyUI reads in diffusers naming: FLUX.1, Chroma, SD3, AuraFlow, HiDream, Qwen-Image,
  Z-Image, Kandinsky 5): `transformer.<module name>.lora_A.weight` / `.lora_B.weight`. Not every reader takes
  `.alpha` keys in this layout (diffusers' SD3 and Z-Image loaders do not), so the scale is baked into `lora_B`
  (`lora_B * alpha / r`): every reader that assumes alpha = rank, which is all of them without an alpha, then gets the
  trained scale. Modules ComfyUI has no diffusers name for (the table's `comfyui_names`, e.g. Chroma's
  `distilled_guidance_layer`) are written under ComfyUI's generic `diffusion_model.<original name>` keys instead.
- ``"native"`` (Lumina 2, whose diffusers names ComfyUI does not map at all): every module under
  `diffusion_model.<original name>`. Where the original checkpoint fuses several diffusers modules into one weight
  (Lumina 2's `attention.qkv` = to_q, to_k, to_v stacked by rows), their LoRAs are written as one LoRA on the fused
  weight: `lora_A` stacked (`[A_q; A_k; A_v]`, rank r_q + r_k + r_v) and `lora_B` block-diagonal, so
  `B @ A = [B_q A_q; B_k A_k; B_v A_v]` exactly. The split is recorded in the header (`NAMES_HEADER_KEY`), which
  `from_comfyui_transformer` uses to read the file back.

Nothing here imports diffusers or PEFT; inputs and outputs are plain `{key: tensor}` dicts. Which family uses which
layout is the architecture table's `comfyui_layout` (`peft_slider.targeting.architectures`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

from ..targeting.architectures import ARCHITECTURES

__all__ = [
    "COMFYUI_LAYOUTS",
    "COMFYUI_NAMES",
    "comfyui_names_header",
    "from_comfyui_transformer",
    "from_kohya",
    "kohya_header",
    "kohya_module_name",
    "to_comfyui_transformer",
    "to_kohya",
    "unet_module_name",
]

KOHYA_UNET_PREFIX = "lora_unet_"
TRANSFORMER_PREFIX = "transformer."
NATIVE_PREFIX = "diffusion_model."
"""ComfyUI's generic prefix: `diffusion_model.<original name>` names a weight of its own model, for every family."""
NAMES_HEADER_KEY = "peft_slider.comfyui_names"
"""Header entry of a ComfyUI file: JSON `{original name: [[diffusers module, rows, rank], ...]}` for the modules
written under original names, in row order, so the file reads back exactly."""

COMFYUI_LAYOUTS: dict[str, str] = {
    spec.class_name: spec.comfyui_layout for spec in ARCHITECTURES.values() if spec.comfyui_layout is not None
}
"""ComfyUI-ready key layout per diffusers denoiser class, from the architecture table's `comfyui_layout`. Classes not
listed (Wan, LTX, Cosmos, Sana, ...) are read by ComfyUI in their original (non-diffusers) naming, which peft_slider does
not write."""

COMFYUI_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    spec.class_name: spec.comfyui_names for spec in ARCHITECTURES.values() if spec.comfyui_names
}
"""Per diffusers denoiser class, the `(regex, template)` pairs giving the original names of the modules ComfyUI reads
only under those (the architecture table's `comfyui_names`)."""

# Identifiers with underscores in diffusers UNet module names, used to undo kohya's '.' -> '_' without the model.
# Longest first, so `conv_norm_out` wins over `conv_norm`.
_UNET_COMPOUNDS = tuple(
    sorted(
        {
            "down_blocks",
            "up_blocks",
            "mid_block",
            "transformer_blocks",
            "to_q",
            "to_k",
            "to_v",
            "to_out",
            "to_qkv",
            "to_kv",
            "add_k_proj",
            "add_v_proj",
            "proj_in",
            "proj_out",
            "conv_in",
            "conv_out",
            "conv_norm_out",
            "conv_shortcut",
            "time_embedding",
            "time_emb_proj",
            "add_embedding",
            "class_embedding",
            "encoder_hid_proj",
            "linear_1",
            "linear_2",
            "cond_proj",
        },
        key=lambda name: (-name.count("_"), name),
    )
)


def kohya_module_name(module_name: str, *, prefix: str = KOHYA_UNET_PREFIX) -> str:
    """The kohya name of a diffusers module: `prefix` + the module name with every `.` replaced by `_`.

    Example:

    ```py
    >>> from peft_slider.formats import kohya_module_name
    >>> kohya_module_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0")
    'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0'
    ```
    """
    return prefix + module_name.replace(".", "_")


def unet_module_name(kohya_name: str, *, module_names: Iterable[str] | None = None) -> str:
    """The diffusers UNet module name behind a kohya name (`lora_unet_...`, with or without the prefix).

    kohya's '.' -> '_' loses information (`to_out_0` is `to_out.0`), so the name is rebuilt either exactly against the
    model's module names, when given, or from the fixed vocabulary of diffusers UNet identifiers.

    Args:
        kohya_name (`str`): The kohya module name.
        module_names (`Iterable[str]`, *optional*): The model's module names; the result is then one of them.

    Raises:
        `ValueError`: with `module_names`, no module (or more than one) has this kohya name.

    Example:

    ```py
    >>> from peft_slider.formats import unet_module_name
    >>> unet_module_name("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0")
    'mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0'
    ```
    """
    bare = kohya_name.removeprefix(KOHYA_UNET_PREFIX)
    if module_names is not None:
        matches = [name for name in module_names if name.replace(".", "_") == bare]
        if len(matches) != 1:
            found = "no module" if not matches else f"several modules ({matches})"
            raise ValueError(f"kohya key {kohya_name!r} names {found} of the model.")
        return matches[0]
    tokens, parts, index = bare.split("_"), [], 0
    while index < len(tokens):
        for compound in _UNET_COMPOUNDS:
            width = compound.count("_") + 1
            if "_".join(tokens[index : index + width]) == compound:
                parts.append(compound)
                index += width
                break
        else:
            parts.append(tokens[index])
            index += 1
    return ".".join(parts)


def _split_lora(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{module: (lora_A, lora_B)}` from a PEFT-style `{module.lora_A.weight: ...}` dict without prefix."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[part] = tensor
                break
        else:
            raise ValueError(f"Key {key!r} is not a LoRA weight (`<module>.lora_A.weight` or `.lora_B.weight`).")
    for module, pair in pairs.items():
        if len(pair) != 2:
            missing = "lora_B" if "lora_A" in pair else "lora_A"
            raise ValueError(f"Module {module!r} has no {missing} weight.")
    return {module: (pair["lora_A"], pair["lora_B"]) for module, pair in pairs.items()}


def to_kohya(
    state_dict: Mapping[str, torch.Tensor], alphas: Mapping[str, float], *, prefix: str = KOHYA_UNET_PREFIX
) -> dict[str, torch.Tensor]:
    """A PEFT-style LoRA state dict in kohya layout.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`):
            `<module>.lora_A.weight` / `<module>.lora_B.weight` tensors, module names without any prefix.
        alphas (`Mapping[str, float]`):
            Per module, the alpha for which `alpha / rank` is the module's scale at strength 1 (PEFT's `lora_alpha`
            for plain LoRA; `lora_alpha * sqrt(r)` for rsLoRA).
        prefix (`str`, *optional*, defaults to `"lora_unet_"`):
            The kohya key prefix.

    Returns:
        `dict[str, torch.Tensor]`: `<kohya name>.lora_down.weight`, `.lora_up.weight` and `.alpha` (0-d float32).

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.formats import to_kohya
    >>> sd = {"conv_in.lora_A.weight": torch.ones(4, 3), "conv_in.lora_B.weight": torch.ones(5, 4)}
    >>> sorted(to_kohya(sd, {"conv_in": 8.0}))
    ['lora_unet_conv_in.alpha', 'lora_unet_conv_in.lora_down.weight', 'lora_unet_conv_in.lora_up.weight']
    ```
    """
    output: dict[str, torch.Tensor] = {}
    for module, (lora_a, lora_b) in _split_lora(state_dict).items():
        if module not in alphas:
            raise ValueError(f"`alphas` has no entry for module {module!r}.")
        name = kohya_module_name(module, prefix=prefix)
        output[f"{name}.lora_down.weight"] = lora_a
        output[f"{name}.lora_up.weight"] = lora_b
        output[f"{name}.alpha"] = torch.tensor(float(alphas[module]), dtype=torch.float32)
    return output


def from_kohya(
    state_dict: Mapping[str, torch.Tensor],
    *,
    module_names: Iterable[str] | None = None,
    prefix: str = KOHYA_UNET_PREFIX,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A kohya-layout LoRA state dict back in PEFT layout, with its alphas.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): kohya keys (`lora_unet_...lora_down.weight`, `...lora_up.weight`,
            `....alpha`).
        module_names (`Iterable[str]`, *optional*): The model's module names, to rebuild names exactly (see
            `unet_module_name`).
        prefix (`str`, *optional*, defaults to `"lora_unet_"`): The kohya key prefix.

    Returns:
        `tuple`: the `<module>.lora_A.weight` / `.lora_B.weight` dict and `{module: alpha}`; a module without `.alpha`
        gets alpha = rank (scale 1), as every kohya reader does.

    Raises:
        `ValueError`: a key outside the layout, a module with only one of down/up, or a non-scalar alpha.
    """
    names = None if module_names is None else list(module_names)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        kohya_name, _, part = key.partition(".")
        if not kohya_name.startswith(prefix) or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise ValueError(
                f"Key {key!r} is not in kohya layout (`{prefix}<module>.lora_down.weight`, `.lora_up.weight` or "
                "`.alpha`)."
            )
        groups.setdefault(kohya_name, {})[part] = tensor
    output: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for kohya_name, parts in groups.items():
        for needed in ("lora_down.weight", "lora_up.weight"):
            if needed not in parts:
                raise ValueError(f"kohya module {kohya_name!r} has no {needed!r} key.")
        module = unet_module_name(kohya_name, module_names=names)
        lora_a, lora_b = parts["lora_down.weight"], parts["lora_up.weight"]
        output[f"{module}.lora_A.weight"] = lora_a
        output[f"{module}.lora_B.weight"] = lora_b
        alpha = parts.get("alpha")
        if alpha is None:
            alphas[module] = float(lora_a.shape[0])
        elif alpha.numel() != 1:
            raise ValueError(f"kohya key {kohya_name}.alpha must hold one number, got shape {tuple(alpha.shape)}.")
        else:
            alphas[module] = float(alpha.item())
    return output, alphas


def _original_names(
    modules: Iterable[str], names: Iterable[tuple[str, str]], *, native_only: bool
) -> dict[str, list[str]]:
    """`{original name: [modules, in row order]}` for the modules `names` renames (see `COMFYUI_NAMES`)."""
    names = list(names)
    compiled = [re.compile(pattern) for pattern, _ in names]
    parts = Counter(template for _, template in names)
    groups: dict[str, list[tuple[int, str]]] = {}
    unnamed = []
    for module in sorted(modules):
        for index, pattern in enumerate(compiled):
            match = pattern.fullmatch(module)
            if match is not None:
                groups.setdefault(match.expand(names[index][1]), []).append((index, module))
                break
        else:
            unnamed.append(module)
    if native_only and unnamed:
        raise ValueError(
            f"ComfyUI reads this family only under its original names, and {len(unnamed)} adapted module(s) have none "
            f"in the architecture table's `comfyui_names`: {unnamed[:5]}. Leave them out of `target_modules`, or save "
            "the diffusers format only."
        )
    result = {}
    for original, members in groups.items():
        members.sort()
        expected = parts[names[members[0][0]][1]]
        if len(members) != expected or len({index for index, _ in members}) != len(members):
            raise ValueError(
                f"ComfyUI reads {original!r} as one fused weight made of {expected} diffusers modules, but the slider "
                f"adapts {[module for _, module in members]}. Adapt all {expected} of them (the slider's default "
                "targets do) or none."
            )
        result[original] = [module for _, module in members]
    return result


def to_comfyui_transformer(
    state_dict: Mapping[str, torch.Tensor],
    scales: Mapping[str, float],
    *,
    prefix: str = TRANSFORMER_PREFIX,
    names: Iterable[tuple[str, str]] = (),
    native_only: bool = False,
) -> dict[str, torch.Tensor]:
    """A PEFT-style LoRA state dict as `transformer.<module>.lora_A/B.weight` keys with the scale baked into `lora_B`.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): `<module>.lora_A.weight` / `.lora_B.weight` tensors.
        scales (`Mapping[str, float]`): Per module, the scale at strength 1 (PEFT's `scaling`, `lora_alpha / r`).
        prefix (`str`, *optional*, defaults to `"transformer."`): The key prefix.
        names (`Iterable[tuple[str, str]]`, *optional*): `(regex, template)` pairs (`COMFYUI_NAMES[class name]`):
            the modules they match are written as `diffusion_model.<original name>`, several modules with the same
            original name as one LoRA on the fused weight (`lora_A` stacked, `lora_B` block-diagonal).
        native_only (`bool`, *optional*, defaults to `False`): Every module must have an original name (the
            ``"native"`` layout).

    Raises:
        `ValueError`: a fused weight's modules are adapted only in part, or (`native_only`) a module has no original
            name.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.formats import to_comfyui_transformer
    >>> sd = {"proj_out.lora_A.weight": torch.ones(2, 3), "proj_out.lora_B.weight": torch.ones(3, 2)}
    >>> to_comfyui_transformer(sd, {"proj_out": 0.5})["transformer.proj_out.lora_B.weight"][0, 0].item()
    0.5
    >>> sd = {f"attn.to_{p}.{m}.weight": torch.ones(2, 4) if m == "lora_A" else torch.ones(4, 2)
    ...       for p in "qkv" for m in ("lora_A", "lora_B")}
    >>> fused = to_comfyui_transformer(sd, dict.fromkeys(["attn.to_q", "attn.to_k", "attn.to_v"], 1.0),
    ...                                names=[(f"attn.to_{p}", "attention.qkv") for p in "qkv"])
    >>> {key: tuple(value.shape) for key, value in fused.items()}
    {'diffusion_model.attention.qkv.lora_A.weight': (6, 4), 'diffusion_model.attention.qkv.lora_B.weight': (12, 6)}
    ```
    """
    pairs = _split_lora(state_dict)
    missing = sorted(set(pairs) - set(scales))
    if missing:
        raise ValueError(f"`scales` has no entry for module {missing[0]!r}.")

    def baked(module: str) -> torch.Tensor:
        lora_b = pairs[module][1]
        # Scale in float32 and cast back, so a half-precision file loses no more than one rounding.
        return (lora_b.float() * float(scales[module])).to(lora_b.dtype)

    groups = _original_names(pairs, names, native_only=native_only)
    renamed = {module for members in groups.values() for module in members}
    output: dict[str, torch.Tensor] = {}
    for module, (lora_a, _) in pairs.items():
        if module not in renamed:
            output[f"{prefix}{module}.lora_A.weight"] = lora_a
            output[f"{prefix}{module}.lora_B.weight"] = baked(module)
    for original, members in groups.items():
        downs, ups = [pairs[module][0] for module in members], [baked(module) for module in members]
        if len(members) > 1 and any(tensor.ndim != 2 for tensor in downs + ups):
            raise ValueError(f"Only Linear LoRAs can be fused into {original!r}; {members} are not all Linear.")
        key = f"{NATIVE_PREFIX}{original}"
        output[f"{key}.lora_A.weight"] = torch.cat(downs) if len(members) > 1 else downs[0]
        output[f"{key}.lora_B.weight"] = torch.block_diag(*ups) if len(members) > 1 else ups[0]
    return output


def comfyui_names_header(
    state_dict: Mapping[str, torch.Tensor], names: Iterable[tuple[str, str]], *, native_only: bool = False
) -> dict[str, str]:
    """The header entry (`NAMES_HEADER_KEY`) recording which modules `to_comfyui_transformer` writes under original
    names, with their rows and ranks; empty when none is."""
    pairs = _split_lora(state_dict)
    groups = _original_names(pairs, names, native_only=native_only)
    if not groups:
        return {}
    record = {
        original: [[module, pairs[module][1].shape[0], pairs[module][0].shape[0]] for module in members]
        for original, members in sorted(groups.items())
    }
    return {NAMES_HEADER_KEY: json.dumps(record, separators=(",", ":"))}


def _read_names(header: Mapping[str, str] | None) -> dict[str, list[tuple[str, int, int]]]:
    text = (header or {}).get(NAMES_HEADER_KEY)
    if text is None:
        return {}
    try:
        record = json.loads(text)
        return {
            str(original): [(str(module), int(rows), int(rank)) for module, rows, rank in members]
            for original, members in record.items()
        }
    except (TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"Header entry {NAMES_HEADER_KEY!r} is not `{{name: [[module, rows, rank], ...]}}` JSON: {error}."
        ) from None


def from_comfyui_transformer(
    state_dict: Mapping[str, torch.Tensor],
    *,
    prefix: str = TRANSFORMER_PREFIX,
    header: Mapping[str, str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """`transformer.`-prefixed LoRA keys back in PEFT layout, with per-module alphas.

    A `.alpha` key, when present, is honoured (scale `alpha / rank`); without one the scale is 1 (alpha = rank), the
    layout `to_comfyui_transformer` writes. `diffusion_model.<original name>` keys are mapped back (and fused weights
    split) with the record `comfyui_names_header` wrote into the file's `header`.
    """
    names = _read_names(header)
    tensors: dict[str, torch.Tensor] = {}
    alpha_keys: dict[str, float] = {}
    originals: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.startswith(NATIVE_PREFIX):
            original, _, part = key[len(NATIVE_PREFIX) :].rpartition(".lora_")
            if original not in names:
                raise ValueError(
                    f"Key {key!r} uses ComfyUI's original model names, and the file's header does not record which "
                    f"diffusers modules they are ({NAMES_HEADER_KEY!r}); only files peft_slider wrote can be read back."
                )
            originals.setdefault(original, {})[part] = tensor
            continue
        if not key.startswith(prefix):
            raise ValueError(f"Key {key!r} does not start with {prefix!r}.")
        bare = key[len(prefix) :]
        if bare.endswith(".alpha"):
            if tensor.numel() != 1:
                raise ValueError(f"Key {key!r} must hold one number, got shape {tuple(tensor.shape)}.")
            alpha_keys[bare[: -len(".alpha")]] = float(tensor.item())
        else:
            tensors[bare] = tensor
    for original, parts in originals.items():
        lora_a, lora_b = parts.get("A.weight"), parts.get("B.weight")
        if lora_a is None or lora_b is None or len(parts) != 2:
            raise ValueError(f"{NATIVE_PREFIX}{original} must have exactly `.lora_A.weight` and `.lora_B.weight`.")
        members = names[original]
        rows, rank = sum(member[1] for member in members), sum(member[2] for member in members)
        if lora_a.shape[0] != rank or lora_b.shape[:2] != (rows, rank):
            raise ValueError(
                f"{NATIVE_PREFIX}{original} has lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)}, not "
                f"the {rows} rows and rank {rank} its header records."
            )
        row = column = 0
        for module, module_rows, module_rank in members:
            if len(members) == 1:
                tensors[f"{module}.lora_A.weight"], tensors[f"{module}.lora_B.weight"] = lora_a, lora_b
            else:
                tensors[f"{module}.lora_A.weight"] = lora_a[column : column + module_rank].clone()
                tensors[f"{module}.lora_B.weight"] = lora_b[
                    row : row + module_rows, column : column + module_rank
                ].clone()
            row, column = row + module_rows, column + module_rank
    pairs = _split_lora(tensors)
    unknown = sorted(set(alpha_keys) - set(pairs))
    if unknown:
        raise ValueError(f"`.alpha` keys without LoRA weights: {unknown[:5]}.")
    alphas = {module: alpha_keys.get(module, float(lora_a.shape[0])) for module, (lora_a, _) in pairs.items()}
    return tensors, alphas


def kohya_header(rank: int, alpha: float) -> dict[str, str]:
    """The `ss_*` header entries kohya's sd-scripts write and A1111 / ComfyUI show: network module, dim and alpha."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(int(rank)), "ss_network_alpha": repr(alpha)}
