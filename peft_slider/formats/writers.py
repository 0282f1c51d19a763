# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Save sliders in every format users load, and convert a slider file from one format to another.

Formats:

- ``"diffusers"``: `pytorch_lora_weights.safetensors`, written by the pipeline class's own `save_lora_weights` (keys
  `unet.<module>...` or `transformer.<module>...`, the LoRA config under the `lora_adapter_metadata` header key), so
  `pipe.load_lora_weights(folder)` loads it at the trained scale. A raw PEFT file does not load there. The scale is
  baked into `lora_B` (alpha = rank), so readers that ignore the config (ComfyUI) get the trained strength too.
- ``"peft"``: `adapter_config.json` + `adapter_model.safetensors`, for `PeftModel.from_pretrained`.
- ``"comfyui"``: one `.safetensors` file in the layout ComfyUI/A1111 read for the family (see `peft_slider.formats.kohya`).

Every file carries the slider metadata (`peft_slider.*` header keys, see `peft_slider.formats.metadata`), next to and never
inside `lora_adapter_metadata`, so diffusers' `LoraConfig(**metadata)` still works.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..targeting.architectures import ARCHITECTURES
from ..targeting.targets import denoiser_attr, denoiser_of
from ..utils.checks import REPO_ID
from . import kohya
from .files import (
    DIFFUSERS_WEIGHT_NAME,
    PEFT_PREFIX,
    PEFT_WEIGHT_NAME,
    SAVE_ID_KEY,
    comfyui_file_name,
)
from .metadata import SliderMetadata, public_model_name, read_safetensors_header
from .readers import read_slider
from .slider_file import SliderFile, lora_config_dict

__all__ = ["FORMATS", "convert_slider", "save_slider"]


FORMATS = ("diffusers", "peft", "comfyui")
# The families diffusers has a pipeline LoRA loader for (the table's `lora_loader`); others are saved as PEFT only.
_LOADER_ROWS = tuple(spec for spec in ARCHITECTURES.values() if spec.lora_loader is not None)


# ---------------------------------------------------------------------------------------------------------------------
# From a model


def _denoiser_and_pipeline_class(model_or_pipe: Any) -> tuple[nn.Module, type | None]:
    if isinstance(getattr(model_or_pipe, "components", None), dict):
        return denoiser_of(model_or_pipe), type(model_or_pipe)
    if isinstance(model_or_pipe, nn.Module):
        return model_or_pipe, None
    raise TypeError(
        f"`model_or_pipe` must be a diffusers pipeline, a PeftModel or a denoiser with adapters, got "
        f"{type(model_or_pipe).__name__}."
    )


def model_class_name(model: nn.Module) -> str | None:
    """The diffusers class name of the architecture-table row `model` matches, or `None` for a model off the table."""
    from ..targeting.targets import TargetingError, find_architecture

    try:
        return find_architecture(model).class_name
    except (TargetingError, TypeError):
        return None


