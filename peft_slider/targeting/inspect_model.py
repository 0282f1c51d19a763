"""`peft-slider inspect`: show what a slider would adapt on a model, without loading any weights."""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.checks import REPO_ID
from .architectures import SCOPES
from .targets import (
    TargetingError,
    count_lora_parameters,
    find_architecture,
    group_module_names,
    resolve_targets,
    unwrap_denoiser,
)

__all__ = ["format_report", "inspect_report", "load_meta_model"]

_DENOISER_COMPONENTS = ("transformer", "unet", "prior", "decoder", "controlnet")


def load_meta_model(source: str) -> tuple[nn.Module, str]:
    """Build a model's module tree on the meta device from a built-in name, a local folder or a Hub id.

    Args:
        source (`str`):
            A built-in name (``"flux"``, ``"sdxl"``, a diffusers class name), a local folder holding a model's
            ``config.json`` or a pipeline's ``model_index.json``, or a Hub repo id (needs network, or the files in
            the local Hub cache; with ``HF_HUB_OFFLINE=1``, or when the Hub cannot be reached, only the cache is read).

    Returns:
        `(model, description)`. A built-in name gives `full_size.build_module_tree`'s tree (no diffusers import
        when the stored trees match the installed diffusers); a folder or a Hub id, the diffusers model.
    """
    from .full_size import FULL_SIZE_MODELS, build_module_tree

    path = Path(source)
    if path.is_dir():
        return _from_config_dir(path), str(path)
    if source.lower() in FULL_SIZE_MODELS or _is_known_name(source):
        return build_module_tree(source)
    if REPO_ID.fullmatch(source):
        return _from_hub(source), f"Hub repo {source}"
    raise ValueError(
        f"`model` {source!r} is neither a built-in name, a local folder, nor a Hub id (owner/name). "
        "Run `peft-slider inspect --list` for the built-in names."
    )


def _is_known_name(source: str) -> bool:
    try:
        find_architecture(source)
    except TargetingError:
        return False
    return True


def _build_from_config(config: dict) -> nn.Module:
    import diffusers
    import torch

    class_name = config.get("_class_name")
    cls = getattr(diffusers, class_name or "", None)
    if cls is None:
        raise TargetingError(
            f"config.json names class {class_name!r}, which this diffusers ({diffusers.__version__}) does not have."
        )
    find_architecture(cls)  # unknown classes get the table's message before anything is built
    with torch.device("meta"):
        return cls.from_config(config)


def _from_config_dir(path: Path) -> nn.Module:
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        for component in _DENOISER_COMPONENTS:
            if component in index and (path / component / "config.json").is_file():
                return _build_from_config(json.loads((path / component / "config.json").read_text()))
        raise ValueError(f"{path / 'model_index.json'} names no denoiser among {list(_DENOISER_COMPONENTS)}.")
    if (path / "config.json").is_file():
        return _build_from_config(json.loads((path / "config.json").read_text()))
    raise ValueError(f"Folder {str(path)!r} holds neither config.json nor model_index.json.")


