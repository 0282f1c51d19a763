"""`peft-slider`: inspect on built-in real-size trees, local folders and Hub ids, JSON output, usage errors, logging,
start-up cost (what `--help`, `--version` and a built-in `inspect` import), and the README tables that quote it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import peft_slider
from peft_slider.cli import main
from peft_slider.targeting import full_size
from peft_slider.targeting.full_size import FULL_SIZE_MODELS, build_meta_model, build_module_tree, tree_keys
from peft_slider.targeting.targets import resolve_targets, universal_target_regex
from tests.denoisers import DENOISERS

README = Path(__file__).resolve().parents[1] / "README.md"
HEAVY = ("torch", "peft", "diffusers", "transformers", "huggingface_hub", "numpy", "safetensors")


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter (the cold start a user's shell sees)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect"], "peft-slider inspect: error: give a MODEL (e.g. `peft-slider inspect flux`), or --list"),
        (
            ["inspect", "flux", "--rank", "0"],
            "argument --rank: must be an int in [1, 1048576] (the LoRA rank), got '0'",
        ),
        (
            ["inspect", "flux", "--rank", "x"],
            "argument --rank: must be an int in [1, 1048576] (the LoRA rank), got 'x'",
        ),
        (["inspect", "flux", "--list"], "give a MODEL or --list, not both (got MODEL 'flux' and --list)"),
        (["inspect", "--list", "--rank", "4"], "--scope, --rank and --variant apply to a MODEL, not to --list"),
        (["inspect", "flux", "--scope", "text"], "argument --scope: invalid choice: 'text'"),
        (["inspect", "flux", "-q", "-v"], "argument -v/--verbose: not allowed with argument -q/--quiet"),
        (["convert", "a", "b"], "the following arguments are required: --to"),
        (["frobnicate"], "argument {inspect,convert}: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: {inspect,convert}"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors_exit_2_with_the_usage_and_no_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("usage: peft-slider") and message in err and "Traceback" not in err


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"peft-slider {peft_slider.__version__}\n"


def test_help_and_version_import_nothing_heavy():
    # What `--help` costs is what it imports: no torch, peft or diffusers (seconds each), only the standard library.
    code = (
        "import json, sys\nfrom peft_slider.cli import main\n"
        "for argv in (['--help'], ['--version'], ['inspect', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))"
    )
    result = _fresh_python(code)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [], result.stderr


def test_inspect_of_a_built_in_imports_neither_diffusers_nor_peft():
    stored_version = full_size._stored_trees()[0]
    if stored_version != full_size._diffusers_version():
        # On another diffusers the tree is built with diffusers (see the fallback test below).
        pytest.skip(
            f"the stored trees are diffusers {stored_version}'s; diffusers {full_size._diffusers_version()} is installed"
        )
    code = (
        "import contextlib, io, json, sys\nfrom peft_slider.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(['inspect', 'flux'])\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'peft', 'transformers'})]))"
    )
    result = _fresh_python(code)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [0, []], result.stderr


def test_package_import_is_lazy_and_exports_everything():
    code = (
        "import json, sys\nimport peft_slider\nheavy_at_import = 'torch' in sys.modules\n"
        "from peft_slider import *  # noqa\n"
        "missing = [n for n in peft_slider.__all__ if n not in dir(peft_slider) or getattr(peft_slider, n) is None]\n"
        "print(json.dumps([heavy_at_import, missing, 'diffusers' in sys.modules, peft_slider.__all__]))"
    )
    result = _fresh_python(code)
    heavy_at_import, missing, diffusers_imported, names = json.loads(result.stdout.strip().splitlines()[-1])
    assert not heavy_at_import and missing == [] and not diffusers_imported, result.stderr
    assert names == sorted(names)
    from peft_slider import SliderLoraConfig
    from peft_slider.targeting.config import SliderLoraConfig as defined

    assert (
        SliderLoraConfig is defined
        and peft_slider.testing.tiny_pipelines.__name__ == "peft_slider.testing.tiny_pipelines"
    )
    with pytest.raises(AttributeError, match=r"module 'peft_slider' has no attribute 'no_such_name'"):
        peft_slider.no_such_name  # noqa: B018


def test_inspect_list_json_is_json(capsys):
    assert main(["inspect", "--list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing["models"]] == list(FULL_SIZE_MODELS)
    assert {a["class_name"] for a in listing["architectures"]} >= {"FluxTransformer2DModel", "UNet2DConditionModel"}


@pytest.mark.parametrize("variant", ["lokr", "loha"])
def test_inspect_counts_the_parameters_of_the_variant_it_names(variant, capsys):
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    assert main(["inspect", "flux", "--scope", "visual", "--variant", variant, "--rank", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The real adapter, built by PEFT on the diffusers model (meta device), counted parameter by parameter.
    model, _ = build_meta_model("flux")
    targets = resolve_targets(model=model, scope="visual", variant=variant)
    config = {"lokr": LoKrConfig, "loha": LoHaConfig}[variant](r=8, target_modules=targets.regex)
    inject_adapter_in_model(config, model)
    prefix = {"lokr": "lokr_", "loha": "hada_"}[variant]
    expected = sum(p.numel() for name, p in model.named_parameters() if prefix in name)
    assert report["variant"] == variant and report["scopes"]["visual"]["trainable_parameters"] == expected
    assert main(["inspect", "flux", "--scope", "visual", "--variant", variant, "--rank", "8"]) == 0
    assert f"scope=visual: 80 modules, {variant} r=8: {expected:,} trainable parameters" in capsys.readouterr().out


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


@pytest.mark.parametrize("key", tree_keys())
def test_stored_module_trees_are_the_live_ones(key):
    """`full_size_trees.txt` (what `inspect <built-in>` reads) equals the module tree diffusers builds; if diffusers
    changed a model, regenerate it with `python -m peft_slider.targeting.full_size`."""
    stored_version = full_size._stored_trees()[0]
    if stored_version != full_size._diffusers_version():
        # Other diffusers versions build the tree with diffusers (tested below); the stored one is for its version.
        pytest.skip(
            f"the stored trees are diffusers {stored_version}'s; diffusers {full_size._diffusers_version()} is installed"
        )
    live, live_description = build_meta_model(key)
    stored, description = build_module_tree(key)
    assert type(stored).__module__ == "peft_slider.targeting.full_size", "the stored trees were not used"
    assert type(stored).__name__ == type(live).__name__ and description == live_description

    def layout(model):
        return [(name, full_size._spec(module)) for name, module in model.named_modules()]

    assert layout(stored) == layout(live)


def test_module_tree_falls_back_to_diffusers_for_another_version(monkeypatch):
    monkeypatch.setattr(full_size, "_diffusers_version", lambda: "0.0.1")
    model, _ = build_module_tree("sana")
    assert type(model).__module__.startswith("diffusers.")


def test_default_verbosity_logs_nothing_and_verbose_logs_details(tmp_path, capsys):
    assert main(["inspect", "sana", "--scope", "visual"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["-v", "inspect", "sana", "--scope", "visual"]) == 0
    assert "building the module tree of 'sana' on the meta device" in capsys.readouterr().err
    assert main(["inspect", "sana", "--scope", "visual", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_no_third_party_notices_on_a_run_that_imports_diffusers(tmp_path):
    model = DENOISERS["flux"].build()
    model.save_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "peft_slider", "inspect", str(tmp_path), "--json"], capture_output=True, text=True
    )
    assert result.returncode == 0 and json.loads(result.stdout)["class_name"] == "FluxTransformer2DModel"
    assert result.stderr == ""


def test_hub_offline_env_fails_at_once_and_says_why(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "peft_slider", "inspect", "someone/some-model"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "Could not read 'someone/some-model': HF_HUB_OFFLINE is set, and its config is not in the local Hub cache"
        in (result.stderr)
    )


def test_unreachable_hub_is_detected_without_retries(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    # Nothing listens on port 9 of this machine: huggingface_hub would retry for half a minute.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for proxy in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    assert main(["inspect", "someone/some-model"]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "Could not read 'someone/some-model': http://127.0.0.1:9 cannot be reached" in err


def _readme_table(heading: str) -> list[dict[str, str]]:
    lines = README.read_text().split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in row.strip("|").split("|")))) for row in rows[2:]]


def test_readme_architecture_table_is_what_inspect_says():
    rows = _readme_table("### Per architecture")
    assert len(rows) >= 14
    for row in rows:
        names = re.findall(r"`([^`]+)`", row["`inspect` name"])
        for scope in ("visual", "joint"):
            cells = [int(n) for n in row[scope].split(" / ")]
            cells = cells * len(names) if len(cells) == 1 else cells
            assert len(cells) == len(names), row
            for name, count in zip(names, cells):
                model, _ = build_module_tree(name)
                assert len(resolve_targets(model=model, scope=scope).modules) == count, (name, scope)


# What the model-free (universal) config leaves out, family by family, as the README says; it never adds anything.
UNIVERSAL_LEAVES_OUT = {
    "flux": {"x_embedder"},
    "FluxControlNetModel": {"x_embedder"},
    "ChromaTransformer2DModel": {"x_embedder"},
    "Flux2Transformer2DModel": {"x_embedder", "single_transformer_blocks.*.attn.to_out (joint)"},
    "Lumina2Transformer2DModel": {"x_embedder", "norm_out.linear_2 (joint)"},
    "sd35 (tiny)": {
        "transformer_blocks.*.attn2.to_q",
        "transformer_blocks.*.attn2.to_k",
        "transformer_blocks.*.attn2.to_v",
        "transformer_blocks.*.attn2.to_out.0",
    },
}


@pytest.mark.parametrize("key", [*tree_keys(), "sd35 (tiny)"])
def test_universal_config_leaves_out_what_the_readme_says(key):
    from peft_slider.targeting.targets import group_module_names

    # The SD3 built-in has no dual-attention layers; the tiny "sd3" test model is SD3.5-like (it has `attn2`).
    model = DENOISERS["sd3"].build() if key == "sd35 (tiny)" else build_module_tree(key)[0]
    names = [name for name, _ in model.named_modules()]
    left_out = set()
    for scope in ("visual", "joint"):
        resolved = set(resolve_targets(model=model, scope=scope).modules)
        universal = {name for name in names if re.fullmatch(universal_target_regex(scope=scope), name)}
        assert universal <= resolved, (key, scope, universal - resolved)
        for pattern in group_module_names(resolved - universal):
            left_out.add(pattern if scope == "visual" or pattern in left_out else f"{pattern} (joint)")
    left_out = {p for p in left_out if not (p.endswith(" (joint)") and p.removesuffix(" (joint)") in left_out)}
    assert left_out == UNIVERSAL_LEAVES_OUT.get(key, set())


def test_inspect_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["inspect", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "Could not read 'someone/some-model': HF_HUB_OFFLINE is set" in err and "Traceback" not in err
