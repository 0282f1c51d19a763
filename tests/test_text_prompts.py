# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for the text-prompt slider objective in peft_slider.training.text_prompts.

The objective is checked three ways: its formulas against separate passes written out by hand (toy PEFT model), its
cost by counting the denoiser's forward calls, and its effect by training real LoRAs on tiny real diffusers denoisers
(a UNet2DConditionModel for epsilon and v-prediction, a FluxTransformer2DModel with its guidance embedding for flow
matching) from base-model rollouts, then measuring the concept statistic: the projection of the slider's change of the
target prediction onto the base's positive - negative direction. A control with positive == negative must give no
direction, so the monotonic test is known to be able to fail. Text "embeddings" are fixed seeded random tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from peft import LoraConfig, get_peft_model

from peft_slider import SliderLoraConfig
from peft_slider.training import (
    AnchorPrompt,
    EpsilonObjective,
    FlowMatchingObjective,
    NoisyBatch,
    PromptSet,
    RolloutPool,
    SliderScaler,
    VPredictionObjective,
    concat_noisy,
    guided_target,
    prompt_slider_loss,
    repeat_noisy,
    rollout,
    stack_conditioning,
)
from tests.denoisers import DENOISERS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "train_slider"))
import families  # noqa: E402

TARGET, SMILING, FROWNING = "a photo of a person", "a photo of a person, smiling", "a photo of a person, frowning"
ANCHOR = "a photo of a house"
PROMPTS = (TARGET, SMILING, FROWNING, ANCHOR)
# Float32 results of the same formula computed in a different batch layout: rounding only.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def ddpm_objective(prediction_type):
    scheduler = DDPMScheduler(beta_schedule="scaled_linear")
    cls = EpsilonObjective if prediction_type == "epsilon" else VPredictionObjective
    return cls.from_scheduler(scheduler)


def embeddings_for(width: int, *, tokens: int = 7, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        prompt: {
            "prompt_embeds": torch.randn(tokens, width, generator=generator),
            "pooled_prompt_embeds": torch.randn(width, generator=generator),
        }
        for prompt in PROMPTS
    }


# ---------------------------------------------------------------------------------------------------------------------
# A toy PEFT denoiser: latents (batch, 4) and a text vector, for the formulas and the bad inputs.


class ToyDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(9, 4)

    def forward(self, x, timesteps, text):
        return self.proj(torch.cat([x, text, timesteps.float()[:, None] / 1000], dim=1))


def toy_model():
    torch.manual_seed(0)
    # init_lora_weights=False: a random slider, so its predictions differ from the base's at every strength.
    return get_peft_model(ToyDenoiser(), LoraConfig(r=2, target_modules=["proj"], init_lora_weights=False))


def toy_predict(model):
    return lambda batch, cond: model(batch.noisy, batch.timesteps, cond["text"])


def toy_embeddings():
    generator = torch.Generator().manual_seed(1)
    return {prompt: {"text": torch.randn(4, generator=generator)} for prompt in PROMPTS}


def toy_noisy(batch=2, seed=2):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return NoisyBatch(x, None, torch.randn(batch, 4, generator=generator), timesteps, torch.rand(batch))


# ---------------------------------------------------------------------------------------------------------------------
# guided_target and the batching helpers


@pytest.mark.parametrize(
    ("scale", "sign", "expected"),
    [
        (1.0, 1.0, [[3.0], [3.0]]),  # enhance: neutral + eta (positive - negative)
        (1.0, -1.0, [[-1.0], [-1.0]]),  # erase
        (0.5, 1.0, [[2.0], [2.0]]),
        (0.0, 1.0, [[1.0], [1.0]]),  # no direction
        (torch.tensor([1.0, 0.5]), torch.tensor([1.0, -1.0]), [[3.0], [0.0]]),  # per sample
        (torch.tensor(2.0), 1.0, [[5.0], [5.0]]),  # a 0-d tensor is a scalar
    ],
)
def test_guided_target(scale, sign, expected):
    neutral, positive, negative = torch.ones(2, 1), torch.full((2, 1), 3.0), torch.ones(2, 1)
    result = guided_target(neutral, positive, negative, guidance_scale=scale, sign=sign)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, torch.tensor(expected), rtol=0, atol=0)


def test_guided_target_is_float32_for_half_precision_predictions():
    neutral = torch.full((1, 1), 1000.0, dtype=torch.bfloat16)
    positive, negative = torch.full((1, 1), 1.0, dtype=torch.bfloat16), torch.zeros(1, 1, dtype=torch.bfloat16)
    # 1000 + 0.25 is not a bfloat16 (whose step near 1000 is 4): the float32 target keeps it.
    assert guided_target(neutral, positive, negative, guidance_scale=0.25).item() == 1000.25


def test_stack_conditioning_is_the_inverse_of_the_trainers_split():
    generator = torch.Generator().manual_seed(0)
    items = [
        {"prompt_embeds": torch.randn(7, 8, generator=generator), "pooled_prompt_embeds": torch.randn(8)}
        for _ in range(3)
    ]
    batch = stack_conditioning(items)
    assert batch["prompt_embeds"].shape == (3, 7, 8) and batch["pooled_prompt_embeds"].shape == (3, 8)
    for item, back in zip(items, families.split_conditioning(batch)):
        assert back.keys() == item.keys()
        assert all(torch.equal(back[key], item[key]) for key in item)
    # Z-Image: variable-length features, a list of one tensor per prompt.
    lists = [{"prompt_embeds": [torch.randn(n, 8, generator=generator)]} for n in (5, 9)]
    batch = stack_conditioning(lists)
    assert [tuple(t.shape) for t in batch["prompt_embeds"]] == [(5, 8), (9, 8)]
    for item, back in zip(lists, families.split_conditioning(batch)):
        assert back["prompt_embeds"][0] is item["prompt_embeds"][0]


