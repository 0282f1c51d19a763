# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Train a concept slider: one LoRA trained at each batch's signed `slider_strength`, with accelerate.

Run with no arguments for the built-in toy run: it builds a tiny FLUX.1-style pipeline locally, fits it to a synthetic
lighting dataset, saves it and loads it back through `DiffusionPipeline.from_pretrained`, trains a "light from the right"
slider on this CPU in about a minute, and writes the slider, a strength-sweep image and the concept's statistic per
strength. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # families.py and toy.py beside this file

from checkpoints import (  # noqa: E402
    LATEST,
    CheckpointError,
    CheckpointParts,
    check_checkpoint,
    check_run,
    checkpoint_folders,
    clean_staging,
    commit_files,
    commit_folder,
    load_checkpoint,
    read_state,
    resolve_checkpoint,
    run_differences,
    save_checkpoint,
    stage_folder,
    write_text_atomic,
)
from families import FAMILIES, Family, family_of  # noqa: E402
from modes import MODE_CLASSES, MODES, collate  # noqa: E402

from peft_slider.training import NEUTRAL_OBJECTIVES, NeutralObjective  # noqa: E402

logger = logging.getLogger("train_slider")

# The toy run's defaults; every one can be overridden on the command line.
TOY_DEFAULTS = {
    "tiny_family": "flux",
    "train_batch_size": 4,
    "rank": 8,
    "learning_rate": 5e-3,
    "max_train_steps": 600,
    "resolution": 32,
    "validation_num_inference_steps": 8,
    "checkpointing_steps": 300,
    "rollout_steps": 8,
    "rollout_trajectories": 4,
    # The toy pairs are the concept's full extent: trained at +/-2, the sweep's ends are the pairs themselves and +/-1
    # is half way. Trained at +/-1 the tiny slider reaches the pairs at +/-1 and saturates beyond. (The toy prompt
    # set trains at 2 for the same reason: its `strength` in toy.PROMPTS_YAML.)
    "pair_strength": 2.0,
}
# What a run on a real model uses when an option is not given.
REAL_DEFAULTS = {
    "train_batch_size": 1,
    "rank": 16,
    "learning_rate": 1e-4,
    "max_train_steps": None,
    "resolution": None,
    "validation_num_inference_steps": 28,
    "checkpointing_steps": 500,
    "rollout_steps": 30,
    "rollout_trajectories": 8,
    "pair_strength": 1.0,
}
# The options that decide what a run trains: a checkpoint resumes only into a run with the same values. Output,
# checkpointing, validation and logging options, and the length of the run, may change between sessions.
RUN_OPTIONS = (
    "pretrained_model_name_or_path",
    "revision",
    "variant",
    "tiny_family",
    "tiny_base_fit_steps",
    "assistant_lora",
    "assistant_adapter_name",
    "mode",
    "dataloader_config",
    "pairs",
    "pair_strength",
    "pair_caption",
    "prompts_file",
    "rollout_steps",
    "rollout_trajectories",
    "cache_frozen_predictions",
    "data_root",
    "resolution",
    "train_batch_size",
    "latent_sampling",
    "max_sequence_length",
    "rank",
    "lora_alpha",
    "lora_dropout",
    "scope",
    "adapter_name",
    "neutral_objective",
    "neutral_strength",
    "sigma_sampling",
    "logit_mean",
    "logit_std",
    "flow_shift",
    "flux_guidance_value",
    "learning_rate",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler",
    "lr_warmup_steps",
    "gradient_accumulation_steps",
    "mixed_precision",
    "seed",
)
# What a run writes into its output folder (besides `toy/`, the toy run's reusable data and base model).
RUN_OUTPUTS = (
    "train_log.jsonl",
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
    "adapter_config.json",
    "sweep.png",
    "concept_statistic.json",
    "validation",
)
# The options only one mode reads.
MODE_OPTIONS = {
    "pairs": ("pairs", "pair_strength", "pair_caption"),
    "prompts": ("prompts_file", "rollout_steps", "rollout_trajectories", "cache_frozen_predictions"),
}
# Each mode's data option; without it the mode's toy data is used.
DATA_OPTIONS = {"images": "dataloader_config", "pairs": "pairs", "prompts": "prompts_file"}
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# The toy run validates without classifier-free guidance: the tiny base never learnt an unconditional prediction.
TOY_GUIDANCE = {"flux": 1.0, "zimage": 0.0}


