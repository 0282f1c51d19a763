"""ComfyUI/A1111 key layouts: the kohya convention for UNets, `transformer.` keys for DiTs, with the right scale.

The convention is read independently of peft_slider twice: the expected keys are spelled out here from the model's
module names (ComfyUI's `model_lora_keys_unet` rule: `lora_unet_` + the diffusers name with '.' -> '_'), and diffusers'
own kohya reader loads the file and must end up with the very same LoRA matrices and per-layer scale.
"""

from __future__ import annotations

import math

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from peft_slider import SliderLoraConfig
from peft_slider.formats.kohya import (
    COMFYUI_LAYOUTS,
    COMFYUI_NAMES,
    comfyui_names_header,
    from_comfyui_transformer,
    from_kohya,
    to_comfyui_transformer,
    to_kohya,
    unet_module_name,
)
from peft_slider.formats.writers import save_slider
from peft_slider.targeting.full_size import build_meta_model
from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, denoiser_of

# Per config: how the kohya alpha must relate to PEFT's (r, lora_alpha) so that alpha / rank is PEFT's scaling.
CONFIGS = {
    "plain": dict(r=4, lora_alpha=6),
    "rank and alpha patterns": dict(r=4, lora_alpha=6, rank_pattern={"conv_in": 2}, alpha_pattern={"conv_in": 1}),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True),
}


def _lora_layers(model: nn.Module, adapter: str) -> dict[str, LoraLayer]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and adapter in module.lora_A
    }


