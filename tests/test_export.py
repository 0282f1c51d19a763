"""Saving, loading and converting sliders: every format loads at the trained strength, and bad files fail cleanly.

Each family's slider is a real PEFT LoRA (r=4, lora_alpha=6, so a loader that assumes alpha = rank is off by 1.5x)
with random A and B, on a tiny real pipeline. Outputs are the denoiser's on inputs captured from a real pipeline call.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoKrConfig, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from peft_slider import SliderLoraConfig
from peft_slider.cli import main
from peft_slider.formats.files import SliderFileError
from peft_slider.formats.hub import HubError
from peft_slider.formats.loading import load_slider
from peft_slider.formats.metadata import SliderMetadata, read_safetensors_header
from peft_slider.formats.readers import read_slider
from peft_slider.formats.writers import convert_slider, save_slider
from peft_slider.targeting.config import SLIDER_ONLY_FIELDS
from peft_slider.testing.tiny_pipelines import (
    build_tiny_pipeline,
    capture_denoiser_inputs,
    denoiser_of,
    tiny_call_kwargs,
)
from peft_slider.training.adapters import active_adapter_names, freeze_adapter, frozen_adapter_names

FAMILIES = ("sd15", "sdxl", "flux", "sd3", "zimage")
STRENGTHS = (-1.0, 0.5, 2.0)
RANK, ALPHA = 4, 6
# The paths are the same float32 arithmetic except the ComfyUI DiT file, whose lora_B carries the scale (one extra
# rounding per weight).
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _output(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        result = model(**inputs)[0]
    # Z-Image returns one tensor per sample.
    return torch.stack(list(result)) if isinstance(result, (list, tuple)) else result


def _set_peft_strength(model: torch.nn.Module, adapter: str, strength: float) -> None:
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_scale(adapter, strength)


def _metadata() -> SliderMetadata:
    return SliderMetadata(
        concept="smiling",
        base_model="tiny/base",
        scope="visual",
        trained_strengths=(-1.0, 1.0),
        recommended_range=(-2.0, 2.0),
        slider_start=0.2,
    )


@dataclass
class Exported:
    family: str
    source: object  # the pipeline the slider was trained on, adapter "slider"
    target: object  # a fresh pipeline, every saved variant loaded into it
    peft_model: PeftModel  # a fresh denoiser with the PEFT folder loaded by PeftModel.from_pretrained
    inputs: dict
    base_output: torch.Tensor
    folder: Path
    paths: dict
    loaded: list = field(default_factory=list)


_CACHE: dict[str, Exported] = {}


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sliders")


def exported(family: str, root: Path) -> Exported:
    if family in _CACHE:
        return _CACHE[family]
    source = build_tiny_pipeline(family)
    denoiser = denoiser_of(source)
    inputs = capture_denoiser_inputs(
        source, "a photo of a smiling woman", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs(family)
    )
    pristine = copy.deepcopy(denoiser)
    base_output = _output(pristine, inputs)
    config = SliderLoraConfig(r=RANK, lora_alpha=ALPHA, model=denoiser, init_lora_weights=False)
    torch.manual_seed(0)  # the LoRA's random weights: the same whatever tests ran before
    denoiser.add_adapter(config, adapter_name="slider")
    folder = root / family
    paths = save_slider(source, folder, adapter_name="slider", comfyui=True, metadata=_metadata())

    target = build_tiny_pipeline(family)
    target.load_lora_weights(folder, adapter_name="diffusers-folder")
    target.load_lora_weights(str(paths["comfyui"]), adapter_name="diffusers-comfyui-file")
    loaded = ["diffusers-folder", "diffusers-comfyui-file"]
    for name, path in paths.items():
        loaded.append(load_slider(target, path, adapter_name=f"load_slider-{name}"))
    peft_model = PeftModel.from_pretrained(pristine, folder)
    _CACHE[family] = Exported(family, source, target, peft_model, inputs, base_output, folder, paths, loaded)
    return _CACHE[family]


@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_format_reproduces_the_peft_model(family, strength, folder_root):
    case = exported(family, folder_root)
    denoiser = denoiser_of(case.source)
    denoiser.set_adapters(["slider"], weights=[strength])
    reference = _output(denoiser, case.inputs)
    # The slider moves the output far more than the tolerance, so a wrong alpha (1.5x off) or sign cannot pass.
    assert (reference - case.base_output).abs().max() > 0.05
    for name in case.loaded:
        case.target.set_adapters([name], adapter_weights=[strength])
        # The diffusers file bakes alpha / r into lora_B (float32 rounding before the product instead of after): some
        # random LoRAs went past 1e-5 at strength 2 on outputs of magnitude 2; a wrong alpha or sign moves it > 0.05.
        torch.testing.assert_close(
            _output(denoiser_of(case.target), case.inputs), reference, atol=1e-4, rtol=1e-5, msg=name
        )
    _set_peft_strength(case.peft_model, "default", strength)
    torch.testing.assert_close(_output(case.peft_model, case.inputs), reference, **TOLERANCE, msg="PeftModel")


@pytest.mark.parametrize("family", ("sd15", "flux"))
def test_load_slider_strength_matches_set_adapters(family, folder_root):
    case = exported(family, folder_root)
    fresh = build_tiny_pipeline(family)
    # A numpy scalar is a number too (regression: only int and float were accepted).
    load_slider(fresh, case.folder, adapter_name="a", strength=np.float32(-1.5))
    denoiser = denoiser_of(case.source)
    denoiser.set_adapters(["slider"], weights=[-1.5])
    torch.testing.assert_close(_output(denoiser_of(fresh), case.inputs), _output(denoiser, case.inputs), **TOLERANCE)


def test_load_slider_keeps_the_active_adapters_on(folder_root):
    # Regression: diffusers' load switches the previously active adapters off; sliders are composed, so the ones that
    # were on stay on, at their weights and with their trainability, beside the new one.
    case = exported("sd15", folder_root)
    pipe = build_tiny_pipeline("sd15")
    pipe.load_lora_weights(case.folder, adapter_name="first")
    pipe.set_adapters(["first"], adapter_weights=[0.7])
    freeze_adapter(pipe.unet, "first")
    load_slider(pipe, case.paths["comfyui"], adapter_name="second", strength=-1.0)
    assert active_adapter_names(pipe.unet) == ["first", "second"]
    assert frozen_adapter_names(pipe.unet) == ["first"]
    composed = _output(pipe.unet, case.inputs)
    pipe.set_adapters(["first", "second"], adapter_weights=[0.7, -1.0])
    torch.testing.assert_close(composed, _output(pipe.unet, case.inputs), rtol=0, atol=0)


def test_load_slider_writes_the_slider_once(folder_root, monkeypatch):
    # Regression: loading wrote the scratch diffusers file twice (diffusers' writer, then a re-save with the slider
    # header that loading never reads). A pass-through spy counts the safetensors writes.
    import safetensors.torch

    case = exported("sd15", folder_root)
    writes = []
    save_file_ = safetensors.torch.save_file

    def counting_save_file(tensors, filename, *args, **kwargs):
        writes.append(filename)
        return save_file_(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", counting_save_file)
    fresh = build_tiny_pipeline("sd15")
    load_slider(fresh, case.paths["comfyui"], adapter_name="once", strength=0.5)
    assert len(writes) == 1
    fresh.set_adapters(["once"], adapter_weights=[0.5])
    reference = denoiser_of(case.source)
    reference.set_adapters(["slider"], weights=[0.5])
    torch.testing.assert_close(_output(fresh.unet, case.inputs), _output(reference, case.inputs), **TOLERANCE)


def test_diffusers_file_keeps_its_scale_without_metadata(folder_root, tmp_path):
    """A reader that ignores `lora_adapter_metadata` assumes alpha = rank (scale 1); the file bakes alpha/r = 1.5 into
    lora_B with alpha = rank, so such a reader (ComfyUI, or this file with its header stripped) gets the trained scale."""
    case = exported("flux", folder_root)
    path = case.paths["diffusers"]
    header = read_safetensors_header(path)
    del header["lora_adapter_metadata"]
    save_file(load_file(path), tmp_path / "pytorch_lora_weights.safetensors", metadata=header)
    fresh = build_tiny_pipeline("flux")
    fresh.load_lora_weights(tmp_path, adapter_name="bare")
    denoiser = denoiser_of(case.source)
    denoiser.set_adapters(["slider"], weights=[1.0])
    reference = _output(denoiser, case.inputs)
    torch.testing.assert_close(_output(denoiser_of(fresh), case.inputs), reference, **TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_file_carries_the_slider_metadata(family, folder_root):
    case = exported(family, folder_root)
    expected = _metadata()
    for name, path in case.paths.items():
        recorded = SliderMetadata.from_header(read_safetensors_header(path))
        assert recorded.concept == expected.concept, name
        assert recorded.recommended_range == expected.recommended_range, name
        assert recorded.trained_strengths == expected.trained_strengths, name
        assert recorded.slider_start == expected.slider_start, name
        assert recorded.scope == "visual", name
        assert recorded.base_model == "tiny/base", name
        assert recorded.architecture == type(denoiser_of(case.source)).__name__, name
        assert (recorded.rank, recorded.alpha) == (RANK, float(ALPHA)), name
    # diffusers builds LoraConfig(**metadata) from its own header entry: nothing but LoraConfig fields may be there.
    header = read_safetensors_header(case.paths["diffusers"])
    packed = json.loads(header["lora_adapter_metadata"])
    component = "unet" if family in ("sd15", "sdxl") else "transformer"
    config = LoraConfig(**{key.removeprefix(f"{component}."): value for key, value in packed.items()})
    assert (config.r, config.lora_alpha) == (RANK, RANK)  # the scale alpha/r is baked into lora_B
    saved = json.loads((case.folder / "adapter_config.json").read_text())
    assert not set(SLIDER_ONLY_FIELDS) & set(saved)
    assert LoraConfig.from_pretrained(case.folder).lora_alpha == ALPHA


def test_save_from_peft_model_and_bare_denoiser(tmp_path):
    pipe = build_tiny_pipeline("flux")
    inputs = capture_denoiser_inputs(
        pipe, "a cat", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs("flux")
    )
    config = SliderLoraConfig(r=RANK, lora_alpha=2, model=pipe.transformer, init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(pipe.transformer), config, adapter_name="age")
    save_slider(peft_model, tmp_path / "from_peft", adapter_name="age")
    bare = copy.deepcopy(pipe.transformer)
    bare.add_adapter(config, adapter_name="age")
    bare.load_state_dict(peft_model.get_base_model().state_dict())  # the very same LoRA weights
    save_slider(bare, tmp_path / "from_bare", adapter_name="age", formats=["diffusers"])
    _set_peft_strength(peft_model, "age", 2.0)
    reference = _output(peft_model, inputs)
    for folder in ("from_peft", "from_bare"):
        fresh = build_tiny_pipeline("flux")
        fresh.load_lora_weights(tmp_path / folder, adapter_name="age")
        fresh.set_adapters(["age"], adapter_weights=[2.0])
        torch.testing.assert_close(_output(fresh.transformer, inputs), reference, **TOLERANCE, msg=folder)


@pytest.mark.parametrize("family", ("sd15", "flux", "zimage"))
def test_convert_chain_keeps_the_slider(family, folder_root, tmp_path):
    case = exported(family, folder_root)
    peft_dir = convert_slider(case.paths["comfyui"], tmp_path / "peft", to="peft").parent
    comfy = convert_slider(peft_dir, tmp_path / "comfy", to="comfyui")
    diffusers_file = convert_slider(comfy, tmp_path / "diffusers", to="diffusers")
    assert SliderMetadata.from_header(read_safetensors_header(diffusers_file)).concept == "smiling"
    fresh = build_tiny_pipeline(family)
    fresh.load_lora_weights(diffusers_file.parent, adapter_name="converted")
    fresh.set_adapters(["converted"], adapter_weights=[-1.0])
    denoiser = denoiser_of(case.source)
    denoiser.set_adapters(["slider"], weights=[-1.0])
    torch.testing.assert_close(_output(denoiser_of(fresh), case.inputs), _output(denoiser, case.inputs), **TOLERANCE)


def test_convert_command(folder_root, tmp_path, capsys):
    case = exported("sd15", folder_root)
    assert main(["convert", str(case.folder), str(tmp_path / "out"), "--to", "comfyui"]) == 0
    written = Path(capsys.readouterr().out.split("wrote ", 1)[1].strip())
    assert read_slider(written).format == "comfyui"
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x"), "--to", "peft"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_convert_needs_architecture_for_bare_files(tmp_path):
    tensors = {
        "transformer.proj_out.lora_A.weight": torch.randn(2, 8),
        "transformer.proj_out.lora_B.weight": torch.randn(4, 2),
    }
    save_file(tensors, tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="No ComfyUI layout is known for architecture None"):
        convert_slider(tmp_path / "bare.safetensors", tmp_path / "out", to="comfyui")
    path = convert_slider(tmp_path / "bare.safetensors", tmp_path / "out", to="comfyui", architecture="flux")
    assert SliderMetadata.from_header(read_safetensors_header(path)).architecture == "FluxTransformer2DModel"


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file and the problem, and nothing changed in the pipeline.


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[9:30] = b"\xff" * 21  # inside the JSON header, right after its 8-byte length
    path.write_bytes(bytes(data))


def _rewrite(path: Path, change) -> None:
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata=header)


def _drop_lora_b(tensors: dict) -> None:
    del tensors[next(key for key in sorted(tensors) if key.endswith("lora_B.weight"))]


def _add_unknown_key(tensors: dict) -> None:
    tensors["unet.conv_in.lora_magnitude"] = torch.zeros(3)


def _add_unknown_module(tensors: dict) -> None:
    tensors["unet.not_a_module.lora_A.weight"] = torch.zeros(RANK, 8)
    tensors["unet.not_a_module.lora_B.weight"] = torch.zeros(8, RANK)


def _widen_conv_in(tensors: dict) -> None:
    tensors["unet.conv_in.lora_A.weight"] = torch.zeros(RANK, 5, 3, 3)


BAD_FILES = {
    # case: (source family, file to corrupt, corruption, expected message)
    "truncated": ("sd15", "diffusers", _truncate, "not a readable safetensors file"),
    "garbled header": ("sd15", "diffusers", _garble_header, "not a readable safetensors file"),
    "dropped key": ("sd15", "diffusers", lambda p: _rewrite(p, _drop_lora_b), "missing its lora_B weight"),
    "unknown key": ("sd15", "diffusers", lambda p: _rewrite(p, _add_unknown_key), "unexpected key"),
    "unknown module": ("sd15", "diffusers", lambda p: _rewrite(p, _add_unknown_module), "do not exist in this"),
    "other model size": ("sd15", "diffusers", lambda p: _rewrite(p, _widen_conv_in), "made for another model size"),
    "peft file without config": (
        "sd15",
        "peft",
        lambda p: p.with_name("adapter_config.json").unlink(),
        "adapter_config",
    ),
    "truncated kohya file": ("sd15", "comfyui", _truncate, "not a readable safetensors file"),
    "other architecture": ("flux", "diffusers", lambda p: None, "is a slider for FluxTransformer2DModel"),
    "other architecture, kohya": ("sdxl", "comfyui", lambda p: None, "do not exist in this"),
}


@pytest.fixture(scope="module")
def victim():
    """An SD 1.x pipeline with one slider already loaded, which no failed load may change."""
    pipe = build_tiny_pipeline("sd15")
    config = SliderLoraConfig(r=2, lora_alpha=2, model=pipe.unet, init_lora_weights=False)
    pipe.unet.add_adapter(config, adapter_name="existing")
    inputs = capture_denoiser_inputs(
        pipe, "a dog", generator=torch.Generator().manual_seed(1), **tiny_call_kwargs("sd15")
    )
    return pipe, inputs


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_fail_cleanly(case, victim, folder_root, tmp_path):
    family, file_format, corrupt, message = BAD_FILES[case]
    source = exported(family, folder_root)
    folder = tmp_path / "slider"
    shutil.copytree(source.folder, folder)
    path = folder / source.paths[file_format].name
    corrupt(path)
    pipe, inputs = victim
    adapters_before = pipe.get_list_adapters()
    output_before = _output(pipe.unet, inputs)
    with pytest.raises(SliderFileError, match=message) as error:
        load_slider(pipe, path, adapter_name="new")
    assert str(path) in str(error.value)
    assert pipe.get_list_adapters() == adapters_before
    torch.testing.assert_close(_output(pipe.unet, inputs), output_before, atol=0, rtol=0)


def test_load_slider_argument_errors(victim, folder_root, tmp_path):
    pipe, _ = victim
    folder = exported("sd15", folder_root).folder
    with pytest.raises(ValueError, match="`adapter_name` 'existing' is already loaded"):
        load_slider(pipe, folder, adapter_name="existing")
    with pytest.raises(ValueError, match="`strength` must be a finite number"):
        load_slider(pipe, folder, adapter_name="x", strength=float("nan"))
    with pytest.raises(SliderFileError, match="is a local path that does not exist"):
        load_slider(pipe, tmp_path / "nowhere" / "x", adapter_name="x")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(SliderFileError, match="keys are in no slider layout"):
        load_slider(pipe, tmp_path / "foreign.safetensors", adapter_name="x")
    assert pipe.get_list_adapters() == {"unet": ["existing"]}


def test_save_slider_argument_errors(tmp_path):
    pipe = build_tiny_pipeline("wan")
    config = SliderLoraConfig(r=2, lora_alpha=2, model=pipe.transformer)
    pipe.transformer.add_adapter(config, adapter_name="s")
    cases = [
        (
            dict(adapter_name="other"),
            ValueError,
            r"`adapter_name` 'other' is not an adapter .* its adapters are \['s'\]",
        ),
        (dict(adapter_name="s", formats=["onnx"]), ValueError, r"`formats` must hold names from"),
        (dict(adapter_name="s", comfyui=True), ValueError, "No ComfyUI layout is known for architecture"),
        (
            dict(adapter_name="s", metadata=SliderMetadata(architecture="flux")),
            ValueError,
            "is a WanTransformer3DModel",
        ),
        (dict(adapter_name="s", metadata={"concept": "x"}), TypeError, "`metadata` must be a SliderMetadata"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            save_slider(pipe, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "pytorch_lora_weights.safetensors").exists()
    lokr = build_tiny_pipeline("flux").transformer
    lokr = get_peft_model(lokr, LoKrConfig(r=2, target_modules=["proj_out"]))
    with pytest.raises(ValueError, match="A LOKR slider has no diffusers format"):
        save_slider(lokr, tmp_path / "lokr")  # the default formats include "diffusers"


# ---------------------------------------------------------------------------------------------------------------------
# Slider metadata in the safetensors header

METADATA_ERRORS = {
    "range reversed": (dict(recommended_range=(2, -2)), "min <= max"),
    "range not a pair": (dict(trained_strengths=(1.0,)), r"\(min, max\) pair"),
    "range not finite": (dict(recommended_range=(float("nan"), 1.0)), "two finite numbers"),
    "start at the end": (dict(slider_start=1.0), r"in \[0, 1\)"),
    "unknown scope": (dict(scope="text"), "`scope` must be one of"),
    "unknown architecture": (dict(architecture="dalle"), "`architecture` 'dalle' is not known"),
    "rank zero": (dict(rank=0), "`rank` must be a positive int"),
    "empty concept": (dict(concept=" "), "`concept` must be a non-empty string"),
}


@pytest.mark.parametrize("case", list(METADATA_ERRORS))
def test_metadata_rejects_bad_values(case):
    kwargs, message = METADATA_ERRORS[case]
    with pytest.raises(ValueError, match=message):
        SliderMetadata(**kwargs)


def test_metadata_from_a_newer_version_keeps_an_unknown_architecture(tmp_path):
    # Regression: reading raised on an architecture this version's table does not have (a file from a newer
    # peft_slider); values are checked when made from user input, not when read.
    header = {**_metadata().to_header(), "peft_slider.architecture": '"FutureTransformer2DModel"'}
    metadata = SliderMetadata.from_header(header)
    assert metadata.architecture == "FutureTransformer2DModel" and metadata.concept == "smiling"
    assert SliderMetadata.from_header({"peft_slider.architecture": '"sdxl"'}).architecture == "UNet2DConditionModel"
    tensors = {
        "transformer.proj_out.lora_A.weight": torch.randn(2, 8),
        "transformer.proj_out.lora_B.weight": torch.randn(4, 2),
    }
    save_file(tensors, tmp_path / "future.safetensors", metadata=header)
    assert read_slider(tmp_path / "future.safetensors").architecture == "FutureTransformer2DModel"
    with pytest.raises(ValueError, match="`architecture` 'FutureTransformer2DModel' is not known"):
        SliderMetadata(architecture="FutureTransformer2DModel")
    with pytest.raises(ValueError, match="`architecture` must be a non-empty string"):
        SliderMetadata.from_header({"peft_slider.architecture": "3"})


def test_metadata_accepts_numpy_scalars():
    # Regression: values computed with numpy (np.float32 is no float subclass) were rejected.
    metadata = SliderMetadata(
        alpha=np.float32(2.0), recommended_range=(np.float32(-2.0), np.int64(2)), slider_start=np.float32(0.25)
    )
    assert (metadata.alpha, metadata.recommended_range, metadata.slider_start) == (2.0, (-2.0, 2.0), 0.25)
    assert SliderMetadata.from_header(metadata.to_header()) == metadata


def test_metadata_header_round_trip():
    metadata = SliderMetadata(**{**_metadata().to_dict(), "architecture": "zimage", "rank": 4, "alpha": 2})
    header = metadata.to_header()
    assert all(key.startswith("peft_slider.") and isinstance(value, str) for key, value in header.items())
    assert SliderMetadata.from_header(header) == metadata
    assert metadata.architecture == "ZImageTransformer2DModel"
    # Keys from a newer peft_slider and other tools' keys are ignored; a header without slider keys has no metadata.
    newer = {**header, "peft_slider.future_field": '"x"', "ss_network_dim": "4", "format": "pt"}
    assert SliderMetadata.from_header(newer) == metadata
    assert SliderMetadata.from_header({"format": "pt"}) is None
    with pytest.raises(ValueError, match="'peft_slider.concept' is not valid JSON"):
        SliderMetadata.from_header({"peft_slider.concept": "smiling"})


# ---------------------------------------------------------------------------------------------------------------------
# Saves are all or nothing: a failed re-save leaves the folder exactly as it was.


@pytest.fixture(scope="module")
def two_sliders():
    """An SD 1.x pipeline with two sliders, "old" (alpha 6) and "new" (alpha 12, other weights)."""
    torch.manual_seed(0)
    pipe = build_tiny_pipeline("sd15")
    configs = {
        name: SliderLoraConfig(r=RANK, lora_alpha=alpha, model=pipe.unet, init_lora_weights=False)
        for name, alpha in (("old", ALPHA), ("new", 2 * ALPHA))
    }
    for name, config in configs.items():
        pipe.unet.add_adapter(config, adapter_name=name)
    return pipe


def _held_slider(slider, pipe) -> set[str]:
    """Which of `two_sliders`' adapters ("old", "new") a slider read back holds, from its effective update
    (scale x B @ A per module): a diffusers file bakes the scale into B with alpha = rank, a PEFT file keeps it in the
    config, and both must give the trained update."""
    held = set()
    scales = slider.scales()
    for module in slider.modules:
        down = slider.tensors[f"{module}.lora_A.weight"].flatten(1)
        up = slider.tensors[f"{module}.lora_B.weight"].flatten(1)
        delta = (scales[module] * (up @ down)).flatten()
        layer = pipe.unet.get_submodule(module)
        # float32 products of rank-4 matrices, with the scale applied before or after the product.
        held |= {
            name
            for name in ("old", "new")
            if torch.allclose(delta, layer.get_delta_weight(name).flatten(), rtol=1e-5, atol=1e-6)
        }
    return held


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, hidden ones included."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _failing(real, failing_call: int):
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        if len(calls) == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return fail


SAVE_FAULTS = {
    # case: (the write step that fails, which call of it) -- a save writes the diffusers file twice (diffusers' own
    # writer, then with the slider header), then the PEFT config and weights, then the ComfyUI file.
    "disk full in diffusers' writer": ("safetensors.torch.save_file", 1),
    "disk full writing the diffusers file": ("safetensors.torch.save_file", 2),
    "disk full writing the PEFT weights, after their config": ("safetensors.torch.save_file", 3),
    "disk full writing the ComfyUI file, after the others": ("safetensors.torch.save_file", 4),
    "the PEFT config cannot be written": ("peft.LoraConfig.save_pretrained", 1),
    "flushing to disk fails": ("os.fsync", 1),
    "a rename fails half way": ("os.replace", 6),
}


@pytest.mark.parametrize("case", list(SAVE_FAULTS))
def test_failed_save_leaves_the_folder_as_it_was(case, two_sliders, tmp_path, monkeypatch):
    import importlib

    target, failing_call = SAVE_FAULTS[case]
    module_name, _, attribute = target.rpartition(".")
    try:
        owner = importlib.import_module(module_name)
    except ModuleNotFoundError:  # a class attribute
        module_name, _, class_name = module_name.rpartition(".")
        owner = getattr(importlib.import_module(module_name), class_name)
    folder = tmp_path / "slider"
    save_slider(two_sliders, folder, adapter_name="old", comfyui=True, metadata=_metadata())
    before = _snapshot(folder)
    monkeypatch.setattr(owner, attribute, _failing(getattr(owner, attribute), failing_call))
    with pytest.raises(OSError, match="No space left on device"):
        save_slider(two_sliders, folder, adapter_name="new", comfyui=True, metadata=_metadata())
    monkeypatch.undo()
    assert _snapshot(folder) == before
    # PEFT and every loader still read the old slider, at its own scale.
    assert _held_slider(read_slider(folder), two_sliders) == {"old"}
    assert LoraConfig.from_pretrained(folder).lora_alpha == ALPHA


_KILLED_SAVE = """
import sys, time
import safetensors.torch, torch
from peft_slider import SliderLoraConfig
from peft_slider.formats.writers import save_slider
from peft_slider.formats.metadata import SliderMetadata
from peft_slider.testing.tiny_pipelines import build_tiny_pipeline