def test_repeat_and_concat_noisy():
    a = toy_noisy(2, seed=0)._replace(target=None)
    b = toy_noisy(1, seed=1)._replace(target=None)
    repeated = repeat_noisy(a, 3)
    assert repeated.target is None
    for field in ("noisy", "noise", "timesteps", "sigmas"):
        value = getattr(a, field)
        assert torch.equal(getattr(repeated, field), torch.cat([value, value, value]))
    joined = concat_noisy([a, b])
    assert joined.target is None and torch.equal(joined.timesteps, torch.cat([a.timesteps, b.timesteps]))


# ---------------------------------------------------------------------------------------------------------------------
# The objective's formulas, against separate passes written out by hand


def by_hand(model, noisy, prompt_sets, embeddings, anchors=()):
    """The loss and base loss from one pass per (prompt, strength), the module's batching left out."""
    scaler = SliderScaler(model)

    def predict(sample, prompt, strength):
        row = NoisyBatch(*(None if v is None else v[sample : sample + 1] for v in noisy))
        with torch.no_grad(), scaler.at(strength):
            return model(row.noisy, row.timesteps, embeddings[prompt]["text"][None])

    terms = []  # (weight, loss, base loss)
    for sample, s in enumerate(prompt_sets):
        base = {p: predict(sample, p, 0.0) for p in s.prompts()}
        for direction in (1.0, -1.0) if s.mirror else (1.0,):
            eta = direction * s.sign * s.guidance_scale
            target = base[s.neutral] + eta * (base[s.positive] - base[s.negative])
            trained = predict(sample, s.target, direction * s.strength)
            terms.append((s.weight, (trained - target).square().mean(), (base[s.target] - target).square().mean()))
    for index, anchor in enumerate(anchors):
        sample = index % len(prompt_sets)
        base = predict(sample, anchor.prompt, 0.0)
        for direction in (1.0, -1.0):
            trained = predict(sample, anchor.prompt, direction * anchor.strength)
            terms.append((anchor.weight, (trained - base).square().mean(), torch.tensor(0.0)))
    total = sum(w for w, _, _ in terms)
    return sum(w * loss for w, loss, _ in terms) / total, sum(w * base for w, _, base in terms) / total


FORMULA_CASES = {
    "enhance, mirrored": ([PromptSet(TARGET, SMILING, FROWNING, guidance_scale=2.0)] * 2, ()),
    "erase, not mirrored, target != neutral": (
        [PromptSet(TARGET, SMILING, FROWNING, neutral=ANCHOR, action="erase", mirror=False, strength=1.5)] * 2,
        (),
    ),
    "mixed sets, weights and anchors": (
        [
            PromptSet(TARGET, SMILING, FROWNING, weight=2.0, strength=0.5),
            PromptSet(TARGET, SMILING, TARGET, action="erase", guidance_scale=0.5, mirror=False),
        ],
        (AnchorPrompt(ANCHOR, strength=2.0, weight=0.5), AnchorPrompt(SMILING), AnchorPrompt(FROWNING)),
    ),
}


@pytest.mark.parametrize("case", list(FORMULA_CASES))
def test_loss_matches_separate_passes_by_hand(case):
    prompt_sets, anchors = FORMULA_CASES[case]
    model, embeddings = toy_model(), toy_embeddings()
    noisy = toy_noisy(len(prompt_sets))
    result = prompt_slider_loss(
        toy_predict(model), SliderScaler(model), noisy, prompt_sets, embeddings, anchors=anchors
    )
    loss, base_loss = by_hand(model, noisy, prompt_sets, embeddings, anchors)
    torch.testing.assert_close(result.loss, loss, **TOL)
    torch.testing.assert_close(result.base_loss, base_loss, **TOL)
    assert result.loss.dtype == torch.float32 and result.loss.requires_grad and not result.base_loss.requires_grad
    expected = [d * s.strength for s in prompt_sets for d in ((1.0, -1.0) if s.mirror else (1.0,))]
    expected += [d * a.strength for a in anchors for d in (1.0, -1.0)]
    assert result.strengths.tolist() == expected


