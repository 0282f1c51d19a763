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
  Lumina 2, Z-Image, Kandinsky 5): `transformer.<module name>.lora_A.weight` / `.lora_B.weight`. Not every reader takes
  `.alpha` keys in this layout (diffusers' SD3 and Z-Image loaders do not), so the scale is baked into `lora_B`
  (`lora_B * alpha / r`): every reader that assumes alpha = rank, which is all of them without an alpha, then gets the
  trained scale.

Nothing here imports diffusers or PEFT; inputs and outputs are plain `{key: tensor}` dicts. Which family uses which
layout is the architecture table's `comfyui_layout` (`peft_slider.targeting.architectures`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..targeting.architectures import ARCHITECTURES

__all__ = [
    "COMFYUI_LAYOUTS",
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

COMFYUI_LAYOUTS: dict[str, str] = {
    spec.class_name: spec.comfyui_layout for spec in ARCHITECTURES.values() if spec.comfyui_layout is not None
}
"""ComfyUI-ready key layout per diffusers denoiser class, from the architecture table's `comfyui_layout`. Classes not
listed (Wan, LTX, Cosmos, Sana, ...) are read by ComfyUI in their original (non-diffusers) naming, which peft_slider does
not write."""

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


def to_comfyui_transformer(
    state_dict: Mapping[str, torch.Tensor], scales: Mapping[str, float], *, prefix: str = TRANSFORMER_PREFIX
) -> dict[str, torch.Tensor]:
    """A PEFT-style LoRA state dict as `transformer.<module>.lora_A/B.weight` keys with the scale baked into `lora_B`.

    Args:
        state_dict (`Mapping[str, torch.Tensor]`): `<module>.lora_A.weight` / `.lora_B.weight` tensors.
        scales (`Mapping[str, float]`): Per module, the scale at strength 1 (PEFT's `scaling`, `lora_alpha / r`).
        prefix (`str`, *optional*, defaults to `"transformer."`): The key prefix.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.formats import to_comfyui_transformer
    >>> sd = {"proj_out.lora_A.weight": torch.ones(2, 3), "proj_out.lora_B.weight": torch.ones(3, 2)}
    >>> to_comfyui_transformer(sd, {"proj_out": 0.5})["transformer.proj_out.lora_B.weight"][0, 0].item()
    0.5
    ```
    """
    output: dict[str, torch.Tensor] = {}
    for module, (lora_a, lora_b) in _split_lora(state_dict).items():
        if module not in scales:
            raise ValueError(f"`scales` has no entry for module {module!r}.")
        output[f"{prefix}{module}.lora_A.weight"] = lora_a
        # Scale in float32 and cast back, so a half-precision file loses no more than one rounding.
        output[f"{prefix}{module}.lora_B.weight"] = (lora_b.float() * float(scales[module])).to(lora_b.dtype)
    return output


def from_comfyui_transformer(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = TRANSFORMER_PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """`transformer.`-prefixed LoRA keys back in PEFT layout, with per-module alphas.

    A `.alpha` key, when present, is honoured (scale `alpha / rank`); without one the scale is 1 (alpha = rank), the
    layout `to_comfyui_transformer` writes.
    """
    tensors: dict[str, torch.Tensor] = {}
    alpha_keys: dict[str, float] = {}
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            raise ValueError(f"Key {key!r} does not start with {prefix!r}.")
        bare = key[len(prefix) :]
        if bare.endswith(".alpha"):
            if tensor.numel() != 1:
                raise ValueError(f"Key {key!r} must hold one number, got shape {tuple(tensor.shape)}.")
            alpha_keys[bare[: -len(".alpha")]] = float(tensor.item())
        else:
            tensors[bare] = tensor
    pairs = _split_lora(tensors)
    unknown = sorted(set(alpha_keys) - set(pairs))
    if unknown:
        raise ValueError(f"`.alpha` keys without LoRA weights: {unknown[:5]}.")
    alphas = {module: alpha_keys.get(module, float(lora_a.shape[0])) for module, (lora_a, _) in pairs.items()}
    return tensors, alphas


def kohya_header(rank: int, alpha: float) -> dict[str, str]:
    """The `ss_*` header entries kohya's sd-scripts write and A1111 / ComfyUI show: network module, dim and alpha."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(int(rank)), "ss_network_alpha": repr(alpha)}
