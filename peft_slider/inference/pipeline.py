# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Dialling sliders at inference: any diffusers pipeline, one prompt at several strengths in one pass, prompt libraries.

[`SliderPipelineMixin`] adds four methods to a pipeline class, and [`enable_sliders`] adds them to a pipeline you
already have; the pipeline's own `__call__` is untouched.

- `generate_at(prompt, strength=...)`: one call at a strength, then the adapters exactly as they were.
- `generate_library(library)`: a prompt library ([`~peft_slider.inference.prompts.load_prompt_library`]), each entry at its own
  strength, images keyed by name.
- `sweep(prompt, [-2, -1, 0, 1, 2])`: one prompt and seed at several strengths, by default in a single batched pass
  (one strength per sample), instead of one pipeline call per strength.
- `sweep_grid(prompts, strengths)`: sweeps of several prompts or seeds as one labelled PNG grid.

Strength is absolute, as in diffusers' `pipe.set_adapters([name], adapter_weights=[w])`: strength `w` writes the
adapter layers' scale `w * lora_alpha / r` through PEFT's `set_scale`, exactly what `set_adapters` writes, whatever the
current weight is. Only the denoiser's adapter layers are touched, so it works on every pipeline whose denoiser carries
PEFT adapters, with or without diffusers' attention-kwargs `scale` path (Z-Image, Kandinsky 5, Cosmos, PixArt have
none). Afterwards, also after an exception, every adapter's scale, which adapters are active and which parameters
require grad are put back exactly as found (a snapshot, never undone by division, so weights 0 and negative restore
exactly). During the call the pipeline's thread holds the denoiser, as a slider block does
([`~peft_slider.training.scaling.SliderScaler`]): another thread's slider calls and blocks on it raise a RuntimeError, and so does
merging (`pipe.fuse_lora()`, from a step callback), and so does opening a strength block (`slider_strength`,
`SliderScaler.at`) from a step callback: open it around the call instead. Strengths of magnitude above 1000
(`peft_slider.training.scaling.MAX_STRENGTH`) are refused: their images overflow to NaN.

`slider_start` (in [0, 1), as `SliderMetadata.slider_start`) keeps the slider off (strength 0, the base model) for the
first `slider_start * steps` denoising steps (rounded half up), Concept Sliders' way to keep the base image's
composition. Steps are counted from the changes of the timestep the pipeline passes its denoiser, so pipelines that call
the denoiser twice per step (true CFG) count right, and the total the same way from the scheduler's schedule, so
second-order schedulers (Heun), which repeat each timestep, place the start right too.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..formats.strength_map import StrengthMap, get_strength_map
from ..targeting.targets import denoiser_of
from ..training.adapters import (
    AdapterState,
    active_adapter_names,
    adapter_layers,
    adapter_trainability,
    check_adapter_names,
    hold_layers,
    named_tuner_layers,
    release_layers,
    set_weight,
)
from ..training.adapters import adapter_names as model_adapter_names
from ..training.scaling import MAX_STRENGTH, SliderScaler, close_call, open_call
from ..utils.checks import check_finite, check_seed
from .prompts import PromptEntry, check_strength, load_prompt_library

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SliderPipelineMixin", "enable_sliders"]

# Denoiser forward arguments that carry the timestep (diffusers models; Z-Image and Lumina 2 call it `t`).
_TIMESTEP_ARGUMENTS = ("timestep", "timesteps", "t")
# `__call__` arguments that repeat each prompt, for image and video pipelines.
_PER_PROMPT_ARGUMENTS = ("num_images_per_prompt", "num_videos_per_prompt")
# Pipeline output fields that hold the images, for image and video pipelines.
_OUTPUT_FIELDS = ("images", "frames", "videos")

StrengthValue = float | dict[str, float]


# ---------------------------------------------------------------------------------------------------------------------
# The denoiser and its adapter layers.


def _named_sliders(denoiser: nn.Module, adapter_names: str | Sequence[str] | None) -> list[str] | None:
    """The checked `adapter_names=` argument; `None` when unset (the default sliders)."""
    if adapter_names is None:
        return None
    hint = " Load it first (pipe.load_lora_weights(..., adapter_name=...)) or fix the name."
    return check_adapter_names(denoiser, adapter_names, "adapter_names", hint=hint)