def test_list_conditioning_gives_the_same_loss_as_tensors():
    """Z-Image-style conditioning (a list of one tensor per prompt) goes through both passes as lists."""
    model, embeddings = toy_model(), toy_embeddings()
    as_lists = {prompt: {"text": [cond["text"]]} for prompt, cond in embeddings.items()}
    seen = []

    def predict(batch, cond):
        seen.append(type(cond["text"]))
        text = torch.stack(cond["text"]) if isinstance(cond["text"], list) else cond["text"]
        return model(batch.noisy, batch.timesteps, text)

    sets, anchors = [PromptSet(TARGET, SMILING, FROWNING)] * 2, [AnchorPrompt(ANCHOR)]
    noisy = toy_noisy(2)
    tensors = prompt_slider_loss(predict, SliderScaler(model), noisy, sets, embeddings, anchors=anchors)
    lists = prompt_slider_loss(predict, SliderScaler(model), noisy, sets, as_lists, anchors=anchors)
    assert seen == [torch.Tensor, torch.Tensor, list, list]
    torch.testing.assert_close(lists.loss, tensors.loss, rtol=0, atol=0)  # the same rows, the same code
    torch.testing.assert_close(lists.base_loss, tensors.base_loss, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny real denoisers


class Family:
    """A tiny real denoiser with the trainer's calling convention, its objective and latent shape."""

    def __init__(self, prediction_type: str):
        self.prediction_type = prediction_type
        if prediction_type == "flow_matching":
            self.case, self.latent_shape, self.objective = DENOISERS["flux"], (16, 16), FlowMatchingObjective()
        else:
            self.case, self.latent_shape, self.objective = (
                DENOISERS["sd15"],
                (4, 8, 8),
                ddpm_objective(prediction_type),
            )
        self.width = 32

    def build(self, *, seed=0, **lora):
        model = self.case.build(seed)
        model.requires_grad_(False)
        model.add_adapter(SliderLoraConfig(r=4, lora_alpha=4, model=model, **lora))
        return model

    def predict(self, model):
        if self.prediction_type != "flow_matching":
            return lambda batch, cond: model(
                batch.noisy, batch.timesteps, encoder_hidden_states=cond["prompt_embeds"], return_dict=False
            )[0]
        img_ids = DENOISERS["flux"].make_inputs(model, batch_size=1)["img_ids"]

        def predict(batch, cond):
            size = batch.noisy.shape[0]
            # FLUX.1-dev's guidance embedding: the same value in the frozen and the trained pass.
            return model(
                hidden_states=batch.noisy,
                encoder_hidden_states=cond["prompt_embeds"],
                pooled_projections=cond["pooled_prompt_embeds"],
                timestep=batch.sigmas.to(batch.noisy.dtype),
                img_ids=img_ids,
                txt_ids=torch.zeros(cond["prompt_embeds"].shape[1], 3),
                guidance=torch.full((size,), 3.5),
                return_dict=False,
            )[0]

        return predict

    def pool(self, model, embeddings, *, seed=0, num_steps=8, prompts=(TARGET,)):
        return RolloutPool.build(
            self.predict(model),
            self.objective,
            SliderScaler(model),
            embeddings,
            list(prompts),
            trajectories_per_prompt=4,
            num_steps=num_steps,
            latent_shape=self.latent_shape,
            seed=seed,
            device="cpu",
            dtype=torch.float32,
        )


PREDICTION_TYPES = ["epsilon", "v_prediction", "flow_matching"]


def count_forward_calls(model):
    """A list that receives the batch size of every forward call of `model`, and the hook's handle."""
    calls = []

    def hook(module, args, kwargs):
        batch = args[0] if args else kwargs["hidden_states"]
        calls.append(batch.shape[0])

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("prediction_type", ["epsilon", "flow_matching"])
@pytest.mark.parametrize(
    ("anchors", "frozen", "trained"),
    [
        ((), 3 * 2, 2 * 2),
        ((AnchorPrompt(ANCHOR),), 3 * 2 + 1, 2 * 2 + 2),
        # Anchor 1 sits at sample 1, whose negative prompt it is: the frozen pass holds that row once.
        ((AnchorPrompt(ANCHOR), AnchorPrompt(FROWNING)), 3 * 2 + 1, 2 * 2 + 2 * 2),
    ],
    ids=["sets", "one anchor", "anchor shared with a set"],
)
def test_one_frozen_and_one_trained_forward_call(prediction_type, anchors, frozen, trained):
    family = Family(prediction_type)
    model = family.build()
    embeddings = embeddings_for(family.width)
    pool = family.pool(model, embeddings, num_steps=3)
    noisy = pool.draw([TARGET, TARGET], generator=torch.Generator().manual_seed(0))
    calls, handle = count_forward_calls(model)
    backwards = []
    result = prompt_slider_loss(
        family.predict(model),
        SliderScaler(model),
        noisy,
        [PromptSet(TARGET, SMILING, FROWNING)] * 2,
        embeddings,
        anchors=anchors,
        backward=lambda loss: backwards.append(loss.backward()),
    )
    handle.remove()
    assert calls == [frozen, trained]  # the frozen pass first: 3 x batch (+ one row per anchor), then the trained one
    assert len(backwards) == 1 and result.strengths.numel() == trained
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


def test_backward_inside_the_trained_block_with_gradient_checkpointing():
    """Checkpointing re-runs the forward during backward: inside the block it sees the rows' own strengths."""
    family = Family("epsilon")
    embeddings = embeddings_for(family.width)
    sets = [PromptSet(TARGET, SMILING, FROWNING, strength=1.5)] * 2

    def slider_grads(*, checkpointing, inside):
        model = family.build(init_lora_weights=False)
        model.train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        noisy = family.pool(model, embeddings, num_steps=3).draw([TARGET] * 2, generator=torch.Generator())
        scaler = SliderScaler(model)
        result = prompt_slider_loss(
            family.predict(model),
            scaler,
            noisy,
            sets,
            embeddings,
            anchors=[AnchorPrompt(ANCHOR)],
            backward=(lambda loss: loss.backward()) if inside else None,
        )
        if not inside:
            result.loss.backward()  # outside the block: the re-run forward sees the reference scales
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain = slider_grads(checkpointing=False, inside=True)
    for grad, checkpointed in zip(plain, slider_grads(checkpointing=True, inside=True)):
        torch.testing.assert_close(checkpointed, grad, rtol=1e-4, atol=1e-8)  # recomputation: rounding only
    # The control: backward after the block. The re-run forward then lacks the per-sample strengths; torch either
    # notices (it saved a different number of tensors) or the gradients differ.
    try:
        outside = slider_grads(checkpointing=True, inside=False)
    except torch.utils.checkpoint.CheckpointError:
        return
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-8) for a, b in zip(plain, outside))


