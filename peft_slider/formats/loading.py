# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Loading a slider file into a pipeline, checked against its denoiser, with its strength and strength map."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..targeting.targets import denoiser_attr, denoiser_of
from ..utils.checks import check_finite, is_repo_id
from .files import DIFFUSERS_WEIGHT_NAME, SliderFileError
from .metadata import SliderMetadata
from .readers import read_slider
from .slider_file import SliderFile
from .strength_map import set_strength_map
from .writers import model_class_name, save_with_diffusers

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["load_slider"]


# ---------------------------------------------------------------------------------------------------------------------
# Loading into a pipeline


def _check_fits(slider: SliderFile, denoiser: nn.Module) -> None:
    """The slider's modules exist in the denoiser with the shapes its matrices expect."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    try:
        LoraConfig(**slider.config)
    except (TypeError, ValueError) as error:
        raise SliderFileError(f"{slider.source}: its LoRA config does not build a peft LoraConfig: {error}") from None
    slider.scales()  # ranks in the config agree with the matrices
    class_name = model_class_name(denoiser) or type(denoiser).__name__
    if slider.architecture is not None and slider.architecture != class_name:
        raise SliderFileError(
            f"{slider.source} is a slider for {slider.architecture}, but this pipeline's denoiser is a {class_name}. "
            "Load it into a pipeline of its own family."
        )
    modules = dict(denoiser.named_modules())
    missing = [name for name in slider.modules if name not in modules]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SliderFileError(
            f"{slider.source}: {len(missing)} of its {len(slider.modules)} modules do not exist in this "
            f"{class_name}: {shown}. It was made for another model (or model size)."
        )
    for name in slider.modules:
        module = modules[name]
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        lora_a = slider.tensors[f"{name}.lora_A.weight"]
        lora_b = slider.tensors[f"{name}.lora_B.weight"]
        if isinstance(module, nn.Linear):
            fits = (
                lora_a.ndim == 2 and lora_a.shape[1] == module.in_features and lora_b.shape[0] == module.out_features
            )
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            fits = (
                lora_a.ndim == module.weight.ndim
                and lora_a.shape[1] * module.groups == module.in_channels
                and lora_b.shape[0] == module.out_channels
            )
        else:
            raise SliderFileError(
                f"{slider.source}: module {name!r} is a {type(module).__name__} in this {class_name}, not a "
                "Linear/Conv layer a LoRA can adapt."
            )
        if not fits:
            raise SliderFileError(
                f"{slider.source}: module {name!r} has weight {tuple(module.weight.shape)} in this {class_name}, but "
                f"the slider's matrices are lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)}. It was "
                "made for another model size."
            )


def _resolve_source(path_or_repo: str | os.PathLike, weight_name: str | None, **hub_options: Any) -> Path:
    """A local slider file or folder, downloading from the Hub when `path_or_repo` is a repo id."""
    path = Path(path_or_repo)
    if path.exists():
        return path
    text = os.fspath(path_or_repo)
    # A PathLike is a local path by the caller's own choice of type.
    if isinstance(path_or_repo, os.PathLike) or not is_repo_id(text):
        raise SliderFileError(
            f"`path_or_repo` {text!r} is a local path that does not exist (looked at {str(path.absolute())!r}); fix "
            "the path. (A Hub repo is named 'owner/name'.)"
        )
    from .hub import download_slider

    return download_slider(text, weight_name=weight_name, **hub_options)


def _adapters_of(pipe: DiffusionPipeline) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _check_strength(strength: Any) -> float | None:
    if strength is None:
        return None
    return check_finite(strength, argument="strength", expected="a finite number such as 1.0 or -0.5")


def add_beside_active(
    denoiser: nn.Module,
    adapter_name: str,
    load: Callable[[], None],
    *,
    delete: Callable[[], None],
    strength: float | None,
    failure: str,
) -> None:
    """
    Adds a slider to `denoiser` with `load` and composes it with the adapters that were active.

    Sliders are composed: the adapters that were on stay on, at their weights and trainability, beside the new one,
    which gets `strength` (what diffusers' `set_adapters` sets per layer, for this adapter only) when it is given. If
    `load` fails, `delete` removes what it added, the adapters are put back as they were (loaders switch the active
    adapters off, and may have on a failure), and the error is raised as a `SliderFileError`: as it is when it is
    one, else as ``f"{failure}: {error}"``.

    Args:
        denoiser (`torch.nn.Module`): The model the slider is added to.
        adapter_name (`str`): The name `load` adds the slider under.
        load (`Callable[[], None]`): Adds the slider, with its weights.
        delete (`Callable[[], None]`): Removes the slider if `load` added it before failing.
        strength (`float`, *optional*): The slider's weight; `None` keeps the one `load` set.
        failure (`str`): What went wrong, the start of the message of an error that is not a `SliderFileError`.
    """
    from ..training.adapters import AdapterState, active_adapter_names, adapter_layers, set_active, set_weight

    previously_active = active_adapter_names(denoiser)
    state = AdapterState(denoiser)
    try:
        load()
    except Exception as error:
        delete()
        state.restore()
        if isinstance(error, SliderFileError):
            raise
        raise SliderFileError(f"{failure}: {error}") from error
    set_active(denoiser, previously_active + [adapter_name])
    state.restore_requires_grad()
    if strength is not None:
        set_weight(adapter_layers(denoiser, adapter_name), adapter_name, strength)


def _load_lycoris(
    denoiser: nn.Module,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: SliderMetadata | None,
    *,
    adapter_name: str,
    strength: float | None,
) -> str:
    """Adds a LoKr/LoHa slider to the pipeline's denoiser with PEFT; adapters that were active stay active."""
    from peft import set_peft_model_state_dict

    from . import lycoris

    class_name = model_class_name(denoiser) or type(denoiser).__name__
    architecture = None if metadata is None else metadata.architecture
    if architecture is not None and architecture != class_name:
        raise SliderFileError(
            f"The slider is for {architecture}, but this pipeline's denoiser is a {class_name}. Load it into a "
            "pipeline of its own family."
        )

    def load() -> None:
        denoiser.add_adapter(lycoris.lycoris_peft_config(config), adapter_name)
        result = set_peft_model_state_dict(denoiser, tensors, adapter_name=adapter_name)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise SliderFileError(f"{len(unexpected)} weight(s) fit no module of this denoiser: {unexpected[:3]}.")

    def delete() -> None:
        if adapter_name in (getattr(denoiser, "peft_config", None) or {}):
            denoiser.delete_adapters(adapter_name)

    failure = f"PEFT could not load the {lycoris.lycoris_type(config)} slider"
    add_beside_active(denoiser, adapter_name, load, delete=delete, strength=strength, failure=failure)
    return adapter_name


def load_slider(
    pipe: DiffusionPipeline,
    path_or_repo: str | os.PathLike,
    *,
    adapter_name: str,
    weight_name: str | None = None,
    strength: float | None = None,
    lora_alpha: float | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Load a slider in any format (diffusers, PEFT, kohya/ComfyUI) into a pipeline's denoiser.

    The file is read and checked against the denoiser first (layout, architecture, module names and shapes); nothing
    is added to the pipeline unless the whole slider fits, and a failure inside diffusers removes what it added.

    Args:
        pipe (`DiffusionPipeline`):
            A pipeline with diffusers LoRA support (`load_lora_weights`).
        path_or_repo (`str` or `os.PathLike`):
            A `.safetensors` file, a folder written by `save_slider`, a trainer checkpoint folder (`checkpoint-N/`), or
            a Hub repo id (``"owner/name"``; a path that does not exist is never sent to the Hub).
        adapter_name (`str`):
            The adapter name to load under; must be new to the pipeline.
        weight_name (`str`, *optional*):
            The file to read in a folder or repo; needed when a folder's slider files are not from one save.
        strength (`float`, *optional*):
            Set the slider's strength after loading (as `pipe.set_adapters` would, other adapters untouched).
            Either way the adapters that were active stay active, at their weights, beside the new one (diffusers'
            own `load_lora_weights` switches them off), so sliders compose.
        lora_alpha (`float`, *optional*):
            For a trainer checkpoint, which records no alpha: the training's `--lora_alpha` (see `read_slider`).
        token (`str` or `bool`, *optional*):
            Hub token for a private repo; by default the one `hf auth login` saved.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit).
        endpoint (`str`, *optional*):
            Hub URL; by default `HF_ENDPOINT` or https://huggingface.co.

    Returns:
        `str`: `adapter_name`.

    Raises:
        `SliderFileError`: the file is corrupted, in no known layout, made for another architecture or model size.

    Example:

    ```py
    >>> import tempfile
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.formats import load_slider, save_slider
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("sdxl")
    >>> pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, model=pipe.unet), adapter_name="age")
    >>> other = build_tiny_pipeline("sdxl")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     paths = save_slider(pipe, folder, adapter_name="age", formats=["comfyui"])
    ...     load_slider(other, paths["comfyui"], adapter_name="age", strength=-1.0)
    'age'
    ```
    """
    if not isinstance(adapter_name, str) or not adapter_name:
        raise ValueError(f"`adapter_name` must be a non-empty string, got {adapter_name!r}.")
    strength = _check_strength(strength)
    if not hasattr(pipe, "load_lora_weights"):
        raise TypeError(
            f"`pipe` ({type(pipe).__name__}) has no diffusers LoRA support (`load_lora_weights`); load the slider with "
            "PEFT (`PeftModel.from_pretrained`) on its denoiser instead."
        )
    existing = _adapters_of(pipe)
    if adapter_name in existing:
        raise ValueError(
            f"`adapter_name` {adapter_name!r} is already loaded in this pipeline; pick another name or call "
            f"`pipe.delete_adapters({adapter_name!r})` first."
        )
    denoiser = denoiser_of(pipe)
    source = _resolve_source(path_or_repo, weight_name, token=token, revision=revision, endpoint=endpoint)
    from . import lycoris

    found = lycoris.read_lycoris_slider(source / weight_name if weight_name and source.is_dir() else source)
    if found is not None:  # a LoKr/LoHa slider: PEFT loads it, diffusers has no loader for it
        return _load_lycoris(denoiser, *found, adapter_name=adapter_name, strength=strength)
    slider = read_slider(
        source,
        weight_name=weight_name,
        module_names=[name for name, _ in denoiser.named_modules() if name],
        lora_alpha=lora_alpha,
    )
    _check_fits(slider, denoiser)
    with tempfile.TemporaryDirectory() as scratch:
        # One loading path for every format: the diffusers file this pipeline's own class writes. Loading reads no
        # slider metadata, so the file is used as diffusers wrote it.
        save_with_diffusers(slider, scratch, pipeline_class=type(pipe), component=denoiser_attr(pipe))

        def load() -> None:
            pipe.load_lora_weights(scratch, weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name=adapter_name)
            if adapter_name not in _adapters_of(pipe) - existing:
                raise SliderFileError(f"{slider.source}: diffusers loaded nothing from the slider.")

        def delete() -> None:
            if adapter_name in _adapters_of(pipe):
                pipe.delete_adapters(adapter_name)

        add_beside_active(
            denoiser,
            adapter_name,
            load,
            delete=delete,
            strength=strength,
            failure=f"{slider.source}: diffusers could not load the slider",
        )
    # A calibrated slider's strength map, for the pipeline mixin's `calibrated=True`.
    set_strength_map(denoiser, adapter_name, None if slider.metadata is None else slider.metadata.strength_map)
    return adapter_name
