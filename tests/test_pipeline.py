# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.inference.pipeline: strengths on real tiny pipelines (SD 1.5, Flux, Z-Image), checked against diffusers.

Every pipeline's denoiser carries two random-weight slider adapters (`init_lora_weights=False`, `lora_alpha != r`, so
a wrong scale shows): "smile" and "age". Each test first sets the adapters with diffusers' own `pipe.set_adapters`.
References are computed with diffusers alone: `set_adapters` and one pipeline call per image, or the adapters
disabled for the base model. Z-Image has no attention-kwargs `scale` path, so it shows the layer-scale route works.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from test_scaling import in_thread

from peft_slider import SliderLoraConfig
from peft_slider.inference.pipeline import SliderPipelineMixin, enable_sliders
from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, denoiser_of, tiny_call_kwargs
from peft_slider.training.scaling import slider_strength

FAMILIES = ("sd15", "flux", "zimage")
PROMPT = "a portrait photo of a smiling woman"
STRENGTHS = [-2.0, -1.0, 0.0, 1.0, 2.0]
# One-pass sweeps vs one call per strength, on float32 images in [0, 1]: a batched matmul and a per-sample factor round
# differently (observed up to ~6e-6); 1e-4 is far below one 8-bit level (3.9e-3).
SWEEP_ATOL = 1e-4
# A slider at strength 1 moves these random-weight images by far more than this.
VISIBLE = 1e-2


def add_sliders(pipe):
    denoiser = denoiser_of(pipe)
    denoiser.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
    denoiser.add_adapter(SliderLoraConfig(r=2, lora_alpha=3, init_lora_weights=False), adapter_name="age")
    return pipe


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    family = request.param
    return family, add_sliders(enable_sliders(build_tiny_pipeline(family)))


def kwargs_of(family, **overrides):
    return {**tiny_call_kwargs(family), **overrides}


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def images_of(output):
    return output.images if hasattr(output, "images") else output.frames  # video pipelines return `frames`


def adapter_state(pipe):
    """Everything a slider call may touch on the denoiser, compared bitwise: scales, active adapters, requires_grad,
    and every forward hook / pre-hook / LoKr-LoHa wrapper."""
    denoiser = denoiser_of(pipe)
    layers = [(name, m) for name, m in denoiser.named_modules() if isinstance(m, BaseTunerLayer)]
    return {
        "scaling": {(name, adapter): value for name, m in layers for adapter, value in m.scaling.items()},
        "active": {name: list(m.active_adapters) for name, m in layers},
        "requires_grad": {name: p.requires_grad for name, p in denoiser.named_parameters()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in denoiser.modules()),
        "wrapped": sum("_get_delta_activations" in m.__dict__ for m in denoiser.modules()),
    }


def base_images(pipe, prompt=PROMPT, **kwargs):
    """The base model: diffusers' own switch-off of every adapter."""
    denoiser = denoiser_of(pipe)
    denoiser.disable_adapters()
    try:
        return images_of(pipe(prompt, **kwargs))
    finally:
        denoiser.enable_adapters()


def set_adapters_images(pipe, names, weights, prompt=PROMPT, **kwargs):
    pipe.set_adapters(names, adapter_weights=weights)
    return images_of(pipe(prompt, **kwargs))


# Strength 0 is the base pipeline; strength is absolute, as in set_adapters.


def test_strength_zero_is_base_pipeline(family_pipe):
    family, pipe = family_pipe
    pipe.set_adapters(["smile"], adapter_weights=[0.8])
    base = base_images(pipe, generator=generator(), **kwargs_of(family))
    zero = images_of(pipe.generate_at(PROMPT, strength=0.0, generator=generator(), **kwargs_of(family)))
    one = images_of(pipe.generate_at(PROMPT, strength=1.0, generator=generator(), **kwargs_of(family)))
    torch.testing.assert_close(zero, base, rtol=0, atol=0)  # a zero delta is added: exactly the base
    assert (one - base).abs().max() > VISIBLE
    # In a one-pass sweep, the strength-0 sample is the base image too (batched: up to rounding).
    swept = pipe.sweep(PROMPT, [1.0, 0.0, -1.0], **kwargs_of(family))
    torch.testing.assert_close(swept[1], base[0], rtol=0, atol=SWEEP_ATOL)


