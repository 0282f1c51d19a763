# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints of a slider run: all-or-nothing folders, safetensors and JSON only (nothing is ever unpickled).

A checkpoint `checkpoint-N/` holds:

- `slider_adapter.safetensors`: the slider's weights (PEFT keys; not the frozen base model);
- `optimizer.safetensors`: the optimizer's tensors; their layout is in `training_state.json`;
- `rng_state_<rank>.json`: each process's Python, numpy and torch random states;
- `training_state.json`, written last: the run's identity (the options that decide what is trained), the step, the
  non-tensor optimizer state, the LR scheduler, the grad scaler, the loop position (sampler state) and the SHA-256
  of every other file.

Every checkpoint is written into a staging folder `.checkpoint-N.partial/` beside it and renamed into place only when
complete; older checkpoints are rotated away after that, so a kill at any moment leaves the previous checkpoints
intact. Loading checks the whole checkpoint (the files and their hashes, the run's identity, the adapter's keys and
shapes) before changing anything, and reads JSON and safetensors only: a `.pkl` or `.bin` in the folder (as
`accelerate.save_state` writes) is never opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("train_slider.checkpoints")

FORMAT = "peft_slider.train_slider/1"
# `--resume_from_checkpoint` values that pick a checkpoint of the output folder.
LATEST = ("latest", "latest_intact")
STATE_FILE = "training_state.json"
ADAPTER_FILE = "slider_adapter.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_STAGING_SUFFIXES = (".partial", ".old")
# What the trainer stages in the output folder besides checkpoints: the final outputs, the log's rewrite.
_STAGED_NAMES = ("slider", "train_log.jsonl")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: incomplete, corrupt, of another run, or not fitting the slider."""


# ---------------------------------------------------------------------------------------------------------------------
# All-or-nothing folders and files


def stage_folder(target: Path) -> Path:
    """A fresh, empty staging folder for `target`, beside it (same file system, so the final rename is atomic)."""
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_folder(staging: Path, target: Path) -> None:
    """Move a complete staging folder to `target`, replacing an existing `target` only once the new one is in place."""
    _fsync_folder(staging)
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    if old.exists():
        shutil.rmtree(old)


def commit_files(staging: Path, target: Path) -> dict[str, Path]:
    """Move every file of a complete staging folder into the folder `target`; returns name -> new path.

    Each file is replaced atomically and only after all of them were written, so an error while writing leaves
    `target` as it was.
    """
    _fsync_folder(staging)
    target.mkdir(parents=True, exist_ok=True)
    moved = {}
    for path in sorted(staging.iterdir()):
        destination = target / path.name
        if path.is_dir():
            commit_folder(path, destination)
        else:
            os.replace(path, destination)
        moved[path.name] = destination
    staging.rmdir()
    return moved


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file and a rename: readers see the old or the new file, never half."""
    temporary = path.with_name(f".{path.name}.partial")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_folder(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def clean_staging(output_dir: Path) -> None:
    """Remove what an interrupted save left: staging folders, and restore a checkpoint caught mid-replacement."""
    if not output_dir.is_dir():
        return
    for path in output_dir.iterdir():
        name = path.name
        if not (name.startswith(".") and name.endswith(_STAGING_SUFFIXES)):
            continue
        original = output_dir / name[1:].rsplit(".", 1)[0]
        if not (_CHECKPOINT.fullmatch(original.name) or original.name in _STAGED_NAMES):
            continue  # not ours
        if name.endswith(".old") and not original.exists():
            os.replace(path, original)  # killed between the two renames of `commit_folder`
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


# ---------------------------------------------------------------------------------------------------------------------
# Finding checkpoints


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest (smallest N) first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state(folder: Path) -> dict[str, Any]:
    """The checkpoint's `training_state.json`, after checking that every file it lists is there, unchanged.

    Raises `CheckpointError` naming the folder and what is wrong.
    """
    path = folder / STATE_FILE
    if not path.is_file():
        legacy = sorted(p.name for p in folder.glob("*.pkl")) + sorted(p.name for p in folder.glob("*.bin"))
        if legacy:
            raise CheckpointError(
                f"Checkpoint {str(folder)!r} has no {STATE_FILE}: it was written by accelerate's save_state (it holds "
                f"{', '.join(legacy)}), which this trainer no longer reads because loading it unpickles files."
            )
        raise CheckpointError(f"Checkpoint {str(folder)!r} has no {STATE_FILE}: it is incomplete or not a checkpoint.")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"Checkpoint {str(folder)!r} is corrupt: {STATE_FILE} is not valid JSON ({error})."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"Checkpoint {str(folder)!r} has format {found!r}; this trainer reads {FORMAT!r}.")
    for name, digest in state["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {str(folder)!r} is incomplete: {name} is missing.")
        if _sha256(file) != digest:
            raise CheckpointError(f"Checkpoint {str(folder)!r} is corrupt: {name} does not match its SHA-256.")
    return state


