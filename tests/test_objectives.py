# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.training.objectives: noise and targets per family, and what neutral batches train.

The DDPM and flow-matching forward processes are checked against diffusers' own schedulers (`add_noise`,
`get_velocity`, `scale_noise`), which the module itself never imports. The neutral-batch claims are checked on real
PEFT LoRA layers: strength 0 gives an exactly zero slider gradient; "preserve" gives a nonzero one, and for a slider
whose effect is linear in the strength, a +s/-s pair of "preserve" batches has exactly the gradient of a "match_base"
pair, whatever the images are.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from peft import LoraConfig, get_peft_model
from torch import nn

from peft_slider.training.objectives import (
    NEUTRAL_OBJECTIVES,
    EpsilonObjective,
    FlowMatchingObjective,
    NeutralObjective,
    SliderStep,
    VPredictionObjective,
    is_flow_matching_scheduler,
    neutral_strength,
    objective_from_scheduler,
)
from peft_slider.training.sampler import SliderBackend
from peft_slider.training.scaling import SliderScaler

# Float32 comparisons of the same formula computed two ways: torch's default float32 tolerances
# (rtol 1.3e-6, atol 1e-5).
TOL = {"rtol": 1.3e-6, "atol": 1e-5}


def latents(shape=(4, 4, 8, 8), seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------------
# Choosing the objective from a scheduler


SCHEDULERS = [
    # (scheduler, expected objective class, flow matching?)
    (DDPMScheduler(prediction_type="epsilon"), EpsilonObjective, False),
    (DDIMScheduler(prediction_type="v_prediction"), VPredictionObjective, False),
    (EulerDiscreteScheduler(beta_schedule="scaled_linear", prediction_type="epsilon"), EpsilonObjective, False),
    (FlowMatchEulerDiscreteScheduler(shift=3.0), FlowMatchingObjective, True),
    (
        UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
        FlowMatchingObjective,
        True,
    ),
]


@pytest.mark.parametrize(("scheduler", "expected", "flow"), SCHEDULERS, ids=lambda v: getattr(v, "__name__", None))
def test_objective_from_scheduler_picks_the_family_objective(scheduler, expected, flow):
    objective = objective_from_scheduler(scheduler)
    assert type(objective) is expected
    assert is_flow_matching_scheduler(scheduler) is flow
    assert objective.num_train_timesteps == scheduler.config.num_train_timesteps


def test_objective_from_scheduler_rejects_sample_prediction_and_misplaced_options():
    with pytest.raises(ValueError, match="prediction_type.*'sample'"):
        objective_from_scheduler(DDPMScheduler(prediction_type="sample"))
    with pytest.raises(ValueError, match="only apply to flow-matching"):
        objective_from_scheduler(DDPMScheduler(), shift=2.0)
    with pytest.raises(TypeError, match="diffusers scheduler"):
        objective_from_scheduler(object())


def test_flow_objective_takes_static_shift_but_not_dynamic_shifting():
    assert FlowMatchingObjective.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0)).shift == 3.0
    dynamic = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    assert FlowMatchingObjective.from_scheduler(dynamic).shift == 1.0
    assert FlowMatchingObjective.from_scheduler(dynamic, shift=2.0).shift == 2.0


# ---------------------------------------------------------------------------------------------------------------------
# DDPM: epsilon and v-prediction, against diffusers' scheduler


