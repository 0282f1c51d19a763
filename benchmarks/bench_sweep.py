# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""A one-pass sweep of 5 strengths against 5 pipeline calls, on real diffusers pipelines with a slider LoRA.

For each pipeline, three rows make the same 5 images (one prompt, one seed, strengths -2, -1, 0, 1, 2, the same
steps and size):
- diffusers: 5 x (`pipe.set_adapters(["smile"], adapter_weights=[s])` + `pipe(...)`), the plain way.
- generate_at: 5 x `pipe.generate_at(prompt, strength=s, ...)` (one call per strength, exact restore).
- sweep, one pass: `pipe.sweep(prompt, strengths)`, one batched call with one strength per sample.
Every row is warmed up once, then the rows are timed round-robin (`--repeats` times) so that load from other
processes hits them alike; the table shows medians and the speed-up of the one-pass sweep over each row, plus the
largest difference between the one-pass images and the diffusers images (float images in [0, 1]).

Pipelines (all random weights, built from configs in code, a slider LoRA r=16 on the denoiser):
- tiny-sd15, tiny-flux: the test suite's tiny pipelines, 32x32 images (overhead-bound: text encoding, scheduler,
  VAE and Python per call).
- small-sd15: StableDiffusionPipeline with a wider UNet (64/128/256 channels), 64x64 images.
- sd15-unet: the real SD 1.5 UNet size (860M parameters) behind tiny text encoder and VAE, 256x256 images (64x64
  latents, as SD 1.5 at 512x512). Compute-bound; meant for a GPU.

Usage:
    python benchmarks/bench_sweep.py                  # tiny-sd15, tiny-flux, small-sd15 on CPU, 10 steps, 5 repeats
    python benchmarks/bench_sweep.py --quick          # 4 steps, 2 repeats
    python benchmarks/bench_sweep.py --device cuda --pipelines tiny-sd15 tiny-flux small-sd15 sd15-unet
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

from peft_slider import SliderLoraConfig  # noqa: E402
from peft_slider.inference import enable_sliders  # noqa: E402
from peft_slider.testing import build_tiny_pipeline, denoiser_of, tiny_call_kwargs  # noqa: E402

PIPELINES = ("tiny-sd15", "tiny-flux", "small-sd15", "sd15-unet")
STRENGTHS = [-2.0, -1.0, 0.0, 1.0, 2.0]
PROMPT = "a portrait photo of a smiling woman"


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=["tiny-sd15", "tiny-flux", "small-sd15"])
    parser.add_argument("--steps", type=int, default=10, help="Denoising steps per image.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per row (after one warm-up).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument("--quick", action="store_true", help="A short run: 4 steps, 2 repetitions.")
    args = parser.parse_args(input_args)
    if args.quick:
        args.steps, args.repeats = 4, 2
    return args


def _sd15_with_unet(unet_config: dict, *, text_hidden: int, size: int):
    """The tiny SD 1.5 pipeline with another UNet (and a text encoder wide enough for its cross-attention)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_tiny_pipeline("sd15")
    components = dict(tiny.components)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if text_hidden != tiny.text_encoder.config.hidden_size:
            config = CLIPTextConfig(
                **{
                    **tiny.text_encoder.config.to_dict(),
                    "hidden_size": text_hidden,
                    "intermediate_size": 2 * text_hidden,
                }
            )
            components["text_encoder"] = CLIPTextModel(config).eval()
        components["unet"] = UNet2DConditionModel(
            sample_size=size // 4, cross_attention_dim=text_hidden, **unet_config
        ).eval()
    pipe = type(tiny)(**components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**tiny_call_kwargs("sd15"), "height": size, "width": size}


def build(name: str):
    if name in ("tiny-sd15", "tiny-flux"):
        family = name.split("-")[1]
        return build_tiny_pipeline(family), tiny_call_kwargs(family)
    if name == "small-sd15":
        return _sd15_with_unet(
            {
                "block_out_channels": (64, 128, 256),
                "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                "layers_per_block": 1,
                "attention_head_dim": 8,
                "norm_num_groups": 32,
            },
            text_hidden=64,
            size=64,
        )
    if name == "sd15-unet":
        return _sd15_with_unet({}, text_hidden=768, size=256)  # UNet2DConditionModel's defaults are SD 1.5's
    raise ValueError(f"Unknown pipeline {name!r}; choose from {PIPELINES}.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _round_robin(rows: dict, repeats: int, device: torch.device) -> dict[str, float]:
    for fn in rows.values():
        fn()  # warm-up
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(name: str, args: argparse.Namespace) -> list[tuple[str, str, float, float, float]]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pipe, call_kwargs = build(name)
    if device.type != "cpu" or dtype != torch.float32:
        pipe = pipe.to(device=device, dtype=dtype)
    pipe = enable_sliders(pipe)
    denoiser = denoiser_of(pipe)
    config = SliderLoraConfig(r=16, lora_alpha=16, init_lora_weights=False)
    denoiser.add_adapter(config, adapter_name="smile")
    denoiser.to(device=device, dtype=dtype)
    call_kwargs = {**call_kwargs, "num_inference_steps": args.steps}

    def generator():
        return torch.Generator().manual_seed(0)

    def plain_diffusers():
        images = []
        for strength in STRENGTHS:
            pipe.set_adapters(["smile"], adapter_weights=[strength])
            images.append(pipe(PROMPT, generator=generator(), **call_kwargs).images[0])
        pipe.set_adapters(["smile"], adapter_weights=[1.0])
        return images

    def sequential():
        return [
            pipe.generate_at(PROMPT, strength=s, generator=generator(), **call_kwargs).images[0] for s in STRENGTHS
        ]

    def one_pass():
        return pipe.sweep(PROMPT, STRENGTHS, seed=0, **call_kwargs)

    difference = max(
        (a.float() - b.float()).abs().max().item() for a, b in zip(one_pass(), plain_diffusers(), strict=True)
    )
    rows = {"diffusers: 5 x set_adapters + pipe()": plain_diffusers, "5 x generate_at": sequential}
    rows["sweep, one pass"] = one_pass
    medians = _round_robin(rows, args.repeats, device)
    parameters = sum(p.numel() for p in denoiser.parameters()) / 1e6
    label = f"{name} ({type(pipe).__name__}, {parameters:.1f}M, {call_kwargs['height']}px, {args.steps} steps)"
    return [
        (label, row, seconds, seconds / medians["sweep, one pass"], difference) for row, seconds in medians.items()
    ]


def main(args: argparse.Namespace | None = None):
    args = parse_args([]) if args is None else args
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {device.type} ({where}), {torch.get_num_threads()} CPU threads, {args.dtype}, "
        f"strengths {STRENGTHS}, {args.repeats} repeats, medians\n"
    )
    print("| pipeline | row | seconds | one pass is x faster | max abs diff one pass vs diffusers |")
    print("|---|---|---:|---:|---:|")
    for name in args.pipelines:
        for label, row, seconds, ratio, difference in bench(name, args):
            print(f"| {label} | {row} | {seconds:.3f} | {ratio:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main(parse_args())
