# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.training.scaling: signed slider strength, exact restore, per-sample strengths.

Models are real and tiny: a PEFT-wrapped MLP (also with frames folded into the batch), and diffusers'
UNet2DConditionModel and FluxTransformer2DModel built from small configs, carrying adapters through diffusers'
`add_adapter`. Every model also carries a frozen "assistant" adapter of the same type beside the slider, unless a
test needs it gone. Adapter weights are random (`init_lora_weights=False` / `init_weights=False`), so every delta is
non-zero.
"""

from __future__ import annotations

import contextlib
import copy
import doctest
import re
import threading

import pytest
import torch
from diffusers import FluxTransformer2DModel, UNet2DConditionModel
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peft_slider.formats.assistants import add_assistant_adapter
from peft_slider.training import scaling
from peft_slider.training.adapters import (
    activate_adapters,
    active_adapter_names,
    slider_adapter_names,
)
from peft_slider.training.scaling import SliderScaler, slider_strength

VARIANTS = ("lora", "lokr", "loha")
MLP_TARGETS = ["fc1", "fc2"]
UNET_TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "proj_in", "conv_in"]
# Image-stream attention of Flux: double blocks' to_q/k/v/to_out.0 and single blocks' to_q/k/v.
FLUX_TARGETS = r".*transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0)"


def adapter_config(variant: str, targets, *, dropout: bool = False):
    if variant == "lora":
        return LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, lora_dropout=0.5 if dropout else 0.0
        )
    lycoris = {"r": 4, "alpha": 8, "target_modules": targets, "init_weights": False}
    if dropout:
        lycoris.update(rank_dropout=0.5, module_dropout=0.3)
    return (LoKrConfig if variant == "lokr" else LoHaConfig)(**lycoris)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FoldedMLP(MLP):
    """Takes (batch, frames, tokens, channels) and runs the layers on frames folded into the batch."""

    def forward(self, x):
        batch, frames = x.shape[:2]
        return super().forward(x.flatten(0, 1)).unflatten(0, (batch, frames))


def _with_assistant_peft(base: nn.Module, variant: str, targets, *, dropout: bool, assistant: bool) -> nn.Module:
    model = get_peft_model(base, adapter_config(variant, targets, dropout=dropout), adapter_name="slider")
    if assistant:
        model.add_adapter("assistant", adapter_config(variant, targets, dropout=dropout))
        activate_adapters(model, slider="slider", frozen=["assistant"])
    return model


def _with_assistant_diffusers(base: nn.Module, variant: str, targets, *, assistant: bool) -> nn.Module:
    base.add_adapter(adapter_config(variant, targets), adapter_name="slider")
    if assistant:
        base.add_adapter(adapter_config(variant, targets), adapter_name="assistant")
        activate_adapters(base, slider="slider", frozen=["assistant"])
    return base


def build_mlp(variant, *, assistant=True, dropout=False):
    torch.manual_seed(0)
    return _with_assistant_peft(MLP(), variant, MLP_TARGETS, dropout=dropout, assistant=assistant)


def build_folded(variant, *, assistant=True):
    torch.manual_seed(0)
    return _with_assistant_peft(FoldedMLP(), variant, MLP_TARGETS, dropout=False, assistant=assistant)


def make_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def make_flux():
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )


def build_unet(variant, *, assistant=True):
    return _with_assistant_diffusers(make_unet(), variant, UNET_TARGETS, assistant=assistant)


def build_flux(variant, *, assistant=True):
    return _with_assistant_diffusers(make_flux(), variant, FLUX_TARGETS, assistant=assistant)


def mlp_inputs(batch):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 5, 8, generator=gen),), {}


def folded_inputs(batch):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 3, 5, 8, generator=gen),), {}


def unet_inputs(batch):
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 4, 8, 8, generator=gen)
    timestep = torch.randint(0, 1000, (batch,), generator=gen)
    text = torch.randn(batch, 3, 8, generator=gen)
    return (sample, timestep, text), {"return_dict": False}


def flux_inputs(batch):
    gen = torch.Generator().manual_seed(1)
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
    img_ids = torch.cat([torch.zeros(16, 1), grid.float()], dim=1)
    kwargs = {
        "hidden_states": torch.randn(batch, 16, 4, generator=gen),
        "encoder_hidden_states": torch.randn(batch, 5, 32, generator=gen),
        "pooled_projections": torch.randn(batch, 32, generator=gen),
        "timestep": torch.rand(batch, generator=gen),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(5, 3),
        "return_dict": False,
    }
    return (), kwargs


MODELS = {
    "mlp": (build_mlp, mlp_inputs),
    "folded": (build_folded, folded_inputs),
    "unet": (build_unet, unet_inputs),
    "flux": (build_flux, flux_inputs),
}


def run(model, inputs):
    args, kwargs = inputs
    out = model(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def scales(model):
    """Every scale of every adapter (slider and assistant) in every tuner layer."""
    return {
        (name, adapter): value
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
        for adapter, value in module.scaling.items()
    }


def hook_count(model):
    """Forward hooks, forward pre-hooks and LoKr/LoHa delta wrappers left anywhere in the model."""
    count = 0
    for module in model.modules():
        count += len(module._forward_hooks) + len(module._forward_pre_hooks)
        count += len(module.__dict__.get(scaling._DELTA_FACTORS, {}))
        count += "_get_delta_activations" in module.__dict__
    return count


def assert_state(model, expected_scales, expected_hooks=0):
    assert scales(model) == expected_scales  # bitwise: the same floats
    assert hook_count(model) == expected_hooks


# Restore: bitwise after a normal exit and after an exception, for every variant, strength and entry point.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strength", [0.0, -1.0, -2.5, 3.0, "per_sample"])
@pytest.mark.parametrize("exit_by", ["normal", "exception"])
@pytest.mark.parametrize("entry", ["scaler.at", "slider_strength"])
def test_exact_restore(variant, strength, exit_by, entry):
    model = build_mlp(variant)
    inputs = mlp_inputs(3)
    if strength == "per_sample":
        strength = torch.tensor([1.0, -2.0, 0.0])
    before = scales(model)
    out_before = run(model, inputs)

    context = SliderScaler(model).at(strength) if entry == "scaler.at" else slider_strength(model, strength)
    with pytest.raises(RuntimeError, match="inside") if exit_by == "exception" else contextlib.nullcontext():
        with context:
            inside = scales(model)
            for (name, adapter), value in inside.items():
                if adapter == "slider" and not isinstance(strength, torch.Tensor):
                    assert value == before[(name, adapter)] * strength
                else:  # the assistant, and per-sample sliders (scaled by hooks instead)
                    assert value == before[(name, adapter)]
            assert (hook_count(model) > 0) == isinstance(strength, torch.Tensor)
            run(model, inputs)
            if exit_by == "exception":
                raise RuntimeError("inside the block")

    assert_state(model, before)
    torch.testing.assert_close(run(model, inputs), out_before, rtol=0, atol=0)  # exactly the same model again


# Nesting: restore in order. Functional blocks multiply the current scale; one scaler's blocks are absolute.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "entry, outer, inner",
    [
        ("slider_strength", 2.0, -3.0),
        ("slider_strength", 0.0, -1.5),
        ("scaler.at", 2.0, -3.0),
        ("scaler.at", "per_sample", 0.5),
        ("scaler.at", 0.5, "per_sample"),
    ],
)
def test_nested_contexts_restore_in_order(variant, entry, outer, inner):
    model = build_mlp(variant)
    per_sample = torch.tensor([1.0, -1.0])
    outer = per_sample if outer == "per_sample" else outer
    inner = per_sample if inner == "per_sample" else inner
    before = scales(model)
    scaler = SliderScaler(model)

    def enter(strength):
        return scaler.at(strength) if entry == "scaler.at" else slider_strength(model, strength)

    def expected(*factors):
        return {key: (value if key[1] != "slider" else _times(value, factors)) for key, value in before.items()}

    outer_scalar = 1.0 if isinstance(outer, torch.Tensor) else outer
    inner_scalar = 1.0 if isinstance(inner, torch.Tensor) else inner
    outer_hooks, inner_hooks = hook_count_for(model, outer), hook_count_for(model, inner)
    with enter(outer):
        assert_state(model, expected(outer_scalar), outer_hooks)
        with enter(inner):
            if entry == "slider_strength":  # multiplies the current scale
                assert_state(model, expected(outer_scalar, inner_scalar), 0)
            else:  # absolute: the inner strength replaces the outer one
                assert_state(model, expected(inner_scalar), inner_hooks)
        assert_state(model, expected(outer_scalar), outer_hooks)
    assert_state(model, before)


def _times(value, factors):
    for factor in factors:
        value = value * factor
    return value


def hook_count_for(model, strength):
    """The hooks one scaler installs for `strength` on `model` (measured on a copy; `model` must have none)."""
    assert hook_count(model) == 0
    if not isinstance(strength, torch.Tensor):
        return 0
    probe = copy.deepcopy(model)
    probe_scaler = SliderScaler(probe)
    probe_scaler.set(strength)
    count = hook_count(probe)
    probe_scaler.restore()
    return count


# Output: strength 0 is the base model, and the delta is linear in the strength, as PEFT's own set_scale computes.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strength", [0.0, 1.0, -1.0, -2.5, 3.0, 0.3])
def test_output_matches_direct_computation(variant, strength):
    model = build_mlp(variant, assistant=False)
    inputs = mlp_inputs(3)
    scaler = SliderScaler(model)

    # Layer level: fc1's output is base + s * (delta at strength 1); float32 rounding only (rtol 1e-5, atol 1e-6).
    layer = model.base_model.model.fc1
    x = inputs[0][0]
    base = layer.get_base_layer()(x)
    with scaler.at(1.0):
        delta = layer(x) - base
    with scaler.at(strength):
        torch.testing.assert_close(layer(x), base + strength * delta, rtol=1e-5, atol=1e-6)
        out = run(model, inputs)

    # Model level: PEFT's set_scale(adapter, s) (scale = s * alpha / r) gives the same output (rtol 1e-5, atol 1e-6).
    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_scale("slider", strength)
    torch.testing.assert_close(out, run(reference, inputs), rtol=1e-5, atol=1e-6)

    if strength == 0.0:  # exactly the base model
        with model.disable_adapter():
            base_out = run(model, inputs)
        torch.testing.assert_close(out, base_out, rtol=0, atol=0)
    else:  # the slider does something at this strength
        with model.disable_adapter():
            assert (out - run(model, inputs)).abs().max() > 1e-3


# Per-sample strengths: one batched pass equals one pass per strength, with the assistant active beside the slider.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model_name", ["mlp", "mlp_dropout", "folded", "unet", "flux"])
def test_per_sample_equals_separate_passes(variant, model_name):
    dropout = model_name == "mlp_dropout"
    build, make_inputs = MODELS["mlp" if dropout else model_name]
    model = build(variant, dropout=True) if dropout else build(variant)
    if dropout:
        model.train()  # dropout masks are random: each pass starts from the same seed, so the masks agree
    strengths = torch.tensor([1.5, -1.0, 0.0, -2.5])
    inputs = make_inputs(len(strengths))
    scaler = SliderScaler(model)
    assert scaler.adapter_names == ("slider",)

    torch.manual_seed(123)
    with scaler.at(strengths):
        batched = run(model, inputs)
    separate = []
    for strength in strengths.tolist():
        torch.manual_seed(123)
        with scaler.at(strength):
            separate.append(run(model, inputs))

    for b, out in enumerate(separate):
        # Same batch shape in both passes; only the order of float32 products differs (rtol 1e-5, atol 1e-5).
        torch.testing.assert_close(batched[b], out[b], rtol=1e-5, atol=1e-5)
    # The strengths matter: rows at different strengths differ far beyond the tolerance.
    assert (separate[0] - separate[1]).abs().max() > 1e-3


# Several sliders composed with per-adapter strengths (dict), scalar or per-sample.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "strength",
    [
        {"age": 2.0, "smile": -1.0},
        {"age": -0.5},
        {"age": torch.tensor([1.0, -1.0, 0.5]), "smile": 2.0},
        {"age": torch.tensor([1.0, -1.0, 0.5]), "smile": torch.tensor([0.0, 2.0, -3.0])},
    ],
    ids=["scalars", "one_scalar", "per_sample_and_scalar", "two_per_sample"],
)
def test_dict_strengths_compose_sliders(variant, strength):
    torch.manual_seed(0)
    model = get_peft_model(MLP(), adapter_config(variant, MLP_TARGETS), adapter_name="age")
    model.add_adapter("smile", adapter_config(variant, MLP_TARGETS))
    activate_adapters(model, slider=["age", "smile"])
    before = scales(model)
    scaler = SliderScaler(model)
    assert scaler.adapter_names == ("age", "smile")
    inputs = mlp_inputs(3)

    with scaler.at(strength):
        for (name, adapter), value in scales(model).items():
            given = strength.get(adapter, 1.0)
            factor = 1.0 if isinstance(given, torch.Tensor) else given
            assert value == before[(name, adapter)] * factor
        batched = run(model, inputs)
    for b in range(3):
        row = {k: (float(v[b]) if isinstance(v, torch.Tensor) else v) for k, v in strength.items()}
        with scaler.at(row):
            # rtol 1e-5, atol 1e-5: float32 product order only.
            torch.testing.assert_close(batched[b], run(model, inputs)[b], rtol=1e-5, atol=1e-5)
    assert_state(model, before)


# Gradient checkpointing re-runs the forward during backward: with backward inside the block, the gradients are the
# ones of a plain (non-checkpointed) pass at the same strength.


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strength", [-2.0, "per_sample"], ids=["scalar", "per_sample"])
def test_backward_inside_block_with_gradient_checkpointing(variant, strength):
    strength = torch.tensor([1.5, -1.0]) if strength == "per_sample" else strength

    def slider_grads(checkpointing):
        model = build_unet(variant)
        model.train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        with SliderScaler(model).at(strength):
            run(model, unet_inputs(2)).pow(2).mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = slider_grads(False), slider_grads(True)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)  # recomputation: rounding only


def test_repeated_set_is_absolute_and_restore_is_exact():
    model = build_mlp("lora")
    before = scales(model)
    scaler = SliderScaler(model)
    for strength in [2.0, 2.0, -3, 0.0, 0.0, torch.tensor([1.0, 2.0]), -1.0, {"slider": 4.0}]:
        scaler.set(strength)
    for (name, adapter), value in scales(model).items():
        assert value == before[(name, adapter)] * (4.0 if adapter == "slider" else 1.0)
    scaler.restore()
    assert_state(model, before)


# Bad input: a clear error naming the argument and the value, and nothing changed.


def _lora_mlp():
    return build_mlp("lora")


def _two_frozen_active():
    model = build_mlp("lora", assistant=False)
    model.add_adapter("other", adapter_config("lora", MLP_TARGETS))
    activate_adapters(model, slider="slider", frozen=["other"], trainable=False)
    return model


def _merged():
    model = build_mlp("lora")
    model.base_model.model.fc1.merge(adapter_names=["slider"])
    return model


def _with_dora():
    model = build_mlp("lora")
    model.add_adapter("dora", LoraConfig(r=2, target_modules=MLP_TARGETS, use_dora=True))
    return model


def _default_scaler(model):
    return SliderScaler(model)


@pytest.mark.parametrize(
    "build, make_scaler, strength, match",
    [
        (_lora_mlp, None, float("nan"), r"`strength` for adapter 'slider' must be a finite real number.*got nan"),
        (_lora_mlp, None, float("inf"), r"must be a finite real number.*got inf"),
        (_lora_mlp, None, "high", r"must be a finite real number.*got 'high'"),
        (_lora_mlp, None, True, r"must be a finite real number.*got True"),
        (_lora_mlp, None, None, r"must be a finite real number.*got None"),
        (_lora_mlp, None, torch.ones(2, 2), r"1-D floating-point tensor, got shape \(2, 2\)"),
        (_lora_mlp, None, torch.tensor([1, 2]), r"got shape \(2,\) and dtype torch.int64"),
        (_lora_mlp, None, torch.tensor([]), r"non-empty 1-D floating-point tensor"),
        (_lora_mlp, None, torch.tensor([1.0, float("nan")]), r"must be finite, got \[1.0, nan\]"),
        (_lora_mlp, None, [1.0, "x"], r"non-empty list of real numbers, got \[1.0, 'x'\]"),
        (_lora_mlp, None, {"nope": 1.0}, r"names adapter 'nope', which this scaler does not scale; it scales"),
        (_lora_mlp, None, {"slider": "x"}, r"must be a finite real number.*got 'x'"),
        (
            _lora_mlp,
            lambda m: SliderScaler(m, adapter_names="nope"),
            1.0,
            r"Unknown adapter 'nope' in `adapter_names`: PeftModel has the adapters \['assistant', 'slider'\]",
        ),
        (_lora_mlp, lambda m: SliderScaler(m, adapter_names=[]), 1.0, r"`adapter_names` is empty"),
        (_two_frozen_active, None, 1.0, r"No slider adapter found in PeftModel: .*active adapters are"),
        (MLP, None, 1.0, r"No slider adapter found in MLP: it has no LoRA, LoKr or LoHa"),
        (_merged, None, 2.0, r"Adapter 'slider' is merged into the base weights of '.*fc1'"),
        (
            _with_dora,
            lambda m: SliderScaler(m, adapter_names=["dora"]),
            torch.tensor([1.0, 2.0]),
            r"Per-sample strengths are not supported for adapter 'dora'.*LoRA variant",
        ),
    ],
)
def test_bad_input_raises_and_leaves_model_unchanged(build, make_scaler, strength, match):
    model = build()
    before = scales(model)
    with pytest.raises(ValueError, match=match):
        scaler = (make_scaler or _default_scaler)(model)
        with scaler.at(strength):
            pass
    assert_state(model, before)


def _call_inner_layer(model, batch):
    # The root model's batch check is bypassed, so the layer's own check must catch the mismatch.
    return model.base_model.model.fc1(torch.randn(batch, 5, 8))


@pytest.mark.parametrize(
    "variant, call, match",
    [
        (v, call, match)
        for v in VARIANTS
        for call, match in [
            (lambda m: run(m, mlp_inputs(4)), r"have 3 entries, but PeftModel was called with a batch of 4"),
            (lambda m: _call_inner_layer(m, 4), r"have 3 entries, but '.*fc1' has an output of shape \(4, 5, "),
            (lambda m: m(torch.randn(3, 5, 8), adapter_names=["slider"] * 3), r"mixed-adapter batches"),
        ]
    ],
)
def test_per_sample_mismatch_raises_at_forward_and_restores(variant, call, match):
    model = build_mlp(variant)
    before = scales(model)
    with pytest.raises(ValueError, match=match):
        with SliderScaler(model).at(torch.tensor([1.0, -1.0, 2.0])):
            call(model)
    assert_state(model, before)


def test_docstring_examples():
    result = doctest.testmod(scaling, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# Interleaved blocks: whatever order blocks close in, the scales are those the blocks still open set (as if the
# closed ones had never been entered), and when all are closed, exactly the original ones.

PER_SAMPLE = torch.tensor([1.0, -1.0])
INTERLEAVED = {
    # name: (blocks as (label, entry, strength), closing order, expected after each close: slider factor, hooks?)
    "functional_outer_first": ([("a", "slider_strength", 2.0), ("b", "slider_strength", -3.0)], "ab", [-3.0, 1.0]),
    "functional_zero_outer_first": ([("a", "slider_strength", 0.0), ("b", "slider_strength", 5.0)], "ab", [5.0, 1.0]),
    "scaler_outer_first": ([("a", "at", 2.0), ("b", "at", -3.0)], "ab", [-3.0, 1.0]),
    "mixed_outer_first": ([("a", "at", 2.0), ("b", "slider_strength", -1.0)], "ab", [-1.0, 1.0]),
    "mixed_functional_outer_first": ([("a", "slider_strength", 2.0), ("b", "at", -1.0)], "ab", [-1.0, 1.0]),
    "three_middle_first": (
        [("a", "slider_strength", 2.0), ("b", "slider_strength", 3.0), ("c", "slider_strength", -1.0)],
        "bac",
        [-2.0, -1.0, 1.0],
    ),
    "three_in_order": (
        [("a", "slider_strength", 2.0), ("b", "at", 3.0), ("c", "slider_strength", -1.0)],
        "cba",
        [3.0, 2.0, 1.0],
    ),
    "per_sample_outer_first": ([("a", "at", PER_SAMPLE), ("b", "at", 0.5)], "ab", [0.5, 1.0]),
    "per_sample_inner_outlives": ([("a", "at", 0.5), ("b", "at", PER_SAMPLE)], "ab", [(1.0, "hooks"), 1.0]),
    "two_per_sample_outer_first": (
        [("a", "at", PER_SAMPLE), ("b", "at", PER_SAMPLE * 2)],
        "ab",
        [(1.0, "hooks"), 1.0],
    ),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", sorted(INTERLEAVED))
def test_interleaved_blocks_leave_the_open_blocks_strengths_and_finally_the_originals(variant, case):
    blocks, order, expected = INTERLEAVED[case]
    model = build_mlp(variant)
    inputs = mlp_inputs(2)
    before, out_before = scales(model), run(model, inputs)
    scaler = SliderScaler(model)  # the `at` blocks share one scaler; `slider_strength` builds its own
    open_blocks = {}
    for label, entry, strength in blocks:
        block = scaler.at(strength) if entry == "at" else slider_strength(model, strength)
        block.__enter__()
        open_blocks[label] = block
    for label, after in zip(order, expected):
        open_blocks.pop(label).__exit__(None, None, None)
        factor, hooks = after if isinstance(after, tuple) else (after, None)
        assert scales(model) == {k: v * factor if k[1] == "slider" else v for k, v in before.items()}
        assert (hook_count(model) > 0) == (hooks == "hooks")
    assert_state(model, before)
    torch.testing.assert_close(run(model, inputs), out_before, rtol=0, atol=0)  # the same model again


# Several threads: a PEFT layer has one scale for every thread, so one model cannot run at two strengths at once.
# While a block holds a model, anything from another thread that would change its adapters raises and changes nothing;
# different models are independent.

HOLDERS = {
    "scaler.at": lambda m: SliderScaler(m).at(2.0),
    "slider_strength": lambda m: slider_strength(m, 2.0),
    "per_sample": lambda m: SliderScaler(m).at(torch.tensor([2.0, 2.0])),
}
INTRUDERS = {
    "slider_strength": (lambda m: slider_strength(m, -1.0).__enter__(), r"held by a slider block in thread"),
    "scaler.at": (lambda m: SliderScaler(m).at(-1.0).__enter__(), r"held by a slider block in thread"),
    "scaler.set": (lambda m: SliderScaler(m, adapter_names="slider").set(-1.0), r"held by a slider block in thread"),
    "scaler.restore": (lambda m: SliderScaler(m, adapter_names="slider").restore(), r"held by a slider block in"),
    "activate_adapters": (lambda m: activate_adapters(m, slider="assistant"), r"held by a slider block in thread"),
    "merge_adapter": (lambda m: m.merge_adapter(), r"Cannot merge adapters into .* while a slider strength"),
    "add_assistant_adapter": (
        lambda m: add_assistant_adapter(m, adapter_config("lora", MLP_TARGETS), state_dict={}, adapter_name="x"),
        r"Cannot add adapter 'x': the model is held by a slider block in thread",
    ),
}


def in_thread(fn):
    """Runs `fn` in a new thread named "intruder"; returns {"value": ...} or {"error": ...}."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            result["error"] = error

    thread = threading.Thread(target=target, name="intruder")
    thread.start()
    thread.join()
    return result