folder, stop_at = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
pipe = build_tiny_pipeline("sd15")
configs = {n: SliderLoraConfig(r=4, lora_alpha=a, model=pipe.unet, init_lora_weights=False) for n, a in (("old", 6), ("new", 12))}
for name, config in configs.items():
    pipe.unet.add_adapter(config, adapter_name=name)
metadata = SliderMetadata(concept="smiling")
save_slider(pipe, folder, adapter_name="old", comfyui=True, metadata=metadata)
print("saved", flush=True)
sys.stdin.readline()
real, calls = safetensors.torch.save_file, []

def stalled(tensors, filename, *args, **kwargs):
    calls.append(filename)
    if len(calls) == stop_at:  # half a file written, then the process is killed
        with open(filename, "wb") as handle:
            handle.write(b"half a safetensors file")
        print("writing", flush=True)
        time.sleep(600)
    return real(tensors, filename, *args, **kwargs)

safetensors.torch.save_file = stalled
save_slider(pipe, folder, adapter_name="new", comfyui=True, metadata=metadata)
"""


@pytest.mark.parametrize("stop_at", [3, 4], ids=["in the PEFT weights", "in the ComfyUI file"])
def test_killed_save_leaves_the_folder_as_it_was(stop_at, tmp_path):
    folder = tmp_path / "slider"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_SAVE), str(folder), str(stop_at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert process.stdout.readline().strip() == "saved"
        before = {name: data for name, data in _snapshot(folder).items() if not name.startswith(".")}
        process.stdin.write("go\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "writing"
    finally:
        process.kill()
        process.wait()
    # A killed save leaves at most its hidden staging folder behind; the slider files are the old save's.
    assert {name: data for name, data in _snapshot(folder).items() if not name.startswith(".")} == before
    # The PEFT file keeps the trained alpha (the diffusers file bakes it into its weights): the old save's.
    assert set(read_slider(folder, weight_name="adapter_model.safetensors").scales().values()) == {ALPHA / RANK}
    assert LoraConfig.from_pretrained(folder).lora_alpha == ALPHA


# ---------------------------------------------------------------------------------------------------------------------
# A folder is read as one slider only when one save wrote its files; otherwise the user names the file.


def _peft_saved_later(folder, other, pipe):
    save_slider(pipe, folder, adapter_name="old", comfyui=True, metadata=_metadata())
    with pytest.warns(UserWarning, match="also holds slider files this save did not write"):
        save_slider(pipe, folder, adapter_name="new", formats=["peft"], metadata=_metadata())


def _foreign_comfyui_file(folder, other, pipe):
    save_slider(pipe, folder, adapter_name="old", metadata=_metadata())
    paths = save_slider(pipe, other, adapter_name="new", formats=["comfyui"], metadata=_metadata())
    shutil.copyfile(paths["comfyui"], folder / paths["comfyui"].name)


def _unmarked_file(folder, other, pipe):
    save_slider(pipe, folder, adapter_name="old", formats=["diffusers"], metadata=_metadata())
    save_file(load_file(folder / "pytorch_lora_weights.safetensors"), folder / "copy.safetensors")


def _one_save(folder, other, pipe):
    save_slider(pipe, folder, adapter_name="old", comfyui=True, metadata=_metadata())


def _one_save_and_a_copy(folder, other, pipe):
    _one_save(folder, other, pipe)
    shutil.copyfile(folder / "adapter_model.safetensors", folder / "adapter_model (copy).safetensors")


def _one_file(folder, other, pipe):
    save_slider(pipe, folder, adapter_name="new", formats=["comfyui"], metadata=_metadata())


FOLDERS = {
    # case: (how the folder is made, the slider read from it ("old" or "new"), or the error)
    "PEFT files saved after the diffusers file": (_peft_saved_later, "not written by one save"),
    "another slider's ComfyUI file beside": (_foreign_comfyui_file, "not written by one save"),
    "a file without a save id beside": (_unmarked_file, "not written by one save"),
    "one save, every format": (_one_save, "old"),
    "one save and a copy of one of its files": (_one_save_and_a_copy, "old"),
    "one file": (_one_file, "new"),
}


@pytest.mark.parametrize("case", list(FOLDERS))
def test_folder_is_read_as_the_slider_it_holds(case, two_sliders, tmp_path):
    make, expected = FOLDERS[case]
    folder = tmp_path / "slider"
    make(folder, tmp_path / "other", two_sliders)
    if expected not in ("old", "new"):
        with pytest.raises(SliderFileError, match=expected) as error:
            read_slider(folder)
        assert "`weight_name=`" in str(error.value) and "pytorch_lora_weights.safetensors" in str(error.value)
        fresh = build_tiny_pipeline("sd15")
        with pytest.raises(SliderFileError, match=expected):
            load_slider(fresh, folder, adapter_name="x")
        assert fresh.get_list_adapters() == {}
        # Naming the file reads exactly that file.
        for name in ("pytorch_lora_weights.safetensors", "adapter_model.safetensors"):
            if (folder / name).is_file():
                assert read_slider(folder, weight_name=name).source == repr(str(folder / name))
        return
    assert _held_slider(read_slider(folder), two_sliders) == {expected}


# ---------------------------------------------------------------------------------------------------------------------
# Hostile files: every problem is a SliderFileError naming the file, never an AttributeError or a silent load.


def _set_header(key, value):
    def change(tensors, header):
        header[key] = value

    return change


def _set_config(**values):
    def change(tensors, header):
        packed = json.loads(header["lora_adapter_metadata"])
        packed.update({f"unet.{key}": value for key, value in values.items()})
        header["lora_adapter_metadata"] = json.dumps(packed)

    return change


def _poison(suffix, value):
    def change(tensors, header):
        key = next(key for key in sorted(tensors) if key.endswith(suffix))
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[0] = value

    return change


HUGE_INT = "1" + "0" * 400
HOSTILE_FILES = {
    # case: (file, change to (tensors, header), expected message)
    "NaN in a lora_A": ("diffusers", _poison("lora_A.weight", float("nan")), "NaN or infinite values in its lora_A"),
    "inf in a lora_B": ("diffusers", _poison("lora_B.weight", float("inf")), "NaN or infinite values in its lora_B"),
    "NaN in a kohya file": ("comfyui", _poison("lora_up.weight", float("nan")), "NaN or infinite values"),
    "NaN kohya alpha": ("comfyui", _poison(".alpha", float("nan")), "must be a finite number"),
    "NaN lora_alpha": ("diffusers", _set_config(lora_alpha=float("nan")), "`lora_alpha` nan"),
    "absurd lora_alpha": ("diffusers", _set_config(lora_alpha=1e30), "no trained slider has such a scale"),
    "huge int lora_alpha": (
        "diffusers",
        _set_config(lora_alpha=int(HUGE_INT)),
        "`lora_alpha` 1000",
    ),
    "rank a string": ("diffusers", _set_config(r="four"), "`r` 'four'"),
    "rank_pattern a list": ("diffusers", _set_config(rank_pattern=[1, 2]), "`rank_pattern` \\[1, 2\\]"),
    "alpha_pattern NaN": ("diffusers", _set_config(alpha_pattern={"conv_in": float("nan")}), "alpha_pattern"),
    "config a list": ("diffusers", _set_header("lora_adapter_metadata", "[1, 2]"), "holds a JSON list"),
    "config a number": ("diffusers", _set_header("lora_adapter_metadata", "3"), "holds a JSON int"),
    "config an int of 5000 digits": ("diffusers", _set_header("lora_adapter_metadata", "9" * 5000), "is not JSON"),
    "slider alpha of 400 digits": ("diffusers", _set_header("peft_slider.alpha", HUGE_INT), "an int of 401 digits"),
    "range of 400 digits": (
        "diffusers",
        _set_header("peft_slider.recommended_range", f"[0, {HUGE_INT}]"),
        "an int of 401 digits",
    ),
    "range overflowing to inf": (
        "diffusers",
        _set_header("peft_slider.recommended_range", "[0, 1e400]"),
        "two finite numbers",
    ),
    "range a mapping": (
        "diffusers",
        _set_header("peft_slider.trained_strengths", '{"a": 1, "b": 2}'),
        r"\(min, max\) pair",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_files_fail_cleanly(case, two_sliders, tmp_path):
    file_format, change, message = HOSTILE_FILES[case]
    paths = save_slider(two_sliders, tmp_path, adapter_name="old", formats=[file_format], metadata=_metadata())
    path = paths[file_format]
    header = read_safetensors_header(path)
    tensors = load_file(path)
    change(tensors, header)
    save_file(tensors, path, metadata=header)
    with pytest.raises(SliderFileError, match=message) as error:
        read_slider(path)
    assert str(path) in str(error.value)


def test_hostile_peft_config_fails_cleanly(two_sliders, tmp_path):
    save_slider(two_sliders, tmp_path, adapter_name="old", formats=["peft"])
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(SliderFileError, match="holds a JSON list, not a LoraConfig object"):
        read_slider(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# A path that looks local never becomes a Hub request.


@pytest.mark.parametrize(
    "path",
    ["./missing", "../missing", "missing.safetensors", "me/missing.safetensors", "sub/dir/missing", "{tmp}/missing"],
)
def test_missing_local_paths_are_not_hub_requests(path, victim, tmp_path):
    pipe, _ = victim
    path = path.format(tmp=tmp_path)
    # The Hub endpoint is unreachable: a Hub request would raise HubError, not SliderFileError.
    with pytest.raises(SliderFileError, match=f"`path_or_repo` '{path}' is a local path that does not exist"):
        load_slider(pipe, path, adapter_name="x", endpoint="http://127.0.0.1:9")


def test_a_missing_repo_id_is_a_hub_request(victim):
    """The control of the table above: a repo id still goes to the (here unreachable) Hub. Once, not per row: the Hub
    client retries a refused connection for about 20 s."""
    pipe, _ = victim
    with pytest.raises(HubError):
        load_slider(pipe, "me/missing", adapter_name="x", endpoint="http://127.0.0.1:9")


# ---------------------------------------------------------------------------------------------------------------------
# Local base-model paths are never recorded.


@pytest.mark.parametrize(
    "base_model, recorded, warns",
    [
        ("/home/me/models/my-sd15", "my-sd15", True),
        ("./models/my-sd15/", "my-sd15", True),
        ("/home/me/.cache/huggingface/hub/models--owner--sd15-base/snapshots/0123abcd", "owner/sd15-base", False),
        ("owner/sd15-base", "owner/sd15-base", False),
    ],
)
def test_local_base_model_paths_are_not_recorded(base_model, recorded, warns, two_sliders, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = save_slider(
            two_sliders, tmp_path, adapter_name="old", comfyui=True, metadata=SliderMetadata(base_model=base_model)
        )
    assert any("records only its folder name" in str(item.message) for item in caught) == warns
    for path in paths.values():
        assert SliderMetadata.from_header(read_safetensors_header(path)).base_model == recorded
        assert b"/home/me" not in path.read_bytes()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == recorded


# ---------------------------------------------------------------------------------------------------------------------
# Trainer checkpoints (examples/train_slider: checkpoint-N/slider_adapter.safetensors) become sliders.


def _checkpoint(pipe, adapter_name: str, run: Path, step: int = 300) -> Path:
    """The files of a checkpoint of examples/train_slider: `get_peft_model_state_dict` in `slider_adapter.safetensors`,
    beside the optimizer state (another safetensors file) and JSON state."""
    from peft.utils import get_peft_model_state_dict

    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    state = get_peft_model_state_dict(pipe.unet, adapter_name=adapter_name)
    save_file(
        {key: value.detach().cpu().contiguous() for key, value in state.items()}, folder / "slider_adapter.safetensors"
    )
    save_file({"state.0.exp_avg": torch.zeros(3)}, folder / "optimizer.safetensors")
    (folder / "training_state.json").write_text('{"step": 300}')
    return folder


def test_trainer_checkpoint_becomes_a_slider(two_sliders, victim, tmp_path, capsys):
    pipe, (_, inputs) = two_sliders, victim
    pipe.unet.set_adapters(["new"], weights=[-1.0])
    reference = _output(pipe.unet, inputs)
    # Inside its run folder, beside the run's finished slider: its alpha and metadata come from there.
    run = tmp_path / "run"
    save_slider(pipe, run, adapter_name="new", metadata=_metadata())
    checkpoint = _checkpoint(pipe, "new", run)
    slider = read_slider(checkpoint)
    assert (slider.format, slider.architecture, slider.metadata.concept) == (
        "checkpoint",
        "UNet2DConditionModel",
        "smiling",
    )
    fresh = build_tiny_pipeline("sd15")
    load_slider(fresh, checkpoint, adapter_name="best", strength=-1.0)
    torch.testing.assert_close(_output(fresh.unet, inputs), reference, **TOLERANCE)
    # Alone (copied out of its run): the command line needs the family and the training's alpha, and says so.
    alone = tmp_path / "picked" / "checkpoint-300"
    shutil.copytree(checkpoint, alone)
    assert main(["convert", str(alone), str(tmp_path / "out"), "--to", "diffusers", "--architecture", "sd15"]) == 2
    assert "--lora_alpha" in capsys.readouterr().err
    command = ["convert", str(alone), str(tmp_path / "out"), "--to", "diffusers", "--lora_alpha", str(2 * ALPHA)]
    assert main(command) == 2
    assert "--architecture" in capsys.readouterr().err
    assert main([*command, "--architecture", "sd15"]) == 0
    fresh = build_tiny_pipeline("sd15")
    fresh.load_lora_weights(tmp_path / "out", adapter_name="best")
    fresh.set_adapters(["best"], adapter_weights=[-1.0])
    torch.testing.assert_close(_output(fresh.unet, inputs), reference, **TOLERANCE)


def test_convert_of_a_plain_peft_folder_names_the_cli_option(two_sliders, tmp_path, capsys):
    # A folder PEFT itself wrote has no slider metadata, so the family is unknown.
    peft_model = get_peft_model(
        copy.deepcopy(build_tiny_pipeline("sd15").unet), LoraConfig(r=2, target_modules=["to_q"])
    )
    peft_model.save_pretrained(tmp_path / "plain")
    assert main(["convert", str(tmp_path / "plain"), str(tmp_path / "out"), "--to", "diffusers"]) == 2
    assert "`--architecture`" in capsys.readouterr().err
    assert (
        main(
            ["convert", str(tmp_path / "plain"), str(tmp_path / "out"), "--to", "diffusers", "--architecture", "sd15"]
        )
        == 0
    )
