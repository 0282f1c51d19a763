# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Text-prompt sliders: a slider trained from prompts alone, with the frozen base model's predictions as the target.

A prompt set names four prompts: the `target` the slider acts on, a `positive` and a `negative` prompt whose difference
is the concept, and the `neutral` prompt the target prediction starts from (the target itself by default). At an
intermediate latent `x_t`, the frozen base (the slider at strength 0, no gradient) predicts for `neutral`,
`positive` and `negative` in one batched forward pass; the slider at `+s` is trained, in one more pass, so that its
prediction for `target` equals

    neutral + sign * eta * (positive - negative)        (sign +1 for "enhance", -1 for "erase")

and, mirrored in the same pass (per-sample strengths), at `-s` the same with the sign flipped. Anchor prompts are
trained at `+s` and `-s` toward the base's own prediction for them (the slider leaves them alone).

Why the target may be formed in the model's own output space, whatever it predicts: at a fixed `(x_t, t)`, the noise
`eps`, the velocity `v` and the flow velocity `noise - x0` are each an affine function of the model's estimate of
`x0`, with the same coefficients for every prompt (they depend on `x_t` and `t` only): with `x_t = a x0 + b eps`,
`eps = (x_t - a x0) / b` and `v = a eps - b x0 = (a / b) x_t - x0 / b`; with `x_t = (1 - sigma) x0 + sigma noise`,
`noise - x0 = (x_t - x0) / sigma`. The guided target is an affine combination of three predictions (weights
`1 + c - c = 1`), and affine combinations commute with affine maps, so forming it in eps, v or velocity space gives
the same target as forming it on the `x0` estimates and converting: the identity classifier-free guidance relies on.
Z-Image's pipeline negates its model's output, a linear map, so the negated predictions the trainer's families give
are fine too.