@pytest.mark.parametrize("holder", sorted(HOLDERS))
@pytest.mark.parametrize("intruder", sorted(INTRUDERS))
def test_another_thread_cannot_change_a_model_a_block_holds(holder, intruder):
    model = build_mlp("lora")
    inputs = mlp_inputs(2)
    before, out_before = scales(model), run(model, inputs)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    call, match = INTRUDERS[intruder]
    with HOLDERS[holder](model):
        held = scales(model), active_adapter_names(model), slider_adapter_names(model)
        result = in_thread(lambda: call(model))
        assert isinstance(result.get("error"), RuntimeError), result
        assert re.search(match, str(result["error"])), str(result["error"])
        assert (scales(model), active_adapter_names(model), slider_adapter_names(model)) == held
    assert_state(model, before)
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    torch.testing.assert_close(run(model, inputs), out_before, rtol=0, atol=0)
    after = in_thread(lambda: call(model)).get("error")  # no longer held (the assistant's empty weights still fail)
    assert not isinstance(after, RuntimeError), after


def test_blocks_on_different_models_run_in_parallel_threads():
    models = [build_mlp("lora") for _ in range(4)]
    befores = [scales(m) for m in models]
    barrier = threading.Barrier(len(models))

    def work(model, strength):
        scaler = SliderScaler(model)
        barrier.wait()
        for _ in range(200):
            with scaler.at(strength), slider_strength(model, -1.0):
                assert scales(model)[("base_model.model.fc1", "slider")] == -strength * 2.0
        return scales(model)

    results = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, work(models[i], float(i + 1)))) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(4)] == befores


