# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for examples/train_slider: the trainer on tiny real pipelines of every supported family.

- Each family's glue calls the denoiser exactly as the family's own pipeline does.
- A 2-step smoke run per family writes the slider, checkpoints, validation grids and logs; resuming from the
  step-1 checkpoint reproduces the uninterrupted run; the saved slider loads through `pipe.load_lora_weights` at the
  trained scale (with lora_alpha != rank) and changes the output.
- Resume mid-epoch and across an epoch boundary trains exactly the batches still due, at the same strengths.
- A frozen assistant adapter keeps its weights and its scale at every training forward pass.
- The neutral objectives run in the trainer; an unsupported family fails naming the supported ones.
- The direction test: after the default toy run, the loaded slider moves the concept's statistics monotonically with
  strength -2..2 (fixed seeds), and strength 0 is bitwise the base pipeline.
- A real 2-process gloo run (torchrun) trains the planned strengths.
- Nothing is lost: a kill or a failing writer during a save leaves the previous checkpoint and files intact; a new
  run never mixes with an older one in the same folder; a corrupt, incomplete or foreign checkpoint is refused before
  anything loads; resume never unpickles; every option is checked before the first step (exit status 2 on the
  command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, capture_denoiser_inputs, save_tiny_pipeline
from peft_slider.training.objectives import NoisyBatch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_slider"
sys.path.insert(0, str(EXAMPLE))

import families  # noqa: E402
import toy  # noqa: E402
import train_slider  # noqa: E402

FAMILIES = ["sd15", "sdxl", "flux", "sd3", "zimage"]
# Fast settings: no fitting of the tiny base, short validation.
QUICK = [
    "--tiny_base_fit_steps",
    "0",
    "--validation_strengths",
    "-1",
    "0",
    "1",
    "--validation_num_inference_steps",
    "2",
]
# Calls without classifier-free guidance, so the denoiser sees the batch the trainer gives it.
NO_CFG = {"sd15": 1.0, "sdxl": 1.0, "flux": 3.5, "sd3": 1.0, "zimage": 0.0}


@pytest.fixture(autouse=True)
def one_thread_fresh_accelerate():
    from accelerate.state import AcceleratorState

    # Tiny models: one thread is fastest, and much faster on a busy shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Accelerate keeps one process-wide state (mixed precision included); each run here is a fresh process's run.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


def run(output_dir: Path, *arguments: str) -> train_slider.TrainResult:
    return train_slider.main(train_slider.parse_args(["--output_dir", str(output_dir), *QUICK, *arguments]))


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def lora_state(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "adapter_model.safetensors")


def resume_copy(source: Path, target: Path, checkpoint: str) -> None:
    """What an interrupted run leaves behind: its toy data and base, and one checkpoint."""
    target.mkdir()
    shutil.copytree(source / "toy", target / "toy")
    shutil.copytree(source / checkpoint, target / checkpoint)


# ---------------------------------------------------------------------------------------------------------------------
# The family glue


@pytest.mark.parametrize("family_name", FAMILIES)
def test_family_glue_calls_the_denoiser_like_the_pipeline(family_name):
    pipe = build_tiny_pipeline(family_name)
    family = families.family_of(pipe)
    denoiser = getattr(pipe, family.denoiser)
    prompt = "a photo of a room"
    call = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": NO_CFG[family_name]}
    max_length = 16 if family.max_sequence_length else None
    if max_length:
        call["max_sequence_length"] = max_length
    inputs = capture_denoiser_inputs(pipe, prompt, generator=torch.Generator().manual_seed(0), **call)
    with torch.no_grad():
        expected = denoiser(**inputs)[0]
        cond = family.encode_prompts(pipe, [prompt], torch.device("cpu"), max_length)
    options = train_slider.parse_args(["--flux_guidance_value", str(NO_CFG["flux"])])
    # The pipeline's noisy latents and noise level, in the objective's terms.
    if family_name in ("sd15", "sdxl"):
        noisy, timesteps = inputs["sample"], inputs["timestep"].reshape(1)
        sigmas = torch.zeros(1)
    elif family_name == "flux":
        noisy = family.output_latents(pipe, inputs["hidden_states"], 32, 32)
        sigmas = inputs["timestep"].float()
        timesteps = sigmas * 1000
        expected = family.output_latents(pipe, expected, 32, 32)
    elif family_name == "sd3":
        noisy, timesteps = inputs["hidden_states"], inputs["timestep"].float()
        sigmas = timesteps / 1000
    else:  # zimage: list inputs with a frame axis, t = 1 - sigma, output negated by the pipeline
        noisy = torch.stack(inputs["x"]).squeeze(2)
        sigmas = 1 - inputs["t"].float()
        timesteps = sigmas * 1000
        expected = -torch.stack(expected).squeeze(2)
    batch = NoisyBatch(noisy, noisy, noisy, timesteps, sigmas)
    with torch.no_grad():
        got = family.predict(pipe, denoiser, batch, cond, options)
    assert got.shape == noisy.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # float32; Z-Image's 1 - (1 - t) rounds


def test_unsupported_family_fails_naming_the_supported_ones(tmp_path):
    base = save_tiny_pipeline("chroma", tmp_path / "chroma")
    with pytest.raises(ValueError, match=r"does not support ChromaPipeline\. Supported pipelines: .*FluxPipeline"):
        run(tmp_path / "out", "--pretrained_model_name_or_path", str(base), "--max_train_steps", "1")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "is not a checkpoint folder"),
        (["--rank", "0"], "`--rank` must be > 0"),
        (["--slider_start", "1.5"], "slider_start"),
        (["--push_to_hub"], "hub_model_id"),
    ],
)
def test_bad_options_fail_clearly(tmp_path, arguments, match):
    with pytest.raises(ValueError, match=match):
        run(tmp_path, "--max_train_steps", "1", *arguments)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["--recommended_range", "2", "-2"], "recommended_range"),
        (["--concept", " "], "concept"),
        (["--tiny_family", "chroma"], "--tiny_family: invalid choice: 'chroma'"),
        (["--lr_scheduler", "cosine_typo"], "--lr_scheduler: invalid choice"),
        (["--validation_prompts", "/no/such/prompts.json"], "--validation_prompts"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "is not a checkpoint folder"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
        (["--pretrained_model_name_or_path", "/no/such/model"], "`--pretrained_model_name_or_path` '/no/such/model'"),
        (["--dataloader_config", "/no/such/data.json"], "`--dataloader_config` '/no/such/data.json'"),
        (["--mode", "text"], "--mode: invalid choice: 'text'"),
        (["--mode", "pairs", "--dataloader_config", "x.json"], "`--dataloader_config` is the data of --mode images"),
        (
            ["--prompts_file", "p.yaml"],
            "`--prompts_file` is the data of --mode prompts, but this run is --mode images",
        ),
        (["--mode", "prompts", "--prompts_file", "/no/such.yaml"], "`--prompts_file` '/no/such.yaml' is not a file"),
        (["--mode", "pairs", "--pairs", "/no/such/pairs"], "`--pairs` '/no/such/pairs' does not exist"),
        (["--mode", "pairs", "--pair_strength", "-1"], "`--pair_strength` must be > 0"),
        (["--mode", "prompts", "--rollout_steps", "1"], "`--rollout_steps` must be >= 2"),
    ],
)
def test_bad_options_exit_2_before_the_first_step(tmp_path, capsys, arguments, match):
    # The command line: argparse's usage line and the message, status 2, no traceback, and nothing trained.
    with pytest.raises(SystemExit) as exit_info:
        train_slider.cli(["--output_dir", str(tmp_path), *QUICK, "--max_train_steps", "1", *arguments])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error and match in error and "Traceback" not in error
    assert not (tmp_path / "train_log.jsonl").exists() and not list(tmp_path.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# Smoke run, resume and reload, per family


@pytest.mark.parametrize("family_name", FAMILIES)
def test_two_step_smoke_run_resumes_and_saves_a_loadable_slider(tmp_path, family_name):
    common = ["--tiny_family", family_name, "--max_train_steps", "2", "--rank", "4", "--lora_alpha", "8"]
    first = tmp_path / "first"
    result = run(first, *common, "--checkpointing_steps", "1", "--validation_steps", "2")
    assert result.global_step == 2
    for name in (
        "pytorch_lora_weights.safetensors",
        "adapter_model.safetensors",
        "adapter_config.json",
        "sweep.png",
        "validation/step-000002.png",
        "checkpoint-1/slider_adapter.safetensors",
        "checkpoint-1/optimizer.safetensors",
        "checkpoint-1/training_state.json",
        "checkpoint-2/slider_adapter.safetensors",
        "concept_statistic.json",
    ):
        assert (first / name).is_file(), name
    records = log_records(first)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["batch_strength"] for r in records] == [1.0, -1.0]  # positive, then negative

    # Resume from the step-1 checkpoint: step 2 is trained as in the uninterrupted run.
    second = tmp_path / "second"
    resume_copy(first, second, "checkpoint-1")
    run(second, *common, "--resume_from_checkpoint", "latest")
    assert [(r["step"], r["backend"], r["trained_strength"]) for r in log_records(second)] == [
        (r["step"], r["backend"], r["trained_strength"]) for r in records[1:]
    ]
    expected = lora_state(first)
    for key, value in lora_state(second).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)  # same ops, same order

    # The saved slider loads through diffusers at the trained scale (alpha 8 / rank 4) and changes the output.
    trained = result.pipeline
    family = families.family_of(trained)
    base = first / "toy" / f"tiny-{family_name}-base"
    fresh = DiffusionPipeline.from_pretrained(base)
    call = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": NO_CFG[family_name]}
    if family.max_sequence_length:
        call["max_sequence_length"] = 16
    inputs = capture_denoiser_inputs(fresh, "a photo of a room", generator=torch.Generator().manual_seed(0), **call)
    with torch.no_grad():
        before = getattr(fresh, family.denoiser)(**inputs)[0]
        fresh.load_lora_weights(first)
        loaded = getattr(fresh, family.denoiser)(**inputs)[0]
        reference = getattr(trained, family.denoiser)(**inputs)[0]
    if family_name == "zimage":
        before, loaded, reference = (torch.stack(x) for x in (before, loaded, reference))
    torch.testing.assert_close(loaded, reference, rtol=1e-5, atol=1e-6)
    assert (loaded - before).abs().max() > 1e-6


