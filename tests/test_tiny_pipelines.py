import doctest

import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig

from peft_slider.testing import tiny_pipelines
from peft_slider.testing.tiny_pipelines import (
    TINY_FAMILIES,
    build_tiny_pipeline,
    capture_denoiser_inputs,
    denoiser_attr,
    denoiser_of,
    save_tiny_pipeline,
    tiny_call_kwargs,
)

PROMPT = "a photo of a smiling old man"
# Attention projections exist under these names in every family's denoiser.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

# family, pipeline class, denoiser attribute, denoiser class, shape of `pipe(...)[0]` with `tiny_call_kwargs`
FAMILIES = [
    ("sd15", "StableDiffusionPipeline", "unet", "UNet2DConditionModel", (1, 3, 32, 32)),
    ("sdxl", "StableDiffusionXLPipeline", "unet", "UNet2DConditionModel", (1, 3, 32, 32)),
    ("flux", "FluxPipeline", "transformer", "FluxTransformer2DModel", (1, 3, 32, 32)),
    ("sd3", "StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel", (1, 3, 32, 32)),
    ("zimage", "ZImagePipeline", "transformer", "ZImageTransformer2DModel", (1, 3, 32, 32)),
    ("chroma", "ChromaPipeline", "transformer", "ChromaTransformer2DModel", (1, 3, 32, 32)),
    ("wan", "WanPipeline", "transformer", "WanTransformer3DModel", (1, 5, 3, 32, 32)),
]
FAMILY_NAMES = [row[0] for row in FAMILIES]


def generate(pipe, family: str) -> torch.Tensor:
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **tiny_call_kwargs(family))[0]


def module_state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
        for key, value in component.state_dict().items()
    }


def test_table_covers_every_family():
    assert sorted(FAMILY_NAMES) == sorted(TINY_FAMILIES)


