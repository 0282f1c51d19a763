# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The example trainer's `--cache_frozen_predictions` (--mode prompts): the same run, the same losses.

With the flag the frozen base's predictions at the pooled latents are computed once, before training, instead of in a
frozen pass per step; the draws are the same, so each step's loss and base loss match the run without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_slider"
sys.path.insert(0, str(EXAMPLE))

import train_slider  # noqa: E402

RUN = [
    "--mode",
    "prompts",
    "--max_train_steps",
    "3",
    "--seed",
    "0",
    "--tiny_base_fit_steps",
    "0",
    "--validation_prompts",
    "",
    "--validation_strengths",
    "-1",
    "0",
    "1",
    "--validation_num_inference_steps",
    "2",
]


@pytest.fixture(autouse=True)
def one_thread_fresh_accelerate():
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Accelerate keeps one process-wide state; each run here is a fresh process's run.
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


def losses(output_dir: Path, *extra: str) -> list[tuple[float, float]]:
    result = train_slider.main(train_slider.parse_args(["--output_dir", str(output_dir), *RUN, *extra]))
    assert result.global_step == 3
    records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return [(record["loss"], record["base_loss"]) for record in records]


def test_cached_frozen_predictions_give_the_same_losses(tmp_path):
    plain = losses(tmp_path / "plain", "--no-cache_frozen_predictions")
    cached = losses(tmp_path / "cached")  # the default
    assert len(plain) == len(cached) == 3
    # The frozen predictions come from differently composed batches: float32 rounding only.
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), rtol=1e-4, atol=1e-7)
    # The slider trains: the steps differ, so matching losses are not one repeated value.
    assert len({loss for loss, _ in plain}) == 3