@pytest.mark.parametrize("current", [0.8, 0.0, -0.7])
def test_strength_is_absolute_like_set_adapters(family_pipe, current):
    family, pipe = family_pipe
    pipe.set_adapters(["smile"], adapter_weights=[current])
    before = adapter_state(pipe)
    ours = images_of(pipe.generate_at(PROMPT, strength=1.3, generator=generator(), **kwargs_of(family)))
    assert adapter_state(pipe) == before
    reference = set_adapters_images(pipe, ["smile"], [1.3], generator=generator(), **kwargs_of(family))
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)  # the same scale, written by PEFT's set_scale


# Prompt libraries: each entry equals the same prompt run alone after set_adapters.

LIBRARY = {
    "plain": PROMPT,
    "slider_plus": {"prompt": PROMPT, "adapter_strength": 1.2},
    "slider_minus": {"caption": PROMPT, "adapter_strength": -1.0},
    "slider_zero": {"prompt": PROMPT, "adapter_strength": 0},
    "composed": {"prompt": PROMPT, "adapter_strength": {"smile": 0.5, "age": -1.5}},
    "other_seed": {"prompt": "a photo of a cat", "adapter_strength": 2.0, "seed": 3},
}
# name -> (adapters, weights, prompt, seed) for set_adapters; the global strength is 0.7 on "smile".
LIBRARY_REFERENCE = {
    "plain": (["smile"], [0.7], PROMPT, 0),
    "slider_plus": (["smile"], [1.2], PROMPT, 0),
    "slider_minus": (["smile"], [-1.0], PROMPT, 0),
    "slider_zero": (["smile"], [0.0], PROMPT, 0),
    "composed": (["smile", "age"], [0.5, -1.5], PROMPT, 0),
    "other_seed": (["smile"], [2.0], "a photo of a cat", 3),
}


@pytest.mark.parametrize("source", ["mapping", "json_file"])
def test_library_equals_prompts_run_one_by_one_with_set_adapters(family_pipe, source, tmp_path):
    family, pipe = family_pipe
    pipe.set_adapters(["smile"], adapter_weights=[-0.3])
    before = adapter_state(pipe)
    library = LIBRARY
    if source == "json_file":
        library = tmp_path / "library.json"
        library.write_text(json.dumps(LIBRARY))
    images = pipe.generate_library(library, strength=0.7, seed=0, **kwargs_of(family))
    assert adapter_state(pipe) == before
    assert list(images) == list(LIBRARY)
    for name, (adapters, weights, prompt, seed) in LIBRARY_REFERENCE.items():
        reference = set_adapters_images(
            pipe, adapters, weights, prompt, generator=generator(seed), **kwargs_of(family)
        )
        torch.testing.assert_close(images[name], reference[0], rtol=0, atol=0, msg=f"entry {name!r}")


def test_library_without_global_strength_keeps_current_weights_and_takes_negative_prompts():
    pipe = add_sliders(enable_sliders(build_tiny_pipeline("sd15")))
    pipe.set_adapters(["smile"], adapter_weights=[-0.4])
    library = {"as_set": PROMPT, "negative": {"prompt": PROMPT, "negative_prompt": "a cat", "adapter_strength": 1.0}}
    images = pipe.generate_library(library, **kwargs_of("sd15"))
    as_set = images_of(pipe(PROMPT, generator=generator(), **kwargs_of("sd15")))
    torch.testing.assert_close(images["as_set"], as_set[0], rtol=0, atol=0)
    negative = set_adapters_images(
        pipe, ["smile"], [1.0], negative_prompt="a cat", generator=generator(), **kwargs_of("sd15")
    )
    torch.testing.assert_close(images["negative"], negative[0], rtol=0, atol=0)


# One-pass sweeps equal one call per strength, with and without classifier-free guidance in the batch.

SWEEP_CASES = [
    pytest.param("sd15", {}, id="sd15-cfg-[uncond,cond]"),
    pytest.param("flux", {}, id="flux-guidance-embedded"),
    pytest.param("flux", {"negative_prompt": "a cat", "true_cfg_scale": 2.0}, id="flux-true-cfg-two-calls"),
    pytest.param("zimage", {}, id="zimage-no-cfg"),
    pytest.param("zimage", {"guidance_scale": 4.0}, id="zimage-cfg-[cond,uncond]"),
]


def _pipe(family, cache={}):  # noqa: B006 - one pipeline per family for the parametrised tables below
    if family not in cache:
        cache[family] = add_sliders(enable_sliders(build_tiny_pipeline(family)))
    return cache[family]