def concept_statistic(family, model, embeddings, probe, strengths):
    """Per strength: the mean over the probe x_t's of the projection of (prediction for the target at s minus at 0)
    onto the base's positive - negative direction, over that direction's norm (1.0 = the full guided step)."""
    predict, scaler = family.predict(model), SliderScaler(model)
    size = probe.noisy.shape[0]

    def at(strength, prompt):
        with torch.no_grad(), scaler.at(strength):
            return predict(probe, stack_conditioning([embeddings[prompt]] * size)).flatten(1)

    direction = at(0.0, SMILING) - at(0.0, FROWNING)
    base = at(0.0, TARGET)
    return [
        (((at(float(s), TARGET) - base) * direction).sum(1) / direction.norm(dim=1).square()).mean().item()
        for s in strengths
    ]


def train_slider(family, *, positive=SMILING, negative=FROWNING, action="enhance", steps=30):
    model = family.build()
    embeddings = embeddings_for(family.width)
    pool = family.pool(model, embeddings)
    predict, scaler = family.predict(model), SliderScaler(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0)
    sets = [PromptSet(TARGET, positive, negative, action=action)] * 2
    generator = torch.Generator().manual_seed(0)
    gains = []
    for _ in range(steps):
        noisy = pool.draw([s.target for s in sets], generator=generator)
        result = prompt_slider_loss(predict, scaler, noisy, sets, embeddings, backward=lambda loss: loss.backward())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        gains.append((result.base_loss - result.loss).item())
    probe = pool.draw([TARGET] * 4, generator=torch.Generator().manual_seed(123))
    return model, embeddings, probe, gains


STRENGTHS = (-2, -1, 0, 1, 2)