def resolve_checkpoint(value: str, output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint `--resume_from_checkpoint` names and its checked state.

    `value` is `"latest"` (the newest checkpoint, which must be intact), `"latest_intact"` (the newest intact one;
    broken newer ones are skipped with a warning) or a folder. Returns None for `"latest"`/`"latest_intact"` when there
    is no checkpoint. A broken checkpoint raises `CheckpointError` naming it and, where there is one, the newest intact
    checkpoint before it.
    """
    if value in LATEST:
        folders = checkpoint_folders(output_dir)
        if not folders:
            return None
        path = folders[-1]
    else:
        path = Path(value)
        if not path.is_dir():
            raise CheckpointError(
                f"`--resume_from_checkpoint` {value!r} is not a checkpoint folder; pass 'latest', 'latest_intact' or "
                f"a path such as {output_dir / 'checkpoint-500'}."
            )
        folders = checkpoint_folders(path.parent)
    try:
        return path, read_state(path)
    except CheckpointError as error:
        earlier = [p for p in folders if _step_of(p) < _step_of(path)]
        for candidate in reversed(earlier):
            try:
                state = read_state(candidate)
            except CheckpointError:
                continue
            if value == "latest_intact":
                logger.warning(
                    "%s Resuming from %s instead (--resume_from_checkpoint latest_intact).", error, candidate
                )
                return candidate, state
            raise CheckpointError(
                f"{error} The newest intact checkpoint before it is {str(candidate)!r}: resume from it with "
                f"`--resume_from_checkpoint {candidate}` (or `latest_intact`), or delete {str(path)!r}."
            ) from None
        raise CheckpointError(f"{error} There is no intact checkpoint to resume from.") from None


def _step_of(path: Path) -> int:
    match = _CHECKPOINT.fullmatch(path.name)
    return int(match.group(1)) if match else -1


# ---------------------------------------------------------------------------------------------------------------------
# Run identity


def run_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`--option`: saved value vs current value, for each option of the run's identity that differs."""
    names = sorted(set(saved) | set(current))
    if saved.get("mode") != current.get("mode"):
        names = ["mode"]  # another mode reads other options: the mode is the difference that matters

    def shown(run: dict[str, Any], name: str) -> str:
        if name == "mode":
            return repr(run.get("mode", "images"))  # an images run records no mode
        return repr(run[name]) if name in run else "not set"

    return [
        f"`--{name}` {shown(saved, name)} in the checkpoint, {shown(current, name)} now"
        for name in names
        if name not in saved or name not in current or saved[name] != current[name]
    ]


def run_id(run: dict[str, Any]) -> str:
    """A short hash of the run's identity."""
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# Nested states <-> JSON + safetensors


def _flatten(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for `value`, with tensors moved into `tensors` and dict keys, tuples kept exact."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[key, _flatten(item, f"{prefix}.{key}", tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(item, f"{prefix}.{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(item, f"{prefix}.{i}", tensors) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"Cannot store {type(value).__name__} at {prefix!r} in a checkpoint (JSON and tensors only).")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(item, tensors) for item in value["__tuple__"])
        return {key: _unflatten(item, tensors) for key, item in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def _rng_state() -> dict[str, Any]:
    import numpy as np

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": _flatten(random.getstate(), "python", {}),
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(_unflatten(state["python"], {}))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------------------------------
# Saving and loading


@dataclass
class CheckpointParts:
    """What a checkpoint saves and restores; `adapter_state()` / `load_adapter(state)` move the slider's weights."""

    run: dict[str, Any]
    adapter_state: Callable[[], dict[str, torch.Tensor]]
    load_adapter: Callable[[dict[str, torch.Tensor]], None]
    optimizer: Any
    lr_scheduler: Any
    train_state: Any
    grad_scaler: Any = None


def save_checkpoint(
    parts: CheckpointParts,
    output_dir: Path,
    step: int,
    *,
    limit: int | None,
    is_main_process: bool = True,
    process_index: int = 0,
    wait: Callable[[], None] = lambda: None,
) -> Path:
    """Write `checkpoint-<step>/` all-or-nothing, then keep only the newest `limit` checkpoints.

    Every process calls it (`wait` is the barrier): each writes its own random state, the main process the rest.
    """
    target = output_dir / f"checkpoint-{step}"
    staging = target.with_name(f".{target.name}.partial")
    if is_main_process:
        stage_folder(target)
    wait()
    write_text_atomic(staging / f"rng_state_{process_index}.json", json.dumps(_rng_state()))
    wait()
    if is_main_process:
        from safetensors.torch import save_file

        adapter = {k: v.detach().cpu().contiguous() for k, v in parts.adapter_state().items()}
        save_file(adapter, str(staging / ADAPTER_FILE))
        optimizer_tensors: dict[str, torch.Tensor] = {}
        optimizer = _flatten(parts.optimizer.state_dict(), "optimizer", optimizer_tensors)
        save_file(optimizer_tensors, str(staging / OPTIMIZER_FILE))
        state = {
            "format": FORMAT,
            "step": step,
            "run_id": run_id(parts.run),
            "run": parts.run,
            "train_state": parts.train_state.state_dict(),
            "optimizer": optimizer,
            "lr_scheduler": _flatten(parts.lr_scheduler.state_dict(), "lr_scheduler", {}),
            "grad_scaler": parts.grad_scaler.state_dict() if parts.grad_scaler is not None else None,
            "files": {p.name: _sha256(p) for p in sorted(staging.iterdir())},
        }
        write_text_atomic(staging / STATE_FILE, json.dumps(state, indent=1) + "\n")
        commit_folder(staging, target)
        if limit is not None:
            older = [p for p in checkpoint_folders(output_dir) if p != target]
            for old in older[: max(0, len(older) - limit + 1)]:
                shutil.rmtree(old)
    wait()
    return target


def check_run(path: Path, state: dict[str, Any], run: dict[str, Any]) -> None:
    """Raise `CheckpointError` naming every option in which the checkpoint's run differs from `run`."""
    differences = run_differences(state["run"], run)
    if differences:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} belongs to another run: {'; '.join(differences)}. Resume it with the same "
            "options, or start this run in a new `--output_dir` (or pass `--overwrite_output_dir`)."
        )