@pytest.mark.parametrize(
    "scheduler",
    [
        DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        DDIMScheduler(beta_schedule="squaredcos_cap_v2"),
        EulerDiscreteScheduler(beta_schedule="scaled_linear", rescale_betas_zero_snr=True),
    ],
    ids=["ddpm-scaled-linear", "ddim-cosine", "euler-zero-snr"],
)
def test_ddpm_objectives_match_diffusers_add_noise_and_get_velocity(scheduler):
    x0, noise = latents(), latents(seed=1)
    timesteps = torch.tensor([0, 10, 500, 999])
    epsilon = EpsilonObjective.from_scheduler(scheduler).add_noise(x0, noise=noise, timesteps=timesteps)
    velocity = VPredictionObjective.from_scheduler(scheduler).add_noise(x0, noise=noise, timesteps=timesteps)
    # DDPMScheduler holds the same formulas for any alphas_cumprod; give it this scheduler's schedule.
    reference = DDPMScheduler()
    reference.alphas_cumprod = scheduler.alphas_cumprod
    torch.testing.assert_close(epsilon.noisy, reference.add_noise(x0, noise, timesteps), **TOL)
    torch.testing.assert_close(velocity.noisy, epsilon.noisy, rtol=0, atol=0)
    torch.testing.assert_close(epsilon.target, noise, rtol=0, atol=0)
    torch.testing.assert_close(velocity.target, reference.get_velocity(x0, noise, timesteps), **TOL)
    expected_sigmas = (1 - scheduler.alphas_cumprod[timesteps]).sqrt()
    torch.testing.assert_close(epsilon.sigmas, expected_sigmas.float(), **TOL)
    assert torch.equal(epsilon.timesteps, timesteps)


def test_ddpm_timesteps_are_drawn_uniformly_and_reproducibly():
    objective = EpsilonObjective.from_scheduler(DDPMScheduler())
    x0 = torch.zeros(4096, 1)
    first = objective.add_noise(x0, generator=torch.Generator().manual_seed(3))
    again = objective.add_noise(x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.timesteps, again.timesteps) and torch.equal(first.noise, again.noise)
    assert first.timesteps.dtype == torch.long
    assert 0 <= first.timesteps.min() and first.timesteps.max() < 1000
    # Uniform on [0, 1000): mean 499.5, standard error of 4096 draws about 4.5.
    assert abs(first.timesteps.float().mean().item() - 499.5) < 25


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timesteps": torch.tensor([1.0, 2.0])}, "integer tensor"),
        ({"timesteps": torch.tensor([1, 2, 3])}, r"shape \(2,\)"),
        ({"timesteps": torch.tensor([0, 1000])}, r"\[0, 1000\)"),
        ({"noise": torch.zeros(3, 4)}, "shaped like `latents`"),
        ({"generator": 0}, "torch.Generator"),
    ],
)
def test_ddpm_add_noise_rejects_bad_input(kwargs, match):
    objective = EpsilonObjective.from_scheduler(DDPMScheduler())
    with pytest.raises((ValueError, TypeError), match=match):
        objective.add_noise(torch.zeros(2, 4), **kwargs)


@pytest.mark.parametrize("values", [[0.5], [0.5, 0.0], [1.5, 0.5], torch.ones(2, 3)])
def test_ddpm_objective_rejects_bad_schedules(values):
    with pytest.raises(ValueError, match="alphas_cumprod"):
        EpsilonObjective(values)


def test_ddpm_objective_needs_a_ddpm_scheduler():
    with pytest.raises(ValueError, match="no `alphas_cumprod`"):
        EpsilonObjective.from_scheduler(FlowMatchEulerDiscreteScheduler())


# ---------------------------------------------------------------------------------------------------------------------
# Flow matching


def test_flow_matching_matches_diffusers_scale_noise_and_targets_velocity():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x0, noise = latents(), latents(seed=1)
    index = torch.tensor([0, 100, 500, 999])
    timesteps, sigmas = scheduler.timesteps[index], scheduler.sigmas[index]
    batch = FlowMatchingObjective().add_noise(x0, noise=noise, timesteps=sigmas)
    torch.testing.assert_close(batch.noisy, scheduler.scale_noise(x0, timesteps, noise), **TOL)
    torch.testing.assert_close(batch.target, noise - x0, rtol=0, atol=0)
    # SD3 takes sigma * 1000, which is the scheduler's own timestep.
    torch.testing.assert_close(batch.timesteps, timesteps.float(), **TOL)
    torch.testing.assert_close(batch.sigmas, sigmas.float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "mean_range"),
    [
        ({"sigma_sampling": "uniform"}, (0.45, 0.55)),
        ({"sigma_sampling": "logit_normal"}, (0.45, 0.55)),
        ({"sigma_sampling": "logit_normal", "logit_mean": 1.0}, (0.65, 0.75)),
        # shift 3 maps u to 3u / (1 + 2u): E over uniform u = 1.5 - 0.75 ln 3 = 0.676
        ({"sigma_sampling": "uniform", "shift": 3.0}, (0.64, 0.71)),
    ],
)
def test_flow_sigma_sampling(kwargs, mean_range):
    objective = FlowMatchingObjective(**kwargs)
    sigmas = objective.sample_sigmas(8192, generator=torch.Generator().manual_seed(0))
    assert sigmas.dtype == torch.float32 and sigmas.shape == (8192,)
    assert 0 < sigmas.min() and sigmas.max() < 1
    assert mean_range[0] < sigmas.mean().item() < mean_range[1]