def _default_sliders(denoiser: nn.Module) -> list[str]:
    """The sliders a plain number applies to when no adapter is named: the single active adapter, or the trainable
    active ones beside frozen ones (a slider during training, beside an assistant)."""
    trainability = adapter_trainability(denoiser)  # one walk gives both the adapters and which are trainable
    known = sorted(trainability)
    if not known:
        raise ValueError(
            f"{type(denoiser).__name__} carries no adapter; load a slider first "
            "(pipe.load_lora_weights(path, adapter_name='smile'))."
        )
    active = active_adapter_names(denoiser)
    if len(active) == 1:
        return active
    chosen = [name for name in active if trainability.get(name, False)]
    if 0 < len(chosen) < len(active):
        return chosen
    raise ValueError(
        f"Which adapters does the strength apply to? {type(denoiser).__name__} has the active adapters {active} "
        f"(of {known}). Pass adapter_names=[...], or a strength per adapter such as {{{known[0]!r}: 1.0}}."
    )


def _check_slider_start(value: Any) -> float:
    value = check_finite(value, argument="slider_start")
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"`slider_start` is the fraction of denoising steps run without the slider, in [0, 1); got {value}. "
            "Concept Sliders use 0.1-0.35."
        )
    return value


def _check_bound(strength: StrengthValue) -> None:
    for adapter, value in strength.items() if isinstance(strength, dict) else [(None, strength)]:
        if abs(value) > MAX_STRENGTH:
            where = "The strength" if adapter is None else f"The strength of adapter {adapter!r}"
            raise ValueError(
                f"{where} is {value!r}, but a slider strength must have a magnitude at most {MAX_STRENGTH:g} "
                "(peft_slider.training.scaling.MAX_STRENGTH): beyond it the slider's delta outweighs the model's own "
                "activations and the images come out NaN. Pass a strength in [-1000, 1000]; sliders are used in "
                "[-5, 5]."
            )


def _resolve_weights(
    denoiser: nn.Module, strength: StrengthValue, adapter_names: list[str] | None
) -> dict[str, float]:
    """Adapter name -> absolute weight, for a checked strength."""
    _check_bound(strength)
    if isinstance(strength, dict):
        known = model_adapter_names(denoiser)
        for name in strength:
            if name not in known:
                raise ValueError(
                    f"The strength names adapter {name!r}, which {type(denoiser).__name__} does not carry; it carries "
                    f"{known}. Fix the name or load the adapter first."
                )
            if adapter_names is not None and name not in adapter_names:
                raise ValueError(
                    f"The strength names adapter {name!r}, which is not in `adapter_names` {adapter_names}; add it "
                    "there, or leave `adapter_names` unset."
                )
        return dict(strength)
    names = adapter_names if adapter_names is not None else _default_sliders(denoiser)
    return dict.fromkeys(names, strength)


def _calibrated_weights(denoiser: nn.Module, weights: dict[str, float], calibrated: Any) -> dict[str, float]:
    """The raw adapter weights for calibrated strengths (`calibrated=`); `weights` as they are for `False`."""
    if calibrated is False:
        return weights
    if not isinstance(calibrated, (bool, StrengthMap, Mapping)):
        raise TypeError(
            "`calibrated` must be True, False, a StrengthMap or a mapping {adapter_name: StrengthMap}, got "
            f"{type(calibrated).__name__}."
        )
    raw = {}
    for adapter, value in weights.items():
        if isinstance(calibrated, StrengthMap):
            strength_map = calibrated
        elif isinstance(calibrated, Mapping):
            strength_map = calibrated.get(adapter)
        else:
            strength_map = get_strength_map(denoiser, adapter)
        if not isinstance(strength_map, StrengthMap):
            raise ValueError(
                f"`calibrated` asks for the strength map of adapter {adapter!r}, which has none. Calibrate the slider "
                "(`peft-slider evaluate --calibrate`, or `peft_slider.evaluation.evaluate_slider(...).strength_map()`) "
                "and load the calibrated file with load_slider, or pass calibrated=StrengthMap(...)."
            )
        try:
            raw[adapter] = strength_map.strength_for(value)
        except ValueError as error:
            raise ValueError(f"adapter {adapter!r}: {error}") from None
    return raw


# ---------------------------------------------------------------------------------------------------------------------
# Applying strengths for one pipeline call, and putting everything back.


