# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Assistant adapters: loading an adapter beside the sliders, frozen and always active.

An assistant is an adapter loaded beside a slider, frozen and always on, for example the training adapter that lets a
few-step distilled model (Z-Image Turbo, FLUX.1-schnell) be fine-tuned without losing its distillation. It is read from
a PEFT folder, a diffusers LoRA file or a `PeftConfig` with its weights (the files found and read with
`peft_slider.formats.files`), then frozen and activated with the tuner-layer helpers of `peft_slider.training.adapters`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..training.adapters import (
    AdapterState,
    active_adapter_names,
    adapter_names,
    check_not_held_elsewhere,
    freeze_adapter,
    named_tuner_layers,
    set_active,
)
from .files import (
    PEFT_CONFIG_NAME,
    PEFT_PREFIX,
    PEFT_WEIGHT_NAME,
    load_tensors,
    read_peft_config,
    weight_candidates,
    weights_file,
)

__all__ = ["add_assistant_adapter"]


def _read_peft_folder(folder: str) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """The config (any PEFT method) and weights of a folder written by PEFT's `save_pretrained`."""
    # The file formats are known once, in peft_slider.formats.files (which imports neither PEFT nor diffusers at load).
    weights = weights_file(Path(folder), PEFT_WEIGHT_NAME)
    tensors, _ = load_tensors(weights)
    config = PeftConfig.from_peft_type(**read_peft_config(weights, repr(str(weights))))
    return config, tensors


def _lora_file_in(folder: str) -> str:
    """The LoRA file of a diffusers folder, chosen as `peft_slider.formats.files` chooses a slider's file."""
    files = weight_candidates(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))
    if len(files) == 1:
        return files[0]
    found = f"the .safetensors files {files}" if files else "no .safetensors file"
    raise ValueError(
        f"`source` folder {folder!r} has no {PEFT_CONFIG_NAME} and {found}; pass the path of the LoRA file instead."
    )


def _component_of(model: nn.Module) -> str:
    """The pipeline component (and LoRA-file key prefix) of a denoiser, from the architecture table."""
    from ..targeting.targets import TargetingError, find_architecture

    try:
        return find_architecture(model).component
    except TargetingError:
        return "transformer"  # diffusers' own default


def _delete_adapter(model: nn.Module, adapter_name: str) -> None:
    # PEFT names the adapter it makes active instead ("Adapter X was active which is now deleted"); the callers put the
    # previously active adapters back right after, so that notice would only mislead.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        _delete_adapter_layers(model, adapter_name)


def _delete_adapter_layers(model: nn.Module, adapter_name: str) -> None:
    if isinstance(model, PeftModel):
        model.delete_adapter(adapter_name)
    elif hasattr(model, "delete_adapters"):
        model.delete_adapters(adapter_name)
    else:
        for _, layer in named_tuner_layers(model):
            layer.delete_adapter(adapter_name)
        getattr(model, "peft_config", {}).pop(adapter_name, None)


_MISSING = object()