class UsageError(ValueError):
    """A bad option or option combination, found before training starts; the command line exits with status 2."""


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (`input_args`, or `sys.argv[1:]` when None)."""
    return build_parser().parse_args(input_args)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    parser = argparse.ArgumentParser(
        description="Train a concept-slider LoRA at each batch's signed strength. No arguments: the toy run."
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A diffusers pipeline (Hub id or folder). Default: a tiny local pipeline of --tiny_family (the toy run).",
    )
    model.add_argument("--revision", type=str, default=None, help="Hub revision of the model.")
    model.add_argument("--variant", type=str, default=None, help="Weight variant of the model, e.g. fp16.")
    model.add_argument(
        "--tiny_family",
        type=str,
        default=TOY_DEFAULTS["tiny_family"],
        choices=sorted(family.name for family in FAMILIES.values()),
        help="Family of the tiny local base when no model is given (default: flux).",
    )
    model.add_argument(
        "--tiny_base_fit_steps",
        type=int,
        default=300,
        help="Steps fitting the tiny base's VAE decoder and denoiser to the dataset before the slider is trained, as "
        "pretraining would (toy run only; default 300).",
    )
    model.add_argument(
        "--assistant_lora",
        type=str,
        default=None,
        help="A LoRA loaded beside the slider as a frozen, always-on assistant (e.g. a training adapter for a "
        "distilled model). It is never scaled by the strength and never trained.",
    )
    model.add_argument("--assistant_adapter_name", type=str, default="assistant")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--mode",
        choices=MODES,
        default="images",
        help="What the slider learns from: signed image buckets (--dataloader_config), prompt sets alone "
        "(--prompts_file) or before/after image pairs (--pairs). Default: images.",
    )
    data.add_argument(
        "--dataloader_config",
        type=str,
        default=None,
        help="--mode images: SimpleTuner-style dataloader JSON with `slider_strength` per backend. Default: the toy "
        "dataset.",
    )
    data.add_argument(
        "--pairs",
        type=str,
        default=None,
        help="--mode pairs: a folder with before/ and after/ (matched by file name), or a JSON/CSV manifest. "
        "Default: the toy pairs.",
    )
    data.add_argument(
        "--pair_strength",
        type=float,
        default=None,
        help="--mode pairs: after trains at +s, before at -s (s > 0; default 1; toy 2).",
    )
    data.add_argument(
        "--pair_caption",
        type=str,
        default=None,
        help="--mode pairs: the caption of pairs without a <name>.txt caption file.",
    )
    data.add_argument(
        "--prompts_file",
        type=str,
        default=None,
        help="--mode prompts: Concept Sliders' prompt YAML, an ai-toolkit slider config, or a peft_slider prompt "
        "file. Default: the toy prompts.",
    )
    data.add_argument(
        "--rollout_steps",
        type=int,
        default=None,
        help="--mode prompts: sampling steps of the base's trajectories the training latents are drawn from "
        "(default 30; toy 8).",
    )
    data.add_argument(
        "--rollout_trajectories",
        type=int,
        default=None,
        help="--mode prompts: trajectories per target prompt, computed once (default 8; toy 4).",
    )
    data.add_argument(
        "--cache_frozen_predictions",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--mode prompts: compute the frozen base's predictions at every pooled latent once, before training, so "
        "a step runs only the trained pass (memory: about 3x the pool's latents, on the CPU). On by default; "
        "--no-cache_frozen_predictions runs the frozen pass at every step instead.",
    )
    data.add_argument(
        "--data_root",
        type=str,
        default=None,
        help="Folder relative `instance_data_dir`s are read from (default: cwd).",
    )
    data.add_argument("--resolution", type=int, default=None, help="Square training resolution in pixels.")
    data.add_argument("--train_batch_size", type=int, default=None, help="Batch size per device (default 1; toy 4).")
    data.add_argument(
        "--latent_sampling",
        choices=("mode", "sample"),
        default="mode",
        help="Train on the VAE posterior's mean ('mode', cached once) or a fresh posterior sample per step.",
    )
    data.add_argument(
        "--max_sequence_length", type=int, default=None, help="Text length for T5/LLM text encoders (family default)."
    )

    slider = parser.add_argument_group("slider")
    slider.add_argument("--rank", type=int, default=None, help="LoRA rank (default 16; toy 8).")
    slider.add_argument("--lora_alpha", type=float, default=None, help="LoRA alpha (default: the rank).")
    slider.add_argument("--lora_dropout", type=float, default=0.0)
    slider.add_argument("--scope", choices=("visual", "joint"), default="visual", help="SliderLoraConfig targeting.")
    slider.add_argument("--adapter_name", type=str, default="slider")
    slider.add_argument(
        "--neutral_objective",
        choices=NEUTRAL_OBJECTIVES,
        default="preserve",
        help="What neutral batches (strength 0 or none) train; see README.md. Default: preserve.",
    )
    slider.add_argument(
        "--neutral_strength",
        type=float,
        default=None,
        help="s_n, the strength neutral batches train at (+s_n / -s_n). Default: mean |strength| of signed backends.",
    )
    slider.add_argument("--concept", type=str, default=None, help="The concept, for the slider's metadata.")
    slider.add_argument(
        "--slider_start",
        type=float,
        default=0.0,
        help="Fraction of denoising run without the slider in validation; recorded in the metadata.",
    )
    slider.add_argument(
        "--recommended_range",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="Recommended inference strengths for the metadata (default: twice the trained range).",
    )
    slider.add_argument("--comfyui", action="store_true", help="Also write a ComfyUI/A1111 file.")

    objective = parser.add_argument_group("objective (flow-matching models)")
    objective.add_argument("--sigma_sampling", choices=("logit_normal", "uniform"), default="logit_normal")
    objective.add_argument("--logit_mean", type=float, default=0.0)
    objective.add_argument("--logit_std", type=float, default=1.0)
    objective.add_argument(
        "--flow_shift", type=float, default=None, help="Timestep shift (default: the scheduler's static shift, or 1)."
    )
    objective.add_argument(
        "--flux_guidance_value", type=float, default=1.0, help="Guidance embedding value while training FLUX.1-dev."
    )

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=None, help="Default 1e-4; toy 5e-3.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=1e-4)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument(
        "--lr_scheduler",
        choices=LR_SCHEDULERS,
        default="constant",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0)
    optim.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer steps (default: --num_train_epochs; toy 600)."
    )
    optim.add_argument("--num_train_epochs", type=int, default=1)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--gradient_checkpointing", action="store_true")
    optim.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    optim.add_argument("--seed", type=int, default=0)

    ckpt = parser.add_argument_group("output and checkpoints")
    ckpt.add_argument("--output_dir", type=str, default="slider-output")
    ckpt.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace a previous run in --output_dir (its checkpoints, log and slider); the toy data and base stay.",
    )
    ckpt.add_argument("--checkpointing_steps", type=int, default=None, help="Save a checkpoint every N steps.")
    ckpt.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most N checkpoints.")
    ckpt.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="'latest', 'latest_intact' (skip broken newer checkpoints) or a checkpoint folder to resume from. The "
        "checkpoint must come from a run with the same options (model, data, slider, objective, optimiser, seed).",
    )
    ckpt.add_argument("--push_to_hub", action="store_true")
    ckpt.add_argument("--hub_model_id", type=str, default=None)
    ckpt.add_argument("--hub_token", type=str, default=None)

    val = parser.add_argument_group("validation")
    val.add_argument(
        "--validation_prompts",
        type=str,
        default=None,
        help="Prompt library JSON (peft_slider.inference.prompts format).",
    )
    val.add_argument(
        "--validation_steps", type=int, default=None, help="Render the sweep every N steps (default: at the end)."
    )
    val.add_argument("--validation_strengths", type=float, nargs="+", default=[-2.0, -1.0, 0.0, 1.0, 2.0])
    val.add_argument("--validation_seed", type=int, default=0)
    val.add_argument("--validation_num_inference_steps", type=int, default=None)
    val.add_argument("--validation_guidance_scale", type=float, default=None)

    log = parser.add_argument_group("logging")
    log.add_argument("--report_to", type=str, default="none", help="none, tensorboard, wandb, ... (accelerate).")
    log.add_argument("--logging_dir", type=str, default="logs")
    verbosity = log.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="Also show debug messages and library notices.")
    verbosity.add_argument("--quiet", action="store_true", help="Show warnings and errors only, no progress bars.")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    """Check every option before anything is built or written; raises `UsageError` naming the option."""
    from peft_slider.formats.metadata import SliderMetadata

    def positive(name: str) -> None:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"`--{name}` must be > 0, got {value!r}.")

    for name in ("train_batch_size", "rank", "learning_rate", "max_train_steps", "resolution", "checkpointing_steps"):
        positive(name)
    for name in ("num_train_epochs", "gradient_accumulation_steps", "validation_steps", "lora_alpha"):
        positive(name)
    for name in ("checkpoints_total_limit", "neutral_strength", "validation_num_inference_steps"):
        positive(name)
    for name in ("pair_strength", "rollout_steps", "rollout_trajectories"):
        positive(name)
    if args.rollout_steps is not None and args.rollout_steps < 2:
        raise UsageError(
            f"`--rollout_steps` must be >= 2 (latents are drawn between the first and last step), got {args.rollout_steps!r}."
        )
    for mode, name in DATA_OPTIONS.items():
        if mode != args.mode and getattr(args, name) is not None:
            raise UsageError(
                f"`--{name}` is the data of --mode {mode}, but this run is --mode {args.mode}: pass "
                f"`--{DATA_OPTIONS[args.mode]}` instead (or --mode {mode})."
            )
    for name in ("tiny_base_fit_steps", "lr_warmup_steps", "lora_dropout", "adam_weight_decay", "max_grad_norm"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"`--{name}` must be >= 0, got {value!r}.")
    if not args.lora_dropout < 1:
        raise UsageError(f"`--lora_dropout` must be < 1, got {args.lora_dropout!r}.")
    if not 0 <= args.slider_start < 1:
        raise UsageError(f"`--slider_start` must be in [0, 1), got {args.slider_start!r}.")
    bad = [s for s in args.validation_strengths if not math.isfinite(s)]
    if bad:
        raise UsageError(f"`--validation_strengths` must be finite numbers, got {args.validation_strengths!r}.")
    for name, value in (("concept", args.concept), ("recommended_range", args.recommended_range)):
        try:
            SliderMetadata(**{name: tuple(value) if isinstance(value, list) else value})
        except ValueError as error:
            raise UsageError(f"`--{name}` {value!r} is not valid: {error}") from None
    if args.push_to_hub:
        if not args.hub_model_id:
            raise UsageError("`--push_to_hub` needs `--hub_model_id owner/name`.")
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.hub_model_id)
        except HFValidationError as error:
            raise UsageError(
                f"`--hub_model_id` {args.hub_model_id!r} is not a repo id like 'you/name': {error}"
            ) from None
    if args.validation_prompts:
        from peft_slider.inference.prompts import load_prompt_library

        try:
            entries = load_prompt_library(args.validation_prompts)
        except (OSError, ValueError) as error:
            raise UsageError(f"`--validation_prompts` {args.validation_prompts!r} cannot be used: {error}") from None
        for entry in entries:
            entry_strength(entry, args.adapter_name)
    if args.dataloader_config and not Path(args.dataloader_config).is_file():
        raise UsageError(
            f"`--dataloader_config` {args.dataloader_config!r} is not a file; give the path of the dataloader JSON."
        )
    if args.prompts_file and not Path(args.prompts_file).is_file():
        raise UsageError(f"`--prompts_file` {args.prompts_file!r} is not a file; give the path of the prompt file.")
    if args.pairs and not Path(args.pairs).exists():
        raise UsageError(f"`--pairs` {args.pairs!r} does not exist; give a pairs folder or a JSON/CSV manifest.")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise UsageError(f"`--data_root` {args.data_root!r} is not a folder.")
    if args.resume_from_checkpoint and args.overwrite_output_dir:
        raise UsageError(
            "`--resume_from_checkpoint` and `--overwrite_output_dir` contradict each other: resume the run in "
            "--output_dir, or replace it."
        )


@contextlib.contextmanager
def _usage(option: str, value: Any, *errors: type[Exception]):
    """Report a bad value found while setting up (a ValueError, or `errors`) as a `UsageError` naming the option."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, *errors) as error:
        raise UsageError(f"`{option}` {value!r}: {error}") from error


