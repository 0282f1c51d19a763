# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Two real processes in a torch.distributed gloo group (CPU, 127.0.0.1): the sampler's shards are disjoint,
complete and of equal length, with the same strength on every rank at every step, both on its own (num_replicas and
rank read from torch.distributed) and through `accelerate.Accelerator.prepare` with `interleave_ranks=True`.

The test launches this file as a script once per rank; each rank writes what it saw to a JSON file and the parent
checks them against each other.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORLD_SIZE = 2
# (size, strength): unequal sizes so that several backends end with a short, padded global batch.
LAYOUT = [(11, 1.0), (6, 0.5), (9, -1.0), (8, -0.25), (7, None)]
BATCH_SIZE = 3
SEED = 123


def _dataset():
    import torch
    from torch.utils.data import Dataset

    from peft_slider.training.data import SliderConcatDataset, SliderDataset

    class GlobalIndex(Dataset):
        def __init__(self, offset, size):
            self.offset, self.size = offset, size

        def __len__(self):
            return self.size

        def __getitem__(self, index):
            return torch.tensor(self.offset + index)

    datasets, offset = [], 0
    for k, (size, strength) in enumerate(LAYOUT):
        datasets.append(SliderDataset(GlobalIndex(offset, size), slider_strength=strength, name=f"b{k}"))
        offset += size
    return SliderConcatDataset(datasets)


def _run_rank(rank: int, out_dir: str):
    """Body of one rank (run as a script)."""
    import warnings

    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from peft_slider.training.data import batch_strength
    from peft_slider.training.sampler import SliderBatchSampler

    warnings.filterwarnings("ignore", message="Slider buckets are unbalanced")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        dataset = _dataset()
        # Plain torch.distributed: num_replicas and rank come from the process group.
        sampler = SliderBatchSampler(dataset.backends, batch_size=BATCH_SIZE, seed=SEED)
        sampler.set_epoch(1)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=1)
        plain = [(batch["sample"].tolist(), batch_strength(batch)) for batch in loader]
        # The same per-step strengths, gathered over the real process group.
        gathered = [None] * WORLD_SIZE
        dist.all_gather_object(gathered, [strength for _, strength in plain])

        # Accelerate: one interleaved sampler per process; accelerator.prepare shards it with BatchSamplerShard.
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)  # what `accelerate launch --cpu` gives a CPU process group
        interleaved = SliderBatchSampler(dataset.backends, batch_size=BATCH_SIZE, seed=SEED, interleave_ranks=True)
        interleaved.set_epoch(1)
        prepared = accelerator.prepare(DataLoader(dataset, batch_sampler=interleaved))
        assert type(prepared.batch_sampler).__name__ == "BatchSamplerShard", type(prepared.batch_sampler)
        accelerated = [(batch["sample"].tolist(), batch_strength(batch)) for batch in prepared]

        result = {
            "num_replicas": sampler.num_replicas,
            "rank": sampler.rank,
            "len": len(loader),
            "prepared_len": len(prepared),
            "plain": plain,
            "gathered": gathered,
            "accelerated": accelerated,
            "plan_strengths": [info.slider_strength for info in sampler.plan()],
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path):
    repo_root = Path(__file__).resolve().parents[1]
    port = _free_port()
    processes = []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(WORLD_SIZE),
            "GLOO_SOCKET_IFNAME": "lo",  # keep gloo on the loopback interface in containers
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")])),
        }
        processes.append(
            subprocess.Popen(
                [sys.executable, __file__, str(rank), str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=90)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("slider_ddp"))


def _backend_of(index):
    offset = 0
    for k, (size, _) in enumerate(LAYOUT):
        if index < offset + size:
            return k
        offset += size
    raise AssertionError(index)


def _check(per_rank_batches, *, full_batches):
    """Disjoint, complete, equal-length shards with one backend and one strength per step across ranks."""
    lengths = {len(batches) for batches in per_rank_batches}
    assert len(lengths) == 1, f"ranks yield different numbers of batches: {lengths}"
    seen = []
    for step, per_rank in enumerate(zip(*per_rank_batches)):
        backends = {_backend_of(i) for indices, _ in per_rank for i in indices}
        strengths = {strength for _, strength in per_rank}
        assert len(backends) == 1, f"step {step} mixes backends {backends}"
        (k,) = backends
        assert strengths == {LAYOUT[k][1] or 0.0}, f"step {step}: strengths {strengths}"
        assert len({len(indices) for indices, _ in per_rank}) == 1
        if full_batches:
            assert all(len(indices) == BATCH_SIZE for indices, _ in per_rank)
        seen.append((k, [indices for indices, _ in per_rank]))
    total = sum(size for size, _ in LAYOUT)
    flat = [i for _, per_rank in seen for indices in per_rank for i in indices]
    assert set(flat) == set(range(total)), "some samples were never yielded"
    # Duplicates only pad a backend's last step; every other step splits disjoint indices between the ranks.
    last_step = {k: step for step, (k, _) in enumerate(seen)}
    for step, (k, per_rank) in enumerate(seen):
        if step != last_step[k]:
            step_indices = [i for indices in per_rank for i in indices]
            assert len(step_indices) == len(set(step_indices)) == BATCH_SIZE * WORLD_SIZE


def test_torch_distributed_shards(ranks):
    assert [r["num_replicas"] for r in ranks] == [WORLD_SIZE] * WORLD_SIZE
    assert [r["rank"] for r in ranks] == list(range(WORLD_SIZE))
    assert ranks[0]["len"] == ranks[1]["len"] == len(ranks[0]["plain"]) == len(ranks[1]["plain"])
    _check([r["plain"] for r in ranks], full_batches=False)
    # Every rank gathered the same strength sequence, and it is the plan's.
    for r in ranks:
        assert r["gathered"][0] == r["gathered"][1] == r["plan_strengths"]
    # Padding to a multiple of the replicas only: (11 % 6 = 5 -> 6), (9 % 6 = 3 -> 4), (8 % 6 = 2), (7 % 6 = 1 -> 2).
    yielded = sum(len(indices) for r in ranks for indices, _ in r["plain"])
    assert yielded == sum(size for size, _ in LAYOUT) + 1 + 1 + 0 + 1


def test_accelerate_prepared_shards(ranks):
    assert ranks[0]["prepared_len"] == ranks[1]["prepared_len"] == len(ranks[0]["accelerated"])
    _check([r["accelerated"] for r in ranks], full_batches=True)
    # Both ways draw the same backends in the same order.
    assert [s for _, s in ranks[0]["accelerated"]] == [s for _, s in ranks[0]["plain"]]


if __name__ == "__main__":
    _run_rank(int(sys.argv[1]), sys.argv[2])