class _SliderCall:
    """
    The strengths of one pipeline call on its denoiser: entered before the call, exited (restoring) after it.

    With per-sample strengths (a sweep), `per_sample[adapter]` has one strength per image; the denoiser's batch may be
    `k` times as large (classifier-free guidance stacks `[uncond x N, cond x N]`, Z-Image `[cond x N, uncond x N]`), and
    then the strengths are tiled `k` times, so that every copy of image `i` gets strength `i`.
    """

    def __init__(
        self,
        pipe: Any,
        denoiser: nn.Module,
        *,
        weights: dict[str, float] | None = None,
        per_sample: dict[str, torch.Tensor] | None = None,
        slider_start: float = 0.0,
    ) -> None:
        self.pipe = pipe
        self.denoiser = denoiser
        self.weights = weights or {}
        self.per_sample = per_sample or {}
        self.adapters = list(dict.fromkeys([*self.weights, *self.per_sample]))
        self.slider_start = slider_start
        self.layers = {adapter: adapter_layers(denoiser, adapter) for adapter in self.adapters}
        self._check_layers()
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._held: list = []
        self._call: tuple | None = None
        self._scaler: SliderScaler | None = None
        self._state: AdapterState | None = None
        self._signature = inspect.signature(denoiser.forward)
        # Step counting for the delayed start.
        self._last_timestep: Any = None
        self._step = -1
        self._start_step: int | None = None
        self._applied: Any = None

    def _check_layers(self) -> None:
        name = type(self.denoiser).__name__
        for adapter, layers in self.layers.items():
            if not layers:
                raise ValueError(f"Adapter {adapter!r} has no layer in {name}; it belongs to another component.")
            for layer in layers:
                if adapter in getattr(layer, "merged_adapters", ()):
                    raise ValueError(
                        f"Adapter {adapter!r} is fused into the weights of {name} (pipe.fuse_lora()), so its strength "
                        "cannot change; call pipe.unfuse_lora() first."
                    )
                if layer.disable_adapters:
                    raise ValueError(
                        f"The adapters of {name} are disabled (pipe.disable_lora()), so a slider would have no effect; "
                        "call pipe.enable_lora() first."
                    )

    def __enter__(self) -> _SliderCall:
        # Hold the denoiser's layers for the call: another thread's slider changes, and merging, raise meanwhile.
        self._held = [layer for _, layer in named_tuner_layers(self.denoiser)]
        hold_layers(self._held, "run a slider pipeline call", call=True)
        try:
            self._state = AdapterState(self.denoiser)
            # Blocks opened before the call and closed during it (from a step callback) restore into this snapshot.
            self._call = open_call(self._state.scaling)
            self._activate()
            if self.per_sample:
                # Per-sample strengths multiply the delta of a layer at its base scale (weight 1).
                self._set_weights(dict.fromkeys(self.per_sample, 1.0))
                try:
                    self._scaler = SliderScaler(self.denoiser, adapter_names=list(self.per_sample))
                    self._apply(on=self.slider_start == 0.0, repeats=1)
                except ValueError as error:
                    raise ValueError(f"{error} For a sweep, pass one_pass=False.") from None
            else:
                self._apply(on=self.slider_start == 0.0)
            if self.per_sample or self.slider_start > 0.0:
                # First of the pre-hooks, so that the scaler's own batch check sees the strengths for this batch.
                self._handle = self.denoiser.register_forward_pre_hook(self._pre_hook, with_kwargs=True, prepend=True)
        except BaseException:
            self._exit()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit()

    def _exit(self) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            if self._scaler is not None:
                self._scaler.restore()  # removes its hooks
                self._scaler = None
        finally:
            try:
                if self._state is not None:
                    self._state.restore()
                    self._state = None
            finally:
                if self._call is not None:
                    close_call(self._call)
                    self._call = None
                release_layers(self._held, call=True)
                self._held = []

    def _activate(self) -> None:
        # A strength for an adapter that is loaded but inactive switches it on for the call, as set_adapters would.
        for layers_adapter, layers in self.layers.items():
            for layer in layers:
                active = list(layer.active_adapters)
                if layers_adapter not in active:
                    layer.set_adapter([*active, layers_adapter])

    def _set_weights(self, weights: Mapping[str, float]) -> None:
        for adapter, weight in weights.items():
            set_weight(self.layers[adapter], adapter, weight)

    def _apply(self, *, on: bool, repeats: int = 1) -> None:
        key = (on, repeats)
        if key == self._applied:
            return
        if self.weights:
            self._set_weights(self.weights if on else dict.fromkeys(self.weights, 0.0))
        if self.per_sample:
            self._scaler.set(
                {
                    adapter: strengths.repeat(repeats) if on else strengths.new_zeros(strengths.numel() * repeats)
                    for adapter, strengths in self.per_sample.items()
                }
            )
        self._applied = key

    # The denoiser pre-hook: which step, and which batch.

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        on = self._slider_on(bound) if self.slider_start > 0.0 else True
        repeats = self._repeats(bound) if self.per_sample else 1
        self._apply(on=on, repeats=repeats)

    def _slider_on(self, bound: dict[str, Any]) -> bool:
        name = next((n for n in _TIMESTEP_ARGUMENTS if n in bound), None)
        if name is None:
            raise ValueError(
                f"`slider_start` counts steps by the denoiser's timestep, but {type(self.denoiser).__name__} was called "
                f"without one of {_TIMESTEP_ARGUMENTS}; use slider_start=0 with this pipeline."
            )
        timestep = bound[name]
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.detach()
            changed = not (
                isinstance(self._last_timestep, torch.Tensor)
                and self._last_timestep.shape == timestep.shape
                and torch.equal(self._last_timestep, timestep)
            )
            timestep = timestep.clone()
        else:
            changed = timestep != self._last_timestep
        if changed:
            self._step += 1
            self._last_timestep = timestep
        if self._start_step is None:
            self._start_step = self._count_start_step()
        return self._step >= self._start_step

    def _count_start_step(self) -> int:
        # `_slider_on` counts changes of the timestep, so the total is counted the same way: second-order schedulers
        # (Heun, FlowMatchHeun) repeat each timestep of their schedule, one step but two denoiser calls.
        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        schedule = [] if timesteps is None else torch.as_tensor(timesteps).detach().flatten().tolist()
        # Pipelines set `_num_timesteps` to the length of the schedule they run, which img2img-style pipelines cut
        # from the front of the scheduler's.
        called = self.pipe.__dict__.get("_num_timesteps")
        if isinstance(called, int) and 0 < called < len(schedule):
            schedule = schedule[-called:]
        total = sum(1 for i, t in enumerate(schedule) if i == 0 or t != schedule[i - 1])
        if total <= 0 and isinstance(called, int):
            total = called
        if total <= 0:
            raise ValueError(
                f"Cannot tell how many denoising steps {type(self.pipe).__name__} runs, so `slider_start` cannot be "
                "placed; use slider_start=0 with this pipeline."
            )
        return math.floor(self.slider_start * total + 0.5)

    def _repeats(self, bound: dict[str, Any]) -> int:
        count = next(iter(self.per_sample.values())).numel()
        sample = next(iter(bound.values()), None)
        if isinstance(sample, torch.Tensor) and sample.ndim > 0:
            batch = sample.shape[0]
        elif isinstance(sample, (list, tuple)):  # Z-Image passes a list of per-sample latents
            batch = len(sample)
        else:
            return 1  # let the scaler's own check report it
        if batch % count:
            raise ValueError(
                f"The sweep has {count} strengths, but {type(self.denoiser).__name__} was called with a batch of "
                f"{batch}, not a multiple of {count}; this pipeline builds its batch in a way a one-pass sweep cannot "
                "follow. Use one_pass=False."
            )
        return batch // count


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline call helpers.


