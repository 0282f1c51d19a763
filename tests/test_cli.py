"""`peft-slider inspect`: built-in real-size trees, local folders, JSON output and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peft_slider.cli import main
from peft_slider.targeting.full_size import FULL_SIZE_MODELS, build_meta_model
from peft_slider.targeting.targets import resolve_targets
from tests.denoisers import DENOISERS


def test_inspect_flux_json_counts_match_resolution(capsys):
    assert main(["inspect", "flux", "--json", "--rank", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    model, _ = build_meta_model("flux")
    for scope in ("visual", "joint"):
        modules = resolve_targets(model=model, scope=scope).modules
        assert report["scopes"][scope]["modules"] == len(modules)
        assert sum(group["count"] for group in report["scopes"][scope]["groups"]) == len(modules)
    # FLUX.1: 19 double blocks x 4 image-stream projections; joint adds 38 single blocks x (q, k, v, proj_out).
    assert report["scopes"]["joint"]["modules"] - report["scopes"]["visual"]["modules"] == 38 * 4
    linear_q = 3072 + 3072  # one to_q LoRA pair at r=8 costs 8 * (in + out)
    groups = {g["pattern"]: g for g in report["scopes"]["visual"]["groups"]}
    assert groups["transformer_blocks.*.attn.to_q"]["count"] == 19
    assert report["scopes"]["visual"]["trainable_parameters"] > 19 * 4 * 8 * linear_q
    assert any(g["pattern"] == "transformer_blocks.*.attn.add_q_proj" for g in report["text_path_skipped"]["groups"])


def test_inspect_human_output_names_roles_and_text_path(capsys):
    assert main(["inspect", "sdxl", "--scope", "visual"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "UNet2DConditionModel (Stable Diffusion 1.x, 2.x, SDXL (UNet)), module tree from SDXL base UNet"
    )
    assert "attn1.to_q" in out and "skipped as text path" in out and "attn2.to_k" in out and "scope=joint" not in out


@pytest.mark.parametrize("layout", ["model", "pipeline"])
def test_inspect_local_folder(layout, tmp_path, capsys):
    model = DENOISERS["sana"].build()
    if layout == "model":
        model.save_config(tmp_path)
    else:
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline", "transformer": []}))
        model.save_config(tmp_path / "transformer")
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_name"] == "SanaTransformer2DModel"
    assert report["scopes"]["visual"]["modules"] == len(resolve_targets(model=model).modules)


def test_inspect_unknown_class_in_folder_lists_known_and_says_how(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'UNet2DModel' is not in peft_slider's architecture table" in err
    assert "FluxTransformer2DModel" in err and "target_modules=[...]" in err


def test_inspect_unknown_name_fails_with_the_value(capsys):
    assert main(["inspect", "no-such-thing"]) == 2
    assert "`model` 'no-such-thing' is neither a built-in name" in capsys.readouterr().err


def test_inspect_bad_rank_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "flux", "--rank", "0"])
    assert "--rank must be >= 1, got 0" in capsys.readouterr().err


def test_inspect_list_names_every_built_in(capsys):
    assert main(["inspect", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FULL_SIZE_MODELS)


@pytest.mark.parametrize("name", sorted(FULL_SIZE_MODELS))
def test_full_size_trees_resolve(name):
    """Real-size trees (FLUX.1, SDXL, Wan 14B, ...) resolve; benchmarks/bench_targets.py times it."""
    model, _ = build_meta_model(name)
    targets = resolve_targets(model=model, scope="joint")
    assert targets.modules and not set(targets.modules) & set(targets.text_path)


def test_python_dash_m_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "peft_slider", "inspect", "zimage", "--scope", "visual", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    # Z-Image: only the 2 image-only noise_refiner layers are visual-scope attention (8 projections).
    attention = [g for g in report["scopes"]["visual"]["groups"] if g["role"] == "attention"]
    assert sum(g["count"] for g in attention) == 8


def test_inspect_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["inspect", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "Could not read 'someone/some-model' from the Hub" in err and "Traceback" not in err
