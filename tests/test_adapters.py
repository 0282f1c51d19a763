# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.training.adapters and peft_slider.formats.assistants: frozen assistant adapters beside a
trainable slider.

Real PEFT models (get_peft_model on a small MLP) and real diffusers models (a tiny UNet2DConditionModel and
FluxTransformer2DModel carrying adapters through `add_adapter`), real safetensors files written by PEFT's
`save_pretrained` and diffusers' `save_lora_adapter` / `FluxPipeline.save_lora_weights`.
"""

from __future__ import annotations

import doctest
import os
import re

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file
from test_scaling import (
    FLUX_TARGETS,
    MLP,
    MLP_TARGETS,
    UNET_TARGETS,
    VARIANTS,
    adapter_config,
    build_flux,
    build_mlp,
    build_unet,
    flux_inputs,
    make_flux,
    make_unet,
    mlp_inputs,
    run,
    scales,
    unet_inputs,
)
from torch import nn

from peft_slider.formats import assistants
from peft_slider.formats.assistants import add_assistant_adapter
from peft_slider.training import adapters
from peft_slider.training.adapters import (
    activate_adapters,
    active_adapter_names,
    adapter_names,
    freeze_adapter,
    frozen_adapter_names,
    slider_adapter_names,
)
from peft_slider.training.scaling import SliderScaler

MODELS = {"mlp": (build_mlp, mlp_inputs), "unet": (build_unet, unet_inputs), "flux": (build_flux, flux_inputs)}


def adapter_params(model, adapter):
    pattern = re.compile(rf"(^|\.){re.escape(adapter)}(\.|$)")
    return {name: p for name, p in model.named_parameters() if pattern.search(name)}


# The assistant through training: scale and weights bitwise unchanged, never a gradient; the slider learns.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", ["mlp", "unet"])
def test_assistant_untouched_through_training(variant, model_name):
    build, make_inputs = MODELS[model_name]
    model = build(variant)
    model.train()
    scaler = SliderScaler(model)
    assert scaler.adapter_names == ("slider",)
    assistant, slider = adapter_params(model, "assistant"), adapter_params(model, "slider")
    assert assistant and slider
    assistant_before = {name: p.detach().clone() for name, p in assistant.items()}
    slider_before = {name: p.detach().clone() for name, p in slider.items()}
    assistant_scales = {k: v for k, v in scales(model).items() if k[1] == "assistant"}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)

    for strength in [1.0, -1.0, 2.5, -0.5, 0.0, torch.tensor([1.0, -1.0])]:
        with scaler.at(strength):
            assert {k: v for k, v in scales(model).items() if k[1] == "assistant"} == assistant_scales
            loss = run(model, make_inputs(2)).pow(2).mean()
            loss.backward()  # inside the block, as gradient checkpointing would need
        assert all(p.grad is None for p in assistant.values())
        if isinstance(strength, torch.Tensor) or strength != 0.0:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slider.values())
        optimizer.step()
        optimizer.zero_grad()

    assert {k: v for k, v in scales(model).items() if k[1] == "assistant"} == assistant_scales
    for name, p in assistant.items():
        assert not p.requires_grad
        torch.testing.assert_close(p.detach(), assistant_before[name], rtol=0, atol=0)  # bitwise
    for name, p in slider.items():
        assert p.requires_grad
        assert not torch.equal(p.detach(), slider_before[name]), f"slider parameter {name} did not train"
    assert slider_adapter_names(model) == ["slider"]
    assert frozen_adapter_names(model) == ["assistant"]


# activate_adapters: PEFT's set_adapter unfreezes every adapter it activates; activate_adapters re-freezes.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", ["mlp", "unet"])
@pytest.mark.parametrize("trainable", [True, False])
def test_activate_adapters_keeps_frozen_frozen(variant, model_name, trainable):
    build, _ = MODELS[model_name]
    model = build(variant, assistant=False)
    if model_name == "mlp":
        model.add_adapter("assistant", adapter_config(variant, MLP_TARGETS))
        model.add_adapter("unused", adapter_config(variant, MLP_TARGETS))
        # The pitfall: PEFT activates both and makes both trainable.
        model.base_model.set_adapter(["slider", "assistant"])
    else:
        model.add_adapter(adapter_config(variant, UNET_TARGETS), adapter_name="assistant")
        model.add_adapter(adapter_config(variant, UNET_TARGETS), adapter_name="unused")
        model.set_adapter(["slider", "assistant"])
    assert slider_adapter_names(model) == ["assistant", "slider"]

    activate_adapters(model, slider="slider", frozen=["assistant"], trainable=trainable)

    assert active_adapter_names(model) == ["slider", "assistant"]
    assert adapter_names(model) == ["assistant", "slider", "unused"]
    assert slider_adapter_names(model) == (["slider"] if trainable else [])
    assert frozen_adapter_names(model) == (["assistant", "unused"] if trainable else ["assistant", "slider", "unused"])
    assert all(not p.requires_grad for p in adapter_params(model, "assistant").values())
    assert all(p.requires_grad == trainable for p in adapter_params(model, "slider").values())
    # Nothing outside the adapters became trainable.
    adapter_param_ids = {id(p) for a in ("slider", "assistant", "unused") for p in adapter_params(model, a).values()}
    assert not any(p.requires_grad for p in model.parameters() if id(p) not in adapter_param_ids)


def test_freeze_adapter_freezes_only_that_adapter():
    model = build_mlp("lora")
    activate_adapters(model, slider=["slider", "assistant"])
    freeze_adapter(model, "slider")
    assert slider_adapter_names(model) == ["assistant"]
    assert active_adapter_names(model) == ["slider", "assistant"]


# add_assistant_adapter: every source kind loads the same weights, frozen and active beside the slider.


def _source_model(model_name, variant):
    """The same base model as the target, with one adapter 'default' (random weights): the assistant to load."""
    if model_name == "mlp":
        torch.manual_seed(0)
        return get_peft_model(MLP(), adapter_config(variant, MLP_TARGETS))
    model = make_unet() if model_name == "unet" else make_flux()
    torch.manual_seed(7)
    model.add_adapter(adapter_config(variant, UNET_TARGETS if model_name == "unet" else FLUX_TARGETS), "default")
    return model


def _save(source, kind, folder):
    """Writes the source adapter in the format `kind`; returns the `source` and keyword arguments to load it."""
    state_dict = get_peft_model_state_dict(source, adapter_name="default")
    config = source.peft_config["default"]
    if kind == "peft_folder":
        if isinstance(source, PeftModel):
            source.save_pretrained(folder)
        else:  # what PeftModel.save_pretrained writes, for a model that carries its adapters directly
            config.save_pretrained(folder)
            prefixed = {f"base_model.model.{k}": v for k, v in state_dict.items()}
            save_file(prefixed, os.path.join(folder, "adapter_model.safetensors"))
        return folder, {}
    if kind == "config_and_state_dict":
        return config, {"state_dict": state_dict}
    if kind == "diffusers_file":  # keys without prefix, config in the safetensors metadata
        source.save_lora_adapter(folder, adapter_name="default")
        return os.path.join(folder, "pytorch_lora_weights.safetensors"), {"prefix": None}
    if kind == "pipeline_file":  # keys prefixed with 'unet.' or 'transformer.', as pipelines save them
        if isinstance(source, UNet2DConditionModel):
            StableDiffusionPipeline.save_lora_weights(
                folder, unet_lora_layers=state_dict, unet_lora_adapter_metadata=config.to_dict()
            )
        else:
            FluxPipeline.save_lora_weights(
                folder, transformer_lora_layers=state_dict, transformer_lora_adapter_metadata=config.to_dict()
            )
        return folder, {}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "model_name, variant, kind",
    [
        *[("mlp", v, k) for v in VARIANTS for k in ("peft_folder", "config_and_state_dict")],
        *[("unet", v, k) for v in VARIANTS for k in ("peft_folder", "config_and_state_dict")],
        ("unet", "lora", "diffusers_file"),
        # Regression: the default `prefix` was "transformer", which selects nothing in a UNet pipeline's file.
        ("unet", "lora", "pipeline_file"),
        ("flux", "lora", "diffusers_file"),
        ("flux", "lora", "pipeline_file"),
        ("flux", "lokr", "config_and_state_dict"),
    ],
)
def test_add_assistant_adapter_loads_frozen_beside_slider(tmp_path, model_name, variant, kind):
    build, make_inputs = MODELS[model_name]
    source = _source_model(model_name, variant)
    source.eval()
    source_arg, kwargs = _save(source, kind, str(tmp_path))
    inputs = make_inputs(2)
    expected = run(source, inputs)

    model = build(variant, assistant=False)
    model.eval()
    add_assistant_adapter(model, source_arg, **kwargs)

    assert active_adapter_names(model) == ["slider", "assistant"]
    assert slider_adapter_names(model) == ["slider"]
    assert frozen_adapter_names(model) == ["assistant"]
    # The loaded weights are the source's, bitwise.
    loaded = get_peft_model_state_dict(model, adapter_name="assistant")
    original = get_peft_model_state_dict(source, adapter_name="default")
    assert sorted(loaded) == sorted(original)
    for key, value in original.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # With the slider at strength 0 the model is the base plus the assistant at its own scale: the source's output.
    with SliderScaler(model).at(0.0):
        torch.testing.assert_close(run(model, inputs), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slider_trainable", [True, False])
def test_add_assistant_adapter_keeps_the_others_trainability(slider_trainable):
    model = build_mlp("lora")  # slider trainable, 'assistant' frozen, both active
    if not slider_trainable:
        freeze_adapter(model, "slider")  # inference
    source = _source_model("mlp", "lora")
    add_assistant_adapter(
        model, source.peft_config["default"], state_dict=get_peft_model_state_dict(source), adapter_name="second"
    )
    assert active_adapter_names(model) == ["slider", "assistant", "second"]
    assert slider_adapter_names(model) == (["slider"] if slider_trainable else [])


# Bad input: clear errors, and the model is left as it was.


def _adapters_state(model):
    return (
        adapter_names(model),
        active_adapter_names(model),
        slider_adapter_names(model),
        {name: p.detach().clone() for name, p in model.named_parameters()},
    )


def _same_state(a, b):
    assert a[:3] == b[:3]
    assert a[3].keys() == b[3].keys()
    for key in a[3]:
        assert torch.equal(a[3][key], b[3][key])


def _wrong_state_dict(model, tmp_path):
    config = adapter_config("lora", MLP_TARGETS)
    return add_assistant_adapter(model, config, state_dict={"base_model.model.fc9.lora_A.weight": torch.zeros(4, 8)})


def _missing_weights(model, tmp_path):
    config = adapter_config("lora", MLP_TARGETS)
    torch.manual_seed(0)
    source = get_peft_model(MLP(), adapter_config("lora", MLP_TARGETS))
    state_dict = {k: v for k, v in get_peft_model_state_dict(source).items() if "fc2" not in k}
    return add_assistant_adapter(model, config, state_dict=state_dict)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, t: activate_adapters(m, slider="nope"), ValueError, r"Unknown adapter 'nope' in `slider`"),
        (lambda m, t: activate_adapters(m, slider="slider", frozen="nope"), ValueError, r"'nope' in `frozen`"),
        (lambda m, t: activate_adapters(m, slider=[]), ValueError, r"`slider` must name at least one adapter"),
        (lambda m, t: activate_adapters(m, slider="slider", frozen="slider"), ValueError, r"in both `slider`"),
        (lambda m, t: activate_adapters(m, slider=3), TypeError, r"`slider` must be an adapter name.*got 3"),
        (lambda m, t: freeze_adapter(m, "nope"), ValueError, r"Unknown adapter 'nope' in `adapter_name`"),
        (lambda m, t: add_assistant_adapter(m, str(t / "missing")), ValueError, r"does not exist"),
        (lambda m, t: add_assistant_adapter(m, str(t)), ValueError, r"has no adapter_config.json"),
        (lambda m, t: add_assistant_adapter(m, 3), TypeError, r"`source` must be a path or a PeftConfig, got int"),
        (
            lambda m, t: add_assistant_adapter(m, str(t), adapter_name="slider"),
            ValueError,
            r"`adapter_name` 'slider' is already in use",
        ),
        (
            lambda m, t: add_assistant_adapter(m, adapter_config("lora", MLP_TARGETS)),
            ValueError,
            r"`state_dict` is required",
        ),
        (_wrong_state_dict, ValueError, r"1 unexpected keys .*fc9"),
        (_missing_weights, ValueError, r"0 unexpected keys.*2 adapter weights missing"),
    ],
)
def test_bad_input_raises_and_leaves_model_unchanged(tmp_path, call, error, match):
    model = build_mlp("lora", assistant=False)
    before = _adapters_state(model)
    with pytest.raises(error, match=match):
        call(model, tmp_path)
    _same_state(_adapters_state(model), before)


def _two_active_plain_module():
    """A plain module (no PeftModel, no diffusers) with 'slider' (trainable) and 'helper' (frozen), both active."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(target_modules=["0"]), model, adapter_name="slider")
    inject_adapter_in_model(LoraConfig(target_modules=["0"]), model, adapter_name="helper")
    activate_adapters(model, slider="slider", frozen="helper")
    return model