def _unwrap_new_tuner_layers(model: nn.Module, *, keep: set[int]) -> None:
    """Puts back the base layer of every tuner layer a failed load wrapped (not in `keep`) that holds no adapter."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer) and id(child) not in keep and not _held_adapters(child):
                setattr(parent, child_name, child.get_base_layer())


def _held_adapters(layer: BaseTunerLayer) -> set[str]:
    return {adapter for attr in layer.adapter_layer_names for adapter in getattr(layer, attr, ())}


def _inject_with_state_dict(
    model: nn.Module, config: PeftConfig, state_dict: dict[str, torch.Tensor], adapter_name: str
) -> None:
    if isinstance(model, PeftModel):
        # PeftModel state dicts name modules from the PeftModel itself.
        state_dict = {(k if k.startswith(PEFT_PREFIX) else PEFT_PREFIX + k): v for k, v in state_dict.items()}
        model.add_adapter(adapter_name, config)
    else:
        state_dict = {k.removeprefix(PEFT_PREFIX): v for k, v in state_dict.items()}
        if getattr(model, "_hf_peft_config_loaded", None) is not None:
            model.add_adapter(config, adapter_name=adapter_name)  # diffusers: also records peft_config
        else:
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
    # On an error the caller deletes the new adapter and restores the others.
    result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if f".{adapter_name}." in k or k.endswith(f".{adapter_name}")]
    if unexpected or missing:
        raise ValueError(
            f"The state dict for adapter {adapter_name!r} does not fit {type(model).__name__}: "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]}), {len(missing)} adapter weights "
            f"missing (first: {missing[:3]}). Check that it was saved from the same model architecture."
        )


def add_assistant_adapter(
    model: nn.Module,
    source: str | os.PathLike | PeftConfig,
    *,
    adapter_name: str = "assistant",
    state_dict: dict[str, torch.Tensor] | None = None,
    prefix: str | None = "auto",
) -> None:
    """
    Loads an adapter beside the existing ones as a frozen, always-active "assistant".

    The adapters that were active stay active, with the trainability they had; the assistant is added to them and
    frozen. Strength scaling ([`~peft_slider.training.scaling.SliderScaler`]) picks the trainable adapters by default, so the
    assistant is never scaled and never trained. If loading fails, the model is left as it was.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).
        source (`str`, `os.PathLike` or `peft.PeftConfig`):
            One of:
                - a folder written by PEFT's `save_pretrained` (`adapter_config.json` and `adapter_model.safetensors`);
                - a `PeftConfig`, with the weights in `state_dict`;
                - for a diffusers model only: a LoRA `.safetensors` file, or a folder holding one, in a format
                  diffusers' `model.load_lora_adapter` reads (files written by `save_lora_adapter` or a pipeline's
                  `save_lora_weights`). For other formats (kohya, ComfyUI), load with
                  `pipe.load_lora_weights(..., adapter_name=...)`, which converts them, then call
                  [`~peft_slider.training.adapters.freeze_adapter`] and
                  [`~peft_slider.training.adapters.activate_adapters`].
        adapter_name (`str`, *optional*, defaults to `"assistant"`):
            Name for the new adapter; must not be in use.
        state_dict (`dict[str, torch.Tensor]`, *optional*):
            The adapter weights when `source` is a `PeftConfig`, keyed like PEFT's `get_peft_model_state_dict`.
        prefix (`str`, *optional*, defaults to `"auto"`):
            Only for diffusers LoRA files: the key prefix to select (`"transformer"` for files saved by a DiT pipeline,
            `"unet"` for UNet pipelines, `None` for files saved by `model.save_lora_adapter`). `"auto"` takes the
            model's pipeline component from the architecture table: `"unet"` for `UNet2DConditionModel` and
            `ControlNetModel`, `"transformer"` for the DiTs and for classes not in the table.

    Example:

    ```py
    >>> import tempfile
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.formats.assistants import add_assistant_adapter
    >>> from peft_slider.training.adapters import active_adapter_names, slider_adapter_names
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> make = lambda: torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> folder = tempfile.mkdtemp()
    >>> get_peft_model(make(), LoraConfig(target_modules=["0"])).save_pretrained(folder)
    >>> model = get_peft_model(make(), LoraConfig(target_modules=["0"]), adapter_name="slider")
    >>> add_assistant_adapter(model, folder)
    >>> active_adapter_names(model), slider_adapter_names(model)
    (['slider', 'assistant'], ['slider'])

    ```
    """
    if not isinstance(adapter_name, str) or not adapter_name:
        raise TypeError(f"`adapter_name` must be a non-empty string, got {adapter_name!r}.")
    if adapter_name in adapter_names(model):
        raise ValueError(f"`adapter_name` {adapter_name!r} is already in use; pick another name.")
    check_not_held_elsewhere((layer for _, layer in named_tuner_layers(model)), f"add adapter {adapter_name!r}")

    previously_active = active_adapter_names(model)
    # PEFT and diffusers activate (and unfreeze) adapters while loading, also when loading then fails: snapshot first.
    state = AdapterState(model)
    # diffusers records the config (and its "adapters loaded" flag) before injecting, and keeps both if injecting fails.
    had_configs = "peft_config" in vars(model)
    loaded_flag = vars(model).get("_hf_peft_config_loaded", _MISSING)
    try:
        _load_adapter(model, source, adapter_name=adapter_name, state_dict=state_dict, prefix=prefix)
        set_active(model, previously_active + [adapter_name])
    except BaseException:
        if adapter_name in adapter_names(model):
            _delete_adapter(model, adapter_name)
        _unwrap_new_tuner_layers(model, keep={id(layer) for layer in state.layers})
        configs = getattr(model, "peft_config", None)
        if isinstance(configs, dict):
            configs.pop(adapter_name, None)
            if not configs and not had_configs:
                delattr(model, "peft_config")
        if loaded_flag is _MISSING:
            vars(model).pop("_hf_peft_config_loaded", None)
        else:
            model._hf_peft_config_loaded = loaded_flag
        state.restore()
        raise
    state.restore_requires_grad()
    freeze_adapter(model, adapter_name)


def _load_adapter(
    model: nn.Module,
    source: str | os.PathLike | PeftConfig,
    *,
    adapter_name: str,
    state_dict: dict[str, torch.Tensor] | None,
    prefix: str | None,
) -> None:
    if isinstance(source, PeftConfig):
        if state_dict is None:
            raise ValueError("`state_dict` is required when `source` is a PeftConfig; pass the adapter weights.")
        _inject_with_state_dict(model, source, state_dict, adapter_name)
    elif isinstance(source, (str, os.PathLike)):
        if state_dict is not None:
            raise ValueError("`state_dict` is only used with a PeftConfig `source`; got a path as well.")
        path = os.fspath(source)
        if os.path.isfile(os.path.join(path, PEFT_CONFIG_NAME)):
            config, weights = _read_peft_folder(path)
            _inject_with_state_dict(model, config, weights, adapter_name)
        elif os.path.exists(path) and hasattr(model, "load_lora_adapter"):
            folder, weight_name = os.path.split(path) if os.path.isfile(path) else (path, _lora_file_in(path))
            if prefix == "auto":
                prefix = _component_of(model)
            model.load_lora_adapter(folder, weight_name=weight_name, prefix=prefix, adapter_name=adapter_name)
            if adapter_name not in adapter_names(model):
                raise ValueError(
                    f"No weights for {type(model).__name__} were found in {os.fspath(source)!r} with "
                    f"`prefix`={prefix!r}; pass prefix='transformer', 'unet' or None to match its keys."
                )
        elif os.path.exists(path):
            raise ValueError(
                f"`source` {path!r} has no {PEFT_CONFIG_NAME}; only diffusers models (with `load_lora_adapter`) "
                f"read other LoRA files, and {type(model).__name__} is not one."
            )
        else:
            raise ValueError(f"`source` {path!r} does not exist; pass a local folder, file or a PeftConfig.")
    else:
        raise TypeError(f"`source` must be a path or a PeftConfig, got {type(source).__name__}.")