@pytest.mark.parametrize("family, extra", SWEEP_CASES)
@pytest.mark.parametrize("slider_start", [0.0, 0.5])
def test_one_pass_sweep_equals_sequential_calls(family, extra, slider_start):
    pipe = _pipe(family)
    pipe.set_adapters(["smile"], adapter_weights=[0.6])
    before = adapter_state(pipe)
    kwargs = kwargs_of(family, num_inference_steps=2, **extra)
    one_pass = pipe.sweep(PROMPT, STRENGTHS, seed=5, slider_start=slider_start, **kwargs)
    assert adapter_state(pipe) == before
    # The reference: diffusers alone, one call per strength, with a step-end callback starting the slider late.
    for strength, image in zip(STRENGTHS, one_pass):
        reference = _set_adapters_with_start(pipe, strength, slider_start, kwargs, seed=5)
        torch.testing.assert_close(image, reference, rtol=0, atol=SWEEP_ATOL, msg=f"strength {strength}")
    # The strengths really differ: every non-zero strength moves the image away from strength 0, by far more than the
    # tolerance (with a delayed start only the last step of two runs the slider, so the change is smaller).
    for strength, image in zip(STRENGTHS, one_pass):
        assert strength == 0.0 or (image - one_pass[2]).abs().max() > 10 * SWEEP_ATOL
    pipe.set_adapters(["smile"], adapter_weights=[0.6])
    sequential = pipe.sweep(PROMPT, STRENGTHS, seed=5, slider_start=slider_start, one_pass=False, **kwargs)
    torch.testing.assert_close(torch.stack(one_pass), torch.stack(sequential), rtol=0, atol=SWEEP_ATOL)