def test_resume_mid_epoch_and_across_epochs_matches_the_uninterrupted_run(tmp_path):
    # 6 steps per epoch (3 backends x 2 batches of 4); the run stops after step 5 and resumes for steps 6-8, which
    # cross into epoch 1 and include a neutral batch at -s_n.
    common = ["--max_train_steps", "8", "--checkpointing_steps", "5", "--validation_prompts", ""]
    straight = tmp_path / "straight"
    run(straight, *common)
    resumed = tmp_path / "resumed"
    resume_copy(straight, resumed, "checkpoint-5")
    run(resumed, *common, "--resume_from_checkpoint", "latest")

    full, tail = log_records(straight), log_records(resumed)
    # An images run records no mode and no other mode's options: its identity is what it was before the modes were
    # added, so older checkpoints resume.
    identity = json.loads((straight / "checkpoint-5" / "training_state.json").read_text())["run"]
    added = {"mode", *(name for names in train_slider.MODE_OPTIONS.values() for name in names)}
    assert set(identity) == set(train_slider.RUN_OPTIONS) - added
    assert [r["step"] for r in tail] == [6, 7, 8]
    keys = ("step", "epoch", "batch", "backend", "batch_strength", "trained_strength")
    assert [[r[k] for k in keys] for r in tail] == [[r[k] for k in keys] for r in full[5:]]
    assert {r["epoch"] for r in tail} == {0, 1}
    neutral = [r["trained_strength"] for r in full if r["backend"] == "evenly_lit"]
    assert neutral[:2] == [1.0, -1.0]  # preserve alternates +s_n / -s_n
    for got, want in zip(tail, full[5:]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    expected = lora_state(straight)
    for key, value in lora_state(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Assistant adapter and neutral objectives


def _save_assistant(folder: Path) -> dict[str, torch.Tensor]:
    """A random LoRA for the tiny FLUX.1 transformer, saved as diffusers saves LoRAs; returns its PEFT weights."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline("flux")
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_v", "proj_out"], init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="assistant")
    weights = get_peft_model_state_dict(pipe.transformer, adapter_name="assistant")
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=weights, transformer_lora_adapter_metadata=config.to_dict()
    )
    return {key: value.clone() for key, value in weights.items()}


def test_assistant_adapter_is_never_scaled_or_trained(tmp_path, monkeypatch):
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    saved = _save_assistant(tmp_path / "assistant")
    # Record, at every forward pass of training, the scales of one layer that carries both adapters.
    seen = []
    original = families.FAMILIES["FluxPipeline"]

    def recording_predict(pipe, denoiser, batch, cond, options):
        layer = next(
            m
            for m in pipe.transformer.modules()
            if isinstance(m, LoraLayer) and {"slider", "assistant"} <= set(m.scaling)
        )
        seen.append((layer.scaling["slider"], layer.scaling["assistant"]))
        return original.predict(pipe, denoiser, batch, cond, options)

    monkeypatch.setitem(families.FAMILIES, "FluxPipeline", dataclasses.replace(original, predict=recording_predict))
    result = run(
        tmp_path / "out",
        "--max_train_steps",
        "3",
        "--rank",
        "4",
        "--lora_alpha",
        "4",
        "--neutral_objective",
        "match_base",
        "--assistant_lora",
        str(tmp_path / "assistant"),
        "--validation_steps",
        "2",
    )
    # Training forward passes: the base's loss (at 0) then +1, the same then -1, then a neutral batch (base target at
    # 0, then +1).
    assert [slider for slider, _ in seen] == [0.0, 1.0, 0.0, -1.0, 0.0, 1.0]
    assert {assistant for _, assistant in seen} == {3.0}  # lora_alpha / r = 6 / 2 at every pass
    transformer = result.pipeline.transformer
    after = get_peft_model_state_dict(transformer, adapter_name="assistant")
    assert after.keys() == saved.keys()
    for key, value in after.items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    assistant_params = [p for n, p in transformer.named_parameters() if ".assistant." in n]
    assert assistant_params and not any(p.requires_grad for p in assistant_params)
    # Only the slider is exported.
    slider_keys = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors").keys()
    slider_weights = get_peft_model_state_dict(transformer, adapter_name="slider")
    assert len(slider_keys) == len(slider_weights) and any(v.abs().sum() > 0 for v in slider_weights.values())


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # (backend, trained strength, target) of steps 1-4
        ("preserve", [("lit_from_right", 1.0, "data"), ("lit_from_left", -1.0, "data"), ("evenly_lit", 1.0, "data")]),
        (
            "match_base",
            [("lit_from_right", 1.0, "data"), ("lit_from_left", -1.0, "data"), ("evenly_lit", 1.0, "base")],
        ),
        ("skip", [("lit_from_right", 1.0, "data"), ("lit_from_left", -1.0, "data"), ("lit_from_right", 1.0, "data")]),
        ("zero", [("lit_from_right", 1.0, "data"), ("lit_from_left", -1.0, "data"), ("evenly_lit", 0.0, "data")]),
    ],
)
def test_neutral_objectives_in_the_trainer(tmp_path, mode, expected):
    arguments = ["--max_train_steps", "3", "--neutral_objective", mode, "--validation_prompts", ""]
    if mode == "zero":
        with pytest.warns(UserWarning, match="gradient is exactly zero"):
            run(tmp_path, *arguments)
    else:
        run(tmp_path, *arguments)
    assert [(r["backend"], r["trained_strength"], r["target"]) for r in log_records(tmp_path)] == expected


@pytest.mark.parametrize("mode", ["images", "prompts", "pairs"])
def test_training_options_run_together(tmp_path, mode):
    # Posterior sampling, gradient accumulation, gradient checkpointing (backward inside the strength context) and
    # bf16 autocast with float32 slider weights, in every mode.
    result = run(
        tmp_path,
        "--mode",
        mode,
        "--max_train_steps",
        "2",
        "--latent_sampling",
        "sample",
        "--gradient_accumulation_steps",
        "2",
        "--gradient_checkpointing",
        "--mixed_precision",
        "bf16",
        "--lr_scheduler",
        "cosine",
        "--lr_warmup_steps",
        "1",
    )
    records = log_records(tmp_path)
    # Two batches per optimizer step: the images mode has 6 batches per epoch, the pairs mode 2, the prompts mode 1.
    expected = {"images": [(1, 0, 1), (2, 0, 3)], "pairs": [(1, 0, 1), (2, 1, 1)], "prompts": [(1, 1, 0), (2, 3, 0)]}
    assert [(r["step"], r["epoch"], r["batch"]) for r in records] == expected[mode]
    slider_params = [p for n, p in result.pipeline.transformer.named_parameters() if ".slider." in n]
    assert slider_params and all(p.dtype == torch.float32 and p.requires_grad for p in slider_params)
    assert result.pipeline.transformer.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------------
# The slider learns a signed direction


def test_default_run_learns_a_signed_monotonic_direction(tmp_path, monkeypatch):
    # The README's main job exactly: no arguments (tiny FLUX.1 base fitted to the toy data, 600 steps).
    monkeypatch.chdir(tmp_path)
    result = train_slider.main(train_slider.parse_args([]))
    output = tmp_path / "slider-output"
    assert result.output_dir.resolve() == output
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    base_folder = output / "toy" / "tiny-flux-base"
    config = output / "toy" / "data" / "multidatabackend.json"
    call = {"num_inference_steps": 8, "guidance_scale": 1.0, "max_sequence_length": 16}

    base = DiffusionPipeline.from_pretrained(base_folder)
    base.set_progress_bar_config(disable=True)
    base_latents = toy.sweep_outputs(base, [0.0], **call)[0]

    slider = DiffusionPipeline.from_pretrained(base_folder)
    slider.set_progress_bar_config(disable=True)
    slider.load_lora_weights(output)  # the saved slider, through diffusers' loader
    latents = toy.sweep_outputs(slider, strengths, **call)
    images = toy.sweep_outputs(slider, strengths, output_type="pt", **call)

    # Strength 0 is the base model, bit for bit.
    torch.testing.assert_close(latents[2], base_latents, rtol=0, atol=0)
    # Positive strengths move toward the positive bucket (light from the right), negative toward the negative one.
    direction = toy.concept_direction(slider, config)
    projection = toy.concept_statistic(latents, direction)
    brightness = toy.lighting_statistic(images)
    assert toy.is_increasing(projection), projection
    assert toy.is_increasing(brightness), brightness
    # The trainer's own report agrees with what the reloaded slider does.
    assert toy.is_increasing(list(result.concept_statistic["latent_projection"].values()))
    for got, want in zip(projection, result.concept_statistic["latent_projection"].values()):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)

    # The example README's Python blocks run on this output.
    readme = (EXAMPLE / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for index, block in enumerate(blocks):
        exec(compile(block, f"examples/train_slider/README.md python block {index}", "exec"), {})


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and pairs modes


@pytest.mark.parametrize("mode", ["prompts", "pairs"])
def test_mode_learns_a_signed_monotonic_direction(tmp_path, mode):
    # The README's command for the mode: the toy data of the mode, the tiny FLUX.1 base fitted to it, defaults.
    result = train_slider.main(train_slider.parse_args(["--mode", mode, "--output_dir", str(tmp_path)]))
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    call = {"num_inference_steps": 8, "guidance_scale": 1.0, "max_sequence_length": 16}
    base = DiffusionPipeline.from_pretrained(tmp_path / "toy" / "tiny-flux-base")
    base.set_progress_bar_config(disable=True)
    base_latents = toy.sweep_outputs(base, [0.0], **call)[0]
    base.load_lora_weights(tmp_path)
    latents = toy.sweep_outputs(base, strengths, **call)
    images = toy.sweep_outputs(base, strengths, output_type="pt", **call)

    torch.testing.assert_close(latents[2], base_latents, rtol=0, atol=0)  # strength 0 is the base, bit for bit
    direction = toy.concept_direction(base, tmp_path / "toy" / "data" / "multidatabackend.json")
    projection = toy.concept_statistic(latents, direction)
    brightness = toy.lighting_statistic(images)
    assert toy.is_increasing(projection), projection
    assert toy.is_increasing(brightness), brightness
    for got, want in zip(projection, result.concept_statistic["latent_projection"].values()):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert (tmp_path / "sweep.png").is_file()
    records = log_records(tmp_path)
    # Each step trains +s and -s in one pass; the toy modes train at +/-2, so the sweep -2..2 stays in the trained range.
    assert {r["trained_strength"] for r in records} == {2.0}
    assert records[-1]["loss"] < records[-1]["base_loss"]


@pytest.mark.parametrize("mode", ["prompts", "pairs"])
def test_mode_resumes_bit_for_bit(tmp_path, mode):
    common = ["--mode", mode, "--max_train_steps", "6", "--checkpointing_steps", "3", "--validation_prompts", ""]
    straight = tmp_path / "straight"
    run(straight, *common)
    resumed = tmp_path / "resumed"
    resume_copy(straight, resumed, "checkpoint-3")
    run(resumed, *common, "--resume_from_checkpoint", "latest")
    full, tail = log_records(straight), log_records(resumed)
    # The run's identity holds the mode and its own options only.
    identity = json.loads((straight / "checkpoint-3" / "training_state.json").read_text())["run"]
    other = {"pairs": "prompts", "prompts": "pairs"}[mode]
    assert identity["mode"] == mode and not set(train_slider.MODE_OPTIONS[other]) & set(identity)
    assert set(train_slider.MODE_OPTIONS[mode]) <= set(identity)
    assert [r["step"] for r in tail] == [4, 5, 6]
    assert [r["loss"] for r in tail] == [r["loss"] for r in full[3:]]
    expected = lora_state(straight)
    for key, value in lora_state(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_cached_frozen_predictions_give_the_same_losses(tmp_path):
    # By default the frozen base's predictions at the pooled latents are computed once, before training; without the
    # cache a frozen pass runs every step. The draws are the same, so each step's loss and base loss match.
    arguments = ["--mode", "prompts", "--max_train_steps", "3", "--validation_prompts", ""]
    run(tmp_path / "plain", *arguments, "--no-cache_frozen_predictions")
    run(tmp_path / "cached", *arguments)
    plain, cached = ([(r["loss"], r["base_loss"]) for r in log_records(tmp_path / n)] for n in ("plain", "cached"))
    assert len(plain) == len(cached) == 3
    # The frozen predictions come from differently composed batches: float32 rounding only.
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-4, atol=1e-7)
    assert len({loss for loss, _ in plain}) == 3  # the slider trains: not one repeated value


def test_prompts_mode_reads_a_bad_prompt_file_as_a_usage_error(tmp_path, capsys):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("- target: a photo of a room\n  positive: a room\n  unconditional: a street\n  colour: red\n")
    with pytest.raises(SystemExit) as exit_info:
        train_slider.cli(
            ["--output_dir", str(tmp_path / "out"), *QUICK, "--mode", "prompts", "--prompts_file", str(prompts)]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "prompts.yaml" in error and "colour" in error and "Traceback" not in error


# ---------------------------------------------------------------------------------------------------------------------
# Two processes


@pytest.mark.parametrize("mode", ["images", "prompts", "pairs"])
def test_two_process_gloo_run_trains_the_planned_strengths(tmp_path, mode):
    from peft_slider.training.data import SliderConcatDataset, load_simpletuner_backends
    from peft_slider.training.sampler import SliderBatchSampler

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(EXAMPLE / "train_slider.py"),
        "--output_dir",
        str(tmp_path),
        "--mode",
        mode,
        "--max_train_steps",
        "4",
        "--validation_prompts",
        "",
        *QUICK,
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Processes: 2" in completed.stderr
    records = log_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    if mode != "images":
        # One paired backend: every step trains +s and -s together, on each rank's own share of it.
        strength = 2.0
        assert {(r["backend"], r["trained_strength"]) for r in records} == {(records[0]["backend"], strength)}
        return
    # Per step, both ranks train one backend; a global batch of 2 x 4 empties an 8-image backend in one step.
    backends = SliderConcatDataset(load_simpletuner_backends(tmp_path / "toy" / "data" / "multidatabackend.json"))
    sampler = SliderBatchSampler(backends.backends, batch_size=4, seed=0, num_replicas=2, rank=0)
    planned = []
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        planned += [(epoch, info.backend) for info in sampler.plan()]
    assert [(r["epoch"], r["backend"]) for r in records] == planned[:4]


# ---------------------------------------------------------------------------------------------------------------------
# Nothing lost: faults during saves, reused folders, broken and foreign checkpoints, pickles

# Three steps, a checkpoint after each, at most one kept.
FAULT_RUN = ["--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "1"]
FAULT_RUN += ["--validation_prompts", ""]
# Runs the trainer with safetensors' writer replaced: it writes the file, then the process kills itself, when the
# file's path matches a pattern.
KILLING_WRITER = """
import os, re, signal, sys
import safetensors.torch
sys.path.insert(0, sys.argv[1])
import train_slider
original = safetensors.torch.save_file
def save_file(tensors, filename, *args, **kwargs):
    original(tensors, filename, *args, **kwargs)
    if re.search(sys.argv[2], str(filename)):
        os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = save_file
train_slider.main(train_slider.parse_args(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    ("fault", "pattern", "checkpoints_left"),
    [
        # (how the save fails, the file being written when it fails, the checkpoints the failure must leave)
        ("kill", r"checkpoint-2[^/]*/slider_adapter", ["checkpoint-1"]),
        ("disk full", r"checkpoint-2[^/]*/slider_adapter", ["checkpoint-1"]),
        ("disk full", r"adapter_model\.safetensors", ["checkpoint-3"]),  # the final slider, after checkpoint-3
    ],
)
def test_a_failed_save_loses_nothing(tmp_path, monkeypatch, fault, pattern, checkpoints_left):
    import safetensors.torch

    straight = tmp_path / "straight"
    run(straight, *FAULT_RUN)
    output = tmp_path / "faulty"
    if fault == "kill":
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-c", KILLING_WRITER, str(EXAMPLE), pattern, "--output_dir", str(output)]
        completed = subprocess.run([*command, *QUICK, *FAULT_RUN], env=env, capture_output=True, timeout=300)
        assert completed.returncode == -9, completed.stderr.decode()[-3000:]
    else:
        original = safetensors.torch.save_file

        def failing_writer(tensors, filename, *args, **kwargs):
            if re.search(pattern, str(filename)):
                raise OSError(28, "No space left on device", str(filename))
            return original(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(safetensors.torch, "save_file", failing_writer)
        with pytest.raises(OSError, match="No space left"):
            run(output, *FAULT_RUN)
        monkeypatch.undo()
    # The newest complete checkpoint survives, nothing half-written sits in its place, no half slider is written.
    assert sorted(p.name for p in output.glob("checkpoint-*")) == checkpoints_left
    for name in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "adapter_config.json"):
        assert not (output / name).exists(), name
    # Resuming finishes the run exactly as the uninterrupted one.
    run(output, *FAULT_RUN, "--resume_from_checkpoint", "latest")
    assert [p.name for p in output.glob(".*")] == []
    assert [r["step"] for r in log_records(output)] == [1, 2, 3]
    expected = lora_state(straight)
    for key, value in lora_state(output).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)  # same ops, same order


TWO_STEPS = ["--max_train_steps", "2", "--checkpointing_steps", "1", "--validation_prompts", ""]


@pytest.mark.parametrize(
    ("second", "match"),
    [
        # (the second run's options in the first run's folder, the error; None: it runs)
        ([], r"holds a previous run with the same options: checkpoint-1, checkpoint-2, train_log.jsonl"),
        (["--seed", "1"], r"holds another run \(`--seed` 0 in the checkpoint, 1 now\).*--overwrite_output_dir"),
        (["--seed", "1", "--resume_from_checkpoint", "latest"], r"belongs to another run: `--seed` 0 .*, 1 now"),
        (["--rank", "4", "--resume_from_checkpoint", "latest"], r"belongs to another run: `--lora_alpha` .*`--rank`"),
        (["--seed", "1", "--overwrite_output_dir", "--max_train_steps", "1"], None),
    ],
)
def test_a_new_run_never_mixes_with_an_older_one(tmp_path, second, match):
    run(tmp_path, *TWO_STEPS)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    if match is not None:
        with pytest.raises(ValueError, match=match):
            run(tmp_path, *TWO_STEPS, *second)
        after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        assert after == before  # nothing of the first run changed
        return
    run(tmp_path, *TWO_STEPS, *second)
    # The older run is replaced, not mixed in: its checkpoints and log records are gone.
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1"]
    assert [r["step"] for r in log_records(tmp_path)] == [1]
    # The toy data and base were rebuilt for the new seed, not reused from the older run.
    for folder in ("data", "tiny-flux-base"):
        assert json.loads((tmp_path / "toy" / folder / "toy_options.json").read_text())["seed"] == 1


def _rewrite_adapter(checkpoint: Path, change) -> None:
    """Rewrite a checkpoint's slider weights with `change(tensors)`, keeping its own file list's hash consistent."""
    import hashlib

    from safetensors.torch import save_file

    path = checkpoint / "slider_adapter.safetensors"
    tensors = change(load_file(path))
    save_file(tensors, path)
    state_file = checkpoint / "training_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        state["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        state_file.write_text(json.dumps(state))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "options", "match"),
    [
        # (what happened to checkpoint-3, the resuming run's options, the error)
        (lambda c: _truncate(c / "slider_adapter.safetensors"), [], r"checkpoint-3' is corrupt.*checkpoint-2"),
        (lambda c: (c / "slider_adapter.safetensors").unlink(), [], r"checkpoint-3' is incomplete.*checkpoint-2"),
        (
            lambda c: _rewrite_adapter(c, lambda t: dict(list(t.items())[1:])),
            [],
            r"does not fit this slider: missing adapter keys \['",
        ),
        (None, ["--seed", "7"], r"belongs to another run: `--seed` 0 in the checkpoint, 7 now"),
        (None, ["--neutral_objective", "match_base"], r"`--neutral_objective` 'preserve' in the checkpoint"),
        (None, ["--scope", "joint"], r"`--scope` 'visual' in the checkpoint, 'joint' now"),
    ],
)
def test_a_broken_or_foreign_checkpoint_is_refused(tmp_path, damage, options, match):
    arguments = ["--max_train_steps", "4", "--checkpointing_steps", "1", "--validation_prompts", ""]
    run(tmp_path, *arguments[:1], "3", *arguments[2:])
    if damage is not None:
        damage(tmp_path / "checkpoint-3")
    log = (tmp_path / "train_log.jsonl").read_text()
    with pytest.raises(ValueError, match=match):
        run(tmp_path, *arguments, *options, "--resume_from_checkpoint", "latest")
    assert (tmp_path / "train_log.jsonl").read_text() == log  # refused before anything was trained or truncated