def _offline_reason() -> str | None:
    """Why the Hub is out of reach (`HF_HUB_OFFLINE`, or the endpoint does not answer within seconds), else None.

    huggingface_hub retries an unreachable Hub for about half a minute per file; one quick probe answers first.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set"
    if urllib.request.getproxies():
        return None  # the Hub is reached through a proxy: a direct probe would say nothing
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=3):
            return None
    except OSError as error:
        return f"{url.scheme}://{url.netloc} cannot be reached ({error.strerror or error})"


def _from_hub(repo_id: str) -> nn.Module:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = _offline_reason()

    def read(filename: str) -> dict:
        return json.loads(Path(hf_hub_download(repo_id, filename, local_files_only=offline is not None)).read_text())

    try:
        try:
            index = read("model_index.json")
        except LocalEntryNotFoundError:
            raise  # offline and not cached: a subclass of EntryNotFoundError, but not a missing file
        except EntryNotFoundError:
            return _build_from_config(read("config.json"))
        for component in _DENOISER_COMPONENTS:
            if component in index:
                return _build_from_config(read(f"{component}/config.json"))
    except LocalEntryNotFoundError as error:
        if offline is None:
            raise ValueError(
                f"Could not read {repo_id!r} from the Hub ({type(error).__name__}: {error}). Check the id and the "
                "network, or pass a local folder."
            ) from error
        fix = "unset HF_HUB_OFFLINE and run again" if "HF_HUB_OFFLINE" in offline else "check the network"
        raise ValueError(
            f"Could not read {repo_id!r}: {offline}, and its config is not in the local Hub cache. To read it, {fix}; "
            "or pass a local folder holding the model's config.json."
        ) from error
    except (OSError, ValueError) as error:
        if isinstance(error, TargetingError):
            raise
        # Offline, unknown or gated repo: one plain message instead of a traceback.
        raise ValueError(
            f"Could not read {repo_id!r} from the Hub ({type(error).__name__}: {error}). Check the id and the network, "
            "or pass a local folder."
        ) from error
    raise ValueError(f"{repo_id}'s model_index.json names no denoiser among {list(_DENOISER_COMPONENTS)}.")


def inspect_report(
    model: nn.Module, *, scopes: tuple[str, ...] = SCOPES, rank: int = 16, variant: str = "lora"
) -> dict[str, Any]:
    """What a slider adapts on `model`, per scope, as a JSON-ready dict.

    Args:
        model (`torch.nn.Module`): The denoiser (any device, meta included), a pipeline or a PEFT model.
        scopes (`tuple[str, ...]`, *optional*, defaults to `("visual", "joint")`): The scopes to report.
        rank (`int`, *optional*, defaults to 16): The LoRA rank for the parameter counts.
        variant (`str`, *optional*, defaults to `"lora"`): ``"lora"``, ``"lokr"``, ``"loha"`` or ``"full"``. The
            targets leave out what the variant cannot wrap, and `trainable_parameters` counts that variant's
            parameters: PEFT's `LoraConfig`, `LoKrConfig` or `LoHaConfig` at `r=rank` (their other options at the
            defaults), or the targets' full weights.

    Example:

    ```py
    >>> from peft_slider.targeting import inspect_report, load_meta_model
    >>> model, _ = load_meta_model("flux")
    >>> report = inspect_report(model, rank=16)
    >>> report["scopes"]["visual"]["modules"], report["scopes"]["joint"]["modules"]
    (80, 232)
    ```
    """
    denoiser = unwrap_denoiser(model)
    spec = find_architecture(denoiser)
    modules = dict(denoiser.named_modules())
    report: dict = {
        "class_name": spec.class_name,
        "family": spec.family,
        "rank": rank,
        "variant": variant,
        "adaptable_modules": sum(
            isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in modules.values()
        ),
        "scopes": {},
    }
    targets = None
    for scope in scopes:
        targets = resolve_targets(model=denoiser, scope=scope, variant=variant)
        groups = []
        for rule in spec.rules_for(scope):
            pattern = re.compile(rule.pattern)
            hits = [name for name in targets.modules if pattern.fullmatch(name)]
            for group, count in group_module_names(hits).items():
                groups.append({"pattern": group, "count": count, "role": rule.role, "note": rule.note})
        report["scopes"][scope] = {
            "modules": len(targets.modules),
            "trainable_parameters": _trainable_parameters(denoiser, targets.modules, rank, variant),
            "groups": groups,
            "target_modules": targets.regex,
        }
    report["text_path_skipped"] = {
        "modules": len(targets.text_path) if targets else 0,
        "groups": [
            {"pattern": p, "count": c} for p, c in group_module_names(targets.text_path if targets else ()).items()
        ],
    }
    report["note"] = spec.note
    return report


def _trainable_parameters(model: nn.Module, names: tuple[str, ...], rank: int, variant: str) -> int:
    if variant == "lora":
        return count_lora_parameters(model, names, rank=rank)
    modules = dict(model.named_modules())
    if variant == "full":
        return sum(modules[name].weight.numel() for name in names)
    # LoKr and LoHa factorise each weight by its shape (PEFT's own rules): count them by letting PEFT wrap one meta
    # module per distinct shape, the same code that builds the real adapter.
    import torch
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    config_class = {"lokr": LoKrConfig, "loha": LoHaConfig}[variant]
    shapes = Counter(_shape_of(modules[name]) for name in names)
    total = 0
    for (kind, in_features, out_features, kernel, groups), count in shapes.items():
        holder = nn.Module()
        with torch.device("meta"):
            if kind is nn.Linear:
                holder.m = nn.Linear(in_features, out_features, bias=False)
            else:
                holder.m = kind(in_features, out_features, kernel, groups=groups, bias=False)
        inject_adapter_in_model(config_class(r=rank, target_modules=["m"]), holder)
        adapter = sum(p.numel() for name, p in holder.named_parameters() if ".base_layer." not in name)
        total += count * adapter
    return total


def _shape_of(module: nn.Module) -> tuple:
    if isinstance(module, nn.Linear):
        return nn.Linear, module.in_features, module.out_features, None, 1
    kind = next(cls for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(module, cls))
    return kind, module.in_channels, module.out_channels, module.kernel_size, module.groups


def format_report(report: dict, *, source: str) -> str:
    """Render `inspect_report`'s dict for a terminal."""
    lines = [f"{report['class_name']} ({report['family']}), module tree from {source}"]
    lines.append(f"  {report['adaptable_modules']} Linear/Conv modules in all")
    for scope, data in report["scopes"].items():
        adapter = "full weights" if report["variant"] == "full" else f"{report['variant']} r={report['rank']}"
        lines.append(
            f"\nscope={scope}: {data['modules']} modules, {adapter}: {data['trainable_parameters']:,} trainable parameters"
        )
        for group in data["groups"]:
            lines.append(f"  {group['role']:<9} {group['pattern']:<64} x{group['count']:<4} {group['note']}")
    skipped = report["text_path_skipped"]
    lines.append(f"\nskipped as text path: {skipped['modules']} modules")
    for group in skipped["groups"]:
        lines.append(f"  {group['pattern']:<74} x{group['count']}")
    lines.append(f"\nvs the seed lists: {report['note']}")
    return "\n".join(lines)