def run_identity(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide what the run trains, as the user gave them (`RUN_OPTIONS`); stored in checkpoints.

    A mode's own options count only in that mode, and `--mode images` is recorded as no `mode` at all: an images
    run's identity is what it was before the modes existed, so its older checkpoints still resume.
    """
    unused = {name for mode, names in MODE_OPTIONS.items() if mode != args.mode for name in names}
    if args.mode == "images":
        unused.add("mode")
    return {name: getattr(args, name) for name in RUN_OPTIONS if name not in unused}


def _check_output_dir(args: argparse.Namespace, run: dict[str, Any]) -> None:
    """Refuse to start a new run into a folder holding another run's results, unless told to replace them."""
    output_dir = Path(args.output_dir)
    folders = checkpoint_folders(output_dir)
    outputs = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    if args.resume_from_checkpoint and (folders or args.resume_from_checkpoint not in LATEST):
        # Checked here, before the toy data or base could be rebuilt for other options, and again when loading.
        try:
            check_run(*resolve_checkpoint(args.resume_from_checkpoint, output_dir), run)
        except CheckpointError as error:
            raise UsageError(str(error)) from None
        return
    if not folders and not outputs:
        return
    if args.overwrite_output_dir:
        return
    found = [p.name for p in folders] + outputs
    what = "a previous run"
    if folders:
        try:
            differences = run_differences(read_state(folders[-1])["run"], run)
            what = "another run" if differences else "a previous run with the same options"
            what += f" ({'; '.join(differences)})" if differences else ""
        except CheckpointError:
            pass
    if folders:
        ways = "Continue it with `--resume_from_checkpoint latest`, replace it with `--overwrite_output_dir`"
    else:
        ways = "It has no checkpoint to resume: replace it with `--overwrite_output_dir`"
    raise UsageError(
        f"`--output_dir` {str(output_dir)!r} holds {what}: {', '.join(found[:6])}. {ways}, or choose a new "
        "`--output_dir`."
    )


def _clear_output_dir(output_dir: Path) -> None:
    """`--overwrite_output_dir`: remove the previous run's checkpoints and outputs (not `toy/`, not other files)."""
    for path in [*checkpoint_folders(output_dir), *(output_dir / name for name in RUN_OUTPUTS)]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options: the toy values for the toy run, the real-model values otherwise."""
    args = argparse.Namespace(**vars(args))
    args.toy_model = args.pretrained_model_name_or_path is None
    args.toy_data = getattr(args, DATA_OPTIONS[args.mode]) is None
    defaults = TOY_DEFAULTS if args.toy_model else REAL_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    if args.toy_data and args.resolution is None:
        args.resolution = TOY_DEFAULTS["resolution"]
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Training state, checkpoints


class TrainState:
    """The loop's position, saved in every checkpoint's `training_state.json`.

    `sampler` is the `SliderBatchSampler`; its state is saved with the exact number of batches the loop consumed, so
    a resumed run trains exactly the batches that were still due, in the same order and at the same strengths.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.global_step = 0
        self.batches_in_iteration = 0  # batches consumed since the sampler's current iteration began
        self.iteration_start = 0  # the epoch step that iteration began at

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "sampler": self.sampler.state_dict(batches_consumed=self.batches_in_iteration),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.global_step = int(state["global_step"])
        self.iteration_start = int(state["sampler"]["step"])
        self.batches_in_iteration = 0


# ---------------------------------------------------------------------------------------------------------------------
# Validation


def _validation_call_kwargs(args: argparse.Namespace, family: Family) -> dict[str, Any]:
    kwargs = {"num_inference_steps": args.validation_num_inference_steps, **family.call_kwargs(args)}
    if args.resolution is not None:
        kwargs["height"] = kwargs["width"] = args.resolution
    guidance = args.validation_guidance_scale
    if guidance is None and args.toy_model:
        guidance = TOY_GUIDANCE.get(family.name, 1.0)
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    return kwargs


def entry_strength(entry: Any, adapter_name: str) -> float | None:
    """A prompt library entry's own `adapter_strength` for the slider being trained, or None (sweep it).

    Raises `UsageError` for a composed strength naming adapters this run does not train.
    """
    strength = entry.strength
    if isinstance(strength, dict):
        if set(strength) != {adapter_name}:
            raise UsageError(
                f"`--validation_prompts` entry {entry.name!r} has `adapter_strength` {strength!r}, but this run trains "
                f"one slider, {adapter_name!r}: give a number, or {{{adapter_name!r}: value}}."
            )
        strength = strength[adapter_name]
    return None if strength is None else float(strength)


@torch.no_grad()
def render_sweep(pipe: Any, family: Family, args: argparse.Namespace, path: Path, *, title: str) -> Path | None:
    """A grid of the validation prompts (rows) at the validation strengths (columns), through the pipeline mixin.

    An entry with its own `adapter_strength` is rendered at that strength and at 0 (the base) only; its strength
    becomes a column of the grid and its other cells stay grey. The PNG is written whole or not at all.
    """
    if not args.validation_prompts:
        return None
    from PIL import Image
    from tqdm.auto import tqdm

    from peft_slider.inference.grid import format_strength, save_sweep_grid
    from peft_slider.inference.pipeline import enable_sliders
    from peft_slider.inference.prompts import load_prompt_library
    from peft_slider.training.adapters import activate_adapters

    entries = load_prompt_library(args.validation_prompts)
    own = [entry_strength(entry, args.adapter_name) for entry in entries]
    columns = list(args.validation_strengths)
    if any(strength is not None for strength in own):
        columns = sorted({*columns, 0.0, *(s for s in own if s is not None)})
    enable_sliders(pipe)
    denoiser = getattr(pipe, family.denoiser)
    was_training = denoiser.training
    denoiser.eval()
    # The assistant is a training aid (e.g. de-distillation for a turbo model): the slider is judged without it.
    if args.assistant_lora:
        activate_adapters(denoiser, slider=args.adapter_name, frozen=[])
    rows = []
    try:
        for entry, strength in tqdm(
            list(zip(entries, own)), desc=f"validation sweep ({title})", leave=False, disable=args.quiet
        ):
            wanted = columns if strength is None else sorted({0.0, strength})
            images = pipe.sweep(
                entry.prompt,
                wanted,
                adapter_names=[args.adapter_name],
                seed=entry.seed if entry.seed is not None else args.validation_seed,
                slider_start=args.slider_start,
                **_validation_call_kwargs(args, family),
            )
            rows.append(
                images if strength is None else [images[wanted.index(c)] if c in wanted else None for c in columns]
            )
    finally:
        if args.assistant_lora:
            activate_adapters(denoiser, slider=args.adapter_name, frozen=[args.assistant_adapter_name])
        denoiser.train(was_training)
    size = next(image for row in rows for image in row if image is not None).size
    blank = Image.new("RGB", size, (220, 220, 220))
    rows = [[blank if image is None else image for image in row] for row in rows]
    partial = path.with_name(f".{path.stem}.partial.png")
    written = save_sweep_grid(
        rows,
        partial,
        row_labels=[
            f"{entry.name}: {entry.prompt}" if entry.name != entry.prompt else entry.name for entry in entries
        ],
        column_labels=[format_strength(s) for s in columns],
        title=title,
        cell_size=128,
        font_size=14,
    )
    final = path.with_suffix(".png")
    os.replace(written, final)
    return final


# ---------------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class TrainResult:
    """What `main` returns: where things were written and how far training got."""

    output_dir: Path
    global_step: int
    slider_files: dict[str, Path]
    sweep_image: Path | None
    concept_statistic: dict[str, dict[float, float]] | None
    base_model: str
    pipeline: Any = None


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    # Noise and timesteps depend only on the position, so a resumed run draws what an uninterrupted one would.
    return hash((seed, epoch, step, rank)) % (2**63)


TOY_OPTIONS_FILE = "toy_options.json"


def _toy_folder_is_current(folder: Path, options: dict[str, Any]) -> bool:
    """A toy folder is reused only if a complete build with the same options is there."""
    try:
        return json.loads((folder / TOY_OPTIONS_FILE).read_text(encoding="utf-8")) == options
    except (OSError, json.JSONDecodeError):
        return False


def _build_toy_folder(folder: Path, options: dict[str, Any], build) -> None:
    """Build into a staging folder with `build(staging)`, record the options, and rename it into place."""
    staging = stage_folder(folder)
    build(staging)
    (staging / TOY_OPTIONS_FILE).write_text(json.dumps(options) + "\n", encoding="utf-8")
    commit_folder(staging, folder)


def _prepare_toy(args: argparse.Namespace, accelerator) -> None:
    """Write the toy dataset and/or the tiny base (main process), and point `args` at them.

    Both are reused by later runs in the same output folder when they were built with the same options, and rebuilt
    otherwise; each is built in a staging folder and renamed into place, so a kill never leaves half of one.
    """
    import toy

    toy_dir = Path(args.output_dir).resolve() / "toy"
    args.toy_config = None
    # The toy images also fit the tiny base of a pairs or prompts run that brings its own data.
    if args.toy_data or (args.toy_model and args.mode != "images"):
        data = toy_dir / "data"
        mode = args.mode if args.toy_data else "images"
        options = {"resolution": args.resolution, "seed": args.seed, "mode": mode}
        if accelerator.is_main_process and not _toy_folder_is_current(data, options):
            logger.info("Toy run: writing the synthetic lighting dataset (%s mode) to %s", mode, data)
            _build_toy_folder(
                data,
                options,
                lambda staging: toy.write_toy_dataset(
                    staging, resolution=args.resolution, seed=args.seed, data_dir=data, mode=mode
                ),
            )
        args.toy_config = str(data / "multidatabackend.json")
    if args.toy_data:
        if args.mode == "images":
            args.dataloader_config = args.toy_config
        elif args.mode == "pairs":
            args.pairs = str(data / "pairs")
        else:
            args.prompts_file = str(data / "prompts.yaml")
        if args.validation_prompts is None:
            args.validation_prompts = str(data / "prompt_library.json")
        if args.concept is None:
            args.concept = toy.CONCEPT
    if args.toy_model:
        base = toy_dir / f"tiny-{args.tiny_family}-base"
        fit_config = args.toy_config or args.dataloader_config
        options = {
            "family": args.tiny_family,
            "fit_steps": args.tiny_base_fit_steps,
            "resolution": args.resolution or 32,
            "seed": args.seed,
            "data": None if args.toy_config else args.dataloader_config,
            "captions": "prompts" if args.toy_data and args.mode == "prompts" else "shared",
        }
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and not _toy_folder_is_current(base, options):
            logger.info(
                "Toy run: building a tiny %s pipeline, fitting its VAE decoder and denoiser to the dataset for %d "
                "steps, saving it to %s",
                args.tiny_family,
                args.tiny_base_fit_steps,
                base,
            )
            _build_toy_folder(
                base,
                options,
                lambda staging: toy.build_toy_base(
                    args.tiny_family,
                    staging,
                    dataloader_config=fit_config,
                    fit_steps=args.tiny_base_fit_steps,
                    resolution=args.resolution or 32,
                    seed=args.seed,
                    progress=not args.quiet,
                ),
            )
        args.pretrained_model_name_or_path = str(base)
    accelerator.wait_for_everyone()


def _dtype_keyword() -> str:
    """The name of `from_pretrained`'s dtype argument: `dtype` from diffusers 0.40 on (`torch_dtype` is deprecated
    there), `torch_dtype` before (the oldest diffusers setup.cfg allows, 0.39, knows only that one)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__) >= Version("0.40") else "torch_dtype"


class SliderTraining:
    """One training run: setup in `__init__`, then `train()` and `save()`. `main` runs all three."""

    # For the modes (modes.py): a bad value found while loading data is a usage error naming the option.
    usage = staticmethod(_usage)
    usage_error = UsageError

    def __init__(self, args: argparse.Namespace, accelerator, *, run: dict[str, Any] | None = None):
        self.args = args
        self.accelerator = accelerator
        self.run = run_identity(args) if run is None else run
        self.output_dir = Path(args.output_dir)
        self.device = accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            accelerator.mixed_precision, torch.float32
        )
        self._load_pipeline()
        self._add_slider()
        self._load_data()
        self._prepare_optimization()
        try:  # the metadata's checks, before the first step rather than after the last
            self.metadata()
        except ValueError as error:
            raise UsageError(f"The slider's metadata options are not valid: {error}") from None

    # ------------------------------------------------------------------------------------------------------- setup

    def _load_pipeline(self) -> None:
        from diffusers import DiffusionPipeline

        args = self.args
        # The real loading path, also for the toy run's tiny base.
        with _usage("--pretrained_model_name_or_path", args.pretrained_model_name_or_path, OSError):
            pipe = DiffusionPipeline.from_pretrained(
                args.pretrained_model_name_or_path,
                **{_dtype_keyword(): self.weight_dtype},
                revision=args.revision,
                variant=args.variant,
            )
        with _usage("--pretrained_model_name_or_path", args.pretrained_model_name_or_path):
            self.family = family_of(pipe)
        if args.max_sequence_length is None:
            args.max_sequence_length = self.family.max_sequence_length
            if args.toy_model and self.family.max_sequence_length is not None:
                from peft_slider.testing import tiny_call_kwargs

                args.max_sequence_length = tiny_call_kwargs(args.tiny_family)["max_sequence_length"]
        pipe.set_progress_bar_config(disable=True)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        pipe.to(self.device)
        self.pipe = pipe
        self.denoiser = getattr(pipe, self.family.denoiser)

    def _add_slider(self) -> None:
        from peft_slider import SliderLoraConfig
        from peft_slider.formats import add_assistant_adapter
        from peft_slider.training import SliderScaler, activate_adapters

        args, denoiser = self.args, self.denoiser
        config = SliderLoraConfig(
            r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, scope=args.scope, model=denoiser
        )
        denoiser.add_adapter(config, adapter_name=args.adapter_name)
        if args.assistant_lora:
            # Frozen and always on; the scaler below scales only the slider, so the assistant keeps its scale.
            with _usage("--assistant_lora", args.assistant_lora, OSError):
                add_assistant_adapter(
                    denoiser,
                    args.assistant_lora,
                    adapter_name=args.assistant_adapter_name,
                    prefix=self.family.denoiser,
                )
            activate_adapters(denoiser, slider=args.adapter_name, frozen=[args.assistant_adapter_name])
        self.params = [p for p in denoiser.parameters() if p.requires_grad]
        for param in self.params:
            param.data = param.data.float()  # trainable weights stay float32 under mixed precision
        if args.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        denoiser.train()
        self.scaler = SliderScaler(denoiser, adapter_names=args.adapter_name)

    def _load_data(self) -> None:
        from peft_slider.training import SliderBatchSampler, is_flow_matching_scheduler, objective_from_scheduler

        args, accelerator = self.args, self.accelerator
        options = {}
        if is_flow_matching_scheduler(self.pipe.scheduler):
            options = {
                "sigma_sampling": args.sigma_sampling,
                "logit_mean": args.logit_mean,
                "logit_std": args.logit_std,
            }
            if args.flow_shift is not None:
                options["shift"] = args.flow_shift
        self.objective = objective_from_scheduler(self.pipe.scheduler, **options)
        self.mode = MODE_CLASSES[args.mode](self)
        self.backends, self.cache = self.mode.load()
        # Sharded by rank: at every step all ranks train the same backend (the same strength) on disjoint samples.
        self.sampler = SliderBatchSampler(
            self.backends,
            batch_size=args.train_batch_size,
            seed=args.seed,
            num_replicas=accelerator.num_processes,
            rank=accelerator.process_index,
        )
        self.loader = DataLoader(self.cache, batch_sampler=self.sampler, collate_fn=collate, num_workers=0)
        with _usage("--neutral_strength", args.neutral_strength):
            self.neutral = NeutralObjective(
                args.neutral_objective, strength=args.neutral_strength, backends=self.backends
            )
        logger.info("Mode: %s; objective: %r; neutral batches: %r", args.mode, self.objective, self.neutral)

    def _prepare_optimization(self) -> None:
        from diffusers.optimization import get_scheduler

        args, accelerator = self.args, self.accelerator
        trainable = sum(1 for info in self.sampler.plan() if self.neutral.step(info.slider_strength).train)
        if trainable == 0:
            raise UsageError(
                "No batch of the dataset trains the slider: every backend is neutral and --neutral_objective is "
                "'skip'. Give backends a `slider_strength` (> 0 and < 0) or choose another neutral objective."
            )
        updates_per_epoch = math.ceil(trainable / args.gradient_accumulation_steps)
        self.max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
        optimizer = torch.optim.AdamW(
            self.params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        # A prepared LR scheduler steps once per process per update, hence the factor.
        lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=self.max_train_steps * accelerator.num_processes,
        )
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(self.denoiser, optimizer, lr_scheduler)
        self.state = TrainState(self.sampler)
        self.gain = None  # moving average of base_loss - loss over signed batches, shown on the progress bar
        self.checkpoint_parts = CheckpointParts(
            run=self.run,
            adapter_state=self._adapter_state,
            load_adapter=self._load_adapter,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            train_state=self.state,
            grad_scaler=accelerator.scaler,
        )
        if accelerator.is_main_process and args.report_to != "none":
            config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("train_slider", config=config)

    # ------------------------------------------------------------------------------------------------------- training

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        return get_peft_model_state_dict(self.denoiser, adapter_name=self.args.adapter_name)

    def _load_adapter(self, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(self.denoiser, state, adapter_name=self.args.adapter_name)

    def resume(self) -> int | None:
        """Load `--resume_from_checkpoint`; returns the epoch to continue, or None for a fresh start.

        The whole checkpoint is checked (files, run identity, adapter keys and shapes) before anything is loaded.
        """
        if not self.args.resume_from_checkpoint:
            return None
        try:
            found = resolve_checkpoint(self.args.resume_from_checkpoint, self.output_dir)
            if found is None:
                logger.info("No checkpoint in %s; starting a new run.", self.output_dir)
                return None
            path, state = found
            index = self.accelerator.process_index
            adapter = check_checkpoint(path, state, self.run, self._adapter_state(), index)
        except CheckpointError as error:
            raise UsageError(str(error)) from None
        logger.info("Resuming from %s (step %d)", path, state["step"])
        load_checkpoint(self.checkpoint_parts, path, state, adapter, index)
        return self.sampler.epoch

    def save_checkpoint(self, step: int) -> Path:
        accelerator = self.accelerator
        return save_checkpoint(
            self.checkpoint_parts,
            self.output_dir,
            step,
            limit=self.args.checkpoints_total_limit,
            is_main_process=accelerator.is_main_process,
            process_index=accelerator.process_index,
            wait=accelerator.wait_for_everyone,
        )

    def train_step(
        self, batch: dict[str, Any], step_plan: Any, seed: int, *, measure_base: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step of the mode's loss (inside `accelerator.accumulate`); the noise, timesteps and rollout
        draws come from `seed`, so a resumed run repeats them exactly.

        Returns the loss and, with `measure_base`, the frozen base model's loss on the same batch and target.
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        loss, base_loss = self.mode.loss(batch, step_plan, generator, measure_base=measure_base)
        if self.accelerator.sync_gradients and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.params, self.args.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, base_loss

    def train(self) -> None:
        from tqdm.auto import tqdm

        from peft_slider.training import batch_strength

        args, accelerator, state, sampler = self.args, self.accelerator, self.state, self.sampler
        resume_epoch = self.resume()
        self._start_log()
        progress = tqdm(
            range(self.max_train_steps),
            initial=state.global_step,
            desc="train slider",
            disable=args.quiet or not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        epoch = resume_epoch if resume_epoch is not None else 0
        while state.global_step < self.max_train_steps:
            sampler.set_epoch(epoch)  # keeps a loaded resume point for the same epoch
            if epoch != resume_epoch:
                state.iteration_start = 0
            resume_epoch = None
            state.batches_in_iteration = 0
            plan = sampler.plan()
            # Neutral batches alternate +s_n / -s_n by their rank among the epoch's neutral batches, so a resumed
            # run alternates exactly as an uninterrupted one.
            neutral_index, seen = [], 0
            for info in plan:
                neutral_index.append(seen)
                seen += info.group == "neutral"
            trained = 0
            for batch in self.loader:
                step_in_epoch = state.iteration_start + state.batches_in_iteration
                info = plan[step_in_epoch]
                strength = batch_strength(batch)
                if strength != info.slider_strength:
                    raise RuntimeError(
                        f"Batch {step_in_epoch} of epoch {epoch} carries strength {strength}, but the sampler planned "
                        f"{info.slider_strength} (backend {info.backend!r}): the dataset and sampler are out of step."
                    )
                step_plan = self.neutral.step(strength, neutral_index=neutral_index[step_in_epoch])
                state.batches_in_iteration += 1
                if not step_plan.train:
                    continue
                trained += 1
                with accelerator.accumulate(self.model):
                    seed = _step_seed(args.seed, epoch, step_in_epoch, accelerator.process_index)
                    signed = info.group != "neutral"
                    loss, base_loss = self.train_step(batch, step_plan, seed, measure_base=signed)
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                losses = torch.stack([loss, loss if base_loss is None else base_loss]).reshape(1, 2)
                loss_value, base_value = accelerator.gather(losses).mean(0).tolist()
                base_value = base_value if base_loss is not None else None
                if base_value is not None:
                    gain = base_value - loss_value
                    self.gain = gain if self.gain is None else 0.95 * self.gain + 0.05 * gain
                progress.update(1)
                postfix = {"loss": f"{loss_value:.4f}", "strength": f"{step_plan.strength:+.2f}"}
                if self.gain is not None:
                    postfix["gain"] = f"{self.gain:+.4f}"
                progress.set_postfix(postfix)
                self._log(epoch, step_in_epoch, info, strength, step_plan, loss_value, base_value)
                self._after_step(state.global_step)
                if state.global_step >= self.max_train_steps:
                    break
            if state.global_step < self.max_train_steps and trained == 0 and state.iteration_start == 0:
                raise RuntimeError(f"Epoch {epoch} trained no batch; check the backends and --neutral_objective.")
            epoch += 1
        progress.close()

    def _start_log(self) -> None:
        """A fresh run starts a fresh log; a resumed run keeps the records up to its checkpoint."""
        path = self.output_dir / "train_log.jsonl"
        if not self.accelerator.is_main_process or not path.is_file():
            return
        kept = []
        if self.state.global_step > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if record["step"] <= self.state.global_step:
                    kept.append(line)
        write_text_atomic(path, "".join(line + "\n" for line in kept))

    def _log(
        self, epoch: int, step_in_epoch: int, info, strength: float, step_plan, loss: float, base_loss: float | None
    ) -> None:
        step = self.state.global_step
        if self.args.report_to != "none":
            lr = self.lr_scheduler.get_last_lr()[0]
            values = {"loss": loss, "strength": step_plan.strength, "lr": lr}
            if base_loss is not None:
                values["slider_gain"] = base_loss - loss
            self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            record = {
                "step": step,
                "epoch": epoch,
                "batch": step_in_epoch,
                "backend": info.backend,
                "batch_strength": strength,
                "trained_strength": step_plan.strength,
                "target": step_plan.target,
                "loss": loss,
                # The frozen base's loss on the same batch (signed backends only): base_loss - loss is what the
                # slider at this strength has learnt.
                "base_loss": base_loss,
            }
            with open(self.output_dir / "train_log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def _after_step(self, step: int) -> None:
        args = self.args
        if args.checkpointing_steps and step % args.checkpointing_steps == 0 and step < self.max_train_steps:
            self.save_checkpoint(step)
        if args.validation_steps and step % args.validation_steps == 0 and self.accelerator.is_main_process:
            path = self.output_dir / "validation" / f"step-{step:06d}.png"
            title = f"{args.concept or 'slider'} - {self.family.name}, step {step}"
            with self.accelerator.autocast():  # frozen weights in fp16/bf16, the slider's in float32
                render_sweep(self.pipe, self.family, args, path, title=title)

    # ------------------------------------------------------------------------------------------------------- output

    def metadata(self):
        from peft_slider.formats import SliderMetadata

        args, backends = self.args, self.backends
        # A paired backend (image pairs, mirrored prompt sets) trains its strength and its negative.
        strengths = sorted(
            {b.strength for b in backends if b.strength != 0} | {-b.strength for b in backends if b.paired}
        )
        if self.neutral.mode in ("preserve", "match_base") and any(b.strength == 0 for b in backends):
            strengths += [self.neutral.strength, -self.neutral.strength]
        low, high = min(strengths), max(strengths)
        reach = max(abs(low), abs(high))
        return SliderMetadata(
            concept=args.concept,
            base_model=args.pretrained_model_name_or_path,
            architecture=type(self.denoiser).__name__,
            scope=args.scope,
            trained_strengths=(low, high),
            recommended_range=tuple(args.recommended_range) if args.recommended_range else (-2 * reach, 2 * reach),
            slider_start=args.slider_start or None,
        )

    def save(self) -> TrainResult:
        """The final checkpoint, the slider (diffusers + PEFT formats, with metadata), the sweep image, the hub.

        The slider files, the sweep and the statistic are written into a staging folder and moved into the output
        folder only when all of them are complete, so a failure leaves the previous files (if any) as they were.
        """
        from peft_slider.formats.writers import save_slider

        args, accelerator = self.args, self.accelerator
        accelerator.wait_for_everyone()
        result = TrainResult(
            self.output_dir, self.state.global_step, {}, None, None, args.pretrained_model_name_or_path, self.pipe
        )
        if args.checkpointing_steps:
            self.save_checkpoint(self.state.global_step)
        if accelerator.is_main_process:
            metadata = self.metadata()
            self.denoiser.eval()
            staging = stage_folder(self.output_dir / "slider")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                slider_files = save_slider(
                    self.pipe, staging, adapter_name=args.adapter_name, metadata=metadata, comfyui=args.comfyui
                )
            for warning in caught:
                # A local base model is the usual case here (the toy run's, a downloaded folder): what the slider
                # records instead is information, not a problem; anything else stays a warning.
                level = (
                    logging.INFO if "is a local path; the slider records" in str(warning.message) else logging.WARNING
                )
                logger.log(level, "%s", warning.message)
            title = f"{args.concept or 'slider'} - {self.family.name}, step {self.state.global_step}"
            with accelerator.autocast():  # frozen weights in fp16/bf16, the slider's in float32
                sweep = render_sweep(self.pipe, self.family, args, staging / "sweep.png", title=title)
                if args.toy_data and args.toy_config:
                    result.concept_statistic = _toy_statistic(self.pipe, args, self.family, staging)
            moved = commit_files(staging, self.output_dir)
            result.slider_files = {kind: moved[path.name] for kind, path in slider_files.items()}
            result.sweep_image = moved[sweep.name] if sweep is not None else None
            if args.push_to_hub:
                _push(self.output_dir, result, metadata, args)
            names = ", ".join(p.name for p in result.slider_files.values())
            logger.info("Slider saved to %s (%s)", self.output_dir, names)
        accelerator.wait_for_everyone()
        return result


class _TqdmHandler(logging.StreamHandler):
    """Log lines written with `tqdm.write`, so they never cut through a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_output(args: argparse.Namespace):
    """Our messages at the chosen level through tqdm; libraries' notices and load/save bars only with --verbose.

    Returns a function that restores the libraries' settings (the trainer may run inside a longer Python process).
    """
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    propagate, level = logger.propagate, logger.level
    logger.propagate = False
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    saved = [
        (module, module.get_verbosity(), module.is_progress_bar_enabled())
        for module in (diffusers_logging, transformers_logging)
    ]
    if not args.verbose:
        for module, _, _ in saved:
            # Loading and saving the tiny base takes milliseconds; their bars and notices (e.g. transformers'
            # "requires torchvision" on every run) only hide the trainer's own output.
            module.set_verbosity_error()
            module.disable_progress_bar()

    def restore() -> None:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level
        for module, verbosity, bars in saved:
            module.set_verbosity(verbosity)
            (module.enable_progress_bar if bars else module.disable_progress_bar)()

    return restore


def main(args: argparse.Namespace | None = None) -> TrainResult:
    """Run training as the command line (or `args` from `parse_args([...])`) says; returns a `TrainResult`.

    Raises `UsageError` (a `ValueError`) for bad options, before the first training step.
    """
    args = _resolve_defaults(parse_args([]) if args is None else args)
    _check_args(args)
    run_options = run_identity(args)
    restore_output = _configure_output(args)
    try:
        return _run(args, run_options)
    finally:
        restore_output()


def _run(args: argparse.Namespace, run_options: dict[str, Any]) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"Launched as {world_size} processes (WORLD_SIZE={world_size}), but accelerate runs each as a single "
            "process, so they would all train alone into the same folder. Without GPUs, set ACCELERATE_USE_CPU=1 "
            "(torchrun on CPU uses gloo); with GPUs use `accelerate launch --multi_gpu --num_processes N`."
        )
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    level = logging.INFO if accelerator.num_processes > 1 else logging.DEBUG
    logger.log(level, "Processes: %d (%s)", accelerator.num_processes, accelerator.distributed_type)
    set_seed(args.seed)
    threads = torch.get_num_threads()
    if args.toy_model and "OMP_NUM_THREADS" not in os.environ and accelerator.device.type == "cpu":
        # The toy models are so small that threads only add synchronisation, and on a busy machine they wait on
        # each other: one thread is several times faster. OMP_NUM_THREADS overrides this.
        torch.set_num_threads(1)
    holder = contextlib.ExitStack()
    try:
        if accelerator.is_main_process:
            # Before anything in the folder is touched: a second run into it would clean away this one's staging.
            holder.enter_context(hold_output_dir(output_dir))
            clean_staging(output_dir)
        accelerator.wait_for_everyone()
        _check_output_dir(args, run_options)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if args.overwrite_output_dir:
                _clear_output_dir(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
        if args.toy_model or args.toy_data:
            _prepare_toy(args, accelerator)
        run = SliderTraining(args, accelerator, run=run_options)
        run.train()
        return run.save()
    finally:
        holder.close()
        accelerator.end_training()
        torch.set_num_threads(threads)


@contextlib.contextmanager
def hold_output_dir(output_dir: Path):
    """Hold `output_dir` for this run: another run into the same folder at the same time stops with a `UsageError`.

    An OS lock (`flock`) on the folder itself, so nothing is left in it, and the OS releases it when the process
    ends, also when it is killed: a crashed run never leaves the folder locked. Where the OS has no `fcntl` (Windows),
    nothing is held.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(output_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"`--output_dir` {str(output_dir)!r} is in use by another training run right now. Wait for it to end, "
                "or choose another `--output_dir`."
            ) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _toy_statistic(pipe: Any, args: argparse.Namespace, family: Family, folder: Path) -> dict[str, dict[float, float]]:
    """Print the toy concept's statistics at each validation strength and save them to `folder`."""
    import toy

    direction = toy.concept_direction(pipe, args.toy_config, resolution=args.resolution)
    kwargs = _validation_call_kwargs(args, family)
    strengths = args.validation_strengths
    progress = not args.quiet
    latents = toy.sweep_outputs(pipe, strengths, adapter_names=args.adapter_name, progress=progress, **kwargs)
    images = toy.sweep_outputs(
        pipe, strengths, adapter_names=args.adapter_name, output_type="pt", progress=progress, **kwargs
    )
    table = {
        "latent_projection": dict(zip(strengths, toy.concept_statistic(latents, direction))),
        "right_minus_left_brightness": dict(zip(strengths, toy.lighting_statistic(images))),
    }
    print(f"Concept '{args.concept}' per strength (mean over {len(toy.DEFAULT_SEEDS)} seeds):")
    print("  strength   latent projection   right-left brightness")
    for strength in strengths:
        projection = table["latent_projection"][strength]
        brightness = table["right_minus_left_brightness"][strength]
        print(f"  {strength:+8.1f}   {projection:+17.3f}   {brightness:+21.3f}")
    for name, values in table.items():
        trend = "increases" if toy.is_increasing(list(values.values())) else "does NOT increase"
        print(f"  {name} {trend} monotonically with strength")
    path = folder / "concept_statistic.json"
    saved = {name: {str(k): v for k, v in values.items()} for name, values in table.items()}
    path.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
    return table


def _push(output_dir: Path, result: TrainResult, metadata, args: argparse.Namespace) -> None:
    """Upload only the slider files, the sweep image and a model card (not checkpoints or the toy data)."""
    from peft_slider.formats import push_slider_to_hub, write_model_card

    with tempfile.TemporaryDirectory() as staging:
        for path in result.slider_files.values():
            shutil.copy2(path, Path(staging) / path.name)
        config = output_dir / "adapter_config.json"
        if config.is_file():
            shutil.copy2(config, Path(staging) / config.name)
        write_model_card(staging, metadata, grid_image=result.sweep_image, repo_id=args.hub_model_id)
        url = push_slider_to_hub(staging, args.hub_model_id, token=args.hub_token)
    logger.info("Pushed to %s", url)


def cli(input_args: list[str] | None = None) -> None:
    """The command line: a usage error prints the usage and the message, and exits with status 2 (as argparse)."""
    parser = build_parser()
    args = parser.parse_args(input_args)
    try:
        main(args)
    except UsageError as error:
        parser.error(str(error))


if __name__ == "__main__":
    cli()
