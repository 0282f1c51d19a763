# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Cost of the slider machinery in a training step, against a plain PEFT LoRA step on the same model and targets.

One UNet carries one LoRA adapter whose targets come from `SliderLoraConfig` (a plain `LoraConfig` otherwise), and one
AdamW optimizer. Two kinds of step are timed on it, interleaved (A B, B A, A B, ...) so that drift in the machine's
speed hits both alike:

- plain: fetch a batch from a `DataLoader(batch_sampler=BatchSampler(RandomSampler(...)))`, noise it (epsilon
  objective), forward, MSE loss, backward, optimizer step, zero_grad. The usual PEFT LoRA step.
- slider: the same, but the batch comes from `SliderBatchSampler` over a `SliderConcatDataset` (positive, negative and
  neutral backends), its strength is read with `batch_strength`, `NeutralObjective` decides how it trains, and forward
  and backward run inside `SliderScaler.at(strength)`, the trainer's path (examples/train_slider).

The table gives the median step time of each (after warm-up), the ratio slider / plain, and the machinery alone timed
in isolation: the batch fetch of each sampler, `SliderScaler.at` (set and exact restore), and the convenience
`slider_strength(model, s)` context manager, which builds a scaler on every call (the trainer keeps one scaler).

Models (UNet2DConditionModel, SD 1.x layout, visual-scope slider targets, LoRA rank 16, batch 4):
- tiny: the tiny SD 1.5 pipeline's UNet (32/64 channels) at 8x8 latents.
- mid: 64/128/256 channels, two layers per block, attention head dim 8, at 16x16 latents (128x128 images).

Usage:
    python benchmarks/bench_train_step.py            # tiny and mid, 60 timed steps each
    python benchmarks/bench_train_step.py --quick    # tiny only, 25 steps
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_slider import SliderLoraConfig  # noqa: E402
from peft_slider.training import (  # noqa: E402  # noqa: E402  # noqa: E402
    EpsilonObjective,
    NeutralObjective,
    SliderBatchSampler,  # noqa: E402
    SliderConcatDataset,
    SliderDataset,
    SliderScaler,
    batch_strength,
    slider_strength,
)

BATCH = 4
RANK = 16


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="Timed steps per kind, per model (after warm-up).")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps per kind first.")
    parser.add_argument("--models", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is the least noisy).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model only, 25 steps.")
    args = parser.parse_args(input_args)
    if args.quick:
        args.steps, args.warmup, args.models = 25, 3, ["tiny"]
    return args


def build_unet(size: str):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    if size == "tiny":
        from peft_slider.testing import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd15")
        return pipe.unet, (4, 8, 8), (77, pipe.text_encoder.config.hidden_size), pipe.scheduler
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=128,
        norm_num_groups=32,
    )
    return unet, (4, 16, 16), (77, 128), DDPMScheduler(beta_schedule="scaled_linear")