def test_flow_shift_formula():
    # The shift is applied to the drawn values: with a fixed generator, shifted = 3u / (1 + 2u) of the unshifted.
    plain = FlowMatchingObjective(sigma_sampling="uniform").sample_sigmas(
        16, generator=torch.Generator().manual_seed(5)
    )
    shifted = FlowMatchingObjective(sigma_sampling="uniform", shift=3.0).sample_sigmas(
        16, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain), **TOL)


def test_flow_noise_is_the_same_in_any_dtype():
    objective = FlowMatchingObjective()
    x32 = latents()
    a = objective.add_noise(x32, generator=torch.Generator().manual_seed(0))
    b = objective.add_noise(x32.to(torch.bfloat16), generator=torch.Generator().manual_seed(0))
    assert b.noisy.dtype == torch.bfloat16
    torch.testing.assert_close(b.noise.float(), a.noise, rtol=0, atol=0.02)  # bf16 rounding of N(0, 1) values
    torch.testing.assert_close(b.sigmas, a.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma_sampling": "cosine"}, "sigma_sampling"),
        ({"logit_std": 0.0}, "> 0"),
        ({"shift": -1.0}, "> 0"),
        ({"logit_mean": float("nan")}, "finite"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ],
)
def test_flow_objective_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowMatchingObjective(**kwargs)


def test_flow_add_noise_rejects_out_of_range_sigmas_and_bad_latents():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FlowMatchingObjective().add_noise(torch.zeros(2, 3), timesteps=torch.tensor([0.5, 1.5]))
    with pytest.raises(TypeError, match="floating-point tensor"):
        FlowMatchingObjective().add_noise(torch.zeros(2, 3, dtype=torch.long))


def test_loss_is_float32_mse_and_checks_shapes():
    objective = FlowMatchingObjective()
    prediction, target = torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3)
    loss = objective.loss(prediction, target)
    assert loss.dtype == torch.float32 and loss.item() == 1.0
    with pytest.raises(ValueError, match="same shape"):
        objective.loss(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Neutral batches


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # neutral batch index 0, 1, 2 and a signed batch of -0.5
        ("preserve", [(0.75, "data", True), (-0.75, "data", True), (0.75, "data", True)]),
        ("match_base", [(0.75, "base", True), (-0.75, "base", True), (0.75, "base", True)]),
        ("skip", [(0.0, "data", False)] * 3),
        ("zero", [(0.0, "data", True)] * 3),
    ],
)
def test_neutral_objective_modes(mode, expected):
    backends = [SliderBackend(4, slider_strength=1.0), SliderBackend(4, slider_strength=-0.5), SliderBackend(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objective = NeutralObjective(mode, backends=backends)
    assert [tuple(objective.step(0.0, neutral_index=i)) for i in range(3)] == expected
    # Signed batches always train at their own strength on the data, whatever the mode.
    assert objective.step(-0.5, neutral_index=7) == SliderStep(-0.5, "data", True)
    assert objective.step(torch.tensor([2.0])) == SliderStep(2.0, "data", True)
    assert objective.needs_base_prediction is (mode == "match_base")


def test_zero_mode_warns_that_it_trains_nothing():
    with pytest.warns(UserWarning, match="gradient is exactly zero"):
        NeutralObjective("zero")


def test_default_mode_is_preserve_and_explicit_strength_wins():
    objective = NeutralObjective(strength=0.3, backends=[SliderBackend(2, slider_strength=5.0)])
    assert objective.mode == "preserve" and objective.strength == 0.3


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: NeutralObjective("neutral"), ValueError, "must be one of"),
        (lambda: NeutralObjective("preserve"), ValueError, "needs a neutral strength"),
        (lambda: NeutralObjective("preserve", strength=0.0), ValueError, "must be > 0"),
        (lambda: NeutralObjective("preserve", strength=float("inf")), ValueError, "finite"),
        (lambda: NeutralObjective("match_base", backends=[SliderBackend(2)]), ValueError, "no direction"),
        (lambda: NeutralObjective(strength=1.0).step(None), ValueError, "never defaults|batch_info"),
        (lambda: NeutralObjective(strength=1.0).step("high"), ValueError, "finite number, got 'high'"),
        (lambda: NeutralObjective(strength=1.0).step(0.0, neutral_index=-1), ValueError, "neutral_index"),
    ],
)
def test_neutral_objective_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_neutral_strength_is_the_sample_weighted_mean_of_signed_strengths():
    backends = [
        SliderBackend(6, slider_strength=2.0),
        SliderBackend(2, slider_strength=-1.0),
        SliderBackend(100),
        SliderBackend(3, slider_strength=0.0),
    ]
    assert math.isclose(neutral_strength(backends), (6 * 2.0 + 2 * 1.0) / 8)
    assert math.isclose(neutral_strength([0.5, -1.5, 0.0]), 1.0)