# Merging inside a block would bake the block's strength into the base weights for good: it is refused before any
# layer is merged, and the block still restores exactly.

MERGES = {
    "peft_merge_adapter": ("mlp", lambda m: m.merge_adapter()),
    "peft_merge_and_unload": ("mlp", lambda m: m.merge_and_unload()),
    "layer_merge": ("mlp", lambda m: m.base_model.model.fc2.merge()),
    "diffusers_fuse_lora": ("unet", lambda m: m.fuse_lora(adapter_names=["slider"])),
    "diffusers_fuse_assistant": ("unet", lambda m: m.fuse_lora(adapter_names=["assistant"])),
    # diffusers scales each layer by lora_scale just before merging it: the refused layer must be unscaled exactly.
    "diffusers_fuse_lora_scale": ("unet", lambda m: m.fuse_lora(lora_scale=0.3)),
}
BLOCKS = {
    "scaler.at": lambda m: SliderScaler(m, adapter_names="slider").at(2.0),
    "slider_strength": lambda m: slider_strength(m, -3.0, adapter_names="slider"),
    "per_sample": lambda m: SliderScaler(m, adapter_names="slider").at(torch.tensor([2.0, 0.0])),
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("merge", sorted(MERGES))
def test_merge_or_fuse_inside_a_block_is_refused_and_changes_nothing(merge, block):
    model_name, call = MERGES[merge]
    build, make_inputs = {"mlp": (build_mlp, mlp_inputs), "unet": (build_unet, unet_inputs)}[model_name]
    model = build("lora")
    inputs = make_inputs(2)
    before, out_before = scales(model), run(model, inputs)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    with BLOCKS[block](model):
        with pytest.raises(RuntimeError, match=r"Cannot merge adapters into .* while a slider strength is applied"):
            call(model)
        assert not any(layer.merged_adapters for layer in model.modules() if isinstance(layer, BaseTunerLayer))
    assert_state(model, before)
    assert {name: p for name, p in model.named_parameters()}.keys() == weights.keys()
    for name, p in model.named_parameters():
        assert torch.equal(p, weights[name]), name
    torch.testing.assert_close(run(model, inputs), out_before, rtol=0, atol=0)
    call(model)  # after the block, merging works again


# Strengths whose result cannot be finite (or that overflow every model) are refused, naming the value.

HUGE = {
    "set": lambda m: SliderScaler(m).set(1e30),
    "at": lambda m: SliderScaler(m).at(-1e30).__enter__(),
    "slider_strength": lambda m: slider_strength(m, 2e3).__enter__(),
    "dict": lambda m: SliderScaler(m).set({"slider": 1e6}),
    "per_sample": lambda m: SliderScaler(m).at(torch.tensor([1.0, 1e30])).__enter__(),
    "per_sample_list": lambda m: SliderScaler(m).set([1.0, -5e3]),
    "int": lambda m: SliderScaler(m).set(10**400),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_strengths_beyond_the_bound_are_refused(case):
    model = build_mlp("lora")
    before = scales(model)
    # An int too large for a float is refused as not finite, before the bound is looked at.
    with pytest.raises(
        ValueError, match=r"`strength` for adapter 'slider' .*(magnitude at most 1000|int of 401 digits)"
    ):
        HUGE[case](model)
    assert_state(model, before)
    with slider_strength(model, -1000.0):  # the bound itself is allowed, and finite
        assert torch.isfinite(run(model, mlp_inputs(2))).all()


def test_restore_while_merged_at_a_strength_is_refused_until_unmerged():
    """`set` then merge (outside any block) is the user's choice; restoring the scale before unmerging would leave
    the base weights changed for good (unmerge subtracts the delta at the restored scale)."""
    model = build_mlp("lora")
    before = scales(model)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    scaler = SliderScaler(model, adapter_names="slider")
    scaler.set(2.0)
    model.merge_adapter()
    with pytest.raises(ValueError, match=r"Adapter 'slider' was merged into the weights of '.*fc1' at scale 4.0"):
        scaler.restore()
    model.unmerge_adapter()
    scaler.restore()
    assert_state(model, before)
    for name, p in model.named_parameters():  # a merge and an unmerge round the base weights a little, no more
        torch.testing.assert_close(p, weights[name], rtol=0, atol=1e-6)


def test_a_copy_made_inside_a_block_is_an_ordinary_model():
    """A deep copy (an EMA or validation copy) made while a block holds the model is not held: it merges, and its
    own scales change, never the original's."""
    model = build_unet("lora")
    before = scales(model)
    with SliderScaler(model, adapter_names="slider").at(2.0):
        copy_ = copy.deepcopy(model)
        inside = scales(model)
        copy_.fuse_lora(lora_scale=0.5, adapter_names=["slider"])
        assert scales(model) == inside  # the original is untouched by the copy's fuse
        assert all(layer.merged_adapters for layer in copy_.modules() if isinstance(layer, BaseTunerLayer))
        with pytest.raises(RuntimeError, match="Cannot merge adapters"):
            model.fuse_lora(adapter_names=["slider"])
    assert_state(model, before)
    copy_.unfuse_lora()
