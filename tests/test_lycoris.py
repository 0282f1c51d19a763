"""LoKr/LoHa sliders: saved as a PEFT folder and in the LyCORIS layout ComfyUI reads, loaded back and converted, each
reproducing the trained model's output at several strengths. ComfyUI's own loader reads the LyCORIS files in
`tests/test_comfyui.py`."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_slider import SliderLoHaConfig, SliderLoKrConfig
from peft_slider.formats.loading import load_slider
from peft_slider.formats.metadata import SliderMetadata, read_safetensors_header
from peft_slider.formats.writers import convert_slider, save_slider
from peft_slider.testing.tiny_pipelines import (
    build_tiny_pipeline,
    capture_denoiser_inputs,
    denoiser_of,
    tiny_call_kwargs,
)
from tests.test_export import TOLERANCE, _output
from tests.test_export import _set_peft_strength as _set_strength

CONFIGS = {"lokr": SliderLoKrConfig, "loha": SliderLoHaConfig}
STRENGTHS = (-1.5, 1.0)


def _trained(family: str, kind: str):
    pipe = build_tiny_pipeline(family)
    denoiser = denoiser_of(pipe)
    inputs = capture_denoiser_inputs(
        pipe, "a smiling face", generator=torch.Generator().manual_seed(0), **tiny_call_kwargs(family)
    )
    base = _output(denoiser, inputs)
    config = CONFIGS[kind](r=4, alpha=6, model=denoiser, init_weights=False)
    denoiser.add_adapter(config, adapter_name="slider")
    return pipe, inputs, base


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("family", ("sd15", "flux"))
def test_lycoris_slider_saves_loads_and_converts(family, kind, tmp_path):
    pipe, inputs, base = _trained(family, kind)
    paths = save_slider(
        pipe,
        tmp_path / "saved",
        adapter_name="slider",
        formats=["peft", "comfyui"],
        metadata=SliderMetadata(concept="x"),
    )
    assert {path.name for path in paths.values()} == {"adapter_model.safetensors", "x_comfyui.safetensors"}
    comfy = load_file(paths["comfyui"])
    prefix = "lora_unet_" if family == "sd15" else "transformer."
    weight_names = ("lokr_w1", "lokr_w2") if kind == "lokr" else ("hada_w1_a", "hada_w2_b")
    assert all(key.startswith(prefix) for key in comfy) and not any(key.endswith(".alpha") for key in comfy)
    assert {key.rsplit(".", 1)[1] for key in comfy} >= set(weight_names)
    assert read_safetensors_header(paths["comfyui"])["peft_slider.concept"] == '"x"'

    peft_model = PeftModel.from_pretrained(denoiser_of(build_tiny_pipeline(family)), tmp_path / "saved")
    target = build_tiny_pipeline(family)
    load_slider(target, tmp_path / "saved", adapter_name="folder")
    load_slider(target, paths["comfyui"], adapter_name="comfyui")
    converted = convert_slider(paths["comfyui"], tmp_path / "converted", to="peft")
    load_slider(target, converted.parent, adapter_name="converted")
    back = convert_slider(tmp_path / "saved", tmp_path / "back.safetensors", to="comfyui")
    load_slider(target, back, adapter_name="back")
    for strength in STRENGTHS:
        _set_strength(denoiser_of(pipe), "slider", strength)
        reference = _output(denoiser_of(pipe), inputs)
        # The slider moves the output far more than the tolerance: a wrong scale or sign cannot pass.
        assert (reference - base).abs().max() > 1e-2
        _set_strength(peft_model, "default", strength)
        torch.testing.assert_close(_output(peft_model, inputs), reference, **TOLERANCE, msg="PeftModel")
        for name in ("folder", "comfyui", "converted", "back"):
            denoiser = denoiser_of(target)
            denoiser.set_adapters([name], weights=[strength])
            torch.testing.assert_close(_output(denoiser, inputs), reference, **TOLERANCE, msg=name)


def test_lycoris_slider_has_no_diffusers_format(tmp_path):
    pipe, _, _ = _trained("sd15", "lokr")
    with pytest.raises(
        ValueError, match="has no diffusers format: diffusers' `load_lora_weights` builds a LoraConfig"
    ):
        save_slider(pipe, tmp_path, adapter_name="slider")
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_lycoris_cannot_be_fused_for_comfyui():
    """Lumina 2's q/k/v are one weight in ComfyUI: stacked Kronecker products are not a Kronecker product."""
    from peft_slider.formats.kohya import COMFYUI_NAMES
    from peft_slider.formats.lycoris import to_comfyui_lycoris

    state = {"layers.0.attn.to_q.lokr_w1": torch.ones(2, 2), "layers.0.attn.to_q.lokr_w2": torch.ones(4, 4)}
    with pytest.raises(ValueError, match="only as part of a fused weight; a LoKr/LoHa update cannot be fused"):
        to_comfyui_lycoris(
            state,
            {"layers.0.attn.to_q": 1.0},
            peft_type="LOKR",
            layout="native",
            names=COMFYUI_NAMES["Lumina2Transformer2DModel"],
        )


def test_truncated_lycoris_file_is_a_slider_file_error(tmp_path):
    from peft_slider.formats.files import SliderFileError

    pipe, _, _ = _trained("sd15", "loha")
    path = save_slider(pipe, tmp_path, adapter_name="slider", formats=["comfyui"])["comfyui"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(SliderFileError, match="not a readable safetensors file"):
        load_slider(build_tiny_pipeline("sd15"), path, adapter_name="x")


def test_lycoris_slider_for_another_architecture_is_refused(tmp_path):
    from peft_slider.formats.files import SliderFileError

    pipe, _, _ = _trained("sd15", "lokr")
    save_slider(pipe, tmp_path, adapter_name="slider", formats=["peft"])
    other = build_tiny_pipeline("flux")
    with pytest.raises(SliderFileError, match="is for UNet2DConditionModel, but this pipeline's denoiser is a Flux"):
        load_slider(other, tmp_path, adapter_name="x")
    assert not getattr(other.transformer, "peft_config", None)  # nothing half-loaded
