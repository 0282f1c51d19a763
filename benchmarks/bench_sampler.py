# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Cost of SliderBatchSampler per batch against torch's `BatchSampler(RandomSampler(...))` over the same data.

Both walk one epoch of N indices (default 1M, split 40/40/20 % into a positive, a negative and a neutral backend)
in batches of `--batch-size`. Every row is warmed up once, then the rows are timed round-robin (one repetition of
each, `--repeats` times) so that load from other processes hits them alike; the table shows medians.

Rows:
- torch: `BatchSampler(RandomSampler(range(N)), batch_size, drop_last=False)`, one epoch (its shuffle included).
- slider, epoch: a fresh epoch each repetition (`set_epoch`), so the plan is built and walked.
- slider, plan only: building the plan of a fresh epoch (shuffles, cuts, backend draws), nothing yielded.
- slider, walk only: iterating an epoch whose plan is already built.
- torch / slider, rank 0 of 8: one rank's shard of a fresh epoch, `BatchSampler(DistributedSampler(...))` against
  `SliderBatchSampler(num_replicas=8, rank=0)`. Both shuffle all N indices on every rank.
- DataLoader fetch + collate: for scale, what `DataLoader(batch_sampler=...)` itself costs per batch with a trivial
  in-memory dataset and `num_workers=0`, measured over the first `--loader-batches` batches.

Usage:
    python benchmarks/bench_sampler.py            # 1M indices, 7 repetitions
    python benchmarks/bench_sampler.py --quick    # 100k indices, 3 repetitions
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
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_slider.training import SliderBackend, SliderBatchSampler  # noqa: E402


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1_000_000, help="Total indices per epoch.")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7, help="Timed repetitions per row (after one warm-up).")
    parser.add_argument("--loader-batches", type=int, default=2000, help="Batches timed for the DataLoader row.")
    parser.add_argument("--quick", action="store_true", help="A short run: 100k indices, 3 repetitions.")
    args = parser.parse_args(input_args)
    if args.quick:
        args.num_samples, args.repeats, args.loader_batches = 100_000, 3, 500
    return args


def _consume(batches) -> int:
    count = 0
    for batch in batches:
        count += len(batch)
    return count


def _round_robin(rows: dict, repeats: int) -> dict[str, float]:
    for fn in rows.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(args: argparse.Namespace | None = None):
    args = parse_args([]) if args is None else args
    n, batch_size, repeats = args.num_samples, args.batch_size, args.repeats
    sizes = [n * 2 // 5, n * 2 // 5]
    sizes.append(n - sum(sizes))
    backends = [
        SliderBackend(sizes[0], slider_strength=1.0, name="positive"),
        SliderBackend(sizes[1], slider_strength=-1.0, name="negative"),
        SliderBackend(sizes[2], slider_strength=None, name="neutral"),
    ]

    def slider(**kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SliderBatchSampler(backends, batch_size=batch_size, seed=0, **kwargs)

    # One sampler per row, so that a row changing the epoch does not rebuild another row's plan.
    epoch_sampler, plan_sampler, walk_sampler = slider(), slider(), slider()
    shard_sampler = slider(num_replicas=8, rank=0)
    walk_sampler.batch_info(0)  # built once; the walk row never changes epoch
    torch_sampler = BatchSampler(RandomSampler(range(n)), batch_size, drop_last=False)
    torch_shard = DistributedSampler(range(n), num_replicas=8, rank=0, shuffle=True, seed=0)
    torch_shard_sampler = BatchSampler(torch_shard, batch_size, drop_last=False)
    epochs = itertools.count(1)

    def fresh_epoch(sampler):
        sampler.set_epoch(next(epochs))
        return _consume(sampler)

    def torch_shard_epoch():
        torch_shard.set_epoch(next(epochs))  # DistributedSampler's epoch lives on the inner sampler
        return _consume(torch_shard_sampler)

    def plan_only():
        plan_sampler.set_epoch(next(epochs))
        plan_sampler.batch_info(0)  # builds the epoch's plan, as the first next() would

    single, ranked = "torch BatchSampler(RandomSampler)", "torch BatchSampler(DistributedSampler), rank 0 of 8"
    # name: (timed function, the batch sampler it walks, baseline row)
    rows = {
        single: (lambda: _consume(torch_sampler), torch_sampler, single),
        "slider, epoch (plan + walk)": (lambda: fresh_epoch(epoch_sampler), epoch_sampler, single),
        "slider, plan only": (plan_only, plan_sampler, single),
        "slider, walk only (plan cached)": (lambda: _consume(walk_sampler), walk_sampler, single),
        ranked: (torch_shard_epoch, torch_shard_sampler, ranked),
        "slider, rank 0 of 8, epoch (plan + walk)": (lambda: fresh_epoch(shard_sampler), shard_sampler, ranked),
    }

    dataset = torch.arange(n)
    loader_batches = min(args.loader_batches, len(walk_sampler))
    loader_name = f"DataLoader fetch + collate, first {loader_batches} batches"

    def loader_run():
        for _ in itertools.islice(DataLoader(dataset, batch_sampler=walk_sampler), loader_batches):
            pass

    seconds = _round_robin({**{name: row[0] for name, row in rows.items()}, loader_name: loader_run}, repeats)

    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; N = {n:,} indices in 3 backends (40/40/20 %), "
        f"batch_size = {batch_size}, median of {repeats} round-robin repetitions after 1 warm-up"
    )
    print()
    print("| what | median s | indices/s | us/batch | speed vs torch |")
    print("|---|---:|---:|---:|---:|")
    measured = {}
    for name, (_, sampler, baseline) in rows.items():
        measured[name] = (_consume(sampler), len(sampler), seconds[name], baseline)
    for name, (indices, batches, secs, baseline) in measured.items():
        base_indices, _, base_seconds, _ = measured[baseline]
        speed = (base_seconds / base_indices) / (secs / indices)
        print(f"| {name} | {secs:.4f} | {indices / secs:,.0f} | {secs / batches * 1e6:.3f} | {speed:.2f}x |")
    loader_seconds = seconds[loader_name]
    per_batch_loader = loader_seconds / loader_batches * 1e6
    print(
        f"| {loader_name} | {loader_seconds:.4f} | {loader_batches * batch_size / loader_seconds:,.0f} | "
        f"{per_batch_loader:.3f} | - |"
    )
    print()
    epoch = measured["slider, epoch (plan + walk)"]
    per_batch = epoch[2] / epoch[1] * 1e6
    print(
        "speed vs torch: the torch row's time per index over this row's (rank rows against the DistributedSampler "
        f"row). A whole slider epoch costs {per_batch:.3f} us per batch, {per_batch_loader / per_batch:.0f}x less "
        f"than the DataLoader's own {per_batch_loader:.1f} us per batch."
    )
    return measured


if __name__ == "__main__":
    main(parse_args())