FLUX.1-dev embeds a distilled guidance value. The frozen and the trained passes use the same embedded value (the
trainer's `--flux_guidance_value`), so the slider learns a difference at one fixed guidance; `eta` is applied in output
space on top, never through the embedding, because the embedding distils classifier-free guidance against the empty
prompt, not the positive-versus-negative direction.

Where the `x_t` come from: Concept Sliders denoises from pure noise with the LoRA on, to a random step, every training
step, which costs up to `num_steps` forward passes per step. Here the trajectories are sampled with the BASE model
(the slider at 0) once, for the target prompts (as Concept Sliders rolls out with the target prompt), and pooled:
`RolloutPool` keeps every intermediate latent and `draw` picks a stored trajectory and a step at random, so a training
step costs the frozen and the trained pass only. `rollout` is the sampler behind it (Euler steps for flow matching,
DDIM with eta 0 for epsilon and v-prediction). As the base is frozen and the pooled latents are fixed, the frozen
pass's predictions at them never change: `RolloutPool.cache_predictions` computes them once (opt-in, at a memory cost
of a few times the pool's), and `draw_cached` hands them to `prompt_slider_loss(..., frozen=...)`, so a step costs
the trained pass only.

This module holds the prompt sets (`PromptSet`, `AnchorPrompt`, `PromptSliderSpec`), the objective
(`prompt_slider_loss`, `guided_target`), the batching helpers (`stack_conditioning`, `repeat_noisy`, `concat_noisy`)
and the rollouts (`rollout`, `RolloutPool`, `FrozenPredictions`); `prompt_files` reads the prompt sets from Concept
Sliders', ai-toolkit's and our own files.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..utils.checks import check_finite, check_int, check_seed, show_value
from .objectives import DenoisingObjective, NoisyBatch

if TYPE_CHECKING:
    from .scaling import SliderScaler

__all__ = [
    "ACTIONS",
    "AnchorPrompt",
    "FrozenPredictions",
    "PromptSet",
    "PromptSliderLoss",
    "PromptSliderSpec",
    "RolloutPool",
    "concat_noisy",
    "guided_target",
    "prompt_slider_loss",
    "repeat_noisy",
    "rollout",
    "stack_conditioning",
]

#: One prompt's cached text conditioning: name -> a tensor without the batch axis, or a list holding one tensor
#: (Z-Image's variable-length caption features). `stack_conditioning` batches them.
PromptConditioning = Mapping[str, "torch.Tensor | list[torch.Tensor]"]

ACTIONS = ("enhance", "erase")
"""What a prompt set does to the concept at `+s`: `"enhance"` adds `positive - negative`, `"erase"` removes it."""

_MAX_RESOLUTION = 65536
_MAX_BATCH = 4096


def _check_prompt(value: Any, *, argument: str, where: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{where}: `{argument}` must be a string, got {type(value).__name__} {show_value(value)}.")
    return value


def _check_weight(value: Any, *, argument: str, where: str) -> float:
    value = check_finite(value, argument=f"{where}: `{argument}`")
    if value <= 0:
        raise ValueError(f"{where}: `{argument}` must be > 0, got {show_value(value)}.")
    return value


@dataclass(frozen=True)
class PromptSet:
    """One text-prompt slider direction.

    Args:
        target (`str`): The prompt the slider is trained on (its prediction is moved).
        positive (`str`): The prompt with more of the concept.
        negative (`str`): The prompt with less of it (Concept Sliders' `unconditional`).
        neutral (`str`, *optional*): Where the guided target starts; defaults to `target`.
        action (`str`, *optional*, defaults to `"enhance"`): One of `ACTIONS`.
        guidance_scale (`float`, *optional*, defaults to `1.0`): `eta`, how far the target moves along
            `positive - negative` (finite; 0 gives no direction).
        resolution (`int`, *optional*): Square image size in pixels for this set; None uses the run's resolution.
        batch_size (`int`, *optional*, defaults to `1`): Latents drawn for this set per step.
        strength (`float`, *optional*, defaults to `1.0`): The slider strength `s` (> 0) the set trains at.
        weight (`float`, *optional*, defaults to `1.0`): The set's weight (> 0) in the loss.
        mirror (`bool`, *optional*, defaults to `True`): Also train `-s` toward the mirrored target.
        name (`str`, *optional*): Where the set came from, for messages (`"prompts.yaml entry 2"`).
    """

    target: str
    positive: str
    negative: str
    neutral: str | None = None
    action: str = "enhance"
    guidance_scale: float = 1.0
    resolution: int | None = None
    batch_size: int = 1
    strength: float = 1.0
    weight: float = 1.0
    mirror: bool = True
    name: str | None = field(default=None, compare=False)

    def __post_init__(self):
        where = self.name or "prompt set"
        for argument in ("target", "positive", "negative"):
            _check_prompt(getattr(self, argument), argument=argument, where=where)
        neutral = _check_prompt(self.neutral, argument="neutral", where=where, optional=True)
        object.__setattr__(self, "neutral", self.target if neutral is None else neutral)
        if self.action not in ACTIONS:
            raise ValueError(f"{where}: `action` must be one of {ACTIONS}, got {show_value(self.action)}.")
        object.__setattr__(
            self, "guidance_scale", check_finite(self.guidance_scale, argument=f"{where}: `guidance_scale`")
        )
        if self.resolution is not None:
            check_int(self.resolution, argument=f"{where}: `resolution`", low=8, high=_MAX_RESOLUTION)
        check_int(self.batch_size, argument=f"{where}: `batch_size`", low=1, high=_MAX_BATCH)
        object.__setattr__(self, "strength", _check_weight(self.strength, argument="strength", where=where))
        object.__setattr__(self, "weight", _check_weight(self.weight, argument="weight", where=where))
        if not isinstance(self.mirror, bool):
            raise TypeError(f"{where}: `mirror` must be true or false, got {show_value(self.mirror)}.")

    @property
    def sign(self) -> float:
        """+1.0 for `"enhance"`, -1.0 for `"erase"`: the sign of `eta` in the target at `+s`."""
        return 1.0 if self.action == "enhance" else -1.0

    def prompts(self) -> tuple[str, ...]:
        """The set's distinct prompts: target, neutral, positive, negative (each once, in that order)."""
        return tuple(dict.fromkeys((self.target, self.neutral, self.positive, self.negative)))


@dataclass(frozen=True)
class AnchorPrompt:
    """A prompt the slider must leave alone: at `+s` and `-s` its prediction is trained toward the base's.

    Args:
        prompt (`str`): The anchor prompt.
        strength (`float`, *optional*, defaults to `1.0`): The strength `s` (> 0) it is held at (ai-toolkit's
            `multiplier`).
        weight (`float`, *optional*, defaults to `1.0`): Its weight (> 0) in the loss.
        name (`str`, *optional*): Where it came from, for messages.
    """

    prompt: str
    strength: float = 1.0
    weight: float = 1.0
    name: str | None = field(default=None, compare=False)

    def __post_init__(self):
        where = self.name or "anchor"
        _check_prompt(self.prompt, argument="prompt", where=where)
        object.__setattr__(self, "strength", _check_weight(self.strength, argument="strength", where=where))
        object.__setattr__(self, "weight", _check_weight(self.weight, argument="weight", where=where))


@dataclass(frozen=True)
class PromptSliderSpec:
    """What a prompt file holds: the prompt sets, the anchors, and where they came from.

    Args:
        prompt_sets (`tuple[PromptSet, ...]`): At least one.
        anchors (`tuple[AnchorPrompt, ...]`, *optional*): Prompts to preserve.
        source (`str`, *optional*): The file read.
        format (`str`, *optional*, defaults to `"peft_slider"`): `"concept_sliders"`, `"ai_toolkit"` or
            `"peft_slider"`.
    """

    prompt_sets: tuple[PromptSet, ...]
    anchors: tuple[AnchorPrompt, ...] = field(default=())
    source: str | None = None
    format: str = "peft_slider"

    def __post_init__(self):
        object.__setattr__(self, "prompt_sets", tuple(self.prompt_sets))
        object.__setattr__(self, "anchors", tuple(self.anchors))
        where = self.source or "prompt slider spec"
        if not self.prompt_sets:
            raise ValueError(f"{where}: no prompt set; a text-prompt slider needs at least one.")
        for index, item in enumerate(self.prompt_sets):
            if not isinstance(item, PromptSet):
                raise TypeError(f"{where}: `prompt_sets[{index}]` must be a PromptSet, got {type(item).__name__}.")
        for index, item in enumerate(self.anchors):
            if not isinstance(item, AnchorPrompt):
                raise TypeError(f"{where}: `anchors[{index}]` must be an AnchorPrompt, got {type(item).__name__}.")

    def prompts(self) -> list[str]:
        """Every distinct prompt of the sets and anchors, in order of first use: what to encode (once) and cache."""
        texts = [text for item in self.prompt_sets for text in item.prompts()]
        texts += [anchor.prompt for anchor in self.anchors]
        return list(dict.fromkeys(texts))

    @property
    def max_strength(self) -> float:
        """The largest strength any set or anchor trains at."""
        return max(item.strength for item in (*self.prompt_sets, *self.anchors))


# ---------------------------------------------------------------------------------------------------------------------
# Batching


def _check_tensor(value: Any, *, argument: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim < 1:
        shown = (
            f"shape {tuple(value.shape)}, {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        )
        raise TypeError(f"`{argument}` must be a floating-point tensor shaped (batch, ...), got {shown}.")
    return value


def _per_sample_factor(value: Any, *, argument: str, like: torch.Tensor) -> float | torch.Tensor:
    """A number, or a 0-d / `(batch,)` tensor reshaped to broadcast over `like` (float32), checked finite."""
    if isinstance(value, torch.Tensor):
        if value.ndim > 1 or (value.ndim == 1 and value.numel() != like.shape[0]):
            raise ValueError(
                f"`{argument}` must be a number or a 1-D tensor with one value per sample ({like.shape[0]}), got "
                f"shape {tuple(value.shape)}."
            )
        value = value.detach().to(device=like.device, dtype=torch.float32)
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"`{argument}` must be finite, got {value.tolist()}.")
        return value.view(-1, *([1] * (like.ndim - 1))) if value.ndim else value
    return check_finite(value, argument=argument)


def guided_target(
    neutral: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    guidance_scale: float | torch.Tensor,
    sign: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The text-prompt slider's target: `neutral + sign * guidance_scale * (positive - negative)`, in float32.

    The three predictions are the frozen base model's, at the same `x_t` and `t`, in the model's own output space (see
    the module docstring for why that is right for epsilon, v-prediction and flow matching). The result is float32 so
    that a small `eta * (positive - negative)` is not rounded away in a half-precision model's dtype.

    Args:
        neutral (`torch.Tensor`): The base's prediction for the neutral prompt, `(batch, ...)`.
        positive (`torch.Tensor`): For the positive prompt, shaped like `neutral`.
        negative (`torch.Tensor`): For the negative prompt, shaped like `neutral`.
        guidance_scale (`float` or `torch.Tensor`): `eta`: a number, or a `(batch,)` tensor of per-sample values.
        sign (`float` or `torch.Tensor`, *optional*, defaults to `1.0`): +1 to enhance, -1 to erase (or mirror); a
            number or a `(batch,)` tensor.

    Returns:
        `torch.Tensor`: float32, shaped like `neutral`.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import guided_target
    >>> neutral, positive, negative = torch.zeros(2, 3), torch.ones(2, 3), -torch.ones(2, 3)
    >>> guided_target(neutral, positive, negative, guidance_scale=0.5, sign=torch.tensor([1.0, -1.0]))
    tensor([[ 1.,  1.,  1.],
            [-1., -1., -1.]])
    ```
    """
    neutral = _check_tensor(neutral, argument="neutral")
    for name, value in (("positive", positive), ("negative", negative)):
        if _check_tensor(value, argument=name).shape != neutral.shape:
            raise ValueError(
                f"`{name}` {tuple(value.shape)} must be shaped like `neutral` {tuple(neutral.shape)}: the three "
                "predictions are made at the same x_t's."
            )
    scale = _per_sample_factor(guidance_scale, argument="guidance_scale", like=neutral)
    sign = _per_sample_factor(sign, argument="sign", like=neutral)
    return neutral.float() + (sign * scale) * (positive.float() - negative.float())


def _conditioning_size(conditioning: Mapping[str, Any], *, argument: str) -> int:
    if not isinstance(conditioning, Mapping) or not conditioning:
        raise TypeError(
            f"`{argument}` must be a non-empty dict of name -> batched tensor (or list of per-sample tensors), got "
            f"{type(conditioning).__name__}."
        )
    sizes = {key: len(value) for key, value in conditioning.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"`{argument}` must hold one batch size, got {sizes}.")
    return next(iter(sizes.values()))


def _select_conditioning(conditioning: Mapping[str, Any], index: Sequence[int]) -> dict[str, Any]:
    """The rows `index` of a batched conditioning (tensors indexed on their device, lists picked)."""
    selected: dict[str, Any] = {}
    rows: dict[torch.device, torch.Tensor] = {}
    for key, value in conditioning.items():
        if isinstance(value, torch.Tensor):
            where = rows.get(value.device)
            if where is None:
                where = rows[value.device] = torch.tensor(list(index), dtype=torch.long, device=value.device)
            selected[key] = value.index_select(0, where)
        else:
            selected[key] = [value[i] for i in index]
    return selected


def _move_conditioning(conditioning: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: [item.to(device) for item in value] if isinstance(value, list) else value.to(device)
        for key, value in conditioning.items()
    }


def stack_conditioning(items: Sequence[PromptConditioning]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Batch per-prompt conditionings: tensors are stacked on a new batch axis, one-tensor lists are concatenated.

    The inverse of the example trainer's `split_conditioning` (examples/train_slider/families.py), which batches its
    cached embeddings with it. A prompt's conditioning maps a name to a tensor without the batch axis
    (`prompt_embeds` of shape `(tokens, width)`, `pooled_prompt_embeds` of shape `(width,)`), or to a list holding one
    tensor for Z-Image-style variable-length features, which stay a list of per-sample tensors in the batch.

    Args:
        items (sequence of `dict`): One conditioning per batch row (a prompt may repeat), all with the same names.

    Returns:
        `dict[str, torch.Tensor | list[torch.Tensor]]`

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import stack_conditioning
    >>> cat = {"prompt_embeds": torch.zeros(7, 32), "pooled_prompt_embeds": torch.zeros(32)}
    >>> dog = {"prompt_embeds": torch.ones(7, 32), "pooled_prompt_embeds": torch.ones(32)}
    >>> {key: tuple(value.shape) for key, value in stack_conditioning([cat, dog, cat]).items()}
    {'prompt_embeds': (3, 7, 32), 'pooled_prompt_embeds': (3, 32)}
    >>> len(stack_conditioning([{"prompt_embeds": [torch.zeros(5, 8)]}, {"prompt_embeds": [torch.zeros(9, 8)]}])["prompt_embeds"])
    2
    ```
    """
    if isinstance(items, Mapping) or not isinstance(items, Sequence) or not items:
        raise TypeError(
            f"`items` must be a non-empty sequence of per-prompt conditionings (dicts), got {type(items).__name__}."
        )
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or not item:
            raise TypeError(
                f"`items[{index}]` must be a non-empty dict of name -> tensor (or a list of one tensor), got "
                f"{type(item).__name__}."
            )
    names = list(items[0])
    batch: dict[str, torch.Tensor | list[torch.Tensor]] = {}
    for index, item in enumerate(items):
        if set(item) != set(names):
            raise ValueError(
                f"`items[{index}]` has the names {sorted(item)}, but `items[0]` has {sorted(names)}; every prompt's "
                "conditioning must come from the same encoder."
            )
    for name in names:
        values = [item[name] for item in items]
        if isinstance(values[0], (list, tuple)):
            for index, value in enumerate(values):
                if not isinstance(value, (list, tuple)) or len(value) != 1 or not isinstance(value[0], torch.Tensor):
                    raise ValueError(
                        f"`items[{index}][{name!r}]` must be a list holding one tensor, like `items[0][{name!r}]`, "
                        f"got {type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '-'}."
                    )
            batch[name] = [value[0] for value in values]
            continue
        for index, value in enumerate(values):
            if not isinstance(value, torch.Tensor) or value.shape != values[0].shape:
                shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"`items[{index}][{name!r}]` must be a tensor shaped like `items[0][{name!r}]` "
                    f"{tuple(values[0].shape) if isinstance(values[0], torch.Tensor) else ''}, got {shown}; pad "
                    "the prompts to one length when encoding them, or pass Z-Image-style lists."
                )
        batch[name] = torch.stack(values)
    return batch


_NOISY_FIELDS = NoisyBatch._fields


def _check_noisy(noisy: Any, *, argument: str = "noisy") -> NoisyBatch:
    if not isinstance(noisy, NoisyBatch):
        raise TypeError(
            f"`{argument}` must be a NoisyBatch (from an objective's add_noise, rollout or RolloutPool.draw), got "
            f"{type(noisy).__name__}."
        )
    _check_tensor(noisy.noisy, argument=f"{argument}.noisy")
    return noisy


def _take(noisy: NoisyBatch, index: Sequence[int]) -> NoisyBatch:
    """The rows `index` of every field (None stays None)."""
    rows: dict[torch.device, torch.Tensor] = {}
    fields = []
    for value in noisy:
        if value is None:
            fields.append(None)
            continue
        where = rows.get(value.device)
        if where is None:
            where = rows[value.device] = torch.tensor(list(index), dtype=torch.long, device=value.device)
        fields.append(value.index_select(0, where))
    return NoisyBatch(*fields)


def repeat_noisy(noisy: NoisyBatch, times: int) -> NoisyBatch:
    """`times` copies of a batch concatenated along the batch axis (`[all, all, ...]`); fields that are None stay None.

    Args:
        noisy (`NoisyBatch`): The batch.
        times (`int`): How many copies (>= 1).

    Returns:
        `NoisyBatch`

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import NoisyBatch, repeat_noisy
    >>> batch = NoisyBatch(torch.tensor([[1.0], [2.0]]), None, None, torch.tensor([10, 20]), torch.tensor([0.1, 0.2]))
    >>> repeat_noisy(batch, 2).timesteps, repeat_noisy(batch, 2).target
    (tensor([10, 20, 10, 20]), None)
    ```
    """
    noisy = _check_noisy(noisy)
    times = check_int(times, argument="times", low=1, high=2**31 - 1)
    return NoisyBatch(*(None if value is None else value.repeat(times, *([1] * (value.ndim - 1))) for value in noisy))


def concat_noisy(batches: Sequence[NoisyBatch]) -> NoisyBatch:
    """Batches concatenated along the batch axis; a field is None when it is None in every batch.

    Args:
        batches (sequence of `NoisyBatch`): At least one; a field must be None in all of them or in none.

    Returns:
        `NoisyBatch`

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import NoisyBatch, concat_noisy
    >>> a = NoisyBatch(torch.zeros(1, 2), None, torch.ones(1, 2), torch.tensor([5]), torch.tensor([0.5]))
    >>> b = NoisyBatch(torch.ones(2, 2), None, torch.ones(2, 2), torch.tensor([6, 7]), torch.tensor([0.6, 0.7]))
    >>> concat_noisy([a, b]).timesteps
    tensor([5, 6, 7])
    ```
    """
    if isinstance(batches, NoisyBatch) or not isinstance(batches, Sequence) or not batches:
        raise TypeError(f"`batches` must be a non-empty sequence of NoisyBatch, got {type(batches).__name__}.")
    batches = [_check_noisy(batch, argument=f"batches[{index}]") for index, batch in enumerate(batches)]
    fields = []
    for position, name in enumerate(_NOISY_FIELDS):
        values = [batch[position] for batch in batches]
        present = [value is not None for value in values]
        if not any(present):
            fields.append(None)
            continue
        if not all(present):
            missing = [index for index, there in enumerate(present) if not there]
            raise ValueError(
                f"`{name}` is None in batches {missing} but not in the others; a field must be given in every batch "
                "or in none."
            )
        fields.append(torch.cat(values))
    return NoisyBatch(*fields)


# ---------------------------------------------------------------------------------------------------------------------
# The objective


class PromptSliderLoss(NamedTuple):
    """What one text-prompt slider step computed.

    Attributes:
        loss (`torch.Tensor`): float32 scalar with a graph to the slider: the weighted mean of the per-sample MSEs
            between the slider's predictions (at `strengths`) and the guided targets.
        base_loss (`torch.Tensor`): float32 scalar, no graph: the same loss with the slider at 0, i.e. the frozen
            base's prediction for each trained prompt against the same targets. `base_loss - loss` is what the
            slider has gained over doing nothing.
        strengths (`torch.Tensor`): float32 `(rows,)` on the CPU, the strength of each trained row (`+s`, `-s` when mirrored,
            `+s_a` and `-s_a` per anchor), in the order of the trained batch.
    """

    loss: torch.Tensor
    base_loss: torch.Tensor
    strengths: torch.Tensor


def _weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_sample = (prediction.float() - target).square().flatten(1).mean(1)
    return (per_sample * weights).sum() / weights.sum()


def _check_prediction(prediction: Any, batch: NoisyBatch, *, which: str) -> torch.Tensor:
    if not isinstance(prediction, torch.Tensor) or prediction.shape != batch.noisy.shape:
        shown = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
        raise ValueError(
            f"`predict` returned {shown} for the {which}, but it must return a tensor shaped like its batch's "
            f"`noisy` {tuple(batch.noisy.shape)} (unpack or un-patchify the denoiser's output)."
        )
    return prediction


def _label(item: PromptSet | AnchorPrompt, argument: str, index: int) -> str:
    return repr(item.name) if item.name else f"`{argument}[{index}]`"


def prompt_slider_loss(
    predict: Callable[[NoisyBatch, dict[str, Any]], torch.Tensor],
    scaler: SliderScaler,
    noisy: NoisyBatch,
    prompt_sets: Sequence[PromptSet],
    embeddings: Mapping[str, PromptConditioning],
    *,
    anchors: Sequence[AnchorPrompt] = (),
    backward: Callable[[torch.Tensor], Any] | None = None,
    frozen: FrozenPredictions | None = None,
) -> PromptSliderLoss:
    """One text-prompt slider step: the frozen pass, the guided targets, and the trained pass (its loss).

    Two forward passes, whatever the number of prompt sets and anchors:

    1. Frozen, under `torch.no_grad()` and `scaler.at(0.0)` (the same model, the slider at 0): for every sample `i`,
       the distinct prompts of `prompt_sets[i]` (`PromptSet.prompts()`: neutral, positive, negative, and the target
       when it differs from the neutral prompt, which `base_loss` needs), at sample `i`'s `x_t`; and each anchor's
       prompt at its sample. So `3 x batch` rows in the usual case (target == neutral), at most `4 x batch`, plus one
       row per anchor. With `frozen` (the cached predictions of `RolloutPool.draw_cached`) this pass is not run: the
       same rows are read from the cache.
    2. Trained, under `scaler.at(strengths)` with per-sample strengths: sample `i`'s target prompt at `+s_i` (target
       `neutral + sign * eta * (positive - negative)`) and, when the set mirrors, at `-s_i` (target
       `neutral - sign * eta * (positive - negative)`); each anchor at `+s_a` and `-s_a` (target: the base's
       prediction for the anchor). `backward(loss)` runs inside this block, so gradient checkpointing, which runs the
       forward again during backward, sees the same strengths.

    Anchor `j` is evaluated at sample `j % batch` (its `x_t` and `t`): each anchor costs one frozen and two trained
    rows per step, so the cost stays bounded by the number of anchors, not anchors x batch. With many anchors, pass a
    different few each step.

    The loss is the weighted mean of per-row MSEs (float32), with the set's `weight` for its rows and the anchor's
    `weight` for the anchor's.

    Args:
        predict (`Callable`):
            `predict(noisy_batch, conditioning) -> prediction` shaped like `noisy_batch.noisy`, in the objective's
            convention (the example trainer's `family.predict` with the pipeline bound). Called twice.
        scaler (`SliderScaler`):
            The slider's scaler on the denoiser `predict` calls.
        noisy (`NoisyBatch`):
            One sample per entry of `prompt_sets`: the `x_t`'s (`noisy`, `timesteps`, `sigmas`), e.g. from
            `RolloutPool.draw([s.target for s in prompt_sets], ...)`. `target` is not used.
        prompt_sets (sequence of `PromptSet`):
            The set of each sample; a set with `batch_size` 2 appears twice.
        embeddings (`Mapping[str, dict]`):
            Prompt text -> that prompt's conditioning, as `stack_conditioning` takes it (on any device: the batches
            are moved to `noisy`'s), in the denoiser's dtype. Every prompt of the sets and anchors must be there.
        anchors (sequence of `AnchorPrompt`, *optional*):
            Prompts the slider must leave alone.
        backward (`Callable`, *optional*):
            Called as `backward(loss)` inside the trained pass's strength block (e.g. `loss.backward` or
            `accelerator.backward`). The caller steps the optimizer.
        frozen (`FrozenPredictions`, *optional*):
            The frozen base's predictions at `noisy`'s latents, from the same `pool.draw_cached(...)` call as `noisy`
            (after `pool.cache_predictions` with these prompt sets and anchors): the frozen pass is skipped, so a step
            costs the trained pass only. None runs the frozen pass.

    Returns:
        `PromptSliderLoss`

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training import NoisyBatch, PromptSet, SliderScaler, prompt_slider_loss
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> class Denoiser(torch.nn.Module):  # a toy denoiser: latents (batch, 4) and a text vector (batch, 4)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.proj = torch.nn.Linear(8, 4)
    ...     def forward(self, x, text):
    ...         return self.proj(torch.cat([x, text], dim=1))
    >>> model = get_peft_model(Denoiser(), LoraConfig(r=2, target_modules=["proj"]))
    >>> scaler = SliderScaler(model)
    >>> embeddings = {p: {"text": torch.randn(4)} for p in ("a face", "a smiling face", "a frowning face")}
    >>> smile = PromptSet(target="a face", positive="a smiling face", negative="a frowning face")
    >>> noisy = NoisyBatch(torch.randn(2, 4), None, None, torch.tensor([500, 700]), torch.tensor([0.7, 0.8]))
    >>> result = prompt_slider_loss(lambda batch, cond: model(batch.noisy, cond["text"]), scaler, noisy,
    ...                             [smile, smile], embeddings, backward=lambda loss: loss.backward())
    >>> result.strengths  # each sample at +1, then mirrored at -1, in one trained pass
    tensor([ 1., -1.,  1., -1.])
    >>> torch.allclose(result.loss, result.base_loss)  # a fresh LoRA is 0: the slider has gained nothing yet
    True
    ```
    """
    if not callable(predict):
        raise TypeError(f"`predict` must be callable as predict(noisy_batch, conditioning), got {predict!r}.")
    if not callable(getattr(scaler, "at", None)):
        raise TypeError(f"`scaler` must be a SliderScaler on the denoiser, got {type(scaler).__name__}.")
    if backward is not None and not callable(backward):
        raise TypeError(f"`backward` must be callable as backward(loss) or None, got {backward!r}.")
    if frozen is not None and not isinstance(frozen, FrozenPredictions):
        raise TypeError(
            "`frozen` must be the FrozenPredictions of `RolloutPool.draw_cached` or None, got "
            f"{type(frozen).__name__}."
        )
    noisy = _check_noisy(noisy)
    if isinstance(prompt_sets, PromptSet) or not isinstance(prompt_sets, Sequence):
        raise TypeError(f"`prompt_sets` must be a sequence of PromptSet, one per sample, got {prompt_sets!r}.")
    if isinstance(anchors, AnchorPrompt) or not isinstance(anchors, Sequence):
        raise TypeError(f"`anchors` must be a sequence of AnchorPrompt, got {anchors!r}.")
    if not isinstance(embeddings, Mapping):
        raise TypeError(f"`embeddings` must map prompt text -> conditioning, got {type(embeddings).__name__}.")
    batch = noisy.noisy.shape[0]
    if not prompt_sets:
        raise ValueError("`prompt_sets` is empty; give one prompt set per sample of `noisy`.")
    if len(prompt_sets) != batch:
        raise ValueError(
            f"`noisy` has {batch} samples but `prompt_sets` has {len(prompt_sets)} entries; give one prompt set per "
            "sample (a set with batch_size 2 appears twice), e.g. draw `noisy` for [s.target for s in prompt_sets]."
        )
    if frozen is not None and len(frozen) != batch:
        raise ValueError(
            f"`frozen` holds the predictions of {len(frozen)} samples but `noisy` has {batch}; pass the batch and the "
            "predictions of one `pool.draw_cached` call."
        )
    for argument, items, kind, roles in (
        ("prompt_sets", prompt_sets, PromptSet, ("target", "neutral", "positive", "negative")),
        ("anchors", anchors, AnchorPrompt, ("prompt",)),
    ):
        for index, item in enumerate(items):
            if not isinstance(item, kind):
                raise TypeError(f"`{argument}[{index}]` must be a {kind.__name__}, got {type(item).__name__}.")
            for role in roles:
                if getattr(item, role) not in embeddings:
                    what = "the anchor prompt" if role == "prompt" else f"the {role} prompt"
                    raise ValueError(
                        f"`embeddings` has no entry for {what} {getattr(item, role)!r} of "
                        f"{_label(item, argument, index)}. Encode every prompt once (PromptSliderSpec.prompts()) and "
                        "pass them all."
                    )

    # The frozen batch: each (sample, prompt) once.
    frozen_rows: dict[tuple[int, str], int] = {}
    for sample, prompt_set in enumerate(prompt_sets):
        for prompt in prompt_set.prompts():
            frozen_rows.setdefault((sample, prompt), len(frozen_rows))
    anchor_samples = [index % batch for index in range(len(anchors))]
    for sample, anchor in zip(anchor_samples, anchors):
        frozen_rows.setdefault((sample, anchor.prompt), len(frozen_rows))

    # The trained batch: per row, the frozen rows of its prompt, neutral, positive and negative, the signed eta, the
    # strength and the weight. An anchor is a set whose positive and negative are the anchor itself (no direction).
    rows: list[tuple[int, int, int, int, float, float, float]] = []
    for sample, prompt_set in enumerate(prompt_sets):
        found = [
            frozen_rows[sample, getattr(prompt_set, role)] for role in ("target", "neutral", "positive", "negative")
        ]
        eta = prompt_set.sign * prompt_set.guidance_scale
        rows.append((*found, eta, prompt_set.strength, prompt_set.weight))
        if prompt_set.mirror:
            rows.append((*found, -eta, -prompt_set.strength, prompt_set.weight))
    for sample, anchor in zip(anchor_samples, anchors):
        row = frozen_rows[sample, anchor.prompt]
        rows.append((row, row, row, row, 0.0, anchor.strength, anchor.weight))
        rows.append((row, row, row, row, 0.0, -anchor.strength, anchor.weight))
    trained_rows, neutral_rows, positive_rows, negative_rows, etas, strengths, weights = map(list, zip(*rows))

    device = noisy.noisy.device
    # `target` is not used (the targets are made here): not copied.
    frozen_batch = _take(noisy._replace(target=None), [sample for sample, _ in frozen_rows])
    conditioning = _move_conditioning(stack_conditioning([embeddings[prompt] for _, prompt in frozen_rows]), device)
    if frozen is None:
        with torch.no_grad(), scaler.at(0.0):
            base = _check_prediction(predict(frozen_batch, conditioning), frozen_batch, which="frozen pass").detach()
    else:
        base = frozen.rows(list(frozen_rows)).to(device)
        if base.shape[1:] != noisy.noisy.shape[1:]:
            raise ValueError(
                f"`frozen` holds predictions shaped {tuple(base.shape[1:])} but `noisy`'s latents are shaped "
                f"{tuple(noisy.noisy.shape[1:])}: pass the batch and the predictions of one `pool.draw_cached` call."
            )
    index = torch.tensor([trained_rows, neutral_rows, positive_rows, negative_rows], dtype=torch.long, device=device)
    targets = guided_target(
        base[index[1]],
        base[index[2]],
        base[index[3]],
        guidance_scale=torch.tensor(etas, dtype=torch.float32, device=device),
    )
    weights = torch.tensor(weights, dtype=torch.float32, device=device)
    strengths = torch.tensor(strengths, dtype=torch.float32)
    # One strength for every row needs no per-sample hooks.
    strength: float | torch.Tensor = strengths[0].item() if bool((strengths == strengths[0]).all()) else strengths

    trained_batch = _take(frozen_batch, trained_rows)
    trained_conditioning = _select_conditioning(conditioning, trained_rows)
    with scaler.at(strength):
        prediction = _check_prediction(
            predict(trained_batch, trained_conditioning), trained_batch, which="trained pass"
        )
        loss = _weighted_mse(prediction, targets, weights)
        if backward is not None:
            backward(loss)
    with torch.no_grad():
        base_loss = _weighted_mse(base[index[0]], targets, weights)
    return PromptSliderLoss(loss, base_loss, strengths)


# ---------------------------------------------------------------------------------------------------------------------
# Rollouts


class _Schedule(NamedTuple):
    """A deterministic sampler's grid: per step `k`, the model's `timesteps[k]`, `sigmas[k]` (NoisyBatch's
    conventions), and `levels[k]` (flow: sigma; DDPM: alpha_bar), float64 on the CPU."""

    kind: str
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    levels: torch.Tensor


def _schedule(objective: DenoisingObjective, num_steps: Any) -> _Schedule:
    kind = getattr(objective, "prediction_type", None)
    if kind not in ("epsilon", "v_prediction", "flow_matching"):
        raise TypeError(
            "`objective` must be an EpsilonObjective, VPredictionObjective or FlowMatchingObjective, got "
            f"{type(objective).__name__}."
        )
    total = objective.num_train_timesteps
    if kind == "flow_matching":
        num_steps = check_int(num_steps, argument="num_steps", low=1, high=100_000)
        levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        if objective.shift != 1.0:
            levels = objective.shift * levels / (1 + (objective.shift - 1) * levels)
        sigmas = levels[:-1].float()
        return _Schedule(kind, sigmas * total, sigmas, levels)
    num_steps = check_int(
        num_steps, argument="num_steps", low=1, high=total, hint=f"(the schedule has {total} training timesteps)"
    )
    # Evenly spaced from the last timestep down ("trailing" spacing), so step 0 is the noisiest timestep.
    timesteps = torch.tensor([round(total - k * total / num_steps) - 1 for k in range(num_steps)], dtype=torch.long)
    levels = objective.alphas_cumprod[timesteps]
    return _Schedule(kind, timesteps, (1 - levels).sqrt().float(), levels)


def _step(schedule: _Schedule, k: int, x: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """`x` (float32) at step `k` moved to step `k + 1`: an Euler step in sigma, or a DDIM (eta 0) step."""
    prediction = prediction.float()
    if schedule.kind == "flow_matching":
        return x + float(schedule.levels[k + 1] - schedule.levels[k]) * prediction
    alpha, alpha_next = float(schedule.levels[k]), float(schedule.levels[k + 1])
    a, b = math.sqrt(alpha), math.sqrt(1 - alpha)
    if schedule.kind == "epsilon":
        eps = prediction
        x0 = (x - b * eps) / a
    else:  # v = a eps - b x0, x = a x0 + b eps
        x0 = a * x - b * prediction
        eps = a * prediction + b * x
    return math.sqrt(alpha_next) * x0 + math.sqrt(1 - alpha_next) * eps


def _walk(
    predict: Callable[[NoisyBatch, dict[str, Any]], torch.Tensor],
    schedule: _Schedule,
    conditioning: Mapping[str, Any],
    noise: torch.Tensor,
    stops: list[int],
) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """Samples from `noise` step by step; yields `(k, samples, x_k)`: the samples whose trajectory reaches step `k`
    (stop >= k) and their latents there, in `noise`'s dtype. A sample leaves the batch once it reaches its stop."""
    state = noise.float()
    active = list(range(len(stops)))
    for k in range(max(stops) + 1):
        yield k, active, state.to(noise.dtype)
        running = [position for position, sample in enumerate(active) if stops[sample] > k]
        if not running:
            return
        if len(running) < len(active):
            state = state[running]
            active = [active[position] for position in running]
        size = len(active)
        batch = NoisyBatch(
            state.to(noise.dtype),
            None,
            noise[active] if size < noise.shape[0] else noise,
            schedule.timesteps[k].to(noise.device).repeat(size),
            schedule.sigmas[k].to(noise.device).repeat(size),
        )
        cond = conditioning if size == noise.shape[0] else _select_conditioning(conditioning, active)
        prediction = _check_prediction(predict(batch, cond), batch, which="rollout")
        state = _step(schedule, k, state, prediction)


def _check_stops(stop_steps: Any, *, batch: int, num_steps: int) -> list[int]:
    if isinstance(stop_steps, torch.Tensor):
        if stop_steps.is_floating_point() or stop_steps.ndim != 1:
            raise ValueError(
                f"`stop_steps` must be a 1-D integer tensor, got {stop_steps.dtype} {tuple(stop_steps.shape)}."
            )
        stop_steps = stop_steps.tolist()
    if not isinstance(stop_steps, Sequence) or len(stop_steps) != batch:
        raise ValueError(f"`stop_steps` must hold one step per sample ({batch}), got {stop_steps!r}.")
    for value in stop_steps:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < num_steps:
            raise ValueError(
                f"`stop_steps` must be ints in [0, num_steps) = [0, {num_steps}) (0 is the pure noise), got "
                f"{stop_steps!r}."
            )
    return [int(value) for value in stop_steps]


@torch.no_grad()
def rollout(
    predict: Callable[[NoisyBatch, dict[str, Any]], torch.Tensor],
    objective: DenoisingObjective,
    conditioning: Mapping[str, Any],
    noise: torch.Tensor,
    *,
    num_steps: int,
    stop_steps: Sequence[int] | torch.Tensor,
) -> NoisyBatch:
    """Sample deterministically from pure noise with the model itself, and stop each sample after a number of steps.

    No scheduler object is needed: flow matching takes Euler steps on the sigma grid `linspace(1, 0, num_steps + 1)`,
    shifted by the objective's `shift`; epsilon and v-prediction take DDIM steps (eta 0) on the objective's
    `alphas_cumprod`, at `num_steps` timesteps evenly spaced from the last ("trailing" spacing), converting the
    prediction to the noise and `x0` estimates. The arithmetic is float32; the model sees `noise.dtype`. Runs under
    `torch.no_grad()` with the model as it is: set the slider's strength around it (`RolloutPool` uses 0). A sample
    leaves the batch once it reaches its stop, so the cost is `sum(stop_steps)` sample-steps.

    Args:
        predict (`Callable`):
            `predict(noisy_batch, conditioning) -> prediction` in the objective's convention.
        objective (`DenoisingObjective`):
            `EpsilonObjective`, `VPredictionObjective` or `FlowMatchingObjective`: the grid and the conversion.
        conditioning (`dict`):
            The batched conditioning, one row per sample (see `stack_conditioning`).
        noise (`torch.Tensor`):
            The starting noise `(batch, ...)`, on the model's device and in its dtype.
        num_steps (`int`):
            Steps of the full grid (>= 1; at most the number of training timesteps for DDPM).
        stop_steps (sequence of `int` or `torch.Tensor`):
            Per sample, how many steps to take, in `[0, num_steps)`: 0 returns the pure noise at the first timestep.

    Returns:
        `NoisyBatch`: `noisy` at the stop points, `timesteps` and `sigmas` there in the conventions of the objective's
        `add_noise` (integer timesteps for DDPM, `sigma * num_train_timesteps` for flow matching), `noise`, and
        `target` None.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import FlowMatchingObjective, rollout
    >>> objective = FlowMatchingObjective()
    >>> x0 = torch.ones(1, 3)
    >>> exact = lambda batch, cond: batch.noise - x0  # a model that knows the answer
    >>> noise = torch.zeros(2, 3)
    >>> batch = rollout(exact, objective, {"text": torch.zeros(2, 1)}, noise, num_steps=4, stop_steps=[0, 3])
    >>> batch.noisy, batch.sigmas
    (tensor([[0.0000, 0.0000, 0.0000],
            [0.7500, 0.7500, 0.7500]]), tensor([1.0000, 0.2500]))
    ```
    """
    if not callable(predict):
        raise TypeError(f"`predict` must be callable as predict(noisy_batch, conditioning), got {predict!r}.")
    schedule = _schedule(objective, num_steps)
    noise = _check_tensor(noise, argument="noise")
    batch = noise.shape[0]
    if _conditioning_size(conditioning, argument="conditioning") != batch:
        raise ValueError(
            f"`conditioning` has {_conditioning_size(conditioning, argument='conditioning')} rows but `noise` has "
            f"{batch} samples; give one conditioning row per sample."
        )
    stops = _check_stops(stop_steps, batch=batch, num_steps=len(schedule.timesteps))
    latents = torch.empty_like(noise)
    for k, samples, x in _walk(predict, schedule, conditioning, noise, stops):
        done = [position for position, sample in enumerate(samples) if stops[sample] == k]
        if done:
            latents[[samples[position] for position in done]] = x[done]
    where = torch.tensor(stops, dtype=torch.long)
    return NoisyBatch(
        latents, None, noise, schedule.timesteps[where].to(noise.device), schedule.sigmas[where].to(noise.device)
    )


class RolloutPool:
    """Intermediate latents of base-model trajectories, sampled once, from which training steps draw their `x_t`.

    Concept Sliders denoises from pure noise to a random step at every training step, with the LoRA on: up to
    `num_steps` extra forward passes per step. The pool samples `trajectories_per_prompt` trajectories per target
    prompt once, with the base model (the slider at 0, no gradient: the slider would move them anyway as it trains,
    and the base's latents are the distribution the slider is used on), keeps every intermediate latent, and `draw`
    picks a stored trajectory and a step at random, so a training step costs only its frozen and trained passes.
    The trajectories use the TARGET prompt, as Concept Sliders does.

    Memory: `len(pool) = prompts x trajectories_per_prompt x (num_steps - 1)` latents in `dtype` on `storage_device`
    (`nbytes`): for 10 prompts x 4 trajectories x 30 steps, 1,160 latents, about 150 MB for SDXL's 4x128x128 latents
    in bfloat16 and 600 MB for FLUX.1's 16x128x128. A cache of predictions adds its `cache_nbytes` (usually 3x that).

    Deterministic: the noise comes from a CPU generator seeded with `seed`, so the same seed, model and arguments give
    a bitwise equal pool, and the same `draw` generator state gives the same batches (a resumed run draws what the
    uninterrupted run would have).

    Optionally, `cache_predictions` stores the frozen base's predictions at every stored latent for the prompts the
    slider trains there, and `draw_cached` returns them with the batch (`FrozenPredictions`), so that
    `prompt_slider_loss` needs no frozen pass.

    Build with `RolloutPool.build`.

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training import FlowMatchingObjective, RolloutPool, SliderScaler
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> class Denoiser(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.proj = torch.nn.Linear(8, 4)
    ...     def forward(self, x, text):
    ...         return self.proj(torch.cat([x, text], dim=1))
    >>> model = get_peft_model(Denoiser(), LoraConfig(r=2, target_modules=["proj"]))
    >>> embeddings = {p: {"text": torch.randn(4)} for p in ("a face", "a house")}
    >>> pool = RolloutPool.build(
    ...     lambda batch, cond: model(batch.noisy, cond["text"]), FlowMatchingObjective(), SliderScaler(model),
    ...     embeddings, ["a face", "a house"], trajectories_per_prompt=3, num_steps=8, latent_shape=(4,), seed=0,
    ...     device="cpu", dtype=torch.float32)
    >>> len(pool)  # 2 prompts x 3 trajectories x 7 intermediate steps
    42
    >>> batch = pool.draw(["a face", "a face", "a house"], generator=torch.Generator().manual_seed(0))
    >>> batch.noisy.shape, bool(((batch.sigmas > 0) & (batch.sigmas < 1)).all())
    (torch.Size([3, 4]), True)
    ```
    """

    def __init__(
        self,
        *,
        prompts: Sequence[str],
        latents: torch.Tensor,
        noise: torch.Tensor,
        schedule: _Schedule,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self._prompts = {prompt: index for index, prompt in enumerate(prompts)}
        self._latents = latents
        self._noise = noise
        self._schedule = schedule
        self.trajectories_per_prompt = noise.shape[0] // len(prompts)
        self.num_steps = len(schedule.timesteps)
        self.device = device
        self.dtype = dtype
        self._cache: _PredictionCache | None = None

    @classmethod
    def build(
        cls,
        predict: Callable[[NoisyBatch, dict[str, Any]], torch.Tensor],
        objective: DenoisingObjective,
        scaler: SliderScaler,
        embeddings: Mapping[str, PromptConditioning],
        prompts: Sequence[str],
        *,
        trajectories_per_prompt: int,
        num_steps: int,
        latent_shape: Sequence[int],
        seed: int,
        device: torch.device | str,
        dtype: torch.dtype,
        storage_device: torch.device | str = "cpu",
        batch_size: int = 8,
    ) -> RolloutPool:
        """Sample the trajectories (`rollout`'s sampler) with the slider at 0 and no gradient, and keep them.

        Args:
            predict (`Callable`):
                `predict(noisy_batch, conditioning) -> prediction` in the objective's convention.
            objective (`DenoisingObjective`):
                The model's objective: the sampling grid (see `rollout`).
            scaler (`SliderScaler`):
                The slider's scaler; the trajectories are sampled inside `scaler.at(0.0)`.
            embeddings (`Mapping[str, dict]`):
                Prompt text -> conditioning (as `stack_conditioning` takes it); every prompt of `prompts` is needed.
            prompts (sequence of `str`):
                The target prompts (duplicates are dropped).
            trajectories_per_prompt (`int`):
                Trajectories sampled per prompt (>= 1), each from its own noise.
            num_steps (`int`):
                Steps of each trajectory (>= 2); `draw` picks steps in `[1, num_steps)`.
            latent_shape (sequence of `int`):
                One latent's shape without the batch axis, as `predict` takes it (`(4, 128, 128)` for SDXL at 1024 px).
            seed (`int`):
                Seed of the CPU generator the noise is drawn from (float32, then cast to `dtype`).
            device (`torch.device` or `str`):
                Where the model runs; `draw` returns batches there.
            dtype (`torch.dtype`):
                The model's dtype: latents are fed, stored and drawn in it.
            storage_device (`torch.device` or `str`, *optional*, defaults to `"cpu"`):
                Where the pool is kept (`device` avoids a copy per draw, at the cost of accelerator memory).
            batch_size (`int`, *optional*, defaults to `8`):
                Trajectories sampled per forward pass.

        Returns:
            `RolloutPool`
        """
        if not callable(predict):
            raise TypeError(f"`predict` must be callable as predict(noisy_batch, conditioning), got {predict!r}.")
        if not callable(getattr(scaler, "at", None)):
            raise TypeError(f"`scaler` must be a SliderScaler on the denoiser, got {type(scaler).__name__}.")
        schedule = _schedule(objective, num_steps)
        if num_steps < 2:
            raise ValueError(
                f"`num_steps` must be >= 2 so that a trajectory has an intermediate step, got {num_steps}."
            )
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise TypeError(f"`prompts` must be a non-empty sequence of prompt texts, got {prompts!r}.")
        prompts = list(dict.fromkeys(prompts))
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"`prompts` must hold strings, got {prompt!r}.")
            if prompt not in embeddings:
                raise ValueError(
                    f"`embeddings` has no entry for the prompt {prompt!r}; encode every target prompt and pass it."
                )
        trajectories = check_int(trajectories_per_prompt, argument="trajectories_per_prompt", low=1, high=2**20)
        batch_size = check_int(batch_size, argument="batch_size", low=1, high=2**20)
        seed = check_seed(seed)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating-point torch.dtype, got {dtype!r}.")
        latent_shape = tuple(latent_shape)
        if not latent_shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in latent_shape):
            raise ValueError(
                f"`latent_shape` must be positive ints (one latent, no batch axis), got {latent_shape!r}."
            )
        device, storage_device = torch.device(device), torch.device(storage_device)

        count = len(prompts) * trajectories
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((count, *latent_shape), generator=generator, dtype=torch.float32).to(dtype)
        latents = torch.empty((count, num_steps - 1, *latent_shape), dtype=dtype, device=storage_device)
        owners = [prompt for prompt in prompts for _ in range(trajectories)]
        last = [num_steps - 1] * batch_size
        with torch.no_grad(), scaler.at(0.0):
            for start in range(0, count, batch_size):
                chunk = range(start, min(start + batch_size, count))
                conditioning = stack_conditioning([embeddings[owners[row]] for row in chunk])
                conditioning = _move_conditioning(conditioning, device)
                start_noise = noise[chunk.start : chunk.stop].to(device)
                for k, _, x in _walk(predict, schedule, conditioning, start_noise, last[: len(chunk)]):
                    if k >= 1:
                        latents[chunk.start : chunk.stop, k - 1] = x.to(storage_device)
        return cls(
            prompts=prompts,
            latents=latents,
            noise=noise.to(storage_device),
            schedule=schedule,
            device=device,
            dtype=dtype,
        )

    @property
    def prompts(self) -> tuple[str, ...]:
        """The prompts the pool holds trajectories of, in order."""
        return tuple(self._prompts)

    def __len__(self) -> int:
        """The number of stored latents (each an `x_t` `draw` can return)."""
        return self._latents.shape[0] * self._latents.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds on its storage device: latents, their starting noise and the cached predictions."""
        return self._latents.nbytes + self._noise.nbytes + self.cache_nbytes

    @property
    def cache_nbytes(self) -> int:
        """Bytes of the cached frozen predictions (`cache_predictions`); 0 without a cache."""
        return 0 if self._cache is None else self._cache.predictions.nbytes

    @property
    def cached_prompts(self) -> dict[str, tuple[str, ...]]:
        """Per target prompt of the pool, the prompts whose frozen predictions are cached at its latents (empty
        without a cache)."""
        if self._cache is None:
            return {}
        return {prompt: tuple(columns) for prompt, columns in zip(self._prompts, self._cache.columns)}

    def __repr__(self) -> str:
        cache = "" if self._cache is None else f", {self._cache.predictions.shape[0]} cached predictions"
        return (
            f"RolloutPool({len(self._prompts)} prompts x {self.trajectories_per_prompt} trajectories x "
            f"{self.num_steps} steps, {len(self)} latents{cache}, {self.nbytes / 2**20:.1f} MiB on "
            f"{self._latents.device})"
        )

    def _gather(self, rows: torch.Tensor, step: torch.Tensor) -> NoisyBatch:
        """The stored latents of trajectories `rows` at steps `step` (CPU int64), on `device` in `dtype`."""
        storage = self._latents.device
        rows_there, step_there = rows.to(storage), step.to(storage)
        return NoisyBatch(
            self._latents[rows_there, step_there - 1].to(device=self.device, dtype=self.dtype),
            None,
            self._noise[rows_there].to(device=self.device, dtype=self.dtype),
            self._schedule.timesteps[step].to(self.device),
            self._schedule.sigmas[step].to(self.device),
        )

    def _draw(self, prompts: Sequence[str], generator: torch.Generator) -> tuple[NoisyBatch, list[int], torch.Tensor]:
        """`draw`'s batch, each sample's prompt index in the pool, and each sample's stored-latent index."""
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError(f"`generator` must be a CPU torch.Generator, got {generator!r}.")
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise TypeError(f"`prompts` must be a non-empty sequence of prompt texts, got {prompts!r}.")
        owners = []
        for prompt in prompts:
            index = self._prompts.get(prompt) if isinstance(prompt, str) else None
            if index is None:
                raise ValueError(
                    f"The rollout pool has no trajectories for the prompt {prompt!r}; it holds {list(self._prompts)}. "
                    "Build it with every target prompt."
                )
            owners.append(index)
        size = len(owners)
        trajectory = torch.randint(self.trajectories_per_prompt, (size,), generator=generator)
        step = torch.randint(1, self.num_steps, (size,), generator=generator)
        rows = torch.tensor(owners, dtype=torch.long) * self.trajectories_per_prompt + trajectory
        return self._gather(rows, step), owners, rows * (self.num_steps - 1) + step - 1

    def draw(self, prompts: Sequence[str], *, generator: torch.Generator) -> NoisyBatch:
        """One `x_t` per prompt: a random stored trajectory of that prompt, at a random step in `[1, num_steps)`.

        Never the pure noise (step 0) and never the clean end. Batches come on the pool's `device`, in its `dtype`.

        Args:
            prompts (sequence of `str`):
                One prompt per sample (repeats allowed), each one the pool was built with; typically
                `[s.target for s in prompt_sets]`.
            generator (`torch.Generator`):
                A CPU generator: the draws (trajectory, then step, per sample) come from it alone.

        Returns:
            `NoisyBatch` with `target` None.
        """
        return self._draw(prompts, generator)[0]

    def draw_cached(
        self, prompts: Sequence[str], *, generator: torch.Generator
    ) -> tuple[NoisyBatch, FrozenPredictions]:
        """`draw`, and the cached frozen predictions at the drawn latents, for `prompt_slider_loss(..., frozen=...)`.

        Takes the same values from `generator` as `draw`, so the same generator state gives the same batch either way.

        Args:
            prompts (sequence of `str`):
                One prompt per sample, as for `draw`.
            generator (`torch.Generator`):
                A CPU generator, as for `draw`.

        Returns:
            `tuple[NoisyBatch, FrozenPredictions]`: the batch (as `draw` returns it) and the cached predictions at its
            latents.

        Raises:
            RuntimeError: The pool holds no cache; call `cache_predictions` first.
        """
        if self._cache is None:
            raise RuntimeError(
                "The rollout pool holds no cached frozen predictions: call `pool.cache_predictions(predict, scaler, "
                "embeddings, prompt_sets, anchors=...)` once after building it, or use `pool.draw` (and let "
                "`prompt_slider_loss` run the frozen pass)."
            )
        noisy, owners, index = self._draw(prompts, generator)
        return noisy, FrozenPredictions(self._cache, owners, index, prompts=self.prompts, device=self.device)

    def cache_predictions(
        self,
        predict: Callable[[NoisyBatch, dict[str, Any]], torch.Tensor],
        scaler: SliderScaler,
        embeddings: Mapping[str, PromptConditioning],
        prompt_sets: Sequence[PromptSet],
        *,
        anchors: Sequence[AnchorPrompt] = (),
        batch_size: int = 8,
    ) -> None:
        """Compute, once, the frozen base's predictions that `prompt_slider_loss` needs at every stored latent.

        The base is frozen and the stored latents are fixed, so the frozen pass of `prompt_slider_loss` (the slider
        at 0, no gradient) predicts the same values every time a latent is drawn. This runs it once per stored latent
        and prompt, for the distinct prompts (`PromptSet.prompts()`) of the sets whose target drew the latent and for
        every anchor prompt (an anchor sits at any sample); `draw_cached` then hands `prompt_slider_loss` the
        predictions at the drawn latents, and a step costs its trained pass only. The losses and gradients equal those
        of the frozen pass up to rounding (the predictions come from differently composed batches), provided the
        frozen pass is deterministic (no dropout in the base) and `predict` runs as it will during training (under the
        same autocast, if any). A second call replaces the cache.

        Memory: for each target prompt, `trajectories_per_prompt x (num_steps - 1)` latents times its number of cached
        prompts, stored in the dtype `predict` returns on the pool's storage device (`cache_nbytes`): with the usual
        3 prompts per target (target = neutral, positive, negative) and no anchors, 3x the pool's latents, e.g. 450 MB
        for 10 prompts x 4 trajectories x 30 steps of SDXL's 4x128x128 latents in bfloat16. Time: as many forward
        rows, `batch_size` per pass.

        Args:
            predict (`Callable`):
                `predict(noisy_batch, conditioning) -> prediction`, the one given to `prompt_slider_loss`.
            scaler (`SliderScaler`):
                The slider's scaler; the predictions are made inside `scaler.at(0.0)` under `torch.no_grad()`.
            embeddings (`Mapping[str, dict]`):
                Prompt text -> conditioning (as `stack_conditioning` takes it); every prompt of the sets and anchors.
            prompt_sets (sequence of `PromptSet`):
                The sets that will be trained (at least one); each set's target must be one of the pool's prompts.
            anchors (sequence of `AnchorPrompt`, *optional*):
                The anchors that will be trained.
            batch_size (`int`, *optional*, defaults to `8`):
                Rows (latent, prompt) per forward pass.

        Example:

        ```py
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from peft_slider.training import FlowMatchingObjective, PromptSet, RolloutPool, SliderScaler
        >>> from peft_slider.training import prompt_slider_loss
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> class Denoiser(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.proj = torch.nn.Linear(8, 4)
        ...     def forward(self, x, text):
        ...         return self.proj(torch.cat([x, text], dim=1))
        >>> model = get_peft_model(Denoiser(), LoraConfig(r=2, target_modules=["proj"]))
        >>> predict, scaler = lambda batch, cond: model(batch.noisy, cond["text"]), SliderScaler(model)
        >>> embeddings = {p: {"text": torch.randn(4)} for p in ("a face", "a smiling face", "a frowning face")}
        >>> smile = PromptSet(target="a face", positive="a smiling face", negative="a frowning face")
        >>> pool = RolloutPool.build(predict, FlowMatchingObjective(), scaler, embeddings, ["a face"],
        ...     trajectories_per_prompt=2, num_steps=4, latent_shape=(4,), seed=0, device="cpu", dtype=torch.float32)
        >>> pool.cache_predictions(predict, scaler, embeddings, [smile])
        >>> pool.cached_prompts, pool.cache_nbytes  # 2 x 3 latents x 3 prompts x 4 float32
        ({'a face': ('a face', 'a smiling face', 'a frowning face')}, 288)
        >>> noisy, frozen = pool.draw_cached([smile.target] * 2, generator=torch.Generator().manual_seed(0))
        >>> result = prompt_slider_loss(predict, scaler, noisy, [smile] * 2, embeddings, frozen=frozen)
        >>> torch.allclose(result.loss, result.base_loss)  # a fresh LoRA is 0
        True
        ```
        """
        if not callable(predict):
            raise TypeError(f"`predict` must be callable as predict(noisy_batch, conditioning), got {predict!r}.")
        if not callable(getattr(scaler, "at", None)):
            raise TypeError(f"`scaler` must be a SliderScaler on the denoiser, got {type(scaler).__name__}.")
        if not isinstance(embeddings, Mapping):
            raise TypeError(f"`embeddings` must map prompt text -> conditioning, got {type(embeddings).__name__}.")
        if isinstance(prompt_sets, PromptSet) or not isinstance(prompt_sets, Sequence) or not prompt_sets:
            raise TypeError(f"`prompt_sets` must be a non-empty sequence of PromptSet, got {prompt_sets!r}.")
        if isinstance(anchors, AnchorPrompt) or not isinstance(anchors, Sequence):
            raise TypeError(f"`anchors` must be a sequence of AnchorPrompt, got {anchors!r}.")
        batch_size = check_int(batch_size, argument="batch_size", low=1, high=2**20)
        columns: list[dict[str, int]] = [{} for _ in self._prompts]
        for index, prompt_set in enumerate(prompt_sets):
            if not isinstance(prompt_set, PromptSet):
                raise TypeError(f"`prompt_sets[{index}]` must be a PromptSet, got {type(prompt_set).__name__}.")
            owner = self._prompts.get(prompt_set.target)
            if owner is None:
                raise ValueError(
                    f"The target prompt {prompt_set.target!r} of {_label(prompt_set, 'prompt_sets', index)} is not in "
                    f"the rollout pool; it holds {list(self._prompts)}. Build the pool with every target prompt "
                    "(`[s.target for s in prompt_sets]`)."
                )
            for prompt in prompt_set.prompts():
                columns[owner].setdefault(prompt, len(columns[owner]))
        for index, anchor in enumerate(anchors):
            if not isinstance(anchor, AnchorPrompt):
                raise TypeError(f"`anchors[{index}]` must be an AnchorPrompt, got {type(anchor).__name__}.")
            for column in columns:
                column.setdefault(anchor.prompt, len(column))
        for prompt in dict.fromkeys(prompt for column in columns for prompt in column):
            if prompt not in embeddings:
                raise ValueError(
                    f"`embeddings` has no entry for the prompt {prompt!r} of the prompt sets or anchors; encode every "
                    "prompt once (PromptSliderSpec.prompts()) and pass them all."
                )

        # Row r of the cache: target block t (from offsets[t]), stored latent `position` of the block, prompt column
        # `c`, at offsets[t] + position * len(columns[t]) + c.
        per_target = self.trajectories_per_prompt * (self.num_steps - 1)
        offsets = [0]
        for column in columns:
            offsets.append(offsets[-1] + per_target * len(column))
        jobs = [
            (owner * per_target + position, prompt)
            for owner, column in enumerate(columns)
            for position in range(per_target)
            for prompt in column
        ]
        storage = self._latents.device
        predictions: torch.Tensor | None = None
        with torch.no_grad(), scaler.at(0.0):
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                stored = torch.tensor([latent for latent, _ in chunk], dtype=torch.long)
                batch = self._gather(stored // (self.num_steps - 1), stored % (self.num_steps - 1) + 1)
                conditioning = stack_conditioning([embeddings[prompt] for _, prompt in chunk])
                prediction = _check_prediction(
                    predict(batch, _move_conditioning(conditioning, self.device)), batch, which="cached frozen pass"
                )
                if predictions is None:
                    predictions = torch.empty(
                        (len(jobs), *prediction.shape[1:]), dtype=prediction.dtype, device=storage
                    )
                predictions[start : start + len(chunk)] = prediction.detach().to(storage)
        self._cache = _PredictionCache(predictions, tuple(columns), tuple(offsets), per_target)


class _PredictionCache(NamedTuple):
    """`RolloutPool.cache_predictions`'s result: the predictions (rows laid out as described there), per pool prompt
    its cached prompts -> column, the start row of each pool prompt's block, and the stored latents per block."""

    predictions: torch.Tensor
    columns: tuple[dict[str, int], ...]
    offsets: tuple[int, ...]
    per_target: int


class FrozenPredictions:
    """The frozen base's cached predictions at the latents of one drawn batch (`RolloutPool.draw_cached`), which
    `prompt_slider_loss(..., frozen=...)` uses instead of its frozen pass.

    It keeps the cache as it was when drawn (a later `cache_predictions` call does not change it) and copies only the
    rows a step asks for (`rows`) to the pool's device.

    Attributes:
        index (`torch.Tensor`): int64 `(batch,)` on the CPU: per sample, the stored latent it was drawn at,
            `trajectory_row * (num_steps - 1) + step - 1`, where `trajectory_row` counts the pool's trajectories in
            prompt order.
    """

    def __init__(
        self,
        cache: _PredictionCache,
        owners: Sequence[int],
        index: torch.Tensor,
        *,
        prompts: Sequence[str],
        device: torch.device,
    ):
        self._cache = cache
        self._owners = list(owners)
        self._prompts = tuple(prompts)
        self._device = device
        self.index = index

    def __len__(self) -> int:
        """The number of samples of the batch."""
        return len(self._owners)

    def rows(self, pairs: Sequence[tuple[int, str]]) -> torch.Tensor:
        """The cached predictions of `prompt` at sample `sample`'s latent, for each `(sample, prompt)` of `pairs`.

        Args:
            pairs (sequence of `(int, str)`): Sample positions in the batch and prompt texts.

        Returns:
            `torch.Tensor`: `(len(pairs), ...)` on the pool's device, in the dtype the predictions were made in.
        """
        cache = self._cache
        where = []
        for sample, prompt in pairs:
            if not 0 <= sample < len(self._owners):
                raise IndexError(f"sample {sample} is out of range for a batch of {len(self._owners)}.")
            owner = self._owners[sample]
            column = cache.columns[owner].get(prompt)
            if column is None:
                raise ValueError(
                    f"The cached frozen predictions hold no prediction of the prompt {prompt!r} at the latents of the "
                    f"target prompt {self._prompts[owner]!r} (sample {sample}); they hold "
                    f"{list(cache.columns[owner])} there. The cache was built for other prompt sets or anchors: call "
                    "`pool.cache_predictions` with the prompt sets and anchors you train."
                )
            position = int(self.index[sample]) - owner * cache.per_target
            where.append(cache.offsets[owner] + position * len(cache.columns[owner]) + column)
        rows = torch.tensor(where, dtype=torch.long, device=cache.predictions.device)
        return cache.predictions.index_select(0, rows).to(self._device)
