# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Cost of a text-prompt slider training step against an image slider step on the same model, same trained samples.

One UNet carries one slider LoRA (`SliderLoraConfig` targets, rank 16) and one AdamW optimizer. Two kinds of step are
timed on it, interleaved (A B, B A, ...) so that drift in the machine's speed hits both alike:

- image: cached latents of a batch of 4, noised (`EpsilonObjective.add_noise`), forward at `+s` inside
  `SliderScaler.at`, MSE against the noise, backward, optimizer step, zero_grad: the image slider's step.
- text: `RolloutPool.draw` for 2 prompt samples, then `prompt_slider_loss` with mirrored prompt sets: one frozen
  no-grad pass of 3 x 2 rows (neutral = target, positive, negative) and one trained pass of 4 rows (each sample at
  `+s` and `-s`, per-sample strengths), backward inside the block, optimizer step, zero_grad.

- text, cached: the same step with the frozen predictions cached in the pool (`RolloutPool.cache_predictions`,
  `draw_cached`, `prompt_slider_loss(..., frozen=...)`): the trained pass only.

Both train 4 samples per step; the text step adds the frozen pass (6 rows, no grad) and the pool draw, the cached one
the pool draw and the copy of its 6 cached rows. The pool is built once before timing (its build time is reported
beside: 2 prompts x 4 trajectories x 20 DDIM steps), and then its cache (2 x 4 x 19 latents x 3 prompts, with its
size); a live rollout, as Concept Sliders does, would add up to 20 forward passes per step instead.

The models are bench_train_step.py's (`build_unet`): the tiny SD 1.5 UNet at 8x8 latents and the mid-size one
(64/128/256 channels) at 16x16, whose step time is the model's, not Python's.

Usage:
    python benchmarks/bench_text_slider_step.py            # tiny and mid, 40 timed steps each
    python benchmarks/bench_text_slider_step.py --quick    # tiny only, 15 steps
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import build_unet, median_us, time_interleaved  # noqa: E402

from peft_slider import SliderLoraConfig  # noqa: E402
from peft_slider.training import (  # noqa: E402
    EpsilonObjective,
    PromptSet,
    RolloutPool,
    SliderScaler,
    prompt_slider_loss,
)

RANK = 16
TRAINED = 4  # samples trained per step, either kind
PROMPTS = ("a person", "a person, smiling", "a person, frowning", "a car", "a car, red", "a car, blue")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="Timed steps per kind, per model (after warm-up).")
    parser.add_argument("--warmup", type=int, default=4, help="Untimed steps per kind first.")
    parser.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--rollout_steps", type=int, default=20, help="Sampling steps of the pooled trajectories.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is the least noisy).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model only, 15 steps.")
    args = parser.parse_args(input_args)
    if args.quick:
        args.steps, args.warmup, args.models = 15, 2, ["tiny"]
    return args


