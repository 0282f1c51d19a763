# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Smoke test of benchmarks/quality/run_quality.py --quick: real digits, three recipes, the JSON, table and grid."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the quality benchmark needs scikit-learn (pip install scikit-learn)")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "run_quality.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("run_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_the_report(tmp_path):
    run_quality = _load_script()
    report = run_quality.main(run_quality.parse_args(["--quick", "--output_dir", str(tmp_path)]))

    assert {p.name for p in tmp_path.iterdir()} >= {"quality.json", "quality.md", "quality_grid.png"}
    assert json.loads((tmp_path / "quality.json").read_text()) == json.loads(json.dumps(report))
    # The classifier is trained and tested on the real scans (held-out split): chance is 10%.
    assert report["classifier_test_accuracy_pct"] > 85
    # Dilation adds ink and erosion removes it: the concept the sliders are trained on exists in the data.
    ink = report["data_mean_ink"]
    assert ink["thin"] < ink["original"] < ink["thick"]

    table = (tmp_path / "quality.md").read_text()
    for recipe in run_quality.RECIPES:
        assert len(report["recipes"][recipe]["runs"]) == report["train_seeds"]
        history = report["recipes"][recipe]["history"]
        assert [h["step"] for h in history] == [report["slider_steps"]]
        final = history[-1]
        assert set(final["identity_kept_pct"]) == {"-2", "-1", "+0", "+1", "+2"}
        assert final["identity_kept_pct"]["+0"] == 100.0
        assert all(0 <= v <= 100 for v in final["identity_kept_pct"].values())
        assert f"| {recipe} |" in table


def test_matched_identity_interpolates_at_the_same_thickness_change():
    run_quality = _load_script()
    checkpoint = {
        "mean_ink": {"-2": 0.10, "-1": 0.15, "+0": 0.20, "+1": 0.30, "+2": 0.40},
        "identity_kept_pct": {"-2": 40.0, "-1": 80.0, "+0": 100.0, "+1": 60.0, "+2": 20.0},
    }
    # Thin side: 0.075 lies halfway from -1 (0.05 moved, 80%) to -2 (0.10, 40%); thick side: halfway from 0 to +1.
    thin, thick = run_quality.matched_identity(checkpoint, 0.075)
    assert thin == pytest.approx(60.0) and thick == pytest.approx(70.0)
    assert run_quality.matched_identity(checkpoint, 0.5) == (None, None)  # neither side moves the ink that far