def strictly_increasing(values):
    return all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("action", ["enhance", "erase"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_trained_slider_moves_the_concept_monotonically(prediction_type, action):
    family = Family(prediction_type)
    model, embeddings, probe, gains = train_slider(family, action=action)
    # Strength 0 is the base model, bitwise: the same code on the same inputs with the adapter disabled.
    predict = family.predict(model)
    conditioning = stack_conditioning([embeddings[TARGET]] * probe.noisy.shape[0])
    with torch.no_grad():
        with SliderScaler(model).at(0.0):
            at_zero = predict(probe, conditioning)
        model.disable_adapters()
        base = predict(probe, conditioning)
        model.enable_adapters()
    torch.testing.assert_close(at_zero, base, atol=0, rtol=0)

    statistic = concept_statistic(family, model, embeddings, probe, STRENGTHS)
    assert statistic[2] == 0.0
    signed = statistic if action == "enhance" else [-v for v in statistic]
    assert strictly_increasing(signed), statistic
    assert signed[3] > 0.1, statistic  # at +1, at least a tenth of the guided step along the concept
    assert sum(gains[-10:]) > 0  # the trained slider beats the base on its own objective


def test_control_positive_equal_negative_gives_no_direction():
    """The same training with positive == negative: the target is the base's own prediction, so the slider gets no
    gradient from the direction term and the statistic stays flat; the monotonic test above fails on it."""
    family = Family("epsilon")
    model, embeddings, probe, gains = train_slider(family, negative=SMILING)
    statistic = concept_statistic(family, model, embeddings, probe, STRENGTHS)
    assert not strictly_increasing(statistic) and not strictly_increasing([-v for v in statistic])
    assert max(abs(v) for v in statistic) < 1e-4, statistic

    # At the same (fresh) slider and the same x_t's, the gradient with no direction is ~0; with one it is not.
    def gradient_norm(negative):
        model = family.build()
        noisy = family.pool(model, embeddings, num_steps=3).draw([TARGET] * 2, generator=torch.Generator())
        sets = [PromptSet(TARGET, SMILING, negative)] * 2
        prompt_slider_loss(
            family.predict(model), SliderScaler(model), noisy, sets, embeddings, backward=lambda loss: loss.backward()
        )
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()

    with_direction, without = gradient_norm(FROWNING), gradient_norm(SMILING)
    assert with_direction > 0 and without <= 1e-6 * with_direction


# ---------------------------------------------------------------------------------------------------------------------
# Rollouts


def oracle(objective, x0):
    """A model that knows the clean latents: its exact prediction at any x_t, in the objective's convention."""

    def predict(batch, cond):
        sigma = batch.sigmas.view(-1, *([1] * (x0.ndim - 1))).double()
        x = batch.noisy.double()
        clean = x0[: x.shape[0]].double()
        if objective.prediction_type == "flow_matching":
            noise = (x - (1 - sigma) * clean) / sigma
            return (noise - clean).float()
        a, b = (1 - sigma.square()).sqrt(), sigma  # DDPM sigmas are sqrt(1 - alpha_bar)
        eps = (x - a * clean) / b
        return (eps if objective.prediction_type == "epsilon" else a * eps - b * clean).float()

    return predict


OBJECTIVES = {
    "epsilon": ddpm_objective("epsilon"),
    "v_prediction": ddpm_objective("v_prediction"),
    "flow_matching": FlowMatchingObjective(shift=3.0),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_rollout_with_an_exact_model_lands_on_the_forward_process(name):
    """Euler / DDIM (eta 0) with the exact prediction follow the forward process of the same noise exactly, so each
    stop must equal the objective's own add_noise at the returned timesteps."""
    objective = OBJECTIVES[name]
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 4, 4, 4, generator=generator), torch.randn(6, 4, 4, 4, generator=generator)
    # The oracle reads x0 by row; all samples share one x0 so that dropping finished samples keeps rows aligned.
    x0 = x0[:1].expand(6, -1, -1, -1)
    stops = [0, 1, 2, 5, 9, 3]
    batch = rollout(oracle(objective, x0), objective, {"c": torch.zeros(6, 1)}, noise, num_steps=10, stop_steps=stops)
    assert batch.target is None and batch.noise is noise
    torch.testing.assert_close(batch.noisy[0], noise[0], rtol=0, atol=0)  # stop 0: the pure noise
    if name == "flow_matching":
        expected = objective.add_noise(x0, noise=noise, timesteps=batch.sigmas)
    else:
        # The start `noise` is taken as x at the first timestep (alpha_bar a0 > 0), so the noise the exact model
        # sees all along is eps = (noise - sqrt(a0) x0) / sqrt(1 - a0), which DDIM (eta 0) keeps.
        a0 = objective.alphas_cumprod[-1].item()
        eps = (noise.double() - a0**0.5 * x0.double()) / (1 - a0) ** 0.5
        expected = objective.add_noise(x0.double(), noise=eps, timesteps=batch.timesteps)
        expected = expected._replace(noisy=expected.noisy.float())
    torch.testing.assert_close(batch.sigmas, expected.sigmas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(batch.timesteps, expected.timesteps, rtol=1e-6, atol=1e-4)
    # DDIM divides by sqrt(alpha_bar) ~ 0.07 at the first timestep: float32 rounding grows a little.
    torch.testing.assert_close(batch.noisy, expected.noisy, rtol=1e-4, atol=1e-4)
    if name == "flow_matching":
        # The shifted grid: sigma_k = shift s / (1 + (shift - 1) s) for s = 1 - k / num_steps.
        s = 1 - torch.tensor(stops, dtype=torch.float32) / 10
        torch.testing.assert_close(batch.sigmas, 3 * s / (1 + 2 * s), rtol=1e-6, atol=1e-7)
    else:
        # Trailing spacing: 999, 899, ..., 99.
        assert batch.timesteps.tolist() == [999 - 100 * k for k in stops]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "flow_matching"])
def test_rollout_pool_is_deterministic_and_draws_intermediate_steps(prediction_type):
    family = Family(prediction_type)
    model = family.build()
    embeddings = embeddings_for(family.width)
    num_steps = 5
    first, second = (
        family.pool(model, embeddings, num_steps=num_steps),
        family.pool(model, embeddings, num_steps=num_steps),
    )
    assert len(first) == 1 * 4 * (num_steps - 1) and first.prompts == (TARGET,)

    def draws(pool, seed, count=64):
        return pool.draw([TARGET] * count, generator=torch.Generator().manual_seed(seed))

    a, b = draws(first, 0), draws(second, 0)
    for field in ("noisy", "noise", "timesteps", "sigmas"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=0, atol=0)  # same seed: bitwise
    assert not torch.equal(draws(first, 1).noisy, a.noisy)
    other = family.pool(model, embeddings, seed=1, num_steps=num_steps)
    assert not torch.equal(draws(other, 0).noisy, a.noisy)

    # The steps drawn: every one of 1 .. num_steps - 1, never 0 (pure noise); read back from rollout's own grid.
    grid = rollout(
        family.predict(model),
        family.objective,
        stack_conditioning([embeddings[TARGET]] * num_steps),
        torch.zeros(num_steps, *family.latent_shape),
        num_steps=num_steps,
        stop_steps=list(range(num_steps)),
    )
    steps = [grid.sigmas.tolist().index(sigma) for sigma in a.sigmas.tolist()]
    assert set(steps) == set(range(1, num_steps))
    # And each drawn x_t is where rollout from its own noise stops (batch of 1 here, of 4 in the pool: rounding).
    for row in range(3):
        alone = rollout(
            family.predict(model),
            family.objective,
            stack_conditioning([embeddings[TARGET]]),
            a.noise[row : row + 1],
            num_steps=num_steps,
            stop_steps=[steps[row]],
        )
        torch.testing.assert_close(alone.noisy[0], a.noisy[row], rtol=1e-4, atol=1e-5)
        assert alone.timesteps.item() == a.timesteps[row].item()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_rollouts_are_the_base_models_whatever_the_slider(prediction_type):
    # The documented choice: trajectories are sampled with the slider at 0. A pool built on a model whose slider is
    # far from zero (random LoRA weights) is the pool of the same model with the adapter disabled, bit for bit, and
    # the slider's scale is left as it was.
    family = Family(prediction_type)
    model = family.build(init_lora_weights=False)
    embeddings = embeddings_for(family.width)
    scaler = SliderScaler(model)
    with scaler.at(1.5):  # a training loop may call it inside a strength block
        pool = family.pool(model, embeddings, num_steps=4)
        draw = pool.draw([TARGET] * 8, generator=torch.Generator().manual_seed(0))
        scales = {name: dict(layer.scaling) for name, layer in model.named_modules() if hasattr(layer, "scaling")}
    assert {scale for layer in scales.values() for scale in layer.values()} == {1.5}
    model.disable_adapters()
    base = family.pool(model, embeddings, num_steps=4).draw([TARGET] * 8, generator=torch.Generator().manual_seed(0))
    model.enable_adapters()
    torch.testing.assert_close(draw.noisy, base.noisy, rtol=0, atol=0)

    # The control: the slider does move a rollout taken at its strength (what Concept Sliders does), so the equality
    # above is the pool's choice, not a slider too small to matter.
    def roll(strength):
        with torch.no_grad(), scaler.at(strength):
            conditioning = stack_conditioning([embeddings[TARGET]] * 8)
            return rollout(
                family.predict(model), family.objective, conditioning, draw.noise, num_steps=4, stop_steps=[3] * 8
            ).noisy

    assert not torch.allclose(roll(1.5), roll(0.0), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# The cache of frozen predictions: the same losses and gradients, without the frozen pass

# Two target prompts (two blocks of the cache), a set whose neutral differs from its target (4 cached prompts), an
# unmirrored erase, and anchors (cached at every latent of both targets).
CACHE_SETS = [
    PromptSet(TARGET, SMILING, FROWNING, guidance_scale=2.0),
    PromptSet(ANCHOR, SMILING, FROWNING, action="erase", mirror=False, strength=0.5),
    PromptSet(TARGET, SMILING, FROWNING, neutral=ANCHOR, weight=2.0),
]
CACHE_ANCHORS = (AnchorPrompt(ANCHOR, strength=2.0), AnchorPrompt(SMILING, weight=0.5))


def cached_pool(family, model, embeddings, *, seed=0, batch_size=5):
    pool = family.pool(model, embeddings, seed=seed, num_steps=4, prompts=(TARGET, ANCHOR))
    pool.cache_predictions(
        family.predict(model),
        SliderScaler(model),
        embeddings,
        CACHE_SETS,
        anchors=CACHE_ANCHORS,
        batch_size=batch_size,
    )
    return pool


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_cached_frozen_predictions_give_the_same_losses_and_gradients(prediction_type):
    family = Family(prediction_type)
    model = family.build(init_lora_weights=False)  # a random slider: a loss above 0 and gradients
    embeddings = embeddings_for(family.width)
    pool = cached_pool(family, model, embeddings)
    assert pool.cached_prompts == {TARGET: (TARGET, SMILING, FROWNING, ANCHOR), ANCHOR: (ANCHOR, SMILING, FROWNING)}
    latent_bytes = torch.Size(family.latent_shape).numel() * 4
    assert pool.cache_nbytes == 4 * 3 * (4 + 3) * latent_bytes  # 4 trajectories x 3 intermediate steps per target
    predict, scaler = family.predict(model), SliderScaler(model)
    targets = [s.target for s in CACHE_SETS]

    def step(noisy, frozen):
        result = prompt_slider_loss(
            predict,
            scaler,
            noisy,
            CACHE_SETS,
            embeddings,
            anchors=CACHE_ANCHORS,
            frozen=frozen,
            backward=lambda loss: loss.backward(),
        )
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
        return result, grads

    plain_draws, cached_draws = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        noisy = pool.draw(targets, generator=plain_draws)
        cached_noisy, frozen = pool.draw_cached(targets, generator=cached_draws)
        for field in ("noisy", "noise", "timesteps", "sigmas"):  # the same draws: the same code on the same state
            torch.testing.assert_close(getattr(cached_noisy, field), getattr(noisy, field), rtol=0, atol=0)
        plain, plain_grads = step(noisy, None)
        calls, handle = count_forward_calls(model)
        cached, cached_grads = step(cached_noisy, frozen)
        handle.remove()
        assert calls == [cached.strengths.numel()]  # the trained pass only: no frozen forward call
        # The frozen predictions come from batches of other rows (5 per pass, not 13): float32 rounding only.
        torch.testing.assert_close(cached.loss, plain.loss, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(cached.base_loss, plain.base_loss, rtol=1e-5, atol=1e-7)
        assert torch.equal(cached.strengths, plain.strengths) and plain.loss > 0
        for got, want in zip(cached_grads, plain_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        assert any(grad.abs().sum() > 0 for grad in plain_grads)


def test_cached_frozen_predictions_are_deterministic_and_batch_size_free():
    """Two builds give bitwise equal caches; another batch size gives the same predictions up to rounding; each row
    is the frozen base's prediction of its prompt at its sample's latent."""
    family = Family("flow_matching")
    model = family.build(init_lora_weights=False)
    embeddings = embeddings_for(family.width)
    first, second = cached_pool(family, model, embeddings), cached_pool(family, model, embeddings)
    other_batch = cached_pool(family, model, embeddings, batch_size=3)
    pairs = [(sample, prompt) for sample in range(3) for prompt in (TARGET, SMILING, FROWNING, ANCHOR)]
    pairs = [(sample, prompt) for sample, prompt in pairs if sample != 1 or prompt != TARGET]  # sample 1 is ANCHOR's

    def draw(pool):
        return pool.draw_cached([TARGET, ANCHOR, TARGET], generator=torch.Generator().manual_seed(5))

    noisy, frozen = draw(first)
    rows = frozen.rows(pairs)
    assert frozen.index.tolist() == draw(second)[1].index.tolist()
    torch.testing.assert_close(draw(second)[1].rows(pairs), rows, rtol=0, atol=0)
    torch.testing.assert_close(draw(other_batch)[1].rows(pairs), rows, rtol=1e-5, atol=1e-6)
    predict, scaler = family.predict(model), SliderScaler(model)
    for (sample, prompt), row in zip(pairs, rows):
        alone = NoisyBatch(*(None if v is None else v[sample : sample + 1] for v in noisy))
        with torch.no_grad(), scaler.at(0.0):
            expected = predict(alone, stack_conditioning([embeddings[prompt]]))
        torch.testing.assert_close(row, expected[0], rtol=1e-5, atol=1e-6)
    # The index names the stored latent: trajectory row x (num_steps - 1) + step - 1, in [0, len(pool)).
    assert all(0 <= i < len(first) for i in frozen.index.tolist())
    assert first.nbytes > first.cache_nbytes > 0 and "cached predictions" in repr(first)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: errors that name the argument, the prompt or the entry, and say how to fix it


def _loss_call(**change):
    model = toy_model()
    kwargs = {
        "predict": toy_predict(model),
        "scaler": SliderScaler(model),
        "noisy": toy_noisy(2),
        "prompt_sets": [PromptSet(TARGET, SMILING, FROWNING, name="prompts.yaml entry 1")] * 2,
        "embeddings": toy_embeddings(),
    }
    kwargs.update(change)
    return lambda: prompt_slider_loss(**kwargs)


def _pool():
    model = toy_model()
    return RolloutPool.build(
        toy_predict(model),
        FlowMatchingObjective(),
        SliderScaler(model),
        {TARGET: {"text": torch.zeros(4)}},
        [TARGET],
        trajectories_per_prompt=1,
        num_steps=3,
        latent_shape=(4,),
        seed=0,
        device="cpu",
        dtype=torch.float32,
    )


def _pool_build(**change):
    model = toy_model()
    kwargs = {
        "trajectories_per_prompt": 1,
        "num_steps": 3,
        "latent_shape": (4,),
        "seed": 0,
        "device": "cpu",
        "dtype": torch.float32,
    }
    kwargs.update(change)
    embeddings = kwargs.pop("embeddings", {TARGET: {"text": torch.zeros(4)}})
    prompts = kwargs.pop("prompts", [TARGET])
    return lambda: RolloutPool.build(
        toy_predict(model), FlowMatchingObjective(), SliderScaler(model), embeddings, prompts, **kwargs
    )


def _cached_pool(prompt_sets, anchors=()):
    model = toy_model()
    pool = RolloutPool.build(
        toy_predict(model),
        FlowMatchingObjective(),
        SliderScaler(model),
        toy_embeddings(),
        [TARGET],
        trajectories_per_prompt=1,
        num_steps=3,
        latent_shape=(4,),
        seed=0,
        device="cpu",
        dtype=torch.float32,
    )
    pool.cache_predictions(toy_predict(model), SliderScaler(model), toy_embeddings(), prompt_sets, anchors=anchors)
    return pool


def _cached_loss(prompt_sets, *, cached_sets, anchors=(), batch=None):
    def call():
        pool = _cached_pool(cached_sets)
        noisy, frozen = pool.draw_cached([s.target for s in (batch or prompt_sets)], generator=torch.Generator())
        if batch is not None:  # predictions for another batch than `noisy`
            noisy = toy_noisy(len(prompt_sets))
        _loss_call(noisy=noisy, prompt_sets=prompt_sets, anchors=anchors, frozen=frozen)()

    return call


def _rollout(**change):
    model = toy_model()
    kwargs = {"num_steps": 4, "stop_steps": [1, 2]}
    kwargs.update(change)
    conditioning = kwargs.pop("conditioning", {"text": torch.zeros(2, 4)})
    return lambda: rollout(toy_predict(model), FlowMatchingObjective(), conditioning, torch.zeros(2, 4), **kwargs)


BAD_INPUTS = {
    "batch mismatch": (_loss_call(noisy=toy_noisy(3)), ValueError, "`noisy` has 3 samples but `prompt_sets` has 2"),
    "missing embedding": (
        _loss_call(embeddings={k: v for k, v in toy_embeddings().items() if k != FROWNING}),
        ValueError,
        "no entry for the negative prompt 'a photo of a person, frowning' of 'prompts.yaml entry 1'",
    ),
    "missing anchor embedding": (
        _loss_call(anchors=[AnchorPrompt("a tree")]),
        ValueError,
        r"no entry for the anchor prompt 'a tree' of `anchors\[0\]`",
    ),
    "no prompt set": (_loss_call(prompt_sets=[]), ValueError, "`prompt_sets` is empty"),
    "not a prompt set": (
        _loss_call(prompt_sets=[PromptSet(TARGET, SMILING, FROWNING), "x"]),
        TypeError,
        "prompt_sets",
    ),
    "one prompt set, not a list": (_loss_call(prompt_sets=PromptSet(TARGET, SMILING, FROWNING)), TypeError, "one per"),
    "not a noisy batch": (_loss_call(noisy=torch.zeros(2, 4)), TypeError, "`noisy` must be a NoisyBatch"),
    "wrong prediction shape": (
        _loss_call(predict=lambda batch, cond: batch.noisy[:, :2]),
        ValueError,
        r"returned \(6, 2\) for the frozen pass.*\(6, 4\)",
    ),
    "not a scaler": (_loss_call(scaler=object()), TypeError, "`scaler` must be a SliderScaler"),
    "guidance shape": (
        lambda: guided_target(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), guidance_scale=torch.ones(3)),
        ValueError,
        "one value per sample",
    ),
    "guidance not finite": (
        lambda: guided_target(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), guidance_scale=float("nan")),
        ValueError,
        "`guidance_scale` must be a finite number, got nan",
    ),
    "prediction shapes differ": (
        lambda: guided_target(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3), guidance_scale=1.0),
        ValueError,
        r"`positive` \(2, 4\) must be shaped like `neutral` \(2, 3\)",
    ),
    "conditioning names differ": (
        lambda: stack_conditioning([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}]),
        ValueError,
        r"`items\[1\]` has the names \['b'\]",
    ),
    "conditioning shapes differ": (
        lambda: stack_conditioning([{"a": torch.zeros(2)}, {"a": torch.zeros(3)}]),
        ValueError,
        r"`items\[1\]\['a'\]` must be a tensor shaped like",
    ),
    "conditioning list of two": (
        lambda: stack_conditioning([{"a": [torch.zeros(2)]}, {"a": [torch.zeros(2), torch.zeros(2)]}]),
        ValueError,
        "list holding one tensor",
    ),
    "concat mixed None": (
        lambda: concat_noisy([toy_noisy(1), toy_noisy(1)._replace(noise=None)]),
        ValueError,
        r"`noise` is None in batches \[1\]",
    ),
    "repeat zero times": (lambda: repeat_noisy(toy_noisy(1), 0), ValueError, "`times` must be an int in"),
    "rollout stop out of range": (_rollout(stop_steps=[1, 4]), ValueError, r"in \[0, num_steps\) = \[0, 4\)"),
    "rollout stops per sample": (_rollout(stop_steps=[1]), ValueError, r"one step per sample \(2\)"),
    "rollout conditioning rows": (
        _rollout(conditioning={"text": torch.zeros(3, 4)}),
        ValueError,
        "`conditioning` has 3 rows but `noise` has 2",
    ),
    "rollout DDPM steps": (
        lambda: rollout(
            toy_predict(toy_model()),
            ddpm_objective("epsilon"),
            {"t": torch.zeros(1)},
            torch.zeros(1, 4),
            num_steps=1001,
            stop_steps=[0],
        ),
        ValueError,
        r"`num_steps` must be an int in \[1, 1000\]",
    ),
    "pool one step": (_pool_build(num_steps=1), ValueError, "`num_steps` must be >= 2"),
    "pool missing embedding": (
        _pool_build(prompts=[TARGET, ANCHOR]),
        ValueError,
        "no entry for the prompt 'a photo of a house'",
    ),
    "pool latent shape": (_pool_build(latent_shape=(4, 0)), ValueError, "`latent_shape` must be positive ints"),
    "pool seed": (_pool_build(seed=-1), ValueError, "`seed` must be an integer"),
    "draw unknown prompt": (
        lambda: _pool().draw([ANCHOR], generator=torch.Generator()),
        ValueError,
        "no trajectories for the prompt 'a photo of a house'; it holds",
    ),
    "draw without generator": (lambda: _pool().draw([TARGET], generator=None), TypeError, "CPU torch.Generator"),
    "cache a target not in the pool": (
        lambda: _cached_pool([PromptSet(TARGET, SMILING, FROWNING), PromptSet(ANCHOR, SMILING, FROWNING, name="e2")]),
        ValueError,
        r"target prompt 'a photo of a house' of 'e2' is not in the rollout pool; it holds \['a photo of a person'\]",
    ),
    "cache missing embedding": (
        lambda: _cached_pool([PromptSet(TARGET, SMILING, "a tree")]),
        ValueError,
        "no entry for the prompt 'a tree'",
    ),
    "cache built for other prompt sets": (
        _cached_loss([PromptSet(TARGET, SMILING, ANCHOR)] * 2, cached_sets=[PromptSet(TARGET, SMILING, FROWNING)]),
        ValueError,
        "no prediction of the prompt 'a photo of a house' at the latents of the target prompt 'a photo of a person'",
    ),
    "cache built without the anchor": (
        _cached_loss(
            [PromptSet(TARGET, SMILING, FROWNING)] * 2,
            cached_sets=[PromptSet(TARGET, SMILING, FROWNING)],
            anchors=[AnchorPrompt(ANCHOR)],
        ),
        ValueError,
        "no prediction of the prompt 'a photo of a house'.*built for other prompt sets or anchors",
    ),
    "cached predictions of another batch": (
        _cached_loss(
            [PromptSet(TARGET, SMILING, FROWNING)] * 2,
            cached_sets=[PromptSet(TARGET, SMILING, FROWNING)],
            batch=[PromptSet(TARGET, SMILING, FROWNING)] * 3,
        ),
        ValueError,
        "`frozen` holds the predictions of 3 samples but `noisy` has 2",
    ),
    "frozen not from draw_cached": (_loss_call(frozen=torch.zeros(6, 4)), TypeError, "`frozen` must be the"),
    "draw_cached without a cache": (
        lambda: _pool().draw_cached([TARGET], generator=torch.Generator()),
        RuntimeError,
        r"no cached frozen predictions: call `pool.cache_predictions",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs(case):
    call, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call()