def test_latest_intact_resumes_before_a_broken_checkpoint_and_matches_the_uninterrupted_run(tmp_path, capfd):
    arguments = ["--max_train_steps", "4", "--checkpointing_steps", "1", "--validation_prompts", ""]
    straight = tmp_path / "straight"
    run(straight, *arguments)
    broken = tmp_path / "broken"
    run(broken, *arguments[:1], "3", *arguments[2:])
    _truncate(broken / "checkpoint-3" / "slider_adapter.safetensors")
    capfd.readouterr()
    run(broken, *arguments, "--resume_from_checkpoint", "latest_intact")
    error = capfd.readouterr().err
    assert "WARNING" in error and "checkpoint-3' is corrupt" in error and "checkpoint-2 instead" in error
    assert [r["step"] for r in log_records(broken)] == [1, 2, 3, 4]
    assert sorted(p.name for p in broken.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (1, 2, 3, 4)]
    expected = lora_state(straight)
    for key, value in lora_state(broken).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)  # same ops, same order


class _Bomb:
    """Unpickling this creates the file `path`: what a crafted checkpoint could do with any code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_second_run_into_a_folder_in_use_stops_clearly(tmp_path):
    # Two runs into one folder at once: the second would clean away the first one's staging folders. It stops before
    # touching anything; the OS lock goes with the first run (also when that run is killed).
    output = tmp_path / "out"
    with train_slider.hold_output_dir(output):
        (
            output / ".slider.partial"
        ).mkdir()  # the first run's staging of its slider files, mid-save (a cleanup would remove it)
        with pytest.raises(ValueError, match="is in use by another training run right now"):
            run(output, "--max_train_steps", "1", "--validation_prompts", "")
        assert (output / ".slider.partial").is_dir() and not (output / "train_log.jsonl").exists()
    (output / ".slider.partial").rmdir()
    run(output, "--max_train_steps", "1", "--validation_prompts", "")  # free again once the first run has ended
    assert (output / "train_log.jsonl").is_file()


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"])
def test_resume_never_unpickles(tmp_path, name):
    # Every pickle accelerate's save_state writes, replaced by one that runs code when loaded.
    run(tmp_path, *TWO_STEPS)
    marker = tmp_path / "code-ran"
    torch.save(_Bomb(marker), tmp_path / "checkpoint-2" / name)
    try:
        run(tmp_path, *TWO_STEPS[:1], "3", *TWO_STEPS[2:], "--resume_from_checkpoint", "latest")
    except Exception:  # refusing the checkpoint is fine; running its code is not
        pass
    assert not marker.exists()
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------------
# Validation and output


def test_validation_renders_an_entrys_own_adapter_strength(tmp_path):
    from PIL import Image

    library = tmp_path / "prompts.json"
    fixed = {"prompt": "a photo of a room", "adapter_strength": 1.5}
    library.write_text(json.dumps({"swept": "a photo of a street", "fixed": fixed}))
    run(tmp_path / "out", "--max_train_steps", "1", "--validation_prompts", str(library))
    grid = Image.open(tmp_path / "out" / "sweep.png")
    labels = json.loads(grid.text["peft_slider"])
    # The entry's strength is a column; the swept row fills every column, the fixed row only 0 and +1.5.
    assert labels["columns"] == ["-1", "0", "+1", "+1.5"]
    assert labels["rows"] == ["swept: a photo of a street", "fixed: a photo of a room"]
    assert labels["title"] == "light from the right - flux, step 1"
    assert grid.width >= 4 * 128 and grid.height >= 2 * 128  # 32 px samples shown at 128 px


@pytest.mark.parametrize(
    ("option", "shown", "hidden"),
    [
        # (verbosity option, what stderr must show, what it must not)
        (None, ["INFO Toy run: building", "train slider: 100%", "gain="], ["Warning", "torchvision", "Traceback"]),
        ("--quiet", [], ["INFO", "train slider", "Warning", "torchvision", "Traceback"]),
    ],
)
def test_command_line_output_is_readable(tmp_path, option, shown, hidden):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(EXAMPLE / "train_slider.py"), "--output_dir", str(tmp_path), *QUICK]
    command += ["--max_train_steps", "2", *([option] if option else [])]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for text in shown:
        assert text in completed.stderr, completed.stderr[-3000:]
    for text in hidden:
        assert text not in completed.stderr, completed.stderr[-3000:]
    assert "increases monotonically" in completed.stdout or "does NOT increase" in completed.stdout