def _call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(type(pipe).__call__).parameters


def _output_images(output: Any) -> Any:
    if isinstance(output, tuple):
        return output[0]
    for field in _OUTPUT_FIELDS:
        images = getattr(output, field, None)
        if images is not None:
            return images
    raise ValueError(f"Cannot find the images in the pipeline output {type(output).__name__}; expected `.images`.")


def _generator(seed: int) -> torch.Generator:
    # A CPU generator: diffusers draws the initial noise on the CPU and moves it, the same on every device.
    return torch.Generator(device="cpu").manual_seed(seed)


def _no_argument(call_kwargs: dict, names: Sequence[str], method: str, hint: str) -> None:
    for name in names:
        if name in call_kwargs:
            raise TypeError(f"{method}() sets `{name}` itself; {hint}")


def _single_prompt(prompt: Any, method: str) -> str | None:
    if isinstance(prompt, (list, tuple)):
        if len(prompt) != 1:
            raise ValueError(
                f"{method}() takes one prompt, got {len(prompt)}; use sweep_grid() for several prompts in one grid."
            )
        prompt = prompt[0]
    if prompt is not None and not isinstance(prompt, str):
        raise TypeError(f"`prompt` must be a string, got {type(prompt).__name__}: {prompt!r}.")
    return prompt


def _check_sweep_strengths(strengths: Any) -> list[StrengthValue]:
    if isinstance(strengths, (str, bytes, Mapping)) or not isinstance(strengths, Sequence) or not strengths:
        raise ValueError(
            f"`strengths` must be a non-empty list of strengths, such as [-2, -1, 0, 1, 2], got {strengths!r}."
        )
    checked = [check_strength(s, where=f"`strengths[{i}]`") for i, s in enumerate(strengths)]
    kinds = {isinstance(s, dict) for s in checked}
    if len(kinds) > 1:
        raise ValueError("`strengths` mixes numbers and per-adapter mappings; use one kind for the whole sweep.")
    if isinstance(checked[0], dict):
        keys = list(checked[0])
        for i, s in enumerate(checked):
            if sorted(s) != sorted(keys):
                raise ValueError(
                    f"`strengths[{i}]` names the adapters {sorted(s)}, but `strengths[0]` names {sorted(keys)}; every "
                    "strength of a sweep must name the same adapters."
                )
    return checked


