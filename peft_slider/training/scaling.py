# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Signed slider strength: scale the slider adapters of a PEFT model for a while, then restore them exactly.

A slider is an adapter trained as a signed direction: at strength `s` its delta is multiplied by `s`, so `+s` adds a
concept, `-s` removes it and `0` gives the base model. Strength is applied through the `scaling` dict that PEFT's LoRA,
LoKr and LoHa layers multiply their delta by (`lora_alpha / r` after loading). Three rules:

- Absolute, never compounding: the scales are read once ("reference") and `set(s)` writes `reference * s`.
- Restored from a snapshot, never undone by division, so `0` and negative strengths restore exactly.
- Only the slider adapters are scaled: frozen adapters beside them (an "assistant" training adapter for distilled
  models) keep their scale.

Blocks (`SliderScaler.at`, `slider_strength`) may nest and may close in any order: the scales are always those the
blocks still open give, and when the last one closes, exactly the ones found before the first. While a block is open
its thread holds the model: another thread's blocks, `set`, `restore`, `activate_adapters` and `freeze_adapter` on the
same model raise a RuntimeError (PEFT layers have one scale for all threads), and merging adapters (`merge_adapter`,
`merge_and_unload`, `fuse_lora`) raises in every thread. Strengths beyond `MAX_STRENGTH` (1000) are refused.

A 1-D tensor gives one strength per batch element, so a single forward pass can carry positive, negative and neutral
samples (or one prompt at several strengths). Only torch and PEFT are imported.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.lycoris_utils import LycorisLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..utils.checks import check_finite, is_finite_number, is_real_number
from .adapters import (
    active_adapter_names,
    check_adapter_names,
    check_not_held_elsewhere,
    hold_layers,
    layer_holds,
    named_tuner_layers,
    release_layers,
    trainability_of,
)

__all__ = ["MAX_STRENGTH", "SliderScaler", "Strength", "slider_strength"]

MAX_STRENGTH = 1000.0
"""The largest strength magnitude accepted. Sliders are used in [-5, 5]; far beyond, the slider's delta outweighs the
model's own activations, which then overflow (a strength of 1e20 gives NaN images in float32, far less in float16)."""

#: A strength: one number for every slider, a 1-D tensor (or list) of per-sample strengths, or a dict giving either
#: per adapter name (adapters not in the dict keep their reference scale).
Strength = float | torch.Tensor | Sequence[float] | Mapping[str, float | torch.Tensor | Sequence[float]]

# Keyword arguments that carry the batch in diffusers and transformers models, in order of preference.
_BATCH_ARGUMENTS = ("hidden_states", "sample", "x", "input", "inputs_embeds", "input_ids")
# Instance attribute holding the per-sample factors of LoKr/LoHa layers (see `_add_delta_factor`).
_DELTA_FACTORS = "_peft_slider_delta_factors"
_scaler_ids = itertools.count()


def _beyond_bound(value: Any, adapter: str) -> ValueError:
    return ValueError(
        f"`strength` for adapter {adapter!r} is {value!r}, but a slider strength must have a magnitude at most "
        f"{MAX_STRENGTH:g} (peft_slider.training.scaling.MAX_STRENGTH): beyond it the slider's delta outweighs the model's own "
        "activations and the output overflows to NaN. Pass a strength in [-1000, 1000]; sliders are used in [-5, 5]."
    )


def _check_strength(value: Any, adapter: str) -> float | torch.Tensor:
    """Returns `value` as a float, or as a detached 1-D floating tensor of per-sample strengths, each finite and of
    magnitude at most `MAX_STRENGTH`."""
    if isinstance(value, (list, tuple)):
        if not value or not all(is_real_number(v) for v in value):
            raise ValueError(
                f"Per-sample `strength` for adapter {adapter!r} must be a non-empty list of real numbers, "
                f"got {value!r}."
            )
        value = torch.tensor([float(v) for v in value], dtype=torch.get_default_dtype())
    if isinstance(value, torch.Tensor):
        if value.ndim != 1 or not value.is_floating_point() or value.numel() == 0:
            raise ValueError(
                f"Per-sample `strength` for adapter {adapter!r} must be a non-empty 1-D floating-point tensor, got "
                f"shape {tuple(value.shape)} and dtype {value.dtype}; for one strength pass a Python float."
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"Per-sample `strength` for adapter {adapter!r} must be finite, got {value.tolist()}.")
        if bool((value.abs() > MAX_STRENGTH).any()):
            raise _beyond_bound(value.tolist(), adapter)
        # Strengths are settings, not learnable: keep them out of the autograd graph.
        return value.detach()
    if is_finite_number(value) and abs(value) > MAX_STRENGTH:  # an int may be too large for a float
        raise _beyond_bound(value, adapter)
    return check_finite(
        value,
        argument=f"`strength` for adapter {adapter!r}",
        expected="a finite real number (or a 1-D tensor of per-sample strengths)",
    )


