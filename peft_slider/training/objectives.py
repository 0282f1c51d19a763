# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Training objectives for sliders: what the denoiser learns to predict, and what a neutral batch trains.

Two questions are answered here, per batch:

- Noise and target, per model family. UNets (SD 1.x/2.x, SDXL) are DDPM models that predict the noise (`epsilon`)
  or the velocity (`v_prediction`); DiTs (FLUX.1, SD3, Z-Image, ...) are flow-matching models that predict
  `noise - x0`. `objective_from_scheduler(pipe.scheduler)` picks the right one from the pipeline's own scheduler.
- The slider's strength for the batch. A signed batch trains at its strength (`+s` on the positive bucket, `-s` on
  the negative one). A neutral batch (strength 0 or none) would give the slider an exactly zero gradient at strength
  0, so `NeutralObjective` gives it a defined meaning: by default ("preserve") the slider is trained at alternately
  `+s_n` and `-s_n` to denoise ordinary images, which teaches it to leave unrelated content alone.

Torch only: schedulers are read by duck typing (`alphas_cumprod`, `config`), diffusers is never imported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..utils.checks import check_finite, is_real_number

__all__ = [
    "NEUTRAL_OBJECTIVES",
    "DenoisingObjective",
    "EpsilonObjective",
    "FlowMatchingObjective",
    "NeutralObjective",
    "NoisyBatch",
    "SliderStep",
    "VPredictionObjective",
    "is_flow_matching_scheduler",
    "neutral_strength",
    "objective_from_scheduler",
]

NEUTRAL_OBJECTIVES = ("preserve", "match_base", "skip", "zero")
"""What a neutral batch trains; see `NeutralObjective`."""

_SIGMA_SAMPLINGS = ("logit_normal", "uniform")


class NoisyBatch(NamedTuple):
    """A batch of clean latents made noisy at random noise levels, with what the denoiser should predict.

    Attributes:
        noisy (`torch.Tensor`): The denoiser's input `x_t`, shaped like the latents.
        target (`torch.Tensor`): What the denoiser should output for `noisy`, shaped like the latents.
        noise (`torch.Tensor`): The Gaussian noise that was mixed in.
        timesteps (`torch.Tensor`): `(batch,)`. DDPM objectives: integer timesteps in `[0, num_train_timesteps)`, what a
            UNet takes. Flow matching: `sigmas * num_train_timesteps` (float), what SD3's transformer takes.
        sigmas (`torch.Tensor`): `(batch,)` noise level in [0, 1] (float32). Flow matching: the `sigma` of
            `x_t = (1 - sigma) x0 + sigma noise` (FLUX.1 takes it as its timestep, Z-Image takes `1 - sigma`). DDPM:
            `sqrt(1 - alpha_bar_t)`, the weight of the noise in `x_t`.
    """

    noisy: torch.Tensor
    target: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor


def _check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")


def _check_latents(latents: Any) -> torch.Tensor:
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.ndim < 2:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise TypeError(f"`latents` must be a floating-point tensor shaped (batch, ...), got {shape}.")
    return latents


def _check_noise(noise: torch.Tensor | None, latents: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if noise is None:
        # Drawn in float32 and then cast, so the same generator gives the same noise in any dtype.
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
        return noise.to(latents.dtype)
    if not isinstance(noise, torch.Tensor) or noise.shape != latents.shape:
        shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"`noise` must be a tensor shaped like `latents` {tuple(latents.shape)}, got {shape}.")
    return noise.to(device=latents.device, dtype=latents.dtype)