class SliderPipelineMixin:
    """
    Slider methods for a diffusers pipeline: a prompt at a strength, prompt libraries, one-pass sweeps, sweep grids.

    Compose it with any pipeline class whose denoiser (`transformer` or `unet`) carries PEFT adapters, mixin first:
    `class SliderFluxPipeline(SliderPipelineMixin, FluxPipeline)`, or add it to an existing pipeline with
    [`enable_sliders`]. It defines no `__init__` and leaves `__call__` alone.

    Strength is absolute, as in `pipe.set_adapters([name], adapter_weights=[strength])`, and a number applies to the
    sliders named by `adapter_names`, or by default to the single active adapter (or the trainable ones beside a frozen
    assistant). A mapping `{adapter_name: strength}` sets several sliders at once (adapters it does not name keep their
    current weight); an adapter it names that is loaded but inactive is active for the call. After every method, also
    after an exception, the denoiser's adapters are exactly as they were.

    Example:

    ```py
    >>> from diffusers import FluxPipeline
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.inference.pipeline import SliderPipelineMixin
    >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, tiny_call_kwargs
    >>> class SliderFluxPipeline(SliderPipelineMixin, FluxPipeline):
    ...     pass
    >>> pipe = SliderFluxPipeline(**build_tiny_pipeline("flux").components)
    >>> pipe.set_progress_bar_config(disable=True)
    >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=4, init_lora_weights=False), adapter_name="smile")
    >>> images = pipe.sweep("a photo of a woman", [-1.0, 0.0, 1.0], seed=0, **tiny_call_kwargs("flux"))
    >>> len(images)
    3

    ```
    """

    def generate_at(
        self,
        prompt: str | list[str] | None = None,
        *,
        strength: StrengthValue,
        adapter_names: str | Sequence[str] | None = None,
        slider_start: float = 0.0,
        calibrated: bool | StrengthMap | Mapping[str, StrengthMap] = False,
        **call_kwargs: Any,
    ) -> Any:
        """
        Runs the pipeline once with the slider(s) at `strength`, then restores the adapters exactly.

        Args:
            prompt (`str` or `list[str]`, *optional*):
                The prompt(s), passed to the pipeline as they are.
            strength (`float` or `dict[str, float]`):
                The absolute slider weight (as `set_adapters`' `adapter_weights`), or one per adapter name.
            adapter_names (`str` or `list[str]`, *optional*):
                The sliders a number applies to. Defaults to the single active adapter (see the class docstring).
            slider_start (`float`, *optional*, defaults to `0.0`):
                Fraction of the denoising steps run at strength 0 (the base model) before the slider comes in, in
                [0, 1): the first `slider_start * steps` steps, rounded half up. Concept Sliders use 0.1-0.35.
            calibrated (`bool`, `StrengthMap` or `dict[str, StrengthMap]`, *optional*, defaults to `False`):
                Read strengths as calibrated strengths (see [`~peft_slider.formats.StrengthMap`]): equal steps give
                equal steps of concept change. `True` uses the map `load_slider` read from each slider's file; a map,
                or one per adapter name, is used as given. Calibrated 0 is raw 0, the base model.
            **call_kwargs:
                The pipeline's own arguments (`generator=`, `num_inference_steps=`, ...).

        Returns:
            The pipeline's output, as `pipe(...)` returns it.

        Example:

        ```py
        >>> import torch
        >>> from peft_slider import SliderLoraConfig
        >>> from peft_slider.inference.pipeline import enable_sliders
        >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, tiny_call_kwargs
        >>> pipe = enable_sliders(build_tiny_pipeline("flux"))
        >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
        >>> out = pipe.generate_at("a photo of a woman", strength=-1.5, generator=torch.Generator().manual_seed(0),
        ...                        **tiny_call_kwargs("flux"))
        >>> tuple(out.images.shape)
        (1, 3, 32, 32)

        ```
        """
        denoiser = denoiser_of(self)
        checked = check_strength(strength, where="`strength`")
        names = _named_sliders(denoiser, adapter_names)
        weights = _calibrated_weights(denoiser, _resolve_weights(denoiser, checked, names), calibrated)
        start = _check_slider_start(slider_start)
        with _SliderCall(self, denoiser, weights=weights, slider_start=start):
            return self(prompt, **call_kwargs)

    def generate_library(
        self,
        library: str | Any,
        *,
        strength: StrengthValue | None = None,
        adapter_names: str | Sequence[str] | None = None,
        seed: int = 0,
        slider_start: float = 0.0,
        **call_kwargs: Any,
    ) -> dict[str, Any]:
        """
        Generates every entry of a prompt library at its own strength; images keyed by entry name.

        Every entry is checked (strengths, adapter names, prompts) before the first image is made. Each entry is one
        pipeline call with a CPU generator seeded with the entry's `seed`, or `seed`: the same noise for every entry
        by default, so entries differ only in prompt and strength (an A/B test).

        Args:
            library (`str`, `os.PathLike`, `dict` or `list`):
                A JSON file or its data, as [`~peft_slider.inference.prompts.load_prompt_library`] reads it, or a list of
                [`~peft_slider.inference.prompts.PromptEntry`].
            strength (`float` or `dict[str, float]`, *optional*):
                The global strength, for entries without `adapter_strength`. `None` runs them with the adapters as
                they are (the weights of your last `set_adapters`).
            adapter_names (`str` or `list[str]`, *optional*):
                The sliders a number applies to (see the class docstring).
            seed (`int`, *optional*, defaults to `0`):
                The seed of entries without their own.
            slider_start (`float`, *optional*, defaults to `0.0`):
                Fraction of the denoising steps run at strength 0, for every entry.
            **call_kwargs:
                Further pipeline arguments, the same for every entry (not `generator`, use `seed`).

        Returns:
            `dict[str, image]`: the first image of each entry's output, by entry name, in library order.

        Example:

        ```py
        >>> from peft_slider import SliderLoraConfig
        >>> from peft_slider.inference.pipeline import enable_sliders
        >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, tiny_call_kwargs
        >>> pipe = enable_sliders(build_tiny_pipeline("sd15"))
        >>> pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
        >>> library = {
        ...     "plain": "a portrait photo of a woman",
        ...     "slider_plus": {"prompt": "a portrait photo of a woman", "adapter_strength": 1.2},
        ...     "slider_minus": {"prompt": "a portrait photo of a woman", "adapter_strength": -1.0},
        ... }
        >>> images = pipe.generate_library(library, strength=0.0, **tiny_call_kwargs("sd15"))
        >>> list(images)
        ['plain', 'slider_plus', 'slider_minus']

        ```
        """
        denoiser = denoiser_of(self)
        _no_argument(call_kwargs, ("generator",), "generate_library", "pass seed= (and per-entry seeds) instead.")
        per_prompt = {k: v for k, v in call_kwargs.items() if k in _PER_PROMPT_ARGUMENTS and v not in (None, 1)}
        if per_prompt:
            raise ValueError(f"generate_library() makes one image per entry; drop {per_prompt} or add entries.")
        entries = load_prompt_library(library)
        seed = check_seed(seed)
        start = _check_slider_start(slider_start)
        names = _named_sliders(denoiser, adapter_names)
        global_strength = None if strength is None else check_strength(strength, where="`strength`")
        if any(entry.negative_prompt is not None for entry in entries) and "negative_prompt" not in _call_parameters(
            self
        ):
            raise ValueError(
                f"The library has negative prompts, but {type(self).__name__} takes no `negative_prompt`."
            )

        # Plan every entry first: a bad strength or adapter name, or a slider that is fused, disabled or not in the
        # denoiser, fails before anything is generated (a _SliderCall checks its adapters when made, changing nothing).
        plans: list[tuple[PromptEntry, contextlib.AbstractContextManager]] = []
        for entry in entries:
            value = entry.strength if entry.strength is not None else global_strength
            try:
                weights = None if value is None else _resolve_weights(denoiser, value, names)
                context = (
                    contextlib.nullcontext()
                    if weights is None
                    else _SliderCall(self, denoiser, weights=weights, slider_start=start)
                )
            except ValueError as error:
                raise ValueError(f"entry {entry.name!r}: {error}") from None
            plans.append((entry, context))

        images: dict[str, Any] = {}
        for entry, context in plans:
            kwargs = dict(call_kwargs)
            if entry.negative_prompt is not None:
                kwargs["negative_prompt"] = entry.negative_prompt
            kwargs["generator"] = _generator(entry.seed if entry.seed is not None else seed)
            with context:
                images[entry.name] = _output_images(self(entry.prompt, **kwargs))[0]
        return images

    def sweep(
        self,
        prompt: str | None,
        strengths: Sequence[StrengthValue],
        *,
        adapter_names: str | Sequence[str] | None = None,
        seed: int = 0,
        one_pass: bool = True,
        slider_start: float = 0.0,
        calibrated: bool | StrengthMap | Mapping[str, StrengthMap] = False,
        **call_kwargs: Any,
    ) -> list[Any]:
        """
        Generates one prompt with one seed at several strengths, by default in one batched pipeline call.

        With `one_pass=True` the pipeline runs once with a batch of `len(strengths)` images, each from the same
        initial noise (one CPU generator per image, all seeded `seed`), and each sample of the denoiser's batch gets
        its own strength (both halves of a classifier-free-guidance batch included). The images match
        `one_pass=False` (one `generate_at` call per strength) up to float rounding: a batched matmul and a
        per-sample factor round differently (max abs difference below 1e-4 on float32 [0, 1] images in our tests; in
        bfloat16 a strength is also rounded to 3 significant digits). Per-sample strengths need plain LoRA, LoKr or
        LoHa sliders (not DoRA).

        Args:
            prompt (`str`, *optional*):
                The prompt (`None` with `prompt_embeds=` in `call_kwargs`).
            strengths (`list[float]` or `list[dict[str, float]]`):
                The strengths, one image each, such as `[-2, -1, 0, 1, 2]`; mappings (the same adapter names in each)
                move several sliders together.
            adapter_names (`str` or `list[str]`, *optional*):
                The sliders numbers apply to (see the class docstring).
            seed (`int`, *optional*, defaults to `0`):
                The seed of every image.
            one_pass (`bool`, *optional*, defaults to `True`):
                One batched call; `False` makes one call per strength.
            slider_start (`float`, *optional*, defaults to `0.0`):
                Fraction of the denoising steps run at strength 0.
            calibrated (`bool`, `StrengthMap` or `dict[str, StrengthMap]`, *optional*, defaults to `False`):
                Read strengths as calibrated strengths (see [`~peft_slider.formats.StrengthMap`]): equal steps give
                equal steps of concept change. `True` uses the map `load_slider` read from each slider's file; a map,
                or one per adapter name, is used as given. Calibrated 0 is raw 0, the base model.
            **call_kwargs:
                Further pipeline arguments (not `generator` or `num_images_per_prompt`).

        Returns:
            `list[image]`: one image per strength, in order.

        Example:

        ```py
        >>> from peft_slider import SliderLoraConfig
        >>> from peft_slider.inference.pipeline import enable_sliders
        >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, tiny_call_kwargs
        >>> pipe = enable_sliders(build_tiny_pipeline("flux"))
        >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
        >>> images = pipe.sweep("a photo of a woman", [-2, -1, 0, 1, 2], slider_start=0.5, **tiny_call_kwargs("flux"))
        >>> [tuple(image.shape) for image in images][:2]
        [(3, 32, 32), (3, 32, 32)]

        ```
        """
        denoiser = denoiser_of(self)
        _no_argument(
            call_kwargs, ("generator", *_PER_PROMPT_ARGUMENTS), "sweep", "pass seed=; every strength gets one image."
        )
        prompt = _single_prompt(prompt, "sweep")
        checked = _check_sweep_strengths(strengths)
        names = _named_sliders(denoiser, adapter_names)
        seed = check_seed(seed)
        start = _check_slider_start(slider_start)
        if not isinstance(one_pass, bool):
            raise TypeError(f"`one_pass` must be True or False, got {one_pass!r}.")
        plans = [
            _calibrated_weights(denoiser, _resolve_weights(denoiser, value, names), calibrated) for value in checked
        ]

        if not one_pass:
            images = []
            for weights in plans:
                with _SliderCall(self, denoiser, weights=weights, slider_start=start):
                    output = self(prompt, generator=_generator(seed), **call_kwargs)
                images.append(_output_images(output)[0])
            return images

        count = len(plans)
        per_sample = {
            adapter: torch.tensor([weights[adapter] for weights in plans], dtype=torch.float32) for adapter in plans[0]
        }
        kwargs = dict(call_kwargs)
        parameters = _call_parameters(self)
        per_prompt = next((name for name in _PER_PROMPT_ARGUMENTS if name in parameters), None)
        if per_prompt is not None:
            kwargs[per_prompt] = count
            call_prompt: Any = prompt
        else:  # no per-prompt count: repeat the prompt (and a negative prompt) instead
            call_prompt = None if prompt is None else [prompt] * count
            if isinstance(kwargs.get("negative_prompt"), str):
                kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * count
        latents = kwargs.get("latents")
        if isinstance(latents, torch.Tensor):
            if latents.shape[0] != 1:
                raise ValueError(
                    f"`latents` for a sweep must hold one sample (leading dimension 1), got shape {tuple(latents.shape)}."
                )
            kwargs["latents"] = latents.repeat(count, *([1] * (latents.ndim - 1)))
        # One generator per image, all seeded alike: every image starts from the noise a single call would draw, and
        # stochastic schedulers draw each image's step noise from its own generator, as in the single calls.
        kwargs["generator"] = [_generator(seed) for _ in range(count)]
        with _SliderCall(self, denoiser, per_sample=per_sample, slider_start=start):
            output = self(call_prompt, **kwargs)
        images = list(_output_images(output))
        if len(images) != count:
            raise ValueError(
                f"{type(self).__name__} returned {len(images)} images for a sweep of {count} strengths; "
                "use one_pass=False with this pipeline."
            )
        return images

    def sweep_grid(
        self,
        prompts: str | Sequence[str],
        strengths: Sequence[StrengthValue],
        *,
        seeds: int | Sequence[int] = 0,
        adapter_names: str | Sequence[str] | None = None,
        one_pass: bool = True,
        slider_start: float = 0.0,
        calibrated: bool | StrengthMap | Mapping[str, StrengthMap] = False,
        title: str | None = None,
        path: str | None = None,
        **call_kwargs: Any,
    ) -> Image.Image:
        """
        A labelled grid of sweeps: strengths as columns, one row per prompt and seed. Saved as PNG if `path` is given.

        Args:
            prompts (`str` or `list[str]`):
                The prompt(s); each makes a row per seed.
            strengths (`list[float]` or `list[dict[str, float]]`):
                The strengths, one column each.
            seeds (`int` or `list[int]`, *optional*, defaults to `0`):
                The seed(s); several seeds make several rows per prompt.
            adapter_names, one_pass, slider_start, calibrated:
                As for [`~SliderPipelineMixin.sweep`].
            title (`str`, *optional*):
                A line of text above the grid.
            path (`str`, *optional*):
                Where to save the PNG (see [`~peft_slider.inference.grid.save_sweep_grid`]).
            **call_kwargs:
                Further pipeline arguments.

        Returns:
            `PIL.Image.Image`: the grid.

        Example:

        ```py
        >>> from peft_slider import SliderLoraConfig
        >>> from peft_slider.inference.pipeline import enable_sliders
        >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline, tiny_call_kwargs
        >>> pipe = enable_sliders(build_tiny_pipeline("sd15"))
        >>> pipe.unet.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
        >>> grid = pipe.sweep_grid(["a photo of a woman", "a photo of a man"], [-1, 0, 1], **tiny_call_kwargs("sd15"))
        >>> grid.width > 3 * 32, grid.height > 2 * 32
        (True, True)

        ```
        """
        from .grid import format_strength, make_sweep_grid, save_sweep_grid

        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompt_list or not all(isinstance(p, str) and p for p in prompt_list):
            raise ValueError(f"`prompts` must be a prompt or a non-empty list of prompts, got {prompts!r}.")
        seed_list = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if isinstance(seed_list, (str, bytes)) or not isinstance(seed_list, Sequence) or not seed_list:
            raise ValueError(f"`seeds` must be a seed or a non-empty list of seeds, got {seeds!r}.")
        seed_list = [check_seed(s, argument="seeds") for s in seed_list]
        checked = _check_sweep_strengths(strengths)

        rows, labels = [], []
        for prompt in prompt_list:
            for seed in seed_list:
                rows.append(
                    self.sweep(
                        prompt,
                        checked,
                        adapter_names=adapter_names,
                        seed=seed,
                        one_pass=one_pass,
                        slider_start=slider_start,
                        calibrated=calibrated,
                        **call_kwargs,
                    )
                )
                if len(seed_list) == 1:
                    labels.append(prompt)
                elif len(prompt_list) == 1:
                    labels.append(f"seed {seed}")
                else:
                    labels.append(f"{prompt} | seed {seed}")
        grid = make_sweep_grid(
            rows, row_labels=labels, column_labels=[format_strength(s) for s in checked], title=title
        )
        if path is not None:
            save_sweep_grid(grid, path)
        return grid


