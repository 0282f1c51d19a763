# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Cost of changing a slider's strength between prompts, on a FLUX.1-size transformer.

Builds `FluxTransformer2DModel()` with its default config (FLUX.1: 19 double and 38 single blocks) on the meta device,
so no weights are allocated, and adds a rank-16 LoRA "slider" on the image-stream attention (double blocks' to_q/k/v
and to_out.0, single blocks' to_q/k/v: 190 layers). Switching strength touches only the adapters' scales, so its cost
is per layer, not per weight, and the meta device measures it faithfully.

Times, side by side in one run (median over repeats of the mean over a block of switches, after warm-up):
- `SliderScaler.set(s)`, alternating s = +1 / -1 (what peft_slider does between prompts);
- diffusers' `transformer.set_adapters(["slider"], weights=[s])` (what `pipe.set_adapters` calls on the denoiser);
- `SliderScaler.set(tensor)`, alternating two per-sample strength tensors (hooks stay installed);
- `SliderScaler.at(s)` entered and left, and `slider_strength(model, s)` (which also collects the layers each time).

Goal (issue 7): a strength switch under 1 ms and at most a tenth of `set_adapters`. Exits with status 1 if missed.

    python benchmarks/bench_switch.py            # full run
    python benchmarks/bench_switch.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

# Image-stream attention of FLUX.1 (re.fullmatch on module names): 19 x 4 double-block and 38 x 3 single-block layers.
FLUX_IMAGE_ATTENTION = (
    r"(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)"
    r"|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))"
)
GOAL_MS = 1.0
GOAL_RATIO = 0.1


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repetitions (a few seconds).")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the slider.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed blocks per method (median is reported).")
    return parser.parse_args(input_args)


def build_model(rank: int) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig

    with torch.device("meta"):
        model = FluxTransformer2DModel()
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=FLUX_IMAGE_ATTENTION), adapter_name="slider")
    return model


def time_switch(switch: Callable[[int], None], *, block: int, repeats: int, warmup: int) -> float:
    """Median over `repeats` of the mean milliseconds per call of `switch(i)` over `block` calls."""
    for i in range(warmup):
        switch(i)
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(block):
            switch(i)
        results.append((time.perf_counter() - start) * 1e3 / block)
    return statistics.median(results)


def main(args: argparse.Namespace) -> int:
    from peft_slider.training import SliderScaler, slider_strength

    model = build_model(args.rank)
    start = time.perf_counter()
    scaler = SliderScaler(model, adapter_names="slider")
    build_ms = (time.perf_counter() - start) * 1e3
    print(f"FluxTransformer2DModel() on meta, LoRA r={args.rank}: {scaler!r}")

    repeats = args.repeats or (5 if args.quick else 30)
    fast = {"block": 200 if args.quick else 1000, "repeats": repeats, "warmup": 100}
    slow = {"block": 3 if args.quick else 10, "repeats": repeats, "warmup": 3}
    signs = (1.0, -1.0)
    per_sample = (torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([-2.0, 0.5, 1.0, 0.0]))

    def scaler_at(i: int) -> None:
        with scaler.at(signs[i % 2]):
            pass

    def functional(i: int) -> None:
        with slider_strength(model, signs[i % 2], adapter_names="slider"):
            pass

    methods = {
        "SliderScaler.set(s)": (lambda i: scaler.set(signs[i % 2]), fast),
        "diffusers set_adapters(weights=[s])": (
            lambda i: model.set_adapters(["slider"], weights=[signs[i % 2]]),
            slow,
        ),
        "SliderScaler.set(per-sample tensor)": (lambda i: scaler.set(per_sample[i % 2]), fast),
        "SliderScaler.at(s) enter + exit": (scaler_at, fast),
        "slider_strength(model, s) enter + exit": (functional, slow),
    }
    results = {}
    for name, (switch, options) in methods.items():
        results[name] = time_switch(switch, **options)
        # Each method starts from the model as loaded (diffusers' set_adapters writes the same scale 1.0 back).
        model.set_adapters(["slider"], weights=[1.0])
        scaler.restore()

    reference = results["diffusers set_adapters(weights=[s])"]
    print(f"{'method':42s} {'ms/switch':>10s} {'x set_adapters':>15s}")
    for name, ms in results.items():
        print(f"{name:42s} {ms:10.4f} {ms / reference:15.4f}")
    print(f"SliderScaler construction (once): {build_ms:.2f} ms")

    switch_ms = results["SliderScaler.set(s)"]
    ratio = switch_ms / reference
    ok = switch_ms < GOAL_MS and ratio <= GOAL_RATIO
    print(
        f"goal: < {GOAL_MS} ms and <= {GOAL_RATIO} x set_adapters -> {switch_ms:.4f} ms, {ratio:.4f} x: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