def _set_adapters_with_start(pipe, strength, slider_start, kwargs, *, seed):
    """One image with diffusers alone: set_adapters, and for a delayed start weight 0 until a step-end callback."""
    steps = kwargs["num_inference_steps"]
    start = round(slider_start * steps)
    pipe.set_adapters(["smile"], adapter_weights=[0.0 if start > 0 else strength])

    def callback(pipe_, step, timestep, callback_kwargs):
        if step + 1 == start:
            pipe_.set_adapters(["smile"], adapter_weights=[strength])
        return callback_kwargs

    return images_of(pipe(PROMPT, generator=generator(seed), callback_on_step_end=callback, **kwargs))[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_pass_sweep_composes_sliders(family):
    pipe = _pipe(family)
    pipe.set_adapters(["smile"], adapter_weights=[1.0])  # "age" is inactive: the sweep switches it on for the call
    before = adapter_state(pipe)
    strengths = [{"smile": 1.0, "age": -1.0}, {"smile": 0.0, "age": 0.0}, {"smile": -2.0, "age": 0.5}]
    images = pipe.sweep(PROMPT, strengths, **kwargs_of(family))
    assert adapter_state(pipe) == before
    for strength, image in zip(strengths, images):
        reference = set_adapters_images(
            pipe, list(strength), list(strength.values()), generator=generator(), **kwargs_of(family)
        )
        torch.testing.assert_close(image, reference[0], rtol=0, atol=SWEEP_ATOL)


# The other tiny families the trainer supports: CFG in the batch (SD3, SDXL), CFG as two calls (Chroma), video (Wan).


@pytest.mark.parametrize("family", ["sd3", "sdxl", "chroma", "wan"])
def test_every_other_family_sweeps_in_one_pass_and_restores(family):
    pipe = add_sliders(enable_sliders(build_tiny_pipeline(family)))
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    before = adapter_state(pipe)
    strengths = [-2.0, 0.0, 1.5]
    images = pipe.sweep(PROMPT, strengths, slider_start=0.5, **kwargs_of(family, num_inference_steps=2))
    assert adapter_state(pipe) == before
    for strength, image in zip(strengths, images):
        reference = _set_adapters_with_start(pipe, strength, 0.5, kwargs_of(family, num_inference_steps=2), seed=0)
        torch.testing.assert_close(image, reference, rtol=0, atol=SWEEP_ATOL, msg=f"strength {strength}")
    assert (images[0] - images[1]).abs().max() > 10 * SWEEP_ATOL


# Delayed start: the steps before the start are exactly the base model's.


class DenoiserOutputs:
    """Records the denoiser's output of every call (a forward hook of the test's own, removed on exit)."""

    def __init__(self, pipe):
        self.denoiser = denoiser_of(pipe)
        self.outputs = []

    def __enter__(self):
        def hook(module, args, output):
            first = output[0] if isinstance(output, tuple) else output.sample
            self.outputs.append(torch.stack(first) if isinstance(first, list) else first.clone())

        self.handle = self.denoiser.register_forward_hook(hook)
        return self.outputs

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("slider_start, base_steps", [(0.25, 1), (0.5, 2), (0.75, 3)])
@pytest.mark.parametrize("method", ["generate_at", "sweep"])
def test_delayed_start_runs_the_base_model_before_the_start(family, slider_start, base_steps, method):
    pipe = _pipe(family)
    pipe.set_adapters(["smile"], adapter_weights=[1.0])
    kwargs = kwargs_of(family, num_inference_steps=4)
    if method == "generate_at":
        strengths, base_kwargs = [1.5], {"generator": generator()}
    else:
        strengths = [1.5, -2.0, 1.0]  # the base run is the same batch: the same prompt and noise three times
        base_kwargs = {"generator": [generator() for _ in strengths], "num_images_per_prompt": len(strengths)}
    with DenoiserOutputs(pipe) as base:
        base_images(pipe, **base_kwargs, **kwargs)
    with DenoiserOutputs(pipe) as slid:
        if method == "generate_at":
            pipe.generate_at(PROMPT, strength=strengths[0], slider_start=slider_start, generator=generator(), **kwargs)
        else:
            pipe.sweep(PROMPT, strengths, slider_start=slider_start, **kwargs)
    assert len(base) == len(slid) == 4  # one denoiser call per step in these pipelines
    for step in range(4):
        if step < base_steps:
            torch.testing.assert_close(slid[step], base[step], rtol=0, atol=0, msg=f"step {step}")
        else:
            assert (slid[step] - base[step]).abs().max() > 1e-4, f"step {step} should run the slider"


# Second-order schedulers call the denoiser twice per step at the same timestep (Heun), or at an interpolated one
# (KDPM2). For 4 steps both run 7 denoiser calls. Regression: the start was placed by len(scheduler.timesteps) (7)
# but counted in timestep changes (4 with Heun), so with slider_start=0.5 Heun never switched the slider on.
SECOND_ORDER = {
    # scheduler: denoiser calls at the base model for slider_start=0.5 (Heun: steps 0-1 are t0; t1, t1)
    "HeunDiscreteScheduler": 3,
    "KDPM2DiscreteScheduler": 4,  # all 7 timesteps differ: half of 7, rounded half up
}


@pytest.mark.parametrize("scheduler", list(SECOND_ORDER))
@pytest.mark.parametrize("method", ["generate_at", "sweep"])
def test_delayed_start_with_second_order_schedulers(scheduler, method):
    import diffusers

    pipe = add_sliders(enable_sliders(build_tiny_pipeline("sd15")))
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_adapters(["smile"], adapter_weights=[1.0])
    kwargs = kwargs_of("sd15", num_inference_steps=4)
    with DenoiserOutputs(pipe) as base:
        base_images(pipe, generator=generator(), **kwargs)
    with DenoiserOutputs(pipe) as slid:
        if method == "generate_at":
            pipe.generate_at(PROMPT, strength=1.5, slider_start=0.5, generator=generator(), **kwargs)
        else:
            pipe.sweep(PROMPT, [1.5], slider_start=0.5, **kwargs)
    assert len(base) == len(slid) == 7
    base_calls = SECOND_ORDER[scheduler]
    for call in range(7):
        if call < base_calls:
            torch.testing.assert_close(slid[call], base[call], rtol=0, atol=0, msg=f"call {call}")
        else:
            assert (slid[call] - base[call]).abs().max() > 1e-4, f"call {call} should run the slider"


# Restore exactly after an exception raised mid-generation, for every method.


class Boom(RuntimeError):
    pass


def explode(pipe, step, timestep, callback_kwargs):
    raise Boom("raised at the end of a denoising step")


@pytest.mark.parametrize(
    "current, frozen", [(0.0, False), (-0.7, True)], ids=["weight_0", "weight_-0.7_denoiser_frozen"]
)
@pytest.mark.parametrize(
    "method",
    ["generate_at", "generate_at_delayed", "generate_library", "sweep", "sweep_delayed", "sweep_sequential"],
)
def test_adapters_restored_after_an_exception_mid_generation(family_pipe, current, frozen, method):
    family, pipe = family_pipe
    pipe.set_adapters(["smile"], adapter_weights=[current])
    if frozen:  # as for inference: PEFT's set_adapter, used to switch "age" on, would make adapters trainable again
        denoiser_of(pipe).requires_grad_(False)
    before = adapter_state(pipe)
    plain = images_of(pipe(PROMPT, generator=generator(), **kwargs_of(family)))
    kwargs = kwargs_of(family, callback_on_step_end=explode)
    composed = {"smile": 1.5, "age": -1.0}  # "age" is inactive before: it is switched on, then off again
    calls = {
        "generate_at": lambda: pipe.generate_at(PROMPT, strength=composed, generator=generator(), **kwargs),
        "generate_at_delayed": lambda: pipe.generate_at(PROMPT, strength=2.0, slider_start=0.5, **kwargs),
        "generate_library": lambda: pipe.generate_library({"a": PROMPT}, strength=composed, **kwargs),
        "sweep": lambda: pipe.sweep(PROMPT, [composed, composed], **kwargs),
        "sweep_delayed": lambda: pipe.sweep(PROMPT, STRENGTHS, slider_start=0.5, **kwargs),
        "sweep_sequential": lambda: pipe.sweep(PROMPT, STRENGTHS, one_pass=False, **kwargs),
    }
    with pytest.raises(Boom):
        calls[method]()
    assert adapter_state(pipe) == before
    torch.testing.assert_close(
        images_of(pipe(PROMPT, generator=generator(), **kwargs_of(family))), plain, rtol=0, atol=0
    )


# Bad input: a clear error naming the problem, before anything runs, and the pipeline as it was.


def _library_file(tmp_path, text):
    path = tmp_path / "library.json"
    path.write_text(text)
    return path


BAD_INPUT = [
    (
        "strength_text",
        lambda p, t: p.generate_at(PROMPT, strength="high"),
        ValueError,
        r"`strength` must be a finite number.*'high'",
    ),
    ("strength_nan", lambda p, t: p.generate_at(PROMPT, strength=float("nan")), ValueError, r"finite number.*nan"),
    ("strength_inf", lambda p, t: p.generate_at(PROMPT, strength=float("inf")), ValueError, r"finite number.*inf"),
    ("strength_bool", lambda p, t: p.generate_at(PROMPT, strength=True), ValueError, r"finite number.*True"),
    ("strength_empty_map", lambda p, t: p.generate_at(PROMPT, strength={}), ValueError, r"empty mapping"),
    (
        "unknown_adapter",
        lambda p, t: p.generate_at(PROMPT, strength={"smyle": 1.0}),
        ValueError,
        r"'smyle'.*\['age', 'smile'\]",
    ),
    (
        "unknown_adapter_names",
        lambda p, t: p.generate_at(PROMPT, strength=1.0, adapter_names="smyle"),
        ValueError,
        r"Unknown adapter 'smyle'",
    ),
    (
        "several_active",
        lambda p, t: p.generate_at(PROMPT, strength=1.0),
        ValueError,
        r"active adapters \['smile', 'age'\].*adapter_names",
    ),
    (
        "slider_start",
        lambda p, t: p.generate_at(PROMPT, strength=1.0, slider_start=1.5),
        ValueError,
        r"`slider_start`.*1.5",
    ),
    (
        # The same range as SliderMetadata.slider_start: at 1.0 the slider would never be on.
        "slider_start_end",
        lambda p, t: p.sweep(PROMPT, [1.0], slider_start=1.0),
        ValueError,
        r"`slider_start` .* in \[0, 1\); got 1.0",
    ),
    ("seed_float", lambda p, t: p.sweep(PROMPT, [1.0], seed=1.5), TypeError, r"`seed` must be an int, got 1.5"),
    (
        "seeds_negative",
        lambda p, t: p.sweep_grid(PROMPT, [1.0], seeds=[0, -1]),
        ValueError,
        r"`seeds` must be an integer in \[0, 2\*\*63\), got -1",
    ),
    ("disabled", lambda p, t: p.generate_at(PROMPT, strength=1.0), ValueError, r"disabled.*enable_lora"),
    ("library_empty", lambda p, t: p.generate_library({}), ValueError, r"empty"),
    (
        "library_no_prompt",
        lambda p, t: p.generate_library({"smile_up": {"adapter_strength": 1.0}}),
        ValueError,
        r"entry 'smile_up' has no prompt",
    ),
    (
        "library_strength",
        lambda p, t: p.generate_library({"ok": PROMPT, "slider_plus": {"prompt": PROMPT, "adapter_strength": "high"}}),
        ValueError,
        r"entry 'slider_plus': `adapter_strength` must be a finite number.*'high'",
    ),
    (
        "library_typo",
        lambda p, t: p.generate_library({"plus": {"prompt": PROMPT, "adapter_strenght": 1.0}}),
        ValueError,
        r"entry 'plus' has unknown keys \['adapter_strenght'\]",
    ),
    (
        "library_unknown_adapter",
        lambda p, t: p.generate_library({"ok": PROMPT, "c": {"prompt": PROMPT, "adapter_strength": {"agee": 1.0}}}),
        ValueError,
        r"entry 'c':.*'agee'",
    ),
    (
        "library_json",
        lambda p, t: p.generate_library(_library_file(t, '{"plain": "a photo",}')),
        ValueError,
        r"not valid JSON.*line 1",
    ),
    (
        "library_json_nan",
        lambda p, t: p.generate_library(_library_file(t, '{"x": {"prompt": "a", "adapter_strength": NaN}}')),
        ValueError,
        r"entry 'x'.*finite number.*nan",
    ),
    (
        "library_generator",
        lambda p, t: p.generate_library({"a": PROMPT}, generator=generator()),
        TypeError,
        r"`generator`.*seed=",
    ),
    ("sweep_empty", lambda p, t: p.sweep(PROMPT, []), ValueError, r"`strengths` must be a non-empty list"),
    (
        "sweep_strength",
        lambda p, t: p.sweep(PROMPT, [1.0, "max"]),
        ValueError,
        r"`strengths\[1\]` must be a finite number.*'max'",
    ),
    ("sweep_mixed", lambda p, t: p.sweep(PROMPT, [1.0, {"smile": 1.0}]), ValueError, r"mixes numbers and per-adapter"),
    ("sweep_two_prompts", lambda p, t: p.sweep([PROMPT, PROMPT], [1.0]), ValueError, r"takes one prompt.*sweep_grid"),
    (
        "sweep_per_prompt",
        lambda p, t: p.sweep(PROMPT, [1.0], num_images_per_prompt=2),
        TypeError,
        r"`num_images_per_prompt`",
    ),
    # Finite but huge strengths overflow to NaN images: refused, naming the value and the bound.
    ("strength_huge", lambda p, t: p.generate_at(PROMPT, strength=1e30), ValueError, r"is 1e\+30.*at most 1000"),
    (
        "strength_huge_map",
        lambda p, t: p.generate_at(PROMPT, strength={"smile": -2e3}),
        ValueError,
        r"adapter 'smile' is -2000.0.*at most 1000",
    ),
    ("sweep_huge", lambda p, t: p.sweep(PROMPT, [1.0, 1e6]), ValueError, r"is 1000000.0.*at most 1000"),
    (
        "library_huge",
        lambda p, t: p.generate_library({"ok": PROMPT, "big": {"prompt": PROMPT, "adapter_strength": 1e30}}),
        ValueError,
        r"entry 'big':.*1e\+30.*at most 1000",
    ),
]


# Pipeline states some cases start from (set before the state is recorded).
BAD_INPUT_SETUP = {
    "several_active": lambda p: p.set_adapters(["smile", "age"], adapter_weights=[1.0, 0.5]),
    "disabled": lambda p: p.disable_lora(),
}


@pytest.mark.parametrize("case, call, error, message", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_a_clear_error_and_changes_nothing(case, call, error, message, tmp_path):
    pipe = _pipe("sd15")
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    BAD_INPUT_SETUP.get(case, lambda p: None)(pipe)
    denoiser = denoiser_of(pipe)
    calls = []
    handle = denoiser.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        before = adapter_state(pipe)
        with pytest.raises(error, match=message):
            call(pipe, tmp_path)
        after = adapter_state(pipe)
    finally:
        handle.remove()
        pipe.enable_lora()
    assert calls == []  # nothing was generated
    assert after == before


# The mixin composes with pipeline classes; the helper adds it to a pipeline; __call__ is untouched.


def test_mixin_class_and_enable_sliders_leave_call_unchanged(tmp_path):
    class SliderFluxPipeline(SliderPipelineMixin, FluxPipeline):
        pass

    plain = build_tiny_pipeline("flux")
    composed = SliderFluxPipeline(**plain.components)
    composed.set_progress_bar_config(disable=True)
    expected = images_of(plain(PROMPT, generator=generator(), **kwargs_of("flux")))
    torch.testing.assert_close(
        images_of(composed(PROMPT, generator=generator(), **kwargs_of("flux"))), expected, rtol=0, atol=0
    )

    pipe = build_tiny_pipeline("flux")
    assert enable_sliders(pipe) is pipe and enable_sliders(pipe) is pipe
    assert isinstance(pipe, FluxPipeline) and isinstance(pipe, SliderPipelineMixin)
    assert type(pipe).__name__ == "FluxPipeline"
    torch.testing.assert_close(
        images_of(pipe(PROMPT, generator=generator(), **kwargs_of("flux"))), expected, rtol=0, atol=0
    )
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    with pytest.raises(TypeError, match="`pipe` must be a diffusers DiffusionPipeline, got object"):
        enable_sliders(object())
    without_denoiser = FluxPipeline(**{**plain.components, "transformer": None})
    with pytest.raises(ValueError, match=r"FluxPipeline has no denoiser component \(`transformer`, `unet`"):
        enable_sliders(without_denoiser)


# Sweep grids from the pipeline: every cell is the sweep's image, unchanged.


def test_sweep_grid_cells_are_the_sweep_images(tmp_path):
    from PIL import Image

    pipe = _pipe("flux")
    pipe.set_adapters(["smile"], adapter_weights=[1.0])
    prompts, strengths = [PROMPT, "a photo of a cat"], [-1.0, 0.0, 1.0]
    path = tmp_path / "grid.png"
    grid = pipe.sweep_grid(prompts, strengths, seeds=[0], path=str(path), **kwargs_of("flux", output_type="pil"))
    saved = Image.open(path)
    assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
    assert json.loads(saved.text["peft_slider"]) == {"title": None, "rows": prompts, "columns": ["-1", "0", "+1"]}
    grid_array = np.asarray(grid)
    for prompt in prompts:
        for image in pipe.sweep(prompt, strengths, **kwargs_of("flux", output_type="pil")):
            cell = np.asarray(image)
            windows = np.lib.stride_tricks.sliding_window_view(grid_array, cell.shape)
            assert (windows == cell).all(axis=(-3, -2, -1)).any(), f"a cell of {prompt!r} is missing from the grid"


@pytest.mark.parametrize(
    "switch, message",
    [
        (lambda pipe: pipe.fuse_lora(adapter_names=["smile"]), r"entry 'slid': .*fused.*unfuse_lora"),
        (lambda pipe: pipe.disable_lora(), r"entry 'slid': .*disabled.*enable_lora"),
    ],
    ids=["fused", "disabled"],
)
def test_library_checks_fused_or_disabled_sliders_before_generating(switch, message):
    # Regression: the first entry (no strength: the adapters as they are) was generated before the second one's
    # adapter check failed.
    pipe = add_sliders(enable_sliders(build_tiny_pipeline("sd15")))
    pipe.set_adapters(["smile"], adapter_weights=[0.5])
    switch(pipe)
    library = {"plain": PROMPT, "slid": {"prompt": PROMPT, "adapter_strength": 1.0}}
    with DenoiserOutputs(pipe) as calls:
        with pytest.raises(ValueError, match=message):
            pipe.generate_library(library, **kwargs_of("sd15"))
    assert calls == []


# unfuse_lora unmerges every LoRA layer, and PEFT warns for the ones (other adapters) that were never fused.
@pytest.mark.filterwarnings("ignore:Already unmerged. Nothing to do.:UserWarning")
def test_unsupported_or_fused_sliders_are_a_clear_error_and_change_nothing():
    from peft import LoraConfig

    pipe = add_sliders(enable_sliders(build_tiny_pipeline("flux")))
    dora = LoraConfig(r=4, lora_alpha=8, target_modules=["x_embedder"], use_dora=True, init_lora_weights=False)
    denoiser_of(pipe).add_adapter(dora, adapter_name="dora")
    pipe.set_adapters(["smile"], adapter_weights=[0.5])
    denoiser_of(pipe).requires_grad_(False)
    before = adapter_state(pipe)
    # DoRA has no per-sample route; the sweep fails after "dora" was switched on and set to its base scale.
    with pytest.raises(ValueError, match=r"Per-sample strengths are not supported.*one_pass=False"):
        pipe.sweep(PROMPT, [1.0, -1.0], adapter_names="dora", **kwargs_of("flux"))
    assert adapter_state(pipe) == before
    pipe.sweep(PROMPT, [1.0, -1.0], adapter_names="dora", one_pass=False, **kwargs_of("flux"))
    assert adapter_state(pipe) == before
    pipe.fuse_lora(adapter_names=["smile"])
    try:
        with pytest.raises(ValueError, match=r"fused.*unfuse_lora"):
            pipe.generate_at(PROMPT, strength=1.0, **kwargs_of("flux"))
    finally:
        pipe.unfuse_lora()


# Several threads and merging: a pipeline call holds its denoiser like a slider block. Another thread's slider block
# or call on the same denoiser, and merging (fuse_lora) from a step callback, raise; the adapters end as they were.


def _intrude(pipe, what):
    denoiser = denoiser_of(pipe)
    if what == "generate_at":
        return pipe.generate_at(
            PROMPT, strength=1.0, adapter_names="smile", **kwargs_of("sd15", generator=generator())
        )
    if what == "slider_strength":
        with slider_strength(denoiser, -1.0, adapter_names="smile"):
            return None
    raise AssertionError(what)


@pytest.mark.parametrize("holder", ["generate_at", "slider_strength"])
@pytest.mark.parametrize("intruder", ["generate_at", "slider_strength"])
def test_another_thread_cannot_use_a_denoiser_a_call_or_block_holds(holder, intruder):
    pipe = _pipe("sd15")
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    before = adapter_state(pipe)
    results = []

    def callback(pipe, step, timestep, callback_kwargs):
        if step == 0:
            results.append(in_thread(lambda: _intrude(pipe, intruder)))
        return callback_kwargs

    if holder == "generate_at":
        pipe.generate_at(
            PROMPT, strength=1.5, callback_on_step_end=callback, **kwargs_of("sd15", generator=generator())
        )
    else:
        with slider_strength(denoiser_of(pipe), 2.0, adapter_names="smile"):
            results.append(in_thread(lambda: _intrude(pipe, intruder)))
    [result] = results
    assert isinstance(result.get("error"), RuntimeError), result
    assert "held by a slider block in thread" in str(result["error"])
    assert adapter_state(pipe) == before
    assert in_thread(lambda: _intrude(pipe, intruder)).get("error") is None  # free again afterwards


@pytest.mark.parametrize("lora_scale", [1.0])
def test_fusing_inside_a_slider_call_is_refused_and_changes_nothing(lora_scale):
    pipe = _pipe("sd15")
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    denoiser = denoiser_of(pipe)
    before = adapter_state(pipe)
    weights = {name: p.detach().clone() for name, p in denoiser.named_parameters()}

    def callback(pipe, step, timestep, callback_kwargs):
        pipe.fuse_lora(lora_scale=lora_scale, adapter_names=["smile"])
        return callback_kwargs

    with pytest.raises(RuntimeError, match=r"Cannot merge adapters into .* while a slider strength is applied"):
        pipe.generate_at(
            PROMPT, strength=2.0, callback_on_step_end=callback, **kwargs_of("sd15", generator=generator())
        )
    assert adapter_state(pipe) == before
    assert not any(m.merged_adapters for m in denoiser.modules() if isinstance(m, BaseTunerLayer))
    for name, p in denoiser.named_parameters():
        assert torch.equal(p, weights[name]), name


# A strength block opened inside a pipeline slider call (from a step callback) would outlive the call's snapshot: the
# call would put back its own snapshot, and the block, closing later, the call's weights, for good. It is refused.
@pytest.mark.parametrize("close", ["inside", "after"])
def test_a_strength_block_inside_a_slider_call_is_refused(close):
    pipe = _pipe("sd15")
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    before = adapter_state(pipe)
    opened = []

    def callback(pipe, step, timestep, callback_kwargs):
        if step == 0:
            block = slider_strength(denoiser_of(pipe), 2.0, adapter_names="smile")
            block.__enter__()
            opened.append(block)
            if close == "inside":
                block.__exit__(None, None, None)
        return callback_kwargs

    with pytest.raises(RuntimeError, match=r"Cannot apply a slider strength inside a pipeline slider call"):
        pipe.generate_at(
            PROMPT, strength=1.5, callback_on_step_end=callback, **kwargs_of("sd15", generator=generator())
        )
    assert opened == [] and adapter_state(pipe) == before
    with slider_strength(denoiser_of(pipe), 2.0, adapter_names="smile"):  # around a call, blocks work
        pipe.generate_at(PROMPT, strength=1.5, **kwargs_of("sd15", generator=generator()))
    assert adapter_state(pipe) == before


# A block opened before a call and closed during it (from a step callback): the call keeps its strength to the end,
# and when the call ends the adapters are as before the block, not as the block had them.
def test_a_block_closed_inside_a_slider_call_hands_its_restore_to_the_call():
    pipe = _pipe("sd15")
    pipe.set_adapters(["smile"], adapter_weights=[-0.5])
    before = adapter_state(pipe)
    expected = images_of(pipe.generate_at(PROMPT, strength=1.5, **kwargs_of("sd15", generator=generator())))
    block = slider_strength(denoiser_of(pipe), 2.0, adapter_names="smile")
    block.__enter__()

    def callback(pipe, step, timestep, callback_kwargs):
        if step == 0:
            block.__exit__(None, None, None)
        return callback_kwargs

    images = images_of(
        pipe.generate_at(
            PROMPT, strength=1.5, callback_on_step_end=callback, **kwargs_of("sd15", generator=generator())
        )
    )
    torch.testing.assert_close(
        images, expected, rtol=0, atol=0
    )  # the same computation: the call's strength throughout
    assert adapter_state(pipe) == before