_SLIDER_CLASSES: dict[type, type] = {}


def enable_sliders(pipe: Any) -> Any:
    """
    Adds [`SliderPipelineMixin`]'s methods to an existing pipeline, in place, and returns it.

    The pipeline's class becomes a subclass of its class and the mixin, named like its class, so `isinstance` checks,
    `__call__` and `save_pretrained` (which records the class name in model_index.json) behave as before. Calling it
    again is a no-op.

    Args:
        pipe (`diffusers.DiffusionPipeline`):
            A pipeline whose denoiser (`transformer` or `unet`) carries, or will carry, PEFT adapters.

    Returns:
        The same pipeline object.

    Example:

    ```py
    >>> from diffusers import FluxPipeline
    >>> from peft_slider.inference.pipeline import SliderPipelineMixin, enable_sliders
    >>> from peft_slider.testing.tiny_pipelines import build_tiny_pipeline
    >>> pipe = enable_sliders(build_tiny_pipeline("flux"))
    >>> isinstance(pipe, FluxPipeline), isinstance(pipe, SliderPipelineMixin), type(pipe).__name__
    (True, True, 'FluxPipeline')

    ```
    """
    if isinstance(pipe, SliderPipelineMixin):
        return pipe
    denoiser_of(pipe)  # a clear error for objects that are not pipelines with a denoiser
    cls = type(pipe)
    slider_cls = _SLIDER_CLASSES.get(cls)
    if slider_cls is None:
        slider_cls = type(cls.__name__, (SliderPipelineMixin, cls), {"__module__": __name__, "__doc__": cls.__doc__})
        _SLIDER_CLASSES[cls] = slider_cls
    pipe.__class__ = slider_cls
    return pipe