def _resolve_adapter_names(
    model: nn.Module, adapter_names: str | Sequence[str] | None, layers: Sequence[BaseTunerLayer]
) -> list[str]:
    trainability = trainability_of(layers)  # one pass over the layers already collected: this runs per scaler
    if adapter_names is not None:
        return check_adapter_names(model, adapter_names, "adapter_names", known=list(trainability))
    model_name = type(model).__name__
    trainable = sorted(name for name, is_trainable in trainability.items() if is_trainable)
    if trainable:
        return trainable
    if not trainability:
        raise ValueError(
            f"No slider adapter found in {model_name}: it has no LoRA, LoKr or LoHa adapter. Add one first "
            "(get_peft_model, model.add_adapter or pipe.load_lora_weights)."
        )
    active = active_adapter_names(model)
    # At inference nothing is trainable; a single active adapter is unambiguous, several are not (one may be a
    # frozen assistant, which must not be scaled).
    if len(active) == 1:
        return active
    raise ValueError(
        f"No slider adapter found in {model_name}: no adapter has trainable parameters and the active adapters are "
        f"{active}. Pass adapter_names=[...] to name the slider(s)."
    )


def _add_delta_factor(layer: LycorisLayer, key: int, factor: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    """Multiplies the deltas of a LoKr/LoHa layer by `factor(adapter, delta)` until `_remove_delta_factor`.

    LoKr and LoHa add each adapter's delta inside the layer's forward, with no submodule to hook, so the layer's
    `_get_delta_activations` (called once per active adapter) is wrapped on the instance. One wrapper serves all
    scalers, keyed by scaler, so they may be removed in any order.
    """
    factors = layer.__dict__.get(_DELTA_FACTORS)
    if factors is None:
        factors = {}
        original = layer._get_delta_activations

        def delta_activations(adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            delta = original(adapter_name, x, *args, **kwargs)
            for fn in list(factors.values()):
                delta = fn(adapter_name, delta)
            return delta

        layer.__dict__[_DELTA_FACTORS] = factors
        layer.__dict__["_get_delta_activations"] = delta_activations
    factors[key] = factor


def _remove_delta_factor(layer: LycorisLayer, key: int) -> None:
    factors = layer.__dict__.get(_DELTA_FACTORS)
    if factors is None:
        return
    factors.pop(key, None)
    if not factors:
        del layer.__dict__[_DELTA_FACTORS]
        del layer.__dict__["_get_delta_activations"]


def _batch_tensor(args: tuple, kwargs: dict) -> tuple[str, torch.Tensor] | None:
    if args and isinstance(args[0], torch.Tensor):
        return "the first positional argument", args[0]
    for name in _BATCH_ARGUMENTS:
        if isinstance(kwargs.get(name), torch.Tensor):
            return f"`{name}`", kwargs[name]
    for i, value in enumerate(args):
        if isinstance(value, torch.Tensor):
            return f"positional argument {i}", value
    for name, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return f"`{name}`", value
    return None


class _Block:
    """One open `at` / `slider_strength` block: the strength it gives each slot of its scaler, and what it found.

    `relative` blocks (`slider_strength`) multiply the scale below them; the others (`SliderScaler.at`) set the
    scaler's reference times the strength, whatever is below.
    """

    __slots__ = ("factors", "relative", "saved", "saved_per_sample", "scaler", "sequence")

    def __init__(self, scaler: SliderScaler, factors: dict[str, float], relative: bool) -> None:
        self.sequence = next(_sequence)
        self.scaler = scaler
        self.factors = factors
        self.relative = relative
        self.saved: list[Any] = []
        self.saved_per_sample: dict[str, torch.Tensor] = scaler._per_sample

    def value(self, index: int, below: Any) -> Any:
        _, adapter, reference = self.scaler._slots[index]
        return (below if self.relative else reference) * self.factors[adapter]


# (id of a layer's `scaling` dict, adapter) -> the open blocks that set that scale, oldest first, each with the slot's
# index in its scaler. Blocks may close in any order: closing one hands what it found to the block opened right after
# it on the slot, and the scale becomes what the blocks still open give, as if the closed one had never been entered.
_BLOCKS: dict[tuple[int, str], list[tuple[_Block, int]]] = {}
_BLOCKS_LOCK = threading.Lock()
# Open pipeline slider calls, oldest first: (sequence number, {id(a layer's scaling dict): the call's saved copy}). A
# block that closes while a call opened after it is still open (from a step callback) hands what it restores to that
# call's snapshot instead of the live scale, which the call owns until it ends.
_OPEN_CALLS: list[tuple[int, dict[int, dict]]] = []
_sequence = itertools.count()  # orders blocks and calls


def open_call(snapshot: Iterable[tuple[dict, dict]]) -> tuple[int, dict[int, dict]]:
    """Registers a pipeline slider call's snapshot of `(live scaling dict, saved copy)` pairs (see `_OPEN_CALLS`);
    the saved copies may be updated in place until `close_call`. Used by `peft_slider.inference.pipeline`."""
    call = (next(_sequence), {id(live): saved for live, saved in snapshot})
    with _BLOCKS_LOCK:
        _OPEN_CALLS.append(call)
    return call


def close_call(call: tuple[int, dict[int, dict]]) -> None:
    """Unregisters a call registered by `open_call`."""
    with _BLOCKS_LOCK:
        _OPEN_CALLS[:] = [c for c in _OPEN_CALLS if c is not call]


def _hand_to_call(calls: list[dict[int, dict]], scaling: dict, adapter: str, value: Any) -> bool:
    """Writes `value` into the snapshot of the oldest of `calls` that saved this scale; whether one did."""
    for snapshots in calls:
        saved = snapshots.get(id(scaling))
        if saved is not None and adapter in saved:
            saved[adapter] = value
            return True
    return False


class SliderScaler:
    """
    Sets the signed strength of the slider adapters of a model, cheaply and exactly reversibly.

    The tuner layers and reference scales are collected once, so switching strength is a few hundred dict writes
    (well under a millisecond on a FLUX.1-size model). `set(s)` makes every slider scale `reference * s`, whatever was
    set before; `restore()` writes the references back; `at(s)` is a context manager that sets `s` and on exit (also
    on an exception) writes back exactly the values it found.

    Which adapters: `adapter_names`, or by default the slider adapters, i.e. those with a trainable parameter, so a
    frozen assistant adapter is left alone during training. If none is trainable (inference), the single active
    adapter is used; with several active adapters `adapter_names` is required. Note that diffusers'
    `load_lora_weights` / `load_lora_adapter` leave every loaded adapter trainable (`requires_grad=True`), so at
    inference name the sliders with `adapter_names`, and freeze an assistant
    ([`~peft_slider.training.adapters.freeze_adapter`]).

    Per-sample strengths (a 1-D tensor, one entry per batch element) keep the slider scales at the reference and
    multiply each slider delta by the sample's strength through hooks, so sample `b` gets the output of a pass at
    strength `s[b]` (up to float rounding). Sliders may be LoRA (plain, not DoRA or other variants), LoKr or LoHa.
    The layers must see the batch on their leading dimension; a leading dimension `k * B` is read as `k` consecutive
    rows per sample (frames folded into the batch). The model's own forward checks that its batch has one strength
    per sample: with classifier-free guidance, repeat the strengths the way the batch is built, e.g.
    `torch.cat([s, s])` for `[uncond, cond]`. The factor is cast to the layer's dtype (in bf16, 0.3 becomes 0.30078).

    Scales are captured by autograd at forward time, but with gradient checkpointing the forward is run again during
    backward: call `backward()` inside `at(...)` so both passes use the same strength.

    Blocks and threads: `at(...)` blocks (of this or other scalers, and `slider_strength` blocks) may close in any
    order; the scales are then those of the blocks still open, and the last to close restores exactly what the first
    found. An open block holds the model for its thread: from another thread, blocks, `set` and `restore` on the same
    model raise a RuntimeError; use one model per thread or run the blocks one after another. Merging adapters while
    a block is open raises (the merged weights would keep the block's strength). `set` and `restore` outside a block
    are plain writes: `restore` refuses while an adapter is merged at another scale than its reference.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (a diffusers model after `add_adapter` or
            `load_lora_weights`).
        adapter_names (`str` or `list[str]`, *optional*):
            The adapters to scale. Defaults to the trainable adapters, or the single active adapter (see above).

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.scaling import SliderScaler
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = LoraConfig(r=4, lora_alpha=4, target_modules=["0"], init_lora_weights=False)
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), config)
    >>> x = torch.randn(2, 8)
    >>> scaler = SliderScaler(model)
    >>> with scaler.at(-1.5):
    ...     negative = model(x)
    >>> with scaler.at(torch.tensor([1.0, -1.5])):  # one pass, one strength per sample
    ...     mixed = model(x)
    >>> torch.testing.assert_close(mixed[1], negative[1])
    >>> model.base_model.model[0].scaling  # restored
    {'default': 1.0}

    ```
    """

    def __init__(self, model: nn.Module, *, adapter_names: str | Sequence[str] | None = None) -> None:
        tuner_layers = list(named_tuner_layers(model))
        names = _resolve_adapter_names(model, adapter_names, [layer for _, layer in tuner_layers])
        entries: list[tuple[str, BaseTunerLayer, str]] = []
        for module_name, module in tuner_layers:
            for adapter in names:
                if not layer_holds(module, adapter):
                    continue
                scaling = getattr(module, "scaling", None)
                if not isinstance(module, (LoraLayer, LycorisLayer)) or not isinstance(scaling, dict):
                    raise ValueError(
                        f"Adapter {adapter!r} in {module_name!r} is a {type(module).__name__}, which has no scale; "
                        "slider strength supports LoRA, LoKr and LoHa adapters."
                    )
                entries.append((module_name, module, adapter))
        self.model = model
        #: The adapters this scaler scales.
        self.adapter_names: tuple[str, ...] = tuple(names)
        self._entries = entries
        self._layers = list({id(layer): layer for _, layer, _ in entries}.values())
        # A block holds every adapter layer of the model (see `peft_slider.training.adapters._hold_layers`).
        self._all_layers = [layer for _, layer in tuner_layers]
        self._open: list[_Block] = []  # this scaler's open blocks, oldest first
        self._slots: list[tuple[dict, str, Any]] = []
        self.refresh()
        self._id = next(_scaler_ids)
        self._per_sample: dict[str, torch.Tensor] = {}
        self._factor_cache: dict[tuple, torch.Tensor] = {}
        self._hooked: frozenset[str] = frozenset()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._delta_layers: list[LycorisLayer] = []
        self._per_sample_checked: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(adapter_names={list(self.adapter_names)}, layers={len(self._layers)})"

    def refresh(self) -> None:
        """
        Reads the current scales as the new reference.

        Call it after changing scales by other means (for example diffusers' `set_adapters(..., weights=...)`),
        which `set` and `restore` would otherwise overwrite.

        Example:

        ```py
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from peft_slider.training.scaling import SliderScaler
        >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
        >>> scaler = SliderScaler(model)
        >>> model.base_model.model[0].set_scale("default", 0.5)
        >>> scaler.refresh()
        >>> scaler.set(2.0)
        >>> model.base_model.model[0].scaling
        {'default': 1.0}

        ```
        """
        self._slots = [(layer.scaling, adapter, layer.scaling[adapter]) for _, layer, adapter in self._entries]
        self._keys = [(id(scaling), adapter) for scaling, adapter, _ in self._slots]  # the slots' keys in `_BLOCKS`

    def _check_not_merged(self) -> None:
        if not any(layer.merged_adapters for layer in self._layers):
            return
        for module_name, layer, adapter in self._entries:
            if adapter in layer.merged_adapters:
                raise ValueError(
                    f"Adapter {adapter!r} is merged into the base weights of {module_name!r}, so its strength cannot "
                    "change; unmerge it first (`model.unmerge_adapter()` or diffusers' `unfuse_lora()`)."
                )

    def _check_per_sample_supported(self, adapters: Sequence[str]) -> None:
        for module_name, layer, adapter in self._entries:
            if adapter not in adapters or adapter in self._per_sample_checked:
                continue
            if isinstance(layer, LoraLayer):
                reason = None
                if adapter in getattr(layer, "lora_variant", {}):
                    reason = f"it uses the LoRA variant {type(layer.lora_variant[adapter]).__name__}"
                elif adapter not in layer.lora_B:
                    reason = f"{type(layer).__name__} layers have no `lora_B` module to hook"
                if reason is not None:
                    raise ValueError(
                        f"Per-sample strengths are not supported for adapter {adapter!r} in {module_name!r}: "
                        f"{reason}. Use a float strength and one forward pass per strength."
                    )
        self._per_sample_checked.update(adapters)

    def _parse(self, strength: Strength) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        if (type(strength) is float or type(strength) is int) and -MAX_STRENGTH <= strength <= MAX_STRENGTH:
            return dict.fromkeys(self.adapter_names, strength), {}  # the common case: one number for every slider
        if isinstance(strength, Mapping):
            for name in strength:
                if name not in self.adapter_names:
                    raise ValueError(
                        f"`strength` names adapter {name!r}, which this scaler does not scale; it scales "
                        f"{list(self.adapter_names)}. Build it with adapter_names=[...] to include {name!r}."
                    )
            items = list(strength.items())
        else:
            items = [(name, strength) for name in self.adapter_names]
        scalars = dict.fromkeys(self.adapter_names, 1.0)
        per_sample: dict[str, torch.Tensor] = {}
        for name, value in items:
            checked = _check_strength(value, name)
            if isinstance(checked, torch.Tensor):
                per_sample[name] = checked
            else:
                scalars[name] = checked
        lengths = {name: tensor.numel() for name, tensor in per_sample.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Per-sample strengths must have one length, the batch size; got lengths {lengths}.")
        return scalars, per_sample

    def set(self, strength: Strength) -> None:
        """
        Sets every slider scale to its reference times `strength` (absolute: repeated calls never compound).

        Args:
            strength (`float`, `torch.Tensor`, `list[float]` or `dict[str, ...]`):
                A finite number of magnitude at most `MAX_STRENGTH` (1000) for all sliders; a 1-D floating tensor
                (or list) of per-sample strengths, one per batch element; or a dict from adapter name to either, to
                give several sliders different strengths (sliders not in the dict get their reference scale). Nothing
                changes if it is invalid.

        Example:

        ```py
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from peft_slider.training.scaling import SliderScaler
        >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
        >>> scaler = SliderScaler(model)
        >>> scaler.set(-2.0)
        >>> scaler.set(-2.0)
        >>> model.base_model.model[0].scaling
        {'default': -2.0}
        >>> scaler.restore()
        >>> model.base_model.model[0].scaling
        {'default': 1.0}

        ```
        """
        check_not_held_elsewhere(self._layers, "set a slider strength")
        if (type(strength) is float or type(strength) is int) and -MAX_STRENGTH <= strength <= MAX_STRENGTH:
            # Fast path for the common case: one number for every slider.
            self._check_not_merged()
            for scaling, adapter, reference in self._slots:
                scaling[adapter] = reference * strength
            if self._per_sample:
                self._set_per_sample({})
            return
        scalars, per_sample = self._parse(strength)
        self._check_not_merged()
        if per_sample:
            self._check_per_sample_supported(list(per_sample))
        for scaling, adapter, reference in self._slots:
            scaling[adapter] = reference * scalars[adapter]
        if per_sample or self._per_sample:
            self._set_per_sample(per_sample)

    def restore(self) -> None:
        """
        Writes the reference scales back exactly and removes any per-sample hooks.

        Example:

        ```py
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from peft_slider.training.scaling import SliderScaler
        >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
        >>> scaler = SliderScaler(model)
        >>> scaler.set(0.0)
        >>> scaler.restore()
        >>> model.base_model.model[0].scaling
        {'default': 1.0}

        ```
        """
        check_not_held_elsewhere(self._layers, "restore slider scales")
        if any(layer.merged_adapters for layer in self._layers):
            for (module_name, layer, adapter), (scaling, _, reference) in zip(self._entries, self._slots):
                if adapter in layer.merged_adapters and scaling[adapter] != reference:
                    raise ValueError(
                        f"Adapter {adapter!r} was merged into the weights of {module_name!r} at scale "
                        f"{scaling[adapter]!r}; restoring its scale to {reference!r} now would leave the base weights "
                        "changed after unmerging. Unmerge it first (`model.unmerge_adapter()` or diffusers' "
                        "`unfuse_lora()`), then restore()."
                    )
        for scaling, adapter, reference in self._slots:
            scaling[adapter] = reference
        self._set_per_sample({})

    @contextlib.contextmanager
    def at(self, strength: Strength) -> Iterator[SliderScaler]:
        """
        Context manager: `set(strength)` on entry; on exit, also on an exception, the scales and per-sample hooks
        found on entry are put back exactly. Blocks closed out of order hand what they found to the block opened
        after them, so the last to close restores exactly what the first found (see the class docstring).

        Args:
            strength (`float`, `torch.Tensor`, `list[float]` or `dict[str, ...]`):
                As for [`~SliderScaler.set`].

        Example:

        ```py
        >>> import torch
        >>> from peft import LoraConfig, get_peft_model
        >>> from peft_slider.training.scaling import SliderScaler
        >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
        >>> scaler = SliderScaler(model)
        >>> with scaler.at(0.0):
        ...     model.base_model.model[0].scaling
        {'default': 0.0}
        >>> model.base_model.model[0].scaling
        {'default': 1.0}

        ```
        """
        block = self._enter(strength, relative=False)
        try:
            yield self
        finally:
            self._exit(block)

    def _enter(self, strength: Strength, *, relative: bool) -> _Block:
        """Opens a block: checks everything, holds the model's layers, then sets the strength. Changes nothing if it
        raises."""
        scalars, per_sample = self._parse(strength)
        self._check_not_merged()
        if per_sample:
            self._check_per_sample_supported(list(per_sample))
        block = _Block(self, scalars, relative)
        hold_layers(self._all_layers, "apply a slider strength")
        try:
            saved = block.saved
            with _BLOCKS_LOCK:
                for index, ((scaling, adapter, reference), key) in enumerate(zip(self._slots, self._keys)):
                    below = scaling[adapter]
                    saved.append(below)
                    stack = _BLOCKS.get(key)
                    if stack is None:
                        _BLOCKS[key] = [(block, index)]
                    else:
                        stack.append((block, index))
                    scaling[adapter] = (below if relative else reference) * scalars[adapter]
            self._open.append(block)
            self._set_per_sample(per_sample)
        except BaseException:
            self._exit(block)
            raise
        return block

    def _exit(self, block: _Block) -> None:
        """Closes a block, in any order (see `_BLOCKS`); the last one to close leaves exactly what the first found."""
        try:
            with _BLOCKS_LOCK:
                calls = [snapshots for sequence, snapshots in _OPEN_CALLS if sequence > block.sequence]
                # zip stops at the slots `_enter` reached, should it have failed part way.
                for index, ((scaling, adapter, _), key, below) in enumerate(zip(self._slots, self._keys, block.saved)):
                    stack = _BLOCKS[key]
                    if len(stack) == 1:  # the only open block on this slot: the common case
                        del _BLOCKS[key]
                    else:
                        position = len(stack) - 1 if stack[-1][0] is block else stack.index((block, index))
                        del stack[position]
                        for later, later_index in stack[position:]:
                            later.saved[later_index] = below
                            below = later.value(later_index, below)
                    if calls and _hand_to_call(calls, scaling, adapter, below):
                        continue  # a call opened after this block owns the live scale until it ends
                    scaling[adapter] = below
            if block in self._open:
                position = self._open.index(block)
                del self._open[position]
                if position < len(self._open):  # a later block of this scaler is open: its per-sample strengths stay
                    self._open[position].saved_per_sample = block.saved_per_sample
                else:
                    self._set_per_sample(block.saved_per_sample)
            else:
                self._set_per_sample(block.saved_per_sample)
        finally:
            release_layers(self._all_layers)

    # Per-sample strengths.

    def _set_per_sample(self, per_sample: dict[str, torch.Tensor]) -> None:
        self._per_sample = per_sample
        self._factor_cache = {}
        if frozenset(per_sample) != self._hooked:
            self._remove_hooks()
            if per_sample:
                self._install_hooks(frozenset(per_sample))

    def _factor(self, adapter: str, output: torch.Tensor, where: str) -> torch.Tensor:
        key = (adapter, output.shape[:1], output.ndim, output.device, output.dtype)
        factor = self._factor_cache.get(key)
        if factor is None:
            strengths = self._per_sample[adapter]
            count = strengths.numel()
            leading = output.shape[0] if output.ndim else 0
            if leading == 0 or leading % count:
                raise ValueError(
                    f"Per-sample strengths for adapter {adapter!r} have {count} entries, but {where!r} has an output "
                    f"of shape {tuple(output.shape)} whose leading (batch) dimension is not a multiple of {count}. "
                    "Pass one strength per batch element."
                )
            factor = strengths.to(device=output.device, dtype=output.dtype)
            if leading != count:
                factor = factor.repeat_interleave(leading // count)
            factor = factor.view(-1, *([1] * (output.ndim - 1)))
            self._factor_cache[key] = factor
        return factor

    def _check_batch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                "Per-sample strengths cannot be combined with PEFT's mixed-adapter batches (`adapter_names=`)."
            )
        found = _batch_tensor(args, kwargs)
        if found is None:
            return
        where, tensor = found
        count = next(iter(self._per_sample.values())).numel()
        if tensor.ndim == 0 or tensor.shape[0] != count:
            raise ValueError(
                f"Per-sample strengths have {count} entries, but {type(module).__name__} was called with a batch of "
                f"{tensor.shape[0] if tensor.ndim else 0} ({where}, shape {tuple(tensor.shape)}). Pass one strength "
                "per batch element; with classifier-free guidance repeat them like the batch, e.g. torch.cat([s, s])."
            )

    def _install_hooks(self, adapters: frozenset[str]) -> None:
        handles = []
        delta_layers = {}
        for module_name, layer, adapter in self._entries:
            if adapter not in adapters:
                continue
            if isinstance(layer, LoraLayer):
                # The LoRA delta is `lora_B(lora_A(dropout(x))) * scaling`: scaling lora_B's output per sample is
                # exact, and leaves other adapters of the layer (an assistant) alone.
                def hook(module, args, output, adapter=adapter, where=module_name):
                    return output * self._factor(adapter, output, where)

                handles.append(layer.lora_B[adapter].register_forward_hook(hook))
            else:
                delta_layers[id(layer)] = (module_name, layer)
        for module_name, layer in delta_layers.values():

            def factor(adapter, delta, where=module_name):
                if adapter not in self._per_sample:
                    return delta
                return delta * self._factor(adapter, delta, where)

            _add_delta_factor(layer, self._id, factor)
        handles.append(self.model.register_forward_pre_hook(self._check_batch, with_kwargs=True))
        self._handles = handles
        self._delta_layers = [layer for _, layer in delta_layers.values()]
        self._hooked = adapters

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        for layer in self._delta_layers:
            _remove_delta_factor(layer, self._id)
        self._handles = []
        self._delta_layers = []
        self._hooked = frozenset()


@contextlib.contextmanager
def slider_strength(
    model: nn.Module, strength: Strength, *, adapter_names: str | Sequence[str] | None = None
) -> Iterator[SliderScaler]:
    """
    Context manager: multiplies the current scale of the slider adapter(s) by `strength`, and on exit (also on an
    exception) restores the exact previous values.

    Nested blocks multiply (inside `slider_strength(m, 2)` and `slider_strength(m, -3)` the scale is `-6` times the
    original). Blocks may close in any order: if the outer one closes first, the scale becomes `-3` times the
    original, and when both are closed it is exactly the original. While the block is open, another thread cannot
    change the model's adapters and merging raises (see [`SliderScaler`]). Builds a [`SliderScaler`] on every call;
    keep one `SliderScaler` when switching often.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).
        strength (`float`, `torch.Tensor`, `list[float]` or `dict[str, ...]`):
            As for [`SliderScaler.set`]: a number, per-sample strengths, or a dict per adapter name.
        adapter_names (`str` or `list[str]`, *optional*):
            The adapters to scale; defaults as for [`SliderScaler`].

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.scaling import slider_strength
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
    >>> with slider_strength(model, -1.0):
    ...     model.base_model.model[0].scaling
    {'default': -1.0}
    >>> model.base_model.model[0].scaling
    {'default': 1.0}

    ```
    """
    scaler = SliderScaler(model, adapter_names=adapter_names)
    block = scaler._enter(strength, relative=True)
    try:
        yield scaler
    finally:
        scaler._exit(block)
