# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Self-test of the tiny denoiser table in tests/denoisers.py: every case builds, runs forward and backward, and
its declared token counts are what the attention modules really see."""

from __future__ import annotations

import doctest
import re

import pytest
import torch

import tests.denoisers
from tests.denoisers import DENOISERS, DenoiserCase, output_tensor, randomize_zero_parameters

CASES = sorted(DENOISERS)

# Two text lengths that are not the image token count of any case at its default size.
TEXT_LENGTHS = (7, 11)

# The classes the project promises to cover; a case for each must exist.
EXPECTED_CLASSES = {
    "UNet2DConditionModel",
    "ControlNetModel",
    "SD3ControlNetModel",
    "FluxControlNetModel",
    "QwenImageControlNetModel",
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
    "Flux2Transformer2DModel",
    "ChromaTransformer2DModel",
    "AuraFlowTransformer2DModel",
    "ZImageTransformer2DModel",
    "QwenImageTransformer2DModel",
    "Lumina2Transformer2DModel",
    "WanTransformer3DModel",
    "HiDreamImageTransformer2DModel",
    "LTXVideoTransformer3DModel",
    "CosmosTransformer3DModel",
    "Kandinsky5Transformer3DModel",
    "SanaTransformer2DModel",
    "PixArtTransformer2DModel",
    "StableCascadeUNet",
}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    # Built once per module: every test below only reads the models or clears the gradients it made.
    return {case_id: DENOISERS[case_id].build() for case_id in CASES}


def _probe_token_dims(model: torch.nn.Module, patterns: dict[str, str | None]) -> dict[str, dict[str, int]]:
    """Registers forward hooks on modules whose name fullmatches each pattern; returns their input token dims."""
    seen: dict[str, dict[str, int]] = {kind: {} for kind in patterns}
    handles = []
    for name, module in model.named_modules():
        for kind, pattern in patterns.items():
            if pattern is not None and re.fullmatch(pattern, name):

                def hook(mod, args, out, kind=kind, name=name):
                    seen[kind][name] = args[0].shape[1]

                handles.append(module.register_forward_hook(hook))
    return seen, handles


def test_table_covers_every_class():
    assert {case.class_name for case in DENOISERS.values()} == EXPECTED_CLASSES


@pytest.mark.parametrize("case_id", CASES)
def test_build_is_eval_and_has_no_all_zero_parameter(case_id, models):
    model = models[case_id]
    assert type(model).__name__ == DENOISERS[case_id].class_name
    assert not model.training
    zero = [name for name, p in model.named_parameters() if not p.any()]
    assert zero == []


@pytest.mark.parametrize("case_id", CASES)
def test_build_is_deterministic(case_id, models):
    again = DENOISERS[case_id].build()
    for (name, p), (_, q) in zip(models[case_id].named_parameters(), again.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{case_id}: parameter {name} differs between builds")


@pytest.mark.parametrize("case_id", CASES)
def test_forward_and_backward_for_two_text_lengths(case_id, models):
    case, model = DENOISERS[case_id], models[case_id]
    outputs = []
    for text_tokens in TEXT_LENGTHS:
        model.zero_grad(set_to_none=True)
        out = case.output_tensor(model(**case.make_inputs(model, batch_size=2, text_tokens=text_tokens)))
        assert out.shape[0] == 2
        assert torch.isfinite(out).all()
        out.square().mean().backward()
        outputs.append(out.detach())
        # The image self-attention query projections must get a real gradient (zero-init paths were randomised).
        for name, module in model.named_modules():
            if re.fullmatch(case.image_query, name):
                assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    assert outputs[0].shape == outputs[1].shape


@pytest.mark.parametrize("case_id", CASES)
@pytest.mark.parametrize("text_tokens, size_factor", [(TEXT_LENGTHS[0], 1), (TEXT_LENGTHS[1], 2), (40, 1)])
def test_declared_token_counts_match_attention_inputs(case_id, text_tokens, size_factor, models):
    case, model = DENOISERS[case_id], models[case_id]
    image_size = case.default_image_size * size_factor
    image_tokens = case.image_tokens(image_size=image_size)
    all_image = case.all_image_tokens(image_size=image_size)
    context = case.context_tokens(text_tokens=text_tokens)

    # The point of the sizes: a token dimension tells image, text and concatenated apart.
    assert image_tokens not in (text_tokens, context)
    assert context not in all_image
    assert {n + context for n in all_image}.isdisjoint({*all_image, context, text_tokens})

    patterns = {"image": case.image_query, "text": case.text_key, "joint": case.joint_key}
    patterns.update({f"fixed:{p}": p for p in case.fixed_probes})
    seen, handles = _probe_token_dims(model, patterns)
    try:
        with torch.no_grad():
            model(**case.make_inputs(model, text_tokens=text_tokens, image_size=image_size))
    finally:
        for handle in handles:
            handle.remove()

    assert seen["image"], f"no module matched image_query {case.image_query!r}"
    first_image_module = next(iter(seen["image"]))
    assert seen["image"][first_image_module] == image_tokens
    assert set(seen["image"].values()) <= set(all_image)
    if case.text_key is not None:
        assert seen["text"], f"no module matched text_key {case.text_key!r}"
        assert set(seen["text"].values()) == {context}
    if case.joint_key is not None:
        assert seen["joint"], f"no module matched joint_key {case.joint_key!r}"
        assert set(seen["joint"].values()) <= {n + context for n in all_image}
    for pattern, tokens in case.fixed_probes.items():
        assert set(seen[f"fixed:{pattern}"].values()) == {tokens}, pattern


def test_output_tensor_reads_samples_lists_and_residual_tuples():
    sample = torch.randn(2, 3)
    assert output_tensor({"sample": sample}) is sample
    torch.testing.assert_close(output_tensor({"sample": [sample[0], sample[1]]}), sample, rtol=0, atol=0)
    flat = output_tensor({"down": (torch.ones(2, 3, 4), torch.zeros(2, 5)), "mid": None})
    torch.testing.assert_close(flat, torch.cat([torch.ones(2, 12), torch.zeros(2, 5)], dim=1), rtol=0, atol=0)
    with pytest.raises(TypeError, match="`out` must be"):
        output_tensor("not an output")


def test_randomize_zero_parameters_only_touches_all_zero_tensors():
    layer = torch.nn.Linear(3, 3)
    torch.nn.init.zeros_(layer.bias)
    weight = layer.weight.detach().clone()
    assert randomize_zero_parameters(layer, seed=1) == ["bias"]
    assert layer.bias.abs().sum() > 0
    torch.testing.assert_close(layer.weight.detach(), weight, rtol=0, atol=0)


def test_make_inputs_rejects_bad_sizes():
    case: DenoiserCase = DENOISERS["flux"]
    with pytest.raises(ValueError, match="`batch_size` and `text_tokens` must be positive"):
        case.make_inputs(torch.nn.Module(), batch_size=0)


def test_docstring_examples_run():
    result = doctest.testmod(tests.denoisers, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5
    assert result.failed == 0
