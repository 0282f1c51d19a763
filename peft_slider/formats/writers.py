# Copyright 2025 The peft_slider Authors. Licensed under the Apache License, Version 2.0.
"""Save sliders in every format users load, load any of them into a pipeline, and convert between them.

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
import json
import math
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..targeting.architectures import ARCHITECTURES
from ..targeting.targets import denoiser_attr, denoiser_of
from ..utils.checks import REPO_ID, check_finite, is_finite_number, is_repo_id
from . import kohya
from .files import (
    DIFFUSERS_WEIGHT_NAME,
    PEFT_PREFIX,
    PEFT_WEIGHT_NAME,
    SAVE_ID_KEY,
    SliderFileError,
    comfyui_file_name,
    load_tensors,
    read_peft_config,
    weights_file,
)
from .metadata import SliderMetadata, public_model_name, read_safetensors_header
from .strength_map import set_strength_map

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = [
    "FORMATS",
    "SliderFile",
    "convert_slider",
    "load_slider",
    "read_slider",
    "save_slider",
]

FORMATS = ("diffusers", "peft", "comfyui")
# The file a trainer checkpoint (`checkpoint-N/`, examples/train_slider) holds the slider's weights in: PEFT keys without
# prefix, no config and no header metadata.
CHECKPOINT_WEIGHT_NAME = "slider_adapter.safetensors"
# |alpha / r| beyond this is a corrupted number, not a slider (trained sliders sit around 0.1 to 10).
_MAX_SCALE = 1e4
# The families diffusers has a pipeline LoRA loader for (the table's `lora_loader`); others are saved as PEFT only.
_LOADER_ROWS = tuple(spec for spec in ARCHITECTURES.values() if spec.lora_loader is not None)
_LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # the one header key diffusers reads


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


def _lora_config_dict(config: Any) -> dict[str, Any]:
    """The LoraConfig fields of a config (object or dict), JSON-ready; slider-only or unknown fields dropped."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    fields = _lora_config_fields()
    return {key: _json_ready(value) for key, value in raw.items() if key in fields}


def _exact_pattern(name: str) -> str:
    # PEFT matches pattern keys with re.match(rf"(.*\.)?({key})$", name); a leading ^ makes the key match one name only.
    return "^" + re.escape(name)


def _config_from_alphas(tensors: Mapping[str, torch.Tensor], alphas: Mapping[str, float]) -> dict[str, Any]:
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


def _check_lora_tensors(tensors: Mapping[str, torch.Tensor], source: str) -> None:
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


def _check_config(slider: SliderFile) -> None:
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


def _class_name(model: nn.Module) -> str | None:
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
    class_name = _class_name(model)
    if metadata is None:
        metadata = SliderMetadata()
    if metadata.architecture is not None and class_name is not None and metadata.architecture != class_name:
        raise ValueError(
            f"`metadata.architecture` is {metadata.architecture!r} but the model is a {class_name}; fix the metadata."
        )
    config_dict = _lora_config_dict(config)
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