def _expected_alpha(config: dict, module: str) -> tuple[int, float]:
    """(rank, kohya alpha) read off the config by hand: kohya scales by alpha / rank."""
    rank = config.get("rank_pattern", {}).get(module, config["r"])
    alpha = config.get("alpha_pattern", {}).get(module, config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return rank, scale * rank


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("family", ("sd15", "sdxl"))
def test_kohya_file_follows_the_convention(family, config_name, tmp_path):
    pipe = build_tiny_pipeline(family)
    config = CONFIGS[config_name]
    pipe.unet.add_adapter(SliderLoraConfig(**config, model=pipe.unet, init_lora_weights=False), adapter_name="s")
    path = save_slider(pipe, tmp_path, adapter_name="s", formats=["comfyui"])["comfyui"]
    layers = _lora_layers(pipe.unet, "s")
    tensors = load_file(path)

    expected_keys = set()
    for name in layers:
        kohya = "lora_unet_" + name.replace(".", "_")
        expected_keys |= {f"{kohya}.lora_down.weight", f"{kohya}.lora_up.weight", f"{kohya}.alpha"}
    assert set(tensors) == expected_keys

    for name, layer in layers.items():
        kohya = "lora_unet_" + name.replace(".", "_")
        rank, alpha = _expected_alpha(config, name)
        torch.testing.assert_close(tensors[f"{kohya}.lora_down.weight"], layer.lora_A["s"].weight, atol=0, rtol=0)
        torch.testing.assert_close(tensors[f"{kohya}.lora_up.weight"], layer.lora_B["s"].weight, atol=0, rtol=0)
        assert tensors[f"{kohya}.lora_down.weight"].shape[0] == rank
        assert tensors[f"{kohya}.alpha"].shape == () and tensors[f"{kohya}.alpha"].dtype == torch.float32
        assert tensors[f"{kohya}.alpha"].item() == pytest.approx(alpha, rel=1e-6)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["ss_network_module"] == "networks.lora" and header["ss_network_dim"] == "4"

    # diffusers' kohya reader, independent of peft_slider, must rebuild the same layers and per-layer scale.
    fresh = build_tiny_pipeline(family)
    fresh.load_lora_weights(str(path), adapter_name="k")
    loaded = _lora_layers(fresh.unet, "k")
    assert set(loaded) == set(layers)
    for name, layer in layers.items():
        torch.testing.assert_close(loaded[name].lora_A["k"].weight, layer.lora_A["s"].weight, atol=0, rtol=0)
        torch.testing.assert_close(loaded[name].lora_B["k"].weight, layer.lora_B["s"].weight, atol=0, rtol=0)
        assert loaded[name].scaling["k"] == pytest.approx(layer.scaling["s"], rel=1e-6), name


@pytest.mark.parametrize("family", ("flux", "sd3", "zimage"))
def test_dit_file_has_transformer_keys_with_the_scale_in_lora_b(family, tmp_path):
    pipe = build_tiny_pipeline(family)
    denoiser = denoiser_of(pipe)
    denoiser.add_adapter(
        SliderLoraConfig(r=4, lora_alpha=6, model=denoiser, init_lora_weights=False), adapter_name="s"
    )
    path = save_slider(pipe, tmp_path, adapter_name="s", formats=["comfyui"])["comfyui"]
    tensors = load_file(path)
    layers = _lora_layers(denoiser, "s")
    assert set(tensors) == {f"transformer.{name}.lora_{part}.weight" for name in layers for part in "AB"}
    for name, layer in layers.items():
        torch.testing.assert_close(tensors[f"transformer.{name}.lora_A.weight"], layer.lora_A["s"].weight)
        # 1e-6 relative: one float32 rounding of B * 1.5.
        expected_b = layer.lora_B["s"].weight * layer.scaling["s"]
        torch.testing.assert_close(tensors[f"transformer.{name}.lora_B.weight"], expected_b, atol=0, rtol=1e-6)
    # diffusers reads it with alpha = rank (no alpha, no metadata): scale 1 on the baked B.
    fresh = build_tiny_pipeline(family)
    fresh.load_lora_weights(str(path), adapter_name="k")
    for name, layer in _lora_layers(denoiser_of(fresh), "k").items():
        assert layer.scaling["k"] == 1.0, name


def _unet_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("model", ("tiny sd15", "tiny sdxl", "SD 1.5", "SDXL"))
def test_unet_names_rebuild_from_kohya_names_without_the_model(model):
    if model.startswith("tiny"):
        unet = build_tiny_pipeline(model.split()[1]).unet
    else:
        unet, _ = build_meta_model({"SD 1.5": "sd15", "SDXL": "sdxl"}[model])
    names = _unet_names(unet)
    assert len(names) > 20
    for name in names:
        kohya = "lora_unet_" + name.replace(".", "_")
        assert unet_module_name(kohya) == name
        assert unet_module_name(kohya, module_names=names) == name


def test_pure_functions_round_trip():
    state = {
        "down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.randn(2, 8),
        "down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.randn(8, 2),
        "conv_in.lora_A.weight": torch.randn(4, 4, 3, 3),
        "conv_in.lora_B.weight": torch.randn(32, 4, 1, 1),
    }
    alphas = {"down_blocks.0.attentions.0.proj_in": 1.0, "conv_in": 8.0}
    back, back_alphas = from_kohya(to_kohya(state, alphas))
    assert back_alphas == alphas
    assert back.keys() == state.keys() and all(torch.equal(back[key], state[key]) for key in state)

    scales = {"down_blocks.0.attentions.0.proj_in": 0.5, "conv_in": 2.0}
    baked, baked_alphas = from_comfyui_transformer(to_comfyui_transformer(state, scales))
    assert baked_alphas == {"down_blocks.0.attentions.0.proj_in": 2.0, "conv_in": 4.0}  # alpha = rank
    torch.testing.assert_close(baked["conv_in.lora_B.weight"], state["conv_in.lora_B.weight"] * 2.0)
    with_alpha = {"transformer.x.lora_A.weight": torch.ones(2, 3), "transformer.x.lora_B.weight": torch.ones(3, 2)}
    with_alpha["transformer.x.alpha"] = torch.tensor(1.0)
    assert from_comfyui_transformer(with_alpha)[1] == {"x": 1.0}


def _lumina2_state(rank: int = 3) -> dict[str, torch.Tensor]:
    """LoRA matrices with Lumina 2's shapes in one layer (q: 2304 rows, k/v: 768, GQA), plus a non-fused module."""
    generator = torch.Generator().manual_seed(0)
    rows = {"layers.0.attn.to_q": 2304, "layers.0.attn.to_k": 768, "layers.0.attn.to_v": 768, "x_embedder": 2304}
    columns = {"x_embedder": 64}
    state = {}
    for module, out in rows.items():
        state[f"{module}.lora_A.weight"] = torch.randn(rank, columns.get(module, 2304), generator=generator)
        state[f"{module}.lora_B.weight"] = torch.randn(out, rank, generator=generator)
    return state


def test_fused_original_names_hold_the_exact_delta_and_read_back():
    state = _lumina2_state()
    names = COMFYUI_NAMES["Lumina2Transformer2DModel"]
    scales = {"layers.0.attn.to_q": 0.5, "layers.0.attn.to_k": 2.0, "layers.0.attn.to_v": -1.0, "x_embedder": 1.5}
    tensors = to_comfyui_transformer(state, scales, names=names, native_only=True)
    assert set(tensors) == {
        f"diffusion_model.{name}.lora_{part}.weight"
        for name in ("layers.0.attention.qkv", "x_embedder")
        for part in "AB"
    }
    fused = tensors["diffusion_model.layers.0.attention.qkv.lora_B.weight"].double()
    fused = fused @ tensors["diffusion_model.layers.0.attention.qkv.lora_A.weight"].double()
    expected = torch.cat(
        [
            state[f"layers.0.attn.to_{p}.lora_B.weight"].double()
            @ state[f"layers.0.attn.to_{p}.lora_A.weight"].double()
            * scales[f"layers.0.attn.to_{p}"]
            for p in "qkv"
        ]
    )
    # float32 B * scale, then an exact float64 product: only the one rounding of the baked scale.
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-6)

    header = comfyui_names_header(state, names, native_only=True)
    back, alphas = from_comfyui_transformer(tensors, header=header)
    assert back.keys() == state.keys() and set(alphas.values()) == {3.0}  # alpha = rank: the scale is in lora_B
    for module, scale in scales.items():
        torch.testing.assert_close(back[f"{module}.lora_A.weight"], state[f"{module}.lora_A.weight"], atol=0, rtol=0)
        torch.testing.assert_close(back[f"{module}.lora_B.weight"], state[f"{module}.lora_B.weight"] * scale)