def measure(size: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    unet, latent_shape, text_shape, scheduler = build_unet(size)
    unet.requires_grad_(False)
    unet.add_adapter(SliderLoraConfig(r=RANK, lora_alpha=RANK, model=unet), adapter_name="slider")
    unet.to(device).train()
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    objective = EpsilonObjective.from_scheduler(scheduler)
    scaler = SliderScaler(unet)

    def predict(batch, cond):
        return unet(batch.noisy, batch.timesteps, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]

    generator = torch.Generator().manual_seed(0)
    embeddings = {p: {"prompt_embeds": torch.randn(text_shape, generator=generator).to(device)} for p in PROMPTS}
    latents = torch.randn((64, *latent_shape), generator=generator)
    image_text = torch.randn((64, *text_shape), generator=generator)

    start = time.perf_counter()
    pool = RolloutPool.build(
        predict,
        objective,
        scaler,
        embeddings,
        ["a person", "a car"],
        trajectories_per_prompt=4,
        num_steps=args.rollout_steps,
        latent_shape=latent_shape,
        seed=0,
        device=device,
        dtype=torch.float32,
    )
    build_time = time.perf_counter() - start
    sets = [
        PromptSet("a person", "a person, smiling", "a person, frowning", guidance_scale=2.0),
        PromptSet("a car", "a car, red", "a car, blue", action="erase"),
    ]
    start = time.perf_counter()
    pool.cache_predictions(predict, scaler, embeddings, sets)
    if device.type == "cuda":
        torch.cuda.synchronize()
    cache_time = time.perf_counter() - start
    draw_generator = torch.Generator().manual_seed(1)
    cached_generator = torch.Generator().manual_seed(1)
    noise_generator = torch.Generator(device=device).manual_seed(2)
    batch_index = iter(range(10**9))

    def finish():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def image_step():
        rows = [(next(batch_index) * TRAINED + i) % len(latents) for i in range(TRAINED)]
        noisy = objective.add_noise(latents[rows].to(device), generator=noise_generator)
        with scaler.at(1.0):
            prediction = predict(noisy, {"prompt_embeds": image_text[rows].to(device)})
            objective.loss(prediction, noisy.target).backward()
        finish()

    def text_step():
        noisy = pool.draw([s.target for s in sets], generator=draw_generator)
        prompt_slider_loss(predict, scaler, noisy, sets, embeddings, backward=lambda loss: loss.backward())
        finish()

    def cached_text_step():
        noisy, frozen = pool.draw_cached([s.target for s in sets], generator=cached_generator)
        prompt_slider_loss(
            predict, scaler, noisy, sets, embeddings, frozen=frozen, backward=lambda loss: loss.backward()
        )
        finish()

    times = time_interleaved(
        {"image": image_step, "text": text_step, "cached": cached_text_step}, steps=args.steps, warmup=args.warmup
    )

    # The pieces of the text step alone: the pool draw and the frozen pass.
    def draw():
        pool.draw([s.target for s in sets], generator=draw_generator)

    frozen_noisy = pool.draw([s.target for s in sets] * 3, generator=draw_generator)
    frozen_cond = {"prompt_embeds": torch.stack([embeddings[p]["prompt_embeds"] for p in PROMPTS])}

    def frozen_pass():
        with torch.no_grad(), scaler.at(0.0):
            predict(frozen_noisy, frozen_cond)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return {
        "size": size,
        "image": statistics.median(times["image"]),
        "text": statistics.median(times["text"]),
        "cached": statistics.median(times["cached"]),
        "draw": median_us(draw, 200) / 1e6,
        "frozen": median_us(frozen_pass, max(5, args.steps // 2)) / 1e6,
        "build": build_time,
        "cache": cache_time,
        "pool": pool,
    }


def main(args: argparse.Namespace | None = None) -> list[dict]:
    args = parse_args([]) if args is None else args
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    results = [measure(size, args) for size in args.models]
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, device {args.device}, "
        f"{torch.get_num_threads()} torch threads; LoRA r={RANK}, {TRAINED} trained samples per step; median of "
        f"{args.steps} interleaved steps per kind after {args.warmup} warm-up steps"
    )
    print()
    print(
        "| model | image step (ms) | text step (ms) | text / image | cached text step (ms) | cached / image | "
        "frozen pass, 6 rows (ms) | pool draw (ms) | pool build (s) | cache build (s) | pool + cache (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['size']} | {r['image'] * 1e3:.2f} | {r['text'] * 1e3:.2f} | {r['text'] / r['image']:.3f} | "
            f"{r['cached'] * 1e3:.2f} | {r['cached'] / r['image']:.3f} | {r['frozen'] * 1e3:.2f} | "
            f"{r['draw'] * 1e3:.3f} | {r['build']:.2f} | {r['cache']:.2f} | {r['pool'].nbytes / 2**20:.2f} |"
        )
    print()
    for r in results:
        print(f"{r['size']}: {r['pool']!r}")
    print(
        "\ntext / image: goal <= 1.6. The text step's extra cost is its frozen pass (3 rows per prompt sample, no "
        "grad), which the cached step reads from the pool instead; a live rollout per step (Concept Sliders) would "
        "add up to rollout_steps forward passes."
    )
    return results


if __name__ == "__main__":
    main(parse_args())