def check_checkpoint(
    path: Path, state: dict[str, Any], run: dict[str, Any], expected: dict[str, torch.Tensor], process_index: int
) -> dict[str, torch.Tensor]:
    """Check that a read checkpoint belongs to this run and fits the slider; returns its adapter weights.

    `expected` is the slider's current state dict (keys and shapes). Raises `CheckpointError` naming the difference.
    """
    from safetensors.torch import load_file

    check_run(path, state, run)
    if not (path / f"rng_state_{process_index}.json").is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} has no random state for process {process_index}.")
    adapter = load_file(str(path / ADAPTER_FILE))
    missing = sorted(set(expected) - set(adapter))
    unexpected = sorted(set(adapter) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit this slider: missing adapter keys {_few(missing)}, unexpected "
            f"keys {_few(unexpected)}. Resume with the same model, --rank, --scope and --adapter_name."
        )
    shapes = [k for k in expected if tuple(adapter[k].shape) != tuple(expected[k].shape)]
    if shapes:
        key = shapes[0]
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not fit this slider: {key} has shape {tuple(adapter[key].shape)}, the "
            f"slider {tuple(expected[key].shape)} ({len(shapes)} keys differ)."
        )
    return adapter


def load_checkpoint(
    parts: CheckpointParts, path: Path, state: dict[str, Any], adapter: dict[str, torch.Tensor], process_index: int
) -> None:
    """Restore a checked checkpoint (`check_checkpoint`): weights, optimizer, LR scheduler, loop position, RNG."""
    from safetensors.torch import load_file

    optimizer_tensors = load_file(str(path / OPTIMIZER_FILE))
    rng = json.loads((path / f"rng_state_{process_index}.json").read_text(encoding="utf-8"))
    parts.load_adapter(adapter)
    parts.optimizer.load_state_dict(_unflatten(state["optimizer"], optimizer_tensors))
    parts.lr_scheduler.load_state_dict(_unflatten(state["lr_scheduler"], {}))
    if parts.grad_scaler is not None and state["grad_scaler"] is not None:
        parts.grad_scaler.load_state_dict(state["grad_scaler"])
    parts.train_state.load_state_dict(state["train_state"])
    _set_rng_state(rng)


def _few(keys: Iterable[str], count: int = 3) -> str:
    keys = list(keys)
    if not keys:
        return "none"
    more = f" and {len(keys) - count} more" if len(keys) > count else ""
    return f"{keys[:count]}{more}"