class Samples(Dataset):
    """Cached latents and text embeddings, as the trainer holds them."""

    def __init__(self, count: int, latent_shape, text_shape, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.latents = torch.randn((count, *latent_shape), generator=generator)
        self.text = torch.randn((count, *text_shape), generator=generator)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        return {"latents": self.latents[index], "text": self.text[index]}


def endless(make_iterator):
    """Batches forever, starting a new epoch (a new iterator) whenever one ends."""
    for epoch in itertools.count():
        yield from make_iterator(epoch)


def measure(size: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    unet, latent_shape, text_shape, scheduler = build_unet(size)
    unet.requires_grad_(False)
    unet.add_adapter(SliderLoraConfig(r=RANK, lora_alpha=RANK, model=unet), adapter_name="slider")
    unet.to(device).train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    objective = EpsilonObjective.from_scheduler(scheduler)
    scaler = SliderScaler(unet)
    layers = sum(1 for _ in scaler._entries)

    # The same 96 samples either way: one dataset for plain LoRA, three 32-sample backends for the slider.
    plain_data = Samples(96, latent_shape, text_shape, seed=1)
    backends = [
        SliderDataset(Samples(32, latent_shape, text_shape, seed=1), slider_strength=1.0, name="positive"),
        SliderDataset(Samples(32, latent_shape, text_shape, seed=2), slider_strength=-1.0, name="negative"),
        SliderDataset(Samples(32, latent_shape, text_shape, seed=3), name="neutral"),
    ]
    slider_data = SliderConcatDataset(backends)
    slider_sampler = SliderBatchSampler(slider_data.backends, batch_size=BATCH, seed=0)
    neutral = NeutralObjective("preserve", backends=slider_data.backends)
    torch_sampler = BatchSampler(RandomSampler(range(len(plain_data))), BATCH, drop_last=False)

    def plain_epoch(epoch):
        return iter(DataLoader(plain_data, batch_sampler=torch_sampler))

    def slider_epoch(epoch):
        slider_sampler.set_epoch(epoch)
        return iter(DataLoader(slider_data, batch_sampler=slider_sampler))

    plain_batches, slider_batches = endless(plain_epoch), endless(slider_epoch)
    neutral_seen = itertools.count()
    generator = torch.Generator(device=device).manual_seed(0)

    def forward_backward(batch):
        noisy = objective.add_noise(batch["latents"].to(device), generator=generator)
        prediction = unet(noisy.noisy, noisy.timesteps, encoder_hidden_states=batch["text"].to(device)).sample
        loss = objective.loss(prediction, noisy.target)
        loss.backward()

    def finish():
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain_step():
        forward_backward(next(plain_batches))
        finish()

    def slider_step():
        batch = next(slider_batches)
        strength = batch_strength(batch)
        step = neutral.step(strength, neutral_index=next(neutral_seen) if strength == 0 else 0)
        with scaler.at(step.strength):
            forward_backward(batch)
        finish()

    times = time_interleaved({"plain": plain_step, "slider": slider_step}, steps=args.steps, warmup=args.warmup)

    # The machinery alone, in isolation.
    def fetch_plain():
        next(plain_batches)

    def fetch_slider():
        batch = next(slider_batches)
        batch_strength(batch)

    def scaler_at():
        with scaler.at(-1.0):
            pass

    def convenience():
        with slider_strength(unet, -1.0):
            pass

    micro = {}
    for name, fn in [("fetch_plain", fetch_plain), ("fetch_slider", fetch_slider), ("at", scaler_at)]:
        micro[name] = median_us(fn, 400)
    micro["slider_strength"] = median_us(convenience, 50)
    return {
        "size": size,
        "layers": layers,
        "params": sum(p.numel() for p in params),
        "plain": statistics.median(times["plain"]),
        "slider": statistics.median(times["slider"]),
        **micro,
    }


def time_interleaved(kinds: dict, *, steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each of `kinds` (name -> function), `steps` each after `warmup` untimed rounds, in
    alternating order (A B, B A, ...) so that drift in the machine's speed hits every kind alike."""
    for _ in range(warmup):
        for fn in kinds.values():
            fn()
    times = {name: [] for name in kinds}
    for i in range(steps):
        for name in list(kinds) if i % 2 == 0 else list(reversed(kinds)):
            start = time.perf_counter()
            kinds[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_us(fn, repeats: int) -> float:
    """The median time of `fn()` in microseconds over `repeats` calls, after 10 untimed ones."""
    for _ in range(10):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main(args: argparse.Namespace | None = None) -> list[dict]:
    args = parse_args([]) if args is None else args
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    results = [measure(size, args) for size in args.models]
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, device {args.device}, "
        f"{torch.get_num_threads()} torch threads; batch {BATCH}, LoRA r={RANK}; median of {args.steps} interleaved "
        f"steps per kind after {args.warmup} warm-up steps"
    )
    print()
    print("| model | LoRA layers | LoRA params | plain step (ms) | slider step (ms) | slider / plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = r["slider"] / r["plain"]
        print(
            f"| {r['size']} | {r['layers']} | {r['params']:,} | {r['plain'] * 1e3:.2f} | {r['slider'] * 1e3:.2f} | "
            f"{ratio:.3f} |"
        )
    print()
    print(
        "| model | batch fetch, torch sampler (us) | batch fetch, slider sampler + strength (us) | "
        "SliderScaler.at (us) | machinery / plain step | slider_strength() (us) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        extra = (r["fetch_slider"] - r["fetch_plain"] + r["at"]) / (r["plain"] * 1e6)
        print(
            f"| {r['size']} | {r['fetch_plain']:.1f} | {r['fetch_slider']:.1f} | {r['at']:.1f} | {100 * extra:.3f} % | "
            f"{r['slider_strength']:.0f} |"
        )
    print()
    print(
        "machinery / plain step: (slider fetch - torch fetch + SliderScaler.at) over the plain step's median, the "
        "slider machinery's share of a step measured in isolation; goal <= 2 %. slider_strength() builds a scaler per "
        "call and is meant for one-off use, not per step."
    )
    return results


if __name__ == "__main__":
    main(parse_args())