@pytest.mark.parametrize("family, pipeline_class, attr, denoiser_class, shape", FAMILIES, ids=FAMILY_NAMES)
def test_build_and_call(family, pipeline_class, attr, denoiser_class, shape):
    pipe = build_tiny_pipeline(family)
    assert type(pipe).__name__ == pipeline_class
    assert denoiser_attr(pipe) == attr
    assert denoiser_of(pipe) is getattr(pipe, attr)
    assert type(denoiser_of(pipe)).__name__ == denoiser_class

    output = generate(pipe, family)
    assert tuple(output.shape) == shape
    assert torch.isfinite(output).all()
    assert 0.0 <= output.min() <= output.max() <= 1.0
    assert output.std() > 0.01  # an image, not a constant


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_seed_same_weights_and_global_rng_untouched(family):
    rng_before = torch.get_rng_state()
    first, second = (
        module_state(build_tiny_pipeline(family, seed=0)),
        module_state(build_tiny_pipeline(family, seed=0)),
    )
    assert torch.equal(torch.get_rng_state(), rng_before)

    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0, msg=key)

    other = build_tiny_pipeline(family, seed=1)
    other_denoiser, prefix = denoiser_of(other).state_dict(), denoiser_attr(other) + "."
    differing = [
        k for k, v in other_denoiser.items() if v.is_floating_point() and not torch.equal(v, first[prefix + k])
    ]
    assert differing, "seed=1 gave the same denoiser weights as seed=0"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_and_load_through_from_pretrained(family, tmp_path):
    built = build_tiny_pipeline(family, seed=3)
    path = save_tiny_pipeline(family, tmp_path / family, seed=3)
    assert path == tmp_path / family

    loaded = DiffusionPipeline.from_pretrained(path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(built)
    built_state, loaded_state = module_state(built), module_state(loaded)
    assert built_state.keys() == loaded_state.keys()
    for key, value in built_state.items():
        torch.testing.assert_close(loaded_state[key], value, atol=0, rtol=0, msg=key)  # the same weights, bitwise
    # Not bitwise: from_pretrained's weights are views into the safetensors file, at addresses that are not 64-byte
    # aligned, and CPU matmul kernels sum in another order on unaligned data (weights copied into fresh memory give
    # bitwise-identical images). Observed up to 3.8e-6 on these [0, 1] images, while a one-word change of the prompt
    # moves them by ~2e-2: 1e-5 still catches a tokenizer, text encoder or scheduler that loads wrong.
    torch.testing.assert_close(generate(loaded, family), generate(built, family), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_denoiser_has_no_all_zero_parameter(family):
    denoiser = denoiser_of(build_tiny_pipeline(family))
    all_zero = [name for name, parameter in denoiser.named_parameters() if parameter.count_nonzero() == 0]
    assert all_zero == []


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_changes_output_and_gets_gradients(family):
    pipe = build_tiny_pipeline(family)
    base = generate(pipe, family)
    denoiser = denoiser_of(pipe)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS, init_lora_weights=False))

    adapted = generate(pipe, family)
    assert (adapted - base).abs().max() > 1e-3, "a random LoRA on the attention projections left the image unchanged"

    inputs = capture_denoiser_inputs(
        pipe, PROMPT, generator=torch.Generator().manual_seed(0), **tiny_call_kwargs(family)
    )
    prediction = denoiser(**inputs)[0]
    # Z-Image returns one tensor per sample.
    prediction = torch.stack(prediction) if isinstance(prediction, list) else prediction
    prediction.square().mean().backward()
    lora = {name: p for name, p in denoiser.named_parameters() if "lora_" in name}
    assert lora
    without_gradient = [name for name, p in lora.items() if p.grad is None or p.grad.count_nonzero() == 0]
    assert without_gradient == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_dtype_matches_from_pretrained_torch_dtype(family, dtype, tmp_path):
    built = build_tiny_pipeline(family, seed=2, dtype=dtype)
    loaded = DiffusionPipeline.from_pretrained(save_tiny_pipeline(family, tmp_path, seed=2), torch_dtype=dtype)
    built_state, loaded_state = module_state(built), module_state(loaded)
    assert built_state.keys() == loaded_state.keys()
    for key, value in built_state.items():
        # Same dtype per tensor (including modules the model class keeps in float32) and the same values (atol=0).
        torch.testing.assert_close(value, loaded_state[key], atol=0, rtol=0, msg=key)
    assert any(value.dtype == dtype for value in built_state.values())


def test_call_kwargs_are_a_fresh_copy():
    kwargs = tiny_call_kwargs("flux")
    kwargs["height"] = 1024
    assert tiny_call_kwargs("flux")["height"] == 32


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: build_tiny_pipeline("sd16"), ValueError, r"`family` must be one of .*got 'sd16'"),
        (lambda: build_tiny_pipeline(None), ValueError, r"`family` must be one of .*got None"),
        (lambda: build_tiny_pipeline("sd15", seed=1.5), TypeError, r"`seed` must be an int, got 1.5"),
        (lambda: build_tiny_pipeline("sd15", seed=True), TypeError, r"`seed` must be an int, got True"),
        (
            lambda: build_tiny_pipeline("sd15", seed=-1),
            ValueError,
            r"`seed` must be an integer in \[0, 2\*\*63\), got -1; pass a non-negative int",
        ),
        (lambda: build_tiny_pipeline("sd15", dtype=torch.int8), TypeError, r"`dtype` must be a floating-point"),
        (lambda: build_tiny_pipeline("sd15", dtype="fp16"), TypeError, r"`dtype` must be .*got 'fp16'"),
        (lambda: save_tiny_pipeline("sd15", 3), TypeError, r"`path` must be a str or pathlib.Path, got int"),
        (lambda: tiny_call_kwargs("SD15"), ValueError, r"`family` must be one of .*got 'SD15'"),
        (lambda: denoiser_attr(torch.nn.Linear(2, 2)), TypeError, r"`pipe` must be a diffusers DiffusionPipeline"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_docstring_examples():
    result = doctest.testmod(tiny_pipelines, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