def _two_active_unet():
    model = build_unet("lora", assistant=False)
    model.add_adapter(adapter_config("lora", UNET_TARGETS), adapter_name="helper")
    activate_adapters(model, slider="slider", frozen="helper")
    return model


@pytest.mark.parametrize(
    "build, config, state_dict",
    [
        # Regression: the active adapters and requires_grad flags were restored only when loading succeeded.
        (_two_active_plain_module, LoraConfig(target_modules=["0"]), {"0.lora_A.weight": torch.zeros(8, 4)}),
        (lambda: build_mlp("lora"), adapter_config("lora", MLP_TARGETS), {"fc1.lora_A.weight": torch.zeros(4, 8)}),
        (_two_active_unet, adapter_config("lora", UNET_TARGETS), {"conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3)}),
    ],
    ids=["plain_module", "peft_model", "diffusers_model"],
)
# Rolling back deletes the half-loaded adapter, and PEFT then names a stand-in active adapter; the test checks that
# the ones that were active come back.
@pytest.mark.filterwarnings("ignore:Adapter .* was active which is now deleted:UserWarning")
def test_failed_load_restores_active_adapters_and_trainability(build, config, state_dict):
    model = build()
    before = _adapters_state(model)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    assert len(before[1]) == 2 and len(before[2]) == 1  # two active adapters, one of them trainable
    with pytest.raises(ValueError, match="adapter weights missing"):
        add_assistant_adapter(model, config, state_dict=state_dict, adapter_name="second")
    _same_state(_adapters_state(model), before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == requires_grad
    if isinstance(model, PeftModel):
        assert model.active_adapters == before[1]


@pytest.mark.parametrize(
    "kind, kwargs, match",
    [
        ("diffusers_file", {}, r"No weights for FluxTransformer2DModel .* with `prefix`='transformer'; pass prefix="),
        ("empty_folder", {}, r"has no adapter_config.json and no .safetensors file; pass the path of the LoRA file"),
    ],
)
def test_bad_diffusers_source_raises_and_leaves_model_unchanged(tmp_path, kind, kwargs, match):
    if kind == "empty_folder":
        source = str(tmp_path)
    else:  # keys without prefix, loaded with diffusers' default prefix 'transformer', which selects nothing
        source, _ = _save(_source_model("flux", "lora"), kind, str(tmp_path))
    model = build_flux("lora", assistant=False)
    before = _adapters_state(model)
    with pytest.raises(ValueError, match=match):
        add_assistant_adapter(model, source, **kwargs)
    _same_state(_adapters_state(model), before)


@pytest.mark.parametrize("module", [adapters, assistants], ids=lambda module: module.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# A failed load, then a retry: the failure leaves no trace (no ghost config), so the retry loads as on a fresh model.
def _nothing_matches(model_name):
    return LoraConfig(target_modules=["no_such_module"]), {"state_dict": {}}


def _wrong_shapes(model_name):
    config = adapter_config("lora", UNET_TARGETS if model_name == "unet" else MLP_TARGETS)
    return config, {"state_dict": {}}


def _missing_folder(model_name):
    return "/nonexistent/assistant", {}


def _bare_unet(variant, *, assistant=False):
    return make_unet()


@pytest.mark.parametrize("failure", [_nothing_matches, _wrong_shapes, _missing_folder])
@pytest.mark.parametrize("model_name", ["mlp", "unet", "bare_unet"])
def test_failed_assistant_load_then_retry_succeeds(tmp_path, model_name, failure):
    build = _bare_unet if model_name == "bare_unet" else MODELS[model_name][0]
    model = build("lora", assistant=False)
    before = _adapters_state(model)
    configs_before = {k: v.to_dict() for k, v in getattr(model, "peft_config", {}).items()}
    loaded_flag = getattr(model, "_hf_peft_config_loaded", None)
    source, kwargs = failure(model_name.removeprefix("bare_"))
    with pytest.raises((ValueError, KeyError, RuntimeError)):
        add_assistant_adapter(model, source, **kwargs)
    _same_state(_adapters_state(model), before)
    assert {k: v.to_dict() for k, v in getattr(model, "peft_config", {}).items()} == configs_before
    assert getattr(model, "_hf_peft_config_loaded", None) == loaded_flag

    good = _source_model("mlp" if model_name == "mlp" else "unet", "lora")
    source, kwargs = _save(good, "config_and_state_dict", str(tmp_path))
    add_assistant_adapter(model, source, **kwargs)
    assert "assistant" in adapter_names(model) and frozen_adapter_names(model) == ["assistant"]
    loaded = get_peft_model_state_dict(model, adapter_name="assistant")
    for key, value in get_peft_model_state_dict(good, adapter_name="default").items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