# The gradient claims, on real PEFT LoRA layers.


def _lora_model(layers: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    modules = []
    for _ in range(layers):
        modules += [nn.Linear(6, 6), nn.Tanh()]
    names = [str(2 * i) for i in range(layers)]
    config = LoraConfig(r=2, lora_alpha=2, target_modules=names, init_lora_weights=False)
    return get_peft_model(nn.Sequential(*modules[:-1]), config)


def _slider_grads(model: nn.Module, scaler: SliderScaler, batches) -> list[torch.Tensor]:
    """Sum of gradients over (strength, inputs, target) batches, each trained at its strength."""
    model.zero_grad()
    for strength, x, target in batches:
        with scaler.at(strength):
            nn.functional.mse_loss(model(x), target).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _base_prediction(model: nn.Module, scaler: SliderScaler, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), scaler.at(0.0):
        return model(x)


def test_strength_zero_gives_the_slider_exactly_zero_gradient_and_preserve_does_not():
    model = _lora_model(layers=3)
    scaler = SliderScaler(model)
    x, target = torch.randn(8, 6), torch.randn(8, 6)
    zero = _slider_grads(model, scaler, [(0.0, x, target)])
    assert all(torch.count_nonzero(g) == 0 for g in zero)
    objective = NeutralObjective("preserve", strength=1.0)
    steps = [objective.step(0.0, neutral_index=i) for i in range(2)]
    preserve = _slider_grads(model, scaler, [(step.strength, x, target) for step in steps])
    assert all(torch.count_nonzero(g) > 0 for g in preserve)


def test_preserve_pair_equals_match_base_pair_for_a_slider_linear_in_strength():
    # One LoRA layer: the output is base + s * delta, linear in s. For a +s/-s pair the pull toward the images
    # cancels, and the gradient is that of keeping the output at the base model's, whatever the images are.
    model = _lora_model(layers=1)
    scaler = SliderScaler(model)
    x = torch.randn(8, 6)
    preserve = NeutralObjective("preserve", strength=0.7)
    match_base = NeutralObjective("match_base", strength=0.7)
    base = _base_prediction(model, scaler, x)
    results = []
    for images in (torch.randn(8, 6), torch.randn(8, 6) * 5):
        batches = [(preserve.step(0.0, neutral_index=i).strength, x, images) for i in range(2)]
        results.append(_slider_grads(model, scaler, batches))
    steps = [match_base.step(0.0, neutral_index=i) for i in range(2)]
    assert [step.target for step in steps] == ["base", "base"]
    reference = _slider_grads(model, scaler, [(step.strength, x, base) for step in steps])
    for grads in results:
        for got, want in zip(grads, reference):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)  # float32 sums of 8x6 products


def test_neutral_modes_table_is_documented():
    assert NEUTRAL_OBJECTIVES == ("preserve", "match_base", "skip", "zero")
    for mode in NEUTRAL_OBJECTIVES:
        assert f'"{mode}"' in NeutralObjective.__doc__