def _per_sample(values: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """`(batch,)` values reshaped to broadcast over `latents`, in its dtype."""
    return values.to(device=latents.device, dtype=latents.dtype).view(-1, *([1] * (latents.ndim - 1)))


class DenoisingObjective:
    """What a denoiser is trained to predict from noisy latents; subclasses define the noising and the target.

    Attributes:
        prediction_type (`str`): `"epsilon"`, `"v_prediction"` or `"flow_matching"`.
        num_train_timesteps (`int`): The scheduler's number of training timesteps.
    """

    prediction_type: str = ""
    num_train_timesteps: int = 1000

    def add_noise(
        self,
        latents: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> NoisyBatch:
        """Noise `latents` at random (or given) noise levels and return the input and the target.

        Args:
            latents (`torch.Tensor`):
                Clean latents `(batch, ...)`, scaled as the pipeline feeds its denoiser.
            noise (`torch.Tensor`, *optional*):
                The noise to mix in; drawn from `generator` when not given.
            timesteps (`torch.Tensor`, *optional*):
                `(batch,)` noise levels: integer timesteps for DDPM objectives, sigmas in [0, 1] for flow matching.
                Drawn from `generator` when not given.
            generator (`torch.Generator`, *optional*):
                Source of the random noise levels and noise, on the latents' device.

        Returns:
            `NoisyBatch`
        """
        raise NotImplementedError

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean squared error between the denoiser's output and the target, computed in float32.

        Args:
            prediction (`torch.Tensor`): The denoiser's output.
            target (`torch.Tensor`): `NoisyBatch.target` (or, for `match_base`, the frozen base model's output).

        Returns:
            `torch.Tensor`: a float32 scalar.
        """
        if prediction.shape != target.shape:
            raise ValueError(
                f"`prediction` {tuple(prediction.shape)} and `target` {tuple(target.shape)} must have the same "
                "shape; unpack or reshape the denoiser's output like the latents first."
            )
        return F.mse_loss(prediction.float(), target.float())


class _DDPMObjective(DenoisingObjective):
    """The DDPM forward process `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`, with `a_t = alphas_cumprod[t]`."""

    def __init__(self, alphas_cumprod: torch.Tensor | Iterable[float]):
        if not isinstance(alphas_cumprod, torch.Tensor):
            alphas_cumprod = torch.as_tensor(list(alphas_cumprod), dtype=torch.float64)
        values = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
        if values.ndim != 1 or values.numel() < 2:
            raise ValueError(
                f"`alphas_cumprod` must be a 1-D schedule with one entry per training timestep, got shape "
                f"{tuple(values.shape)}."
            )
        if not bool(((values > 0) & (values <= 1)).all()):
            raise ValueError("`alphas_cumprod` must lie in (0, 1]; pass the scheduler's `alphas_cumprod`.")
        self.alphas_cumprod = values
        self.num_train_timesteps = values.numel()
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> _DDPMObjective:
        """Build from a diffusers DDPM-family scheduler (DDPM, DDIM, Euler, DPM-Solver, ...): its `alphas_cumprod`.

        Example:

        ```py
        >>> from diffusers import DDPMScheduler
        >>> from peft_slider.training import EpsilonObjective
        >>> EpsilonObjective.from_scheduler(DDPMScheduler()).num_train_timesteps
        1000
        ```
        """
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        if alphas_cumprod is None:
            raise ValueError(
                f"`scheduler` ({type(scheduler).__name__}) has no `alphas_cumprod`, so it is not a DDPM-family "
                "scheduler; use FlowMatchingObjective for flow-matching models, or objective_from_scheduler."
            )
        return cls(alphas_cumprod)

    def _coefficients(self, timesteps: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (latents.device, torch.float32)
        cached = self._cache.get(key)
        if cached is None:
            sqrt_alpha = self.alphas_cumprod.sqrt().to(device=latents.device, dtype=torch.float32)
            sqrt_one_minus = (1 - self.alphas_cumprod).sqrt().to(device=latents.device, dtype=torch.float32)
            cached = self._cache[key] = (sqrt_alpha, sqrt_one_minus)
        return cached[0][timesteps], cached[1][timesteps]

    def _timesteps(
        self, latents: torch.Tensor, timesteps: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        batch = latents.shape[0]
        if timesteps is None:
            return torch.randint(
                0, self.num_train_timesteps, (batch,), generator=generator, device=latents.device, dtype=torch.long
            )
        if not isinstance(timesteps, torch.Tensor) or timesteps.shape != (batch,) or timesteps.is_floating_point():
            raise ValueError(
                f"`timesteps` must be an integer tensor of shape ({batch},), got "
                f"{tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else timesteps!r}."
            )
        if bool(((timesteps < 0) | (timesteps >= self.num_train_timesteps)).any()):
            raise ValueError(f"`timesteps` must lie in [0, {self.num_train_timesteps}), got {timesteps.tolist()}.")
        return timesteps.to(device=latents.device, dtype=torch.long)

    def add_noise(self, latents, *, noise=None, timesteps=None, generator=None) -> NoisyBatch:
        latents = _check_latents(latents)
        _check_generator(generator)
        timesteps = self._timesteps(latents, timesteps, generator)
        noise = _check_noise(noise, latents, generator)
        sqrt_alpha, sqrt_one_minus = self._coefficients(timesteps, latents)
        a, b = _per_sample(sqrt_alpha, latents), _per_sample(sqrt_one_minus, latents)
        noisy = a * latents + b * noise
        return NoisyBatch(noisy, self._target(latents, noise, a, b), noise, timesteps, sqrt_one_minus)

    def _target(self, latents, noise, sqrt_alpha, sqrt_one_minus) -> torch.Tensor:
        raise NotImplementedError


class EpsilonObjective(_DDPMObjective):
    """DDPM noise prediction (SD 1.x, SDXL base): the denoiser predicts the noise.

    Args:
        alphas_cumprod (`torch.Tensor` or iterable of floats):
            The scheduler's cumulative product of alphas, one entry per training timestep. Use `from_scheduler`.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import EpsilonObjective
    >>> objective = EpsilonObjective(torch.linspace(0.999, 0.01, 1000).cumprod(0).clamp(min=1e-4))
    >>> batch = objective.add_noise(torch.zeros(2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    >>> torch.equal(batch.target, batch.noise)
    True
    ```
    """

    prediction_type = "epsilon"

    def _target(self, latents, noise, sqrt_alpha, sqrt_one_minus):
        return noise


class VPredictionObjective(_DDPMObjective):
    """DDPM velocity prediction (SD 2.x 768, v-prediction SDXL finetunes): the target is `sqrt(a) noise - sqrt(1-a) x0`.

    Args:
        alphas_cumprod (`torch.Tensor` or iterable of floats):
            The scheduler's cumulative product of alphas. Use `from_scheduler`.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import VPredictionObjective
    >>> objective = VPredictionObjective([0.9, 0.5, 0.1])
    >>> batch = objective.add_noise(torch.ones(1, 2), noise=torch.zeros(1, 2), timesteps=torch.tensor([1]))
    >>> batch.target  # -sqrt(1 - 0.5) * x0
    tensor([[-0.7071, -0.7071]])
    ```
    """

    prediction_type = "v_prediction"

    def _target(self, latents, noise, sqrt_alpha, sqrt_one_minus):
        return sqrt_alpha * noise - sqrt_one_minus * latents


class FlowMatchingObjective(DenoisingObjective):
    """Rectified flow (FLUX.1, SD3, Z-Image, Chroma, Wan, ...): `x_t = (1 - sigma) x0 + sigma noise`, target `noise - x0`.

    Noise levels are drawn as `sigma = sigmoid(mean + std * N(0, 1))` ("logit_normal", SD3's choice) or uniformly in
    [0, 1], then shifted by `shift * sigma / (1 + (shift - 1) * sigma)`, which spends more steps at high noise.

    The denoisers take the noise level in different conventions, which the family code converts from
    `NoisyBatch.sigmas` / `.timesteps`: SD3 takes `sigma * 1000` (`timesteps`), FLUX.1 and Chroma take `sigma`, and
    Z-Image takes `1 - sigma` and predicts `x0 - noise` (its pipeline negates the output).

    Args:
        sigma_sampling (`str`, *optional*, defaults to `"logit_normal"`):
            `"logit_normal"` or `"uniform"`.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the normal behind `"logit_normal"`.
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the normal behind `"logit_normal"`.
        shift (`float`, *optional*, defaults to `1.0`):
            The timestep shift (> 0); 1 leaves the sigmas as drawn.
        num_train_timesteps (`int`, *optional*, defaults to `1000`):
            `timesteps = sigmas * num_train_timesteps`.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import FlowMatchingObjective
    >>> objective = FlowMatchingObjective()
    >>> x0, noise = torch.ones(1, 3), torch.zeros(1, 3)
    >>> batch = objective.add_noise(x0, noise=noise, timesteps=torch.tensor([0.25]))
    >>> batch.noisy, batch.target, batch.timesteps
    (tensor([[0.7500, 0.7500, 0.7500]]), tensor([[-1., -1., -1.]]), tensor([250.]))
    ```
    """

    prediction_type = "flow_matching"

    def __init__(
        self,
        *,
        sigma_sampling: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        shift: float = 1.0,
        num_train_timesteps: int = 1000,
    ):
        if sigma_sampling not in _SIGMA_SAMPLINGS:
            raise ValueError(f"`sigma_sampling` must be one of {_SIGMA_SAMPLINGS}, got {sigma_sampling!r}.")
        for name, value in (("logit_mean", logit_mean), ("logit_std", logit_std), ("shift", shift)):
            check_finite(value, argument=name)
        if logit_std <= 0 or shift <= 0:
            raise ValueError(f"`logit_std` and `shift` must be > 0, got logit_std={logit_std!r}, shift={shift!r}.")
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 1
        ):
            raise ValueError(f"`num_train_timesteps` must be an int >= 1, got {num_train_timesteps!r}.")
        self.sigma_sampling = sigma_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps

    def __repr__(self) -> str:
        return (
            f"FlowMatchingObjective(sigma_sampling={self.sigma_sampling!r}, logit_mean={self.logit_mean}, "
            f"logit_std={self.logit_std}, shift={self.shift}, num_train_timesteps={self.num_train_timesteps})"
        )

    @classmethod
    def from_scheduler(cls, scheduler: Any, **kwargs: Any) -> FlowMatchingObjective:
        """Build from a flow-matching scheduler: its `num_train_timesteps`, and its static `shift`.

        A scheduler with `use_dynamic_shifting` (FLUX.1) shifts by image size at inference only, so training keeps
        shift 1 unless `shift=` is given. Other keyword arguments go to the constructor.

        Example:

        ```py
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from peft_slider.training import FlowMatchingObjective
        >>> FlowMatchingObjective.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0)).shift
        3.0
        ```
        """
        config = getattr(scheduler, "config", {}) or {}
        kwargs.setdefault("num_train_timesteps", int(config.get("num_train_timesteps", 1000)))
        if "shift" not in kwargs and not config.get("use_dynamic_shifting", False):
            kwargs["shift"] = float(config.get("shift", 1.0) or 1.0)
        return cls(**kwargs)

    def sample_sigmas(
        self, batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Draw `batch_size` noise levels in (0, 1), float32, as configured (sampling, then shift)."""
        _check_generator(generator)
        if self.sigma_sampling == "logit_normal":
            normal = torch.randn((batch_size,), generator=generator, device=device, dtype=torch.float32)
            sigmas = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        else:
            sigmas = torch.rand((batch_size,), generator=generator, device=device, dtype=torch.float32)
        if self.shift != 1.0:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        return sigmas

    def add_noise(self, latents, *, noise=None, timesteps=None, generator=None) -> NoisyBatch:
        latents = _check_latents(latents)
        _check_generator(generator)
        batch = latents.shape[0]
        if timesteps is None:
            sigmas = self.sample_sigmas(batch, generator=generator, device=latents.device)
        else:
            if not isinstance(timesteps, torch.Tensor) or timesteps.shape != (batch,):
                raise ValueError(
                    f"`timesteps` (sigmas) must be a tensor of shape ({batch},) with values in [0, 1], got "
                    f"{tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else timesteps!r}."
                )
            sigmas = timesteps.to(device=latents.device, dtype=torch.float32)
            if bool(((sigmas < 0) | (sigmas > 1)).any()):
                raise ValueError(f"`timesteps` (sigmas) must lie in [0, 1], got {sigmas.tolist()}.")
        noise = _check_noise(noise, latents, generator)
        sigma = _per_sample(sigmas, latents)
        noisy = (1 - sigma) * latents + sigma * noise
        return NoisyBatch(noisy, noise - latents, noise, sigmas * self.num_train_timesteps, sigmas)


def is_flow_matching_scheduler(scheduler: Any) -> bool:
    """Whether a diffusers scheduler belongs to a flow-matching model (read by duck typing).

    True for classes named `*FlowMatch*`, `prediction_type="flow_prediction"` and `use_flow_sigmas=True` (Wan's UniPC).

    Example:

    ```py
    >>> from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
    >>> from peft_slider.training import is_flow_matching_scheduler
    >>> is_flow_matching_scheduler(FlowMatchEulerDiscreteScheduler()), is_flow_matching_scheduler(EulerDiscreteScheduler())
    (True, False)
    ```
    """
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"`scheduler` must be a diffusers scheduler with a `config`, got {type(scheduler).__name__}.")
    return (
        "FlowMatch" in type(scheduler).__name__
        or config.get("prediction_type") == "flow_prediction"
        or bool(config.get("use_flow_sigmas", False))
    )


def objective_from_scheduler(scheduler: Any, **kwargs: Any) -> DenoisingObjective:
    """The training objective that matches a diffusers scheduler (read by duck typing, diffusers is not imported).

    Flow-matching schedulers (class name containing `FlowMatch`, or `prediction_type="flow_prediction"`, or
    `use_flow_sigmas`) give `FlowMatchingObjective` (keyword arguments go to it); `prediction_type` `"epsilon"` gives
    `EpsilonObjective` and `"v_prediction"` gives `VPredictionObjective`.

    Args:
        scheduler: The pipeline's scheduler, e.g. `pipe.scheduler`.
        **kwargs: Options of `FlowMatchingObjective` (`sigma_sampling`, `shift`, ...), for flow-matching schedulers.

    Example:

    ```py
    >>> from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
    >>> from peft_slider.training import objective_from_scheduler
    >>> type(objective_from_scheduler(DDIMScheduler(prediction_type="v_prediction"))).__name__
    'VPredictionObjective'
    >>> type(objective_from_scheduler(FlowMatchEulerDiscreteScheduler())).__name__
    'FlowMatchingObjective'
    ```
    """
    if is_flow_matching_scheduler(scheduler):
        return FlowMatchingObjective.from_scheduler(scheduler, **kwargs)
    prediction_type = scheduler.config.get("prediction_type")
    if kwargs:
        raise ValueError(
            f"Options {sorted(kwargs)} only apply to flow-matching schedulers, not {type(scheduler).__name__}."
        )
    if prediction_type == "epsilon":
        return EpsilonObjective.from_scheduler(scheduler)
    if prediction_type == "v_prediction":
        return VPredictionObjective.from_scheduler(scheduler)
    raise ValueError(
        f"`prediction_type` {prediction_type!r} of {type(scheduler).__name__} is not supported; sliders train "
        "'epsilon', 'v_prediction' or flow-matching models. Set the scheduler's prediction_type to what the model was "
        "trained with."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Neutral batches


class SliderStep(NamedTuple):
    """How one batch trains the slider.

    Attributes:
        strength (`float`): The slider's strength for the batch's forward and backward pass.
        target (`str`): `"data"`: the objective's ordinary target (`NoisyBatch.target`); `"base"`: the prediction of the
            frozen base model (the slider at strength 0, no gradient) on the same noisy input.
        train (`bool`): `False` when the batch is skipped: no forward pass, no optimizer step.
    """

    strength: float
    target: str
    train: bool


def _check_strength(value: Any, name: str) -> float:
    if value is None:
        raise ValueError(
            f"`{name}` is None. Every batch must say its slider strength (a neutral batch says 0.0): read it from "
            "`SliderBatchSampler.batch_info(step).slider_strength` or `peft_slider.training.batch_strength(batch)`."
        )
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return check_finite(value, argument=name)


def neutral_strength(backends: Iterable[Any]) -> float:
    """The default neutral strength `s_n`: the mean `|slider_strength|` of the signed backends, weighted by samples.

    Args:
        backends (iterable of `SliderBackend` or `SliderDataset`, or of numbers):
            The training backends (their `slider_strength` and size are read), or plain strengths (each weighted 1).
            Neutral ones (None or 0) are left out.

    Raises:
        `ValueError`: no backend is signed, so the slider has no direction to learn.

    Example:

    ```py
    >>> from peft_slider.training import SliderBackend, neutral_strength
    >>> neutral_strength([SliderBackend(4, slider_strength=1.0), SliderBackend(4, slider_strength=-0.5),
    ...                   SliderBackend(8)])
    0.75
    >>> neutral_strength([2.0, -1.0, 0.0])
    1.5
    ```
    """
    total, weight = 0.0, 0.0
    for item in backends:
        if is_real_number(item):
            strength, count = float(item), 1.0
        else:
            strength = getattr(item, "slider_strength", None)
            strength = 0.0 if strength is None else float(strength)
            if hasattr(item, "num_samples"):
                count = float(item.num_samples)
            elif hasattr(item, "__len__"):
                count = float(len(item))
            else:
                count = 1.0
        if strength != 0 and math.isfinite(strength):
            total += abs(strength) * count
            weight += count
    if weight == 0:
        raise ValueError(
            "No backend has a nonzero `slider_strength`, so there is no direction to learn: give the positive bucket "
            "a strength > 0 and the negative bucket a strength < 0."
        )
    return total / weight


class NeutralObjective:
    """Decide the strength and target of each batch, giving neutral batches (strength 0) a defined meaning.

    A signed batch (strength `s != 0`) always trains at `s` with the ordinary denoising target. A neutral batch, as
    SimpleTuner treats it, trains at strength 0, where the slider's output and so its gradient are exactly zero: the
    batch costs a forward and a backward pass and teaches nothing. The modes:

    - `"preserve"` (default): train at `+s_n` and `-s_n` on alternate neutral batches, with the ordinary denoising
      target on the neutral (ordinary) images. The slider learns to denoise unrelated content the same at either
      sign, i.e. to leave it intact. Paired over one `+s_n` and one `-s_n` batch, the pulls toward the neutral images
      themselves cancel to first order and what remains is a penalty on the slider's effect on that content, so this
      behaves like `"match_base"` at no extra cost.
    - `"match_base"`: train at `+s_n` / `-s_n` to reproduce the frozen base model's prediction (the slider at 0, no
      gradient) on the same noisy neutral input: a distillation-style preservation loss. One extra forward pass.
    - `"skip"`: neutral batches are not trained (no forward pass, no optimizer step).
    - `"zero"`: the legacy behaviour, strength 0 and the ordinary target. Warns: the slider gets no gradient from
      these batches, and the optimizer step still moves it by momentum and weight decay.

    Args:
        mode (`str`, *optional*, defaults to `"preserve"`):
            One of `NEUTRAL_OBJECTIVES`.
        strength (`float`, *optional*):
            `s_n` (> 0) for `"preserve"` and `"match_base"`. Defaults to `neutral_strength(backends)`, so
            `backends` is then required.
        backends (iterable, *optional*):
            The training backends, to compute the default `strength` from.

    Example:

    ```py
    >>> from peft_slider.training import NeutralObjective
    >>> objective = NeutralObjective("preserve", strength=0.8)
    >>> [objective.step(0.0, neutral_index=i).strength for i in range(3)]
    [0.8, -0.8, 0.8]
    >>> objective.step(-1.0)
    SliderStep(strength=-1.0, target='data', train=True)
    >>> NeutralObjective("match_base", strength=1.0).step(0.0)
    SliderStep(strength=1.0, target='base', train=True)
    ```
    """

    def __init__(
        self, mode: str = "preserve", *, strength: float | None = None, backends: Iterable[Any] | None = None
    ):
        if mode not in NEUTRAL_OBJECTIVES:
            raise ValueError(
                f"`neutral_objective` must be one of {NEUTRAL_OBJECTIVES}, got {mode!r}. 'preserve' (the default) "
                "trains neutral batches at alternately +s and -s to keep ordinary content intact."
            )
        if strength is not None:
            strength = _check_strength(strength, "neutral_strength")
            if strength <= 0:
                raise ValueError(
                    f"`neutral_strength` must be > 0 (neutral batches train at +s and -s), got {strength!r}; leave it "
                    "unset to use the mean |strength| of the signed backends."
                )
        elif mode in ("preserve", "match_base"):
            if backends is None:
                raise ValueError(
                    f"neutral_objective={mode!r} needs a neutral strength: pass `strength=` (> 0) or `backends=` to "
                    "use the mean |slider_strength| of the signed backends."
                )
            strength = neutral_strength(backends)
        if mode == "zero":
            warnings.warn(
                "neutral_objective='zero' trains neutral batches at slider strength 0, where the slider's gradient is "
                "exactly zero: those batches teach the slider nothing (the optimizer still moves it by momentum and "
                "weight decay). Use 'preserve' (default) or 'match_base' to keep unrelated content intact, or 'skip'.",
                UserWarning,
                stacklevel=2,
            )
        self.mode = mode
        self.strength = strength

    def __repr__(self) -> str:
        return f"NeutralObjective(mode={self.mode!r}, strength={self.strength!r})"

    @property
    def needs_base_prediction(self) -> bool:
        """Whether neutral batches need the frozen base model's prediction (one extra no-grad forward pass)."""
        return self.mode == "match_base"

    def step(self, batch_strength: float, *, neutral_index: int = 0) -> SliderStep:
        """How to train a batch of strength `batch_strength`.

        Args:
            batch_strength (`float`):
                The batch's signed strength, 0.0 for a neutral batch. None is refused: a batch never defaults to +1.
            neutral_index (`int`, *optional*, defaults to `0`):
                How many neutral batches came before this one; even trains at `+s_n`, odd at `-s_n`. Derive it from
                the sampler's plan so that a resumed run alternates exactly as an uninterrupted one.

        Returns:
            `SliderStep`
        """
        strength = _check_strength(batch_strength, "batch_strength")
        if strength != 0:
            return SliderStep(strength, "data", True)
        if isinstance(neutral_index, bool) or not isinstance(neutral_index, int) or neutral_index < 0:
            raise ValueError(f"`neutral_index` must be an int >= 0, got {neutral_index!r}.")
        if self.mode == "skip":
            return SliderStep(0.0, "data", False)
        if self.mode == "zero":
            return SliderStep(0.0, "data", True)
        sign = 1.0 if neutral_index % 2 == 0 else -1.0
        return SliderStep(sign * self.strength, "base" if self.mode == "match_base" else "data", True)