def test_chroma_guidance_layer_keeps_its_name_under_diffusion_model():
    state = {
        "distilled_guidance_layer.in_proj.lora_A.weight": torch.ones(2, 64),
        "distilled_guidance_layer.in_proj.lora_B.weight": torch.ones(5120, 2),
        "proj_out.lora_A.weight": torch.ones(2, 3072),
        "proj_out.lora_B.weight": torch.ones(64, 2),
    }
    names = COMFYUI_NAMES["ChromaTransformer2DModel"]
    tensors = to_comfyui_transformer(state, {"distilled_guidance_layer.in_proj": 1.0, "proj_out": 1.0}, names=names)
    assert sorted(tensors) == [
        "diffusion_model.distilled_guidance_layer.in_proj.lora_A.weight",
        "diffusion_model.distilled_guidance_layer.in_proj.lora_B.weight",
        "transformer.proj_out.lora_A.weight",
        "transformer.proj_out.lora_B.weight",
    ]
    back, _ = from_comfyui_transformer(tensors, header=comfyui_names_header(state, names))
    assert back.keys() == state.keys()


BAD_INPUTS = {
    "kohya key outside the layout": (
        lambda: from_kohya({"lora_unet_x.weight": torch.zeros(1)}),
        "not in kohya layout",
    ),
    "kohya module without up": (
        lambda: from_kohya({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 3)}),
        "has no 'lora_up.weight' key",
    ),
    "kohya alpha with several numbers": (
        lambda: from_kohya(
            {
                "lora_unet_conv_in.lora_down.weight": torch.zeros(2, 3),
                "lora_unet_conv_in.lora_up.weight": torch.zeros(3, 2),
                "lora_unet_conv_in.alpha": torch.zeros(2),
            }
        ),
        "must hold one number",
    ),
    "kohya name the model lacks": (
        lambda: unet_module_name("lora_unet_conv_middle", module_names=["conv_in", "conv_out"]),
        "names no module",
    ),
    "missing alpha for a module": (
        lambda: to_kohya({"a.lora_A.weight": torch.zeros(1, 1), "a.lora_B.weight": torch.zeros(1, 1)}, {}),
        "no entry for module 'a'",
    ),
    "lora_A without lora_B": (
        lambda: to_comfyui_transformer({"a.lora_A.weight": torch.zeros(1, 1)}, {"a": 1.0}),
        "no lora_B",
    ),
    "fused weight adapted in part": (
        lambda: to_comfyui_transformer(
            {k: v for k, v in _lumina2_state().items() if "to_k" not in k},
            dict.fromkeys(["layers.0.attn.to_q", "layers.0.attn.to_v", "x_embedder"], 1.0),
            names=COMFYUI_NAMES["Lumina2Transformer2DModel"],
        ),
        "one fused weight made of 3 diffusers modules",
    ),
    "native layout, module without an original name": (
        lambda: to_comfyui_transformer(
            {
                "layers.0.attn.norm_q.lora_A.weight": torch.ones(1, 2),
                "layers.0.attn.norm_q.lora_B.weight": torch.ones(2, 1),
            },
            {"layers.0.attn.norm_q": 1.0},
            names=COMFYUI_NAMES["Lumina2Transformer2DModel"],
            native_only=True,
        ),
        "have none in the architecture table",
    ),
    "original names without the header": (
        lambda: from_comfyui_transformer({"diffusion_model.x_embedder.lora_A.weight": torch.ones(1, 2)}),
        "only files peft_slider wrote",
    ),
    "transformer file with another prefix": (
        lambda: from_comfyui_transformer({"unet.a.lora_A.weight": torch.zeros(1, 1)}),
        "does not start with 'transformer.'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_state_dicts_raise(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_layouts_and_loaders_come_from_the_architecture_table():
    """The table's `comfyui_layout` and `lora_loader` name real layouts and real diffusers loader mixins, whose
    pipelines load the denoiser under the row's `component`."""
    import diffusers.loaders.lora_pipeline as lora_pipeline

    from peft_slider.targeting.architectures import ARCHITECTURES

    assert COMFYUI_LAYOUTS == {name: row.comfyui_layout for name, row in ARCHITECTURES.items() if row.comfyui_layout}
    assert set(COMFYUI_LAYOUTS.values()) == {"kohya", "transformer", "native"}
    assert COMFYUI_LAYOUTS["UNet2DConditionModel"] == "kohya"
    for name, row in ARCHITECTURES.items():
        assert row.component in ("unet", "transformer", "prior"), name
        if row.comfyui_layout is not None:
            assert row.lora_loader is not None, f"{name}: a ComfyUI file, but no diffusers file"
        if row.lora_loader is not None:
            mixin = getattr(lora_pipeline, row.lora_loader)
            assert row.component in mixin._lora_loadable_modules, name