def _slider_from_model(model: nn.Module, adapter_name: str, metadata: SliderMetadata | None) -> SliderFile:
    from peft import LoraConfig, get_peft_model_state_dict

    configs = getattr(model, "peft_config", None) or {}
    if adapter_name not in configs:
        raise ValueError(
            f"`adapter_name` {adapter_name!r} is not an adapter of this {type(model).__name__}; its adapters are "
            f"{sorted(configs) or 'none'}. Pass one of them."
        )
    config = configs[adapter_name]
    if not isinstance(config, LoraConfig):
        raise ValueError(
            f"Adapter {adapter_name!r} is a {type(config).__name__}; save_slider writes LoRA, LoKr and LoHa sliders. "
            "Use PEFT's `model.save_pretrained(...)` for other adapters."
        )
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {key.removeprefix(PEFT_PREFIX): value.detach().cpu().contiguous() for key, value in state.items()}
    unsupported = sorted(key for key in tensors if not re.fullmatch(r".+\.lora_[AB]\.weight", key))
    if unsupported:
        raise ValueError(
            f"Adapter {adapter_name!r} has weights beyond plain LoRA ({unsupported[:3]}, e.g. DoRA or lora_bias); "
            "save_slider supports plain LoRA sliders. Train without `use_dora`/`lora_bias`."
        )
    class_name = model_class_name(model)
    if metadata is None:
        metadata = SliderMetadata()
    if metadata.architecture is not None and class_name is not None and metadata.architecture != class_name:
        raise ValueError(
            f"`metadata.architecture` is {metadata.architecture!r} but the model is a {class_name}; fix the metadata."
        )
    config_dict = lora_config_dict(config)
    filled = {
        "architecture": metadata.architecture or class_name,
        "rank": metadata.rank if metadata.rank is not None else config_dict.get("r"),
        "alpha": metadata.alpha if metadata.alpha is not None else config_dict.get("lora_alpha"),
        "base_model": metadata.base_model or config_dict.get("base_model_name_or_path"),
        # A SliderLoraConfig keeps its scope on the object (never serialized); a plain LoraConfig has none.
        "scope": metadata.scope or getattr(config, "scope", None),
    }
    metadata = dataclasses.replace(metadata, **filled)
    return SliderFile(tensors=tensors, config=config_dict, metadata=metadata, source=type(model).__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Writers


def _atomic_save(tensors: Mapping[str, torch.Tensor], path: Path, header: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(dict(tensors), str(temporary), metadata={"format": "pt", **header})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _loader_for(slider: SliderFile, pipeline_class: type | None, component: str | None) -> tuple[type, str]:
    """The class whose `save_lora_weights` writes the diffusers file, and the component (`unet`/`transformer`)."""
    import diffusers.loaders.lora_pipeline as lora_pipeline

    spec = ARCHITECTURES.get(slider.architecture or "")
    if pipeline_class is not None:
        if not hasattr(pipeline_class, "save_lora_weights"):
            raise ValueError(
                f"`pipeline_class` {pipeline_class.__name__} has no LoRA support in diffusers; save with "
                "formats=('peft',)."
            )
        component = component or (spec.component if spec is not None else None)
        loadable = getattr(pipeline_class, "_lora_loadable_modules", [])
        if component is None:
            component = "transformer" if "transformer" in loadable else "unet"
        return pipeline_class, component
    if spec is not None and spec.lora_loader is not None:
        return getattr(lora_pipeline, spec.lora_loader), spec.component
    if component is not None:
        # A family without a loader of its own: the file's layout depends only on the component prefix, and every
        # loader of that component writes it alike; take the table's first.
        loader = next((row.lora_loader for row in _LOADER_ROWS if row.component == component), None)
        if loader is not None:
            return getattr(lora_pipeline, loader), component
    known = ", ".join(sorted(row.class_name for row in _LOADER_ROWS))
    raise ValueError(
        f"No diffusers LoRA loader is known for architecture {slider.architecture!r} (known: {known}). Name the "
        "family: `architecture=` in Python or `--architecture` on the command line (e.g. flux, sdxl); or pass "
        "`pipeline_class=` (the pipeline you load it with); or write the PEFT format instead."
    )


def save_with_diffusers(
    slider: SliderFile, directory: Path | str, *, pipeline_class: type | None, component: str | None
) -> Path:
    """`pytorch_lora_weights.safetensors` as diffusers' own writer makes it (its key layout and the
    `lora_adapter_metadata` entry it reads back), without the slider metadata."""
    loader, component = _loader_for(slider, pipeline_class, component)
    loader.save_lora_weights(
        directory,
        **{f"{component}_lora_layers": slider.tensors, f"{component}_lora_adapter_metadata": dict(slider.config)},
    )
    return Path(directory, DIFFUSERS_WEIGHT_NAME)


def _write_diffusers(
    slider: SliderFile, directory: Path, *, pipeline_class: type | None = None, component: str | None = None
) -> Path:
    from safetensors.torch import load_file

    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        written = save_with_diffusers(slider, scratch, pipeline_class=pipeline_class, component=component)
        header = read_safetensors_header(written)
        tensors = load_file(str(written))
    header.update(_slider_header(slider))
    path = directory / DIFFUSERS_WEIGHT_NAME
    _atomic_save(tensors, path, header)
    return path


def _slider_header(slider: SliderFile) -> dict[str, str]:
    header = {} if slider.metadata is None else slider.metadata.to_header()
    if slider.save_id is not None:
        header[SAVE_ID_KEY] = slider.save_id
    return header


def _write_peft(slider: SliderFile, directory: Path) -> Path:
    from peft import LoraConfig

    config = dict(slider.config)
    if slider.metadata is not None and slider.metadata.base_model and not config.get("base_model_name_or_path"):
        config["base_model_name_or_path"] = slider.metadata.base_model
    directory.mkdir(parents=True, exist_ok=True)
    LoraConfig(**config).save_pretrained(str(directory))
    path = directory / PEFT_WEIGHT_NAME
    _atomic_save({PEFT_PREFIX + key: value for key, value in slider.tensors.items()}, path, _slider_header(slider))
    return path


def _write_comfyui(slider: SliderFile, path: Path) -> Path:
    layout = _comfyui_layout(slider)
    scales = slider.scales()
    header = _slider_header(slider)
    if layout == "kohya":
        ranks = {module: slider.tensors[f"{module}.lora_A.weight"].shape[0] for module in scales}
        alphas = {module: scales[module] * ranks[module] for module in scales}
        tensors = kohya.to_kohya(slider.tensors, alphas)
        header.update(
            kohya.kohya_header(
                Counter(ranks.values()).most_common(1)[0][0], Counter(alphas.values()).most_common(1)[0][0]
            )
        )
    else:
        names, native_only = kohya.COMFYUI_NAMES.get(slider.architecture or "", ()), layout == "native"
        tensors = kohya.to_comfyui_transformer(slider.tensors, scales, names=names, native_only=native_only)
        header.update(kohya.comfyui_names_header(slider.tensors, names, native_only=native_only))
    _atomic_save(tensors, path, header)
    return path


def _with_unit_scale(slider: SliderFile) -> SliderFile:
    """The slider with each module's scale baked into `lora_B` and alpha = rank: a reader that ignores the LoRA config
    (ComfyUI reads a diffusers file at scale 1) still gets the trained strength, and diffusers gets the same."""
    config = dict(slider.config)
    config.update(
        lora_alpha=config.get("r", 8), alpha_pattern=dict(config.get("rank_pattern") or {}), use_rslora=False
    )
    tensors = kohya.to_comfyui_transformer(slider.tensors, slider.scales(), prefix="")
    return dataclasses.replace(slider, tensors=tensors, config=config)


def _check_formats(formats: Any, comfyui: bool) -> list[str]:
    if isinstance(formats, str):
        formats = (formats,)
    if not isinstance(formats, Iterable):
        raise TypeError(f"`formats` must be a sequence of format names from {FORMATS}, got {formats!r}.")
    chosen = list(dict.fromkeys(formats))
    unknown = [name for name in chosen if name not in FORMATS]
    if unknown:
        raise ValueError(f"`formats` must hold names from {FORMATS}, got {unknown}.")
    if comfyui and "comfyui" not in chosen:
        chosen.append("comfyui")
    if not chosen:
        raise ValueError("`formats` is empty; pass at least one of ('diffusers', 'peft', 'comfyui').")
    return chosen


def _comfyui_layout(slider: SliderFile) -> str:
    # The table's `comfyui_layout`, per class.
    layout = kohya.COMFYUI_LAYOUTS.get(slider.architecture or "")
    if layout is None:
        known = ", ".join(sorted(kohya.COMFYUI_LAYOUTS))
        raise ValueError(
            f"No ComfyUI layout is known for architecture {slider.architecture!r}; ComfyUI-ready files are written "
            f"for: {known}. For another family use the diffusers format, or name the family with `architecture=` "
            "(`--architecture` on the command line)."
        )
    return layout


def _publishable(slider: SliderFile) -> SliderFile:
    """The slider with a local base-model path replaced by what may be published (see `public_model_name`): a path
    says nothing to others and shows the saver's file system, in every file and on the Hub."""
    metadata, config = slider.metadata, dict(slider.config)
    recorded = {}
    if metadata is not None and metadata.base_model:
        recorded[metadata.base_model] = public_model_name(metadata.base_model)
        # A copy, not dataclasses.replace: that would re-check an architecture a newer peft_slider wrote.
        metadata = copy.copy(metadata)
        metadata.base_model = recorded[metadata.base_model]
    if isinstance(config.get("base_model_name_or_path"), str) and config["base_model_name_or_path"]:
        original = config["base_model_name_or_path"]
        recorded[original] = config["base_model_name_or_path"] = public_model_name(original)
    for original, public in recorded.items():
        if public != original and not REPO_ID.fullmatch(public):
            warnings.warn(
                f"The base model {original!r} is a local path; the slider records only its folder name {public!r}. "
                "Pass `metadata=SliderMetadata(base_model='owner/name')` to record its Hub id.",
                stacklevel=4,
            )
    return dataclasses.replace(slider, metadata=metadata, config=config)


class _Staging:
    """The files of one save, written into a hidden folder inside their destination and moved into place together.

    A failure while writing (a full disk, a bad config) leaves the destination as it was. The move is one `os.replace`
    per file, after every file is written and flushed to disk; should a move fail, the files already moved are put back.
    """

    PREFIX = ".peft_slider-staging-"

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.folder = Path(tempfile.mkdtemp(prefix=self.PREFIX, dir=directory))

    def commit(self) -> None:
        staged = sorted(path for path in self.folder.iterdir() if path.is_file())
        for path in staged:
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        backups = self.folder / "replaced"
        backups.mkdir()
        moved: list[tuple[Path, Path | None]] = []
        try:
            for path in staged:
                final = self.directory / path.name
                backup = None
                if final.is_file() and not final.is_symlink():
                    backup = backups / path.name
                    try:
                        os.link(final, backup)
                    except OSError:  # a file system without hard links
                        shutil.copy2(final, backup)
                os.replace(path, final)
                moved.append((final, backup))
        except BaseException:
            for final, backup in reversed(moved):
                if backup is not None:
                    os.replace(backup, final)
                else:
                    final.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _stale_slider_files(directory: Path, written: Iterable[str]) -> list[str]:
    """Slider weight files in `directory` that this save did not write (other formats, older saves)."""
    written = set(written)
    return sorted(
        path.name
        for path in directory.glob("*.safetensors")
        if path.name not in written and not path.name.startswith(".") and path.is_file()
    )


def _write(
    slider: SliderFile, directory: Path, formats: Sequence[str], *, pipeline_class: type | None, component: str | None
) -> dict[str, Path]:
    # Check every requested format can be written before writing any, so a bad request leaves no partial folder.
    if "diffusers" in formats:
        _loader_for(slider, pipeline_class, component)
    if "comfyui" in formats:
        _comfyui_layout(slider)
    slider = _publishable(dataclasses.replace(slider, save_id=uuid.uuid4().hex))
    # All files or none: everything is written into a staging folder first, then moved into place.
    staging = _Staging(directory)
    try:
        paths = {}
        for name in formats:
            if name == "diffusers":
                paths[name] = _write_diffusers(
                    _with_unit_scale(slider), staging.folder, pipeline_class=pipeline_class, component=component
                )
            elif name == "peft":
                paths[name] = _write_peft(slider, staging.folder)
            else:
                paths[name] = _write_comfyui(slider, staging.folder / comfyui_file_name(slider.metadata))
        staging.commit()
    finally:
        staging.discard()
    paths = {name: directory / path.name for name, path in paths.items()}
    stale = _stale_slider_files(directory, (path.name for path in paths.values()))
    if stale:
        warnings.warn(
            f"{str(directory)!r} also holds slider files this save did not write: {stale}. Loading the folder now "
            "needs `weight_name=`; delete them (or save every format again) to keep one slider per folder.",
            stacklevel=3,
        )
    return paths


def save_slider(
    model_or_pipe: Any,
    save_directory: str | os.PathLike,
    *,
    adapter_name: str = "default",
    formats: Sequence[str] = ("diffusers", "peft"),
    metadata: SliderMetadata | None = None,
    comfyui: bool = False,
    pipeline_class: type | None = None,
) -> dict[str, Path]:
    """Save a slider adapter in the formats users load, each with the slider metadata in its header.

    The save is all or nothing: every file is written into a hidden staging folder inside `save_directory`, flushed,
    then renamed into place, so a failure (a full disk) leaves the folder's old files as they were. The files of one
    save share a `peft_slider.save_id` header entry, by which loaders know they belong together; slider files of
    another save left in the folder make `load_slider(folder)` ask for `weight_name=` (a warning says so). A local
    base-model path is recorded as the Hub id of the cached snapshot it points into, else as its folder name only
    (with a warning), never as the path.

    Args:
        model_or_pipe (`DiffusionPipeline`, `PeftModel` or `torch.nn.Module`):
            A pipeline whose denoiser carries the adapter, a `PeftModel`, or a denoiser with the adapter injected
            (`model.add_adapter(config, adapter_name=...)`).
        save_directory (`str` or `os.PathLike`):
            The folder to write (created if needed).
        adapter_name (`str`, *optional*, defaults to `"default"`):
            The adapter to save.
        formats (`Sequence[str]`, *optional*, defaults to `("diffusers", "peft")`):
            Any of ``"diffusers"`` (`pytorch_lora_weights.safetensors`), ``"peft"`` (`adapter_config.json` +
            `adapter_model.safetensors`) and ``"comfyui"``; both first ones can share a folder. A LoKr/LoHa adapter
            has no diffusers format: save it with ``("peft", "comfyui")`` (see `peft_slider.formats.lycoris`).
        metadata (`SliderMetadata`, *optional*):
            Slider metadata; architecture, rank, alpha and base model are filled in from the model when unset.
        comfyui (`bool`, *optional*, defaults to `False`):
            Also write `<concept>_comfyui.safetensors` for ComfyUI/A1111 (kohya keys for SD 1.x/SDXL,
            `transformer.` keys with the scale baked in for the DiTs ComfyUI reads that way).
        pipeline_class (`type`, *optional*):
            The pipeline class whose `save_lora_weights` writes the diffusers file; by default the pipeline's own
            class, or for a bare model the loader of its architecture.

    Returns:
        `dict[str, pathlib.Path]`: the weight file written per format.

    Example:

    ```py
    >>> import tempfile
    >>> from diffusers import DiffusionPipeline
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.formats import save_slider
    >>> from peft_slider.formats import SliderMetadata
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("flux")
    >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, model=pipe.transformer), adapter_name="smile")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     paths = save_slider(pipe, folder, adapter_name="smile", metadata=SliderMetadata(concept="smiling"))
    ...     pipe.load_lora_weights(folder, adapter_name="reloaded")
    ...     sorted(p.name for p in paths.values())
    ['adapter_model.safetensors', 'pytorch_lora_weights.safetensors']
    ```
    """
    chosen = _check_formats(formats, comfyui)
    if metadata is not None and not isinstance(metadata, SliderMetadata):
        raise TypeError(f"`metadata` must be a SliderMetadata or None, got {type(metadata).__name__}.")
    denoiser, own_pipeline_class = _denoiser_and_pipeline_class(model_or_pipe)
    from . import lycoris

    if lycoris.lycoris_type((getattr(denoiser, "peft_config", None) or {}).get(adapter_name)) is not None:
        return lycoris.save_lycoris_slider(
            denoiser,
            Path(save_directory),
            adapter_name=adapter_name,
            formats=chosen,
            metadata=metadata,
            class_name=model_class_name(denoiser),
        )
    slider = _slider_from_model(denoiser, adapter_name, metadata)
    component = None if own_pipeline_class is None else denoiser_attr(model_or_pipe)
    return _write(
        slider,
        Path(save_directory),
        chosen,
        pipeline_class=pipeline_class or own_pipeline_class,
        component=component,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Conversion


def convert_slider(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str,
    architecture: str | None = None,
    weight_name: str | None = None,
    pipeline_class: type | None = None,
    lora_alpha: float | None = None,
) -> Path:
    """Convert a slider file between the diffusers, PEFT and ComfyUI formats, or turn a trainer checkpoint into one.

    The files are written as `save_slider` writes them: all or nothing, with a fresh save id.

    Args:
        src (`str` or `os.PathLike`):
            The slider file or folder, or a trainer checkpoint folder (`checkpoint-N/`).
        dst (`str` or `os.PathLike`):
            The output folder (for ``"comfyui"`` a `.safetensors` path is also accepted).
        to (`str`):
            ``"diffusers"``, ``"peft"`` or ``"comfyui"``.
        architecture (`str`, *optional*):
            The denoiser class or family alias, for files without slider metadata.
        weight_name (`str`, *optional*):
            The file to read in a folder.
        pipeline_class (`type`, *optional*):
            For ``"diffusers"``: the pipeline class whose `save_lora_weights` writes the file.
        lora_alpha (`float`, *optional*):
            For a trainer checkpoint, which records no alpha: the training's `--lora_alpha` (see `read_slider`).

    Returns:
        `pathlib.Path`: the weight file written.

    Example:

    ```py
    >>> import tempfile
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.formats import convert_slider, read_slider, save_slider
    >>> from peft_slider.testing import build_tiny_pipeline
    >>> pipe = build_tiny_pipeline("zimage")
    >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=2, model=pipe.transformer))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = save_slider(pipe, f"{folder}/src", formats=["peft"])
    ...     path = convert_slider(f"{folder}/src", f"{folder}/out", to="comfyui")
    ...     read_slider(path).format
    'comfyui'
    ```
    """
    if to not in FORMATS:
        raise ValueError(f"`to` must be one of {FORMATS}, got {to!r}.")
    from . import lycoris

    found = lycoris.read_lycoris_slider(Path(src, weight_name) if weight_name else Path(src))
    if found is not None:
        return lycoris.convert_lycoris_slider(*found, Path(dst), to=to)
    slider = read_slider(src, weight_name=weight_name, lora_alpha=lora_alpha)
    if architecture is not None:
        from ..targeting.targets import TargetingError, find_architecture

        try:
            class_name = find_architecture(architecture).class_name
        except TargetingError as error:
            raise ValueError(f"`architecture`: {error}") from None
        if slider.architecture is not None and slider.architecture != class_name:
            raise ValueError(
                f"`architecture` is {class_name} but {slider.source} records {slider.architecture}; drop the option "
                "or fix the file."
            )
        slider.metadata = dataclasses.replace(
            slider.metadata or SliderMetadata(peft_slider_version=None), architecture=class_name
        )
    dst = Path(dst)
    if to == "comfyui" and dst.suffix == ".safetensors":
        return _write_comfyui(_publishable(dataclasses.replace(slider, save_id=uuid.uuid4().hex)), dst)
    # A file of unknown family keeps the component its keys named (kohya `lora_unet_` files are UNet sliders).
    return _write(slider, dst, [to], pipeline_class=pipeline_class, component=slider.component)[to]