def _save_with_diffusers(
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
        written = _save_with_diffusers(slider, scratch, pipeline_class=pipeline_class, component=component)
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
            class_name=_class_name(denoiser),
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
# Readers


def _packed_config(raw: str, source: str) -> dict[str, Any]:
    """The LoraConfig dict diffusers keeps in the `lora_adapter_metadata` header entry."""
    try:
        packed = json.loads(raw)
    except ValueError as error:  # not JSON, or an int of more than 4300 digits
        raise SliderFileError(f"{source}: header entry {_LORA_ADAPTER_METADATA_KEY!r} is not JSON: {error}.") from None
    if not isinstance(packed, dict):
        raise SliderFileError(
            f"{source}: header entry {_LORA_ADAPTER_METADATA_KEY!r} holds a JSON {type(packed).__name__}, not a "
            "LoraConfig object; save the slider again."
        )
    return packed


def _run_slider(path: Path) -> SliderFile | None:
    """The finished slider of the training run a checkpoint file belongs to (`<run>/checkpoint-N/<file>`), if any."""
    if not re.fullmatch(r"checkpoint-\d+", path.parent.name):
        return None
    try:
        return read_slider(path.parent.parent)
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
    _check_lora_tensors(tensors, source)
    ranks = {key.rsplit(".", 2)[0]: tensor.shape[0] for key, tensor in tensors.items() if ".lora_A." in key}
    run = _run_slider(path)
    if run is not None:
        run_ranks = {module: run.tensors[f"{module}.lora_A.weight"].shape[0] for module in run.modules}
        if run_ranks != ranks:
            run = None  # another run (or another rank) wrote the folder's slider
    if metadata is None and run is not None:
        metadata = run.metadata
    raw = header.get(_LORA_ADAPTER_METADATA_KEY)
    if lora_alpha is not None:
        config = _config_from_alphas(tensors, dict.fromkeys(ranks, lora_alpha))
        if metadata is not None:
            metadata = copy.copy(metadata)
            metadata.alpha = lora_alpha
    elif raw is not None:
        config = _lora_config_dict(_packed_config(raw, source))
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
            of the run's finished slider beside the checkpoint folder is used, when that has the same modules and
            ranks.

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
    if path.is_dir():
        path = weights_file(path, weight_name)
    elif not path.is_file():
        raise SliderFileError(f"{str(path)!r} does not exist (no such file or folder); check the path.")
    slider = _read_file(path, module_names, lora_alpha)
    if lora_alpha is not None and slider.format != "checkpoint":
        raise SliderFileError(
            f"`lora_alpha` is for trainer checkpoints, which record no alpha; {slider.source} is a {slider.format} "
            "file that records its own. Drop the option."
        )
    _check_config(slider)
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
        _check_lora_tensors(tensors, source)
        config = _config_from_alphas(tensors, alphas)
        return SliderFile(tensors, config, metadata, source, "comfyui", "unet", save_id)
    if keys and all(key.startswith(PEFT_PREFIX) for key in keys):
        tensors = {key.removeprefix(PEFT_PREFIX): value for key, value in tensors.items()}
        _check_lora_tensors(tensors, source)
        config = read_peft_config(path, source)
        return SliderFile(tensors, _lora_config_dict(config), metadata, source, "peft", save_id=save_id)
    if keys and any(key.startswith(kohya.NATIVE_PREFIX) for key in keys):
        # A ComfyUI file with modules under their original names (`diffusion_model.`), the rest `transformer.`.
        try:
            tensors, alphas = kohya.from_comfyui_transformer(tensors, header=header)
        except ValueError as error:
            raise SliderFileError(f"{source}: {error}") from None
        _check_lora_tensors(tensors, source)
        return SliderFile(
            tensors, _config_from_alphas(tensors, alphas), metadata, source, "comfyui", "transformer", save_id=save_id
        )
    for component in ("unet", "transformer"):
        prefix = component + "."
        if keys and all(key.startswith(prefix) for key in keys):
            raw = header.get(_LORA_ADAPTER_METADATA_KEY)
            if raw is None:
                # No config: a `transformer.` file from ComfyUI-style export (scale baked, or `.alpha` keys).
                try:
                    tensors, alphas = kohya.from_comfyui_transformer(tensors, prefix=prefix)
                except ValueError as error:
                    raise SliderFileError(f"{source}: {error}") from None
                _check_lora_tensors(tensors, source)
                config = _config_from_alphas(tensors, alphas)
                return SliderFile(tensors, config, metadata, source, "comfyui", component, save_id)
            tensors = {key.removeprefix(prefix): value for key, value in tensors.items()}
            _check_lora_tensors(tensors, source)
            packed = _packed_config(raw, source)
            config = {key.removeprefix(prefix): value for key, value in packed.items() if key.startswith(prefix)}
            return SliderFile(tensors, _lora_config_dict(config), metadata, source, "diffusers", component, save_id)
    if keys and all(re.fullmatch(r".+\.lora_[AB]\.weight", key) for key in keys):
        return _read_checkpoint(path, tensors, header, metadata, lora_alpha)
    shown = ", ".join(keys[:3]) if keys else "none"
    raise SliderFileError(
        f"{source}: keys are in no slider layout peft_slider reads (diffusers `unet.`/`transformer.`, PEFT "
        f"`base_model.model.`, kohya `lora_unet_`, a trainer checkpoint's bare `<module>.lora_A.weight`, all in one "
        f"file); first keys: {shown}."
    )


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
    class_name = _class_name(denoiser) or type(denoiser).__name__
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
        return lycoris.load_lycoris_slider(pipe, *found, adapter_name=adapter_name, strength=strength)
    slider = read_slider(
        source,
        weight_name=weight_name,
        module_names=[name for name, _ in denoiser.named_modules() if name],
        lora_alpha=lora_alpha,
    )
    _check_fits(slider, denoiser)
    from ..training.adapters import AdapterState, active_adapter_names, adapter_layers, set_active, set_weight

    previously_active = active_adapter_names(denoiser)
    # diffusers' load switches the active adapters off (and may have on a failure): snapshot to put them back.
    state = AdapterState(denoiser)
    with tempfile.TemporaryDirectory() as scratch:
        # One loading path for every format: the diffusers file this pipeline's own class writes. Loading reads no
        # slider metadata, so the file is used as diffusers wrote it.
        _save_with_diffusers(slider, scratch, pipeline_class=type(pipe), component=denoiser_attr(pipe))
        try:
            pipe.load_lora_weights(scratch, weight_name=DIFFUSERS_WEIGHT_NAME, adapter_name=adapter_name)
            if adapter_name not in _adapters_of(pipe) - existing:
                raise SliderFileError(f"{slider.source}: diffusers loaded nothing from the slider.")
        except Exception as error:
            if adapter_name in _adapters_of(pipe):
                pipe.delete_adapters(adapter_name)
            state.restore()
            if isinstance(error, SliderFileError):
                raise
            raise SliderFileError(f"{slider.source}: diffusers could not load the slider: {error}") from error
    # Sliders are composed: the adapters that were on stay on, at their weights and trainability, beside the new one.
    set_active(denoiser, previously_active + [adapter_name])
    state.restore_requires_grad()
    if strength is not None:
        # What diffusers' set_adapters does per layer, for this adapter only.
        set_weight(adapter_layers(denoiser, adapter_name), adapter_name, strength)
    # A calibrated slider's strength map, for the pipeline mixin's `calibrated=True`.
    set_strength_map(denoiser, adapter_name, None if slider.metadata is None else slider.metadata.strength_map)
    return adapter_name


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
