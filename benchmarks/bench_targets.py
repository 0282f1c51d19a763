"""Target resolution on real-size module trees (meta device), and trainable parameters per scope.

Measures, for every architecture in the table: the median time of `resolve_targets(model=..., scope=...)` and of
PEFT's own matching of the same regex over the same names (the plain way: `re.fullmatch` per module name), and the
LoRA parameter count at rank 16 for scope visual, scope joint and PEFT's `target_modules="all-linear"` (every
Linear module of the denoiser; PEFT keeps only a transformers model's output head out, and diffusers models have none).

    python benchmarks/bench_targets.py            # full run
    python benchmarks/bench_targets.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import warnings

from torch import nn

from peft_slider.targeting import (
    ARCHITECTURES,
    FULL_SIZE_MODELS,
    build_meta_model,
    count_lora_parameters,
    resolve_targets,
)

RANK = 16


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (also fills the regex cache)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 25
    warnings.simplefilter("ignore")
    names = list(FULL_SIZE_MODELS) + [
        c for c in ARCHITECTURES if c not in {m.class_name for m in FULL_SIZE_MODELS.values()}
    ]
    print(
        f"| model | Linear modules | resolve visual (ms) | resolve joint (ms) | plain regex match (ms) | ratio | LoRA r={RANK} visual | joint | all-linear |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        model, _ = build_meta_model(name)
        visual_ms = _median_ms(lambda model=model: resolve_targets(model=model, scope="visual"), repeats)
        joint_ms = _median_ms(lambda model=model: resolve_targets(model=model, scope="joint"), repeats)
        regex = re.compile(resolve_targets(model=model, scope="joint").regex)
        plain_ms = _median_ms(
            lambda model=model, regex=regex: [n for n, _ in model.named_modules() if regex.fullmatch(n)], repeats
        )
        everything = [
            n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ]
        visual = count_lora_parameters(model, resolve_targets(model=model, scope="visual").modules, rank=RANK)
        joint = count_lora_parameters(model, resolve_targets(model=model, scope="joint").modules, rank=RANK)
        total = count_lora_parameters(model, everything, rank=RANK)
        print(
            f"| {name} | {len(everything)} | {visual_ms:.1f} | {joint_ms:.1f} | {plain_ms:.1f} | {joint_ms / plain_ms:.1f}x |"
            f" {visual / 1e6:.1f}M | {joint / 1e6:.1f}M | {total / 1e6:.1f}M |"
        )


if __name__ == "__main__":
    main()
