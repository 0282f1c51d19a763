# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Which adapters of a model are sliders, and frozen "assistant" adapters that run beside them.

A slider is the adapter being trained: it has trainable parameters. An assistant is an adapter loaded beside it,
frozen and always on, for example the training adapter that lets a few-step distilled model (Z-Image Turbo,
FLUX.1-schnell) be fine-tuned without losing its distillation. The assistant must never be scaled by the slider's
strength and never trained; the helpers here freeze it and keep it frozen when adapters are (re)activated,
because PEFT's `set_adapter` makes every adapter it activates trainable. Loading one from a file or a config is
[`~peft_slider.formats.assistants.add_assistant_adapter`].

Works for a [`~peft.PeftModel`] and for a model that carries adapters directly (a diffusers model after
`model.add_adapter(config, adapter_name=...)` or `pipe.load_lora_weights(...)`, or any module after
[`~peft.inject_adapter_in_model`]). Only torch and PEFT are imported.

While a slider block ([`~peft_slider.training.scaling.slider_strength`], `SliderScaler.at`, a pipeline slider call)
is open on a model, its thread holds the model's adapter layers: [`activate_adapters`], [`freeze_adapter`] and
[`~peft_slider.formats.assistants.add_assistant_adapter`] from another thread raise a RuntimeError, and merging
adapters raises in every thread.
"""

from __future__ import annotations

import copy
import inspect
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

__all__ = [
    "activate_adapters",
    "active_adapter_names",
    "adapter_names",
    "freeze_adapter",
    "frozen_adapter_names",
    "slider_adapter_names",
]


def named_tuner_layers(model: nn.Module) -> Iterator[tuple[str, BaseTunerLayer]]:
    """Yields (module name, layer) for every PEFT tuner layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


# Holding a model's adapter layers. A PEFT layer has one scale and one set of active adapters for every thread, so
# while a slider block (a `SliderScaler.at` / `slider_strength` block, or a pipeline slider call) has changed them,
# the block's thread holds the layers: the same thread may nest blocks, another thread's changes raise, and merging
# (which would bake the block's strength into the base weights) raises in every thread.
_HOLD_LOCK = threading.Lock()
# id(layer) -> [holding thread ident, thread name, open blocks, of which pipeline slider calls]; a layer is here only
# while a block holds it.
_HOLDS: dict[int, list] = {}


# What a held layer's scales were before its last `scale_layer` call (see `_StandIn`).
_SCALED_FROM = "_peft_slider_scaled_from"
# The tuner-layer methods a hold shadows with instance attributes.
_HELD_METHODS = ("merge", "scale_layer", "unscale_layer")


class _StandIn:
    """Stands in for one method of a held tuner layer, as an instance attribute that shadows the class's method.

    `merge` refuses: the merged weights would keep the block's strength. diffusers' `fuse_lora(lora_scale=s)` scales a
    layer just before merging it, so `scale_layer` notes the scales it changes (and `unscale_layer` forgets them), and
    a refused merge puts them back exactly. On a layer that is not held, every stand-in is the class's method: a deep
    copy made during a block copies the stand-ins, rebound here to the copy.
    """

    __slots__ = ("_method", "_ref")

    def __init__(self, ref: weakref.ref, method: str) -> None:
        self._ref = ref  # weak: the stand-ins are cached per layer and must not keep a model alive
        self._method = method

    @property
    def __signature__(self) -> inspect.Signature:
        # The class method's: diffusers' fuse_lora inspects `merge` for `adapter_names`.
        layer = self._ref()
        return inspect.signature(getattr(type(layer), self._method).__get__(layer))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        layer = self._ref()
        if id(layer) in _HOLDS:
            if self._method == "merge":
                scaled_from = layer.__dict__.pop(_SCALED_FROM, None)
                if scaled_from is not None:
                    layer.scaling.update(scaled_from)
                raise RuntimeError(
                    f"Cannot merge adapters into {type(layer).__name__} while a slider strength is applied to its "
                    "model (an open `slider_strength` / `SliderScaler.at` block, or a pipeline slider call): the "
                    "merged weights would keep that strength after the block, and unmerging later would leave the "
                    "base weights changed. Merge or fuse after the block; to fuse a slider at a strength, call "
                    "pipe.fuse_lora(lora_scale=s, adapter_names=[...]) outside any block."
                )
            if self._method == "scale_layer":
                layer.__dict__[_SCALED_FROM] = dict(layer.scaling)
            else:
                layer.__dict__.pop(_SCALED_FROM, None)
        return getattr(type(layer), self._method)(layer, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _StandIn:
        copy = memo.get(id(self._ref()))  # deepcopy records the layer's copy before copying its attributes
        return self if copy is None else _StandIn(weakref.ref(copy), self._method)


# id(layer) -> the stand-ins for one layer, made once (blocks open and close often) and dropped with the layer.
_STAND_INS: dict[int, dict[str, _StandIn]] = {}


def _stand_ins(layer: BaseTunerLayer) -> dict[str, _StandIn]:
    key = id(layer)
    stand_ins = _STAND_INS.get(key)
    if stand_ins is None or stand_ins["merge"]._ref() is not layer:
        ref = weakref.ref(layer, lambda _, key=key: _STAND_INS.pop(key, None))
        stand_ins = {method: _StandIn(ref, method) for method in _HELD_METHODS}
        _STAND_INS[key] = stand_ins
    return stand_ins


def hold_layers(layers: Sequence[BaseTunerLayer], what: str, *, call: bool = False) -> None:
    """Marks `layers` held by the calling thread for one more block (`call=True`: a pipeline slider call); RuntimeError
    if another thread holds them, or if a strength block would open inside a pipeline slider call."""
    me, name = threading.get_ident(), threading.current_thread().name
    with _HOLD_LOCK:
        for done, layer in enumerate(layers):
            hold = _HOLDS.get(id(layer))
            if hold is None:
                _HOLDS[id(layer)] = [me, name, 1, int(call)]
                # Instance attributes shadow the class's methods until the last block holding the layer closes.
                layer.__dict__.update(_stand_ins(layer))
            elif hold[0] == me and (call or not hold[3]):
                hold[2] += 1
                hold[3] += call
            else:
                _release_held(layers[:done], call=call)  # one pass, undone on the rare conflict
                if hold[0] != me:
                    raise _held_error(hold, what)
                # The call restores the snapshot it took when it ends, which a block still open then would not expect.
                raise RuntimeError(
                    f"Cannot {what} inside a pipeline slider call (generate_at, generate_library, sweep), for example "
                    "from a step callback: the call puts back the adapters it found when it ends. Pass the strength "
                    "to the call (`strength=`, or a mapping per adapter), or open the block around the call."
                )


def release_layers(layers: Sequence[BaseTunerLayer], *, call: bool = False) -> None:
    """Ends one block (`call=True`: a pipeline slider call) of the calling thread's hold on `layers` (`hold_layers`)."""
    with _HOLD_LOCK:
        _release_held(layers, call=call)


def _release_held(layers: Sequence[BaseTunerLayer], *, call: bool = False) -> None:
    for layer in layers:
        hold = _HOLDS.get(id(layer))
        if hold is None:
            continue
        hold[2] -= 1
        hold[3] -= call
        if hold[2] == 0:
            del _HOLDS[id(layer)]
            for attribute in (*_HELD_METHODS, _SCALED_FROM):
                layer.__dict__.pop(attribute, None)


def check_not_held_elsewhere(layers: Iterable[BaseTunerLayer], what: str) -> None:
    """RuntimeError if another thread's block holds any of `layers`; free when no block is open anywhere."""
    if _HOLDS:
        with _HOLD_LOCK:
            _raise_if_held_elsewhere(layers, what, threading.get_ident())


def _raise_if_held_elsewhere(layers: Iterable[BaseTunerLayer], what: str, me: int) -> None:
    for layer in layers:
        hold = _HOLDS.get(id(layer))
        if hold is not None and hold[0] != me:
            raise _held_error(hold, what)


def _held_error(hold: list, what: str) -> RuntimeError:
    return RuntimeError(
        f"Cannot {what}: the model is held by a slider block in thread {hold[1]!r}. A PEFT layer has one scale and "
        "one set of active adapters for all threads, so one model cannot run two slider settings at once. Use one "
        "model copy per thread, or run the blocks one after another (for example under a threading.Lock)."
    )


def layer_holds(layer: BaseTunerLayer, adapter: str) -> bool:
    """Whether a tuner layer holds weights of `adapter` (a layer only holds the adapters whose targets it matched)."""
    return any(adapter in getattr(layer, attr, ()) for attr in layer.adapter_layer_names)


def adapter_layers(model: nn.Module, adapter: str) -> list[BaseTunerLayer]:
    """The tuner layers of `model` that hold `adapter`, in module order."""
    return [layer for _, layer in named_tuner_layers(model) if layer_holds(layer, adapter)]


def set_weight(layers: Iterable[BaseTunerLayer], adapter: str, weight: float) -> None:
    """Sets `adapter`'s weight in `layers` absolutely, as diffusers' `set_adapters` does per layer: PEFT's
    `set_scale` writes `weight * lora_alpha / r` whatever the current scale is."""
    for layer in layers:
        layer.set_scale(adapter, weight)


def _layer_adapter_params(layer: BaseTunerLayer) -> Iterator[tuple[str, nn.Parameter]]:
    """Yields (adapter name, parameter) for every adapter parameter a tuner layer holds."""
    for attr in layer.adapter_layer_names:
        container = getattr(layer, attr, None)
        if isinstance(container, nn.ModuleDict):
            for adapter, module in container.items():
                for param in module.parameters():
                    yield adapter, param
        elif isinstance(container, nn.ParameterDict):
            for adapter, param in container.items():
                yield adapter, param


class AdapterState:
    """An exact snapshot of every adapter layer of a model: scales, active adapters, `requires_grad`.

    `restore()` puts them back (never by division, so scales 0 and negative restore exactly). Adapters added after the
    snapshot are not removed by it; delete them first.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [layer for _, layer in named_tuner_layers(model)]
        self.scaling = [
            (layer.scaling, dict(layer.scaling))
            for layer in self.layers
            if isinstance(getattr(layer, "scaling", None), dict)
        ]
        self.active = [(layer, list(layer.active_adapters)) for layer in self.layers]
        self.requires_grad = [(p, p.requires_grad) for layer in self.layers for _, p in _layer_adapter_params(layer)]
        # A PeftModel's tuner keeps its own record of the active adapter(s) (used by save and merge).
        tuner = model.base_model if isinstance(model, PeftModel) else None
        self.tuner_active = (tuner, copy.copy(tuner.active_adapter)) if tuner is not None else None

    def restore_requires_grad(self) -> None:
        for parameter, flag in self.requires_grad:
            parameter.requires_grad_(flag)

    def restore(self) -> None:
        for layer, active in self.active:
            if list(layer.active_adapters) != active:
                layer.set_adapter(active)
        for live, saved in self.scaling:
            for adapter, value in saved.items():
                live[adapter] = value
        if self.tuner_active is not None:
            tuner, active = self.tuner_active
            tuner.active_adapter = active
        # PEFT's set_adapter makes the adapters it activates trainable; put the flags back.
        self.restore_requires_grad()


def adapter_trainability(model: nn.Module) -> dict[str, bool]:
    """Maps each adapter name, in the order first met, to whether any of its parameters requires grad."""
    return trainability_of(layer for _, layer in named_tuner_layers(model))


def trainability_of(layers: Iterable[BaseTunerLayer]) -> dict[str, bool]:
    """`adapter_trainability` over tuner layers already collected."""
    trainable: dict[str, bool] = {}
    for layer in layers:
        for adapter, param in _layer_adapter_params(layer):
            trainable[adapter] = trainable.get(adapter, False) or param.requires_grad
    return trainable


def adapter_names(model: nn.Module) -> list[str]:
    """
    Names of all adapters (of any PEFT tuner type) injected into `model`, sorted.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> adapter_names(model)
    ['default']

    ```
    """
    return sorted(adapter_trainability(model))


def slider_adapter_names(model: nn.Module) -> list[str]:
    """
    Names of the slider adapters of `model`: those with at least one trainable parameter (`requires_grad`), sorted.

    A frozen assistant adapter is never among them. Adapters loaded by diffusers (`load_lora_weights`,
    `load_lora_adapter`) are trainable until frozen, even when inactive.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import slider_adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> slider_adapter_names(model)
    ['default']

    ```
    """
    return sorted(name for name, trainable in adapter_trainability(model).items() if trainable)


def frozen_adapter_names(model: nn.Module) -> list[str]:
    """
    Names of the adapters of `model` with no trainable parameter, sorted.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import freeze_adapter, frozen_adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> freeze_adapter(model, "default")
    >>> frozen_adapter_names(model)
    ['default']

    ```
    """
    return sorted(name for name, trainable in adapter_trainability(model).items() if not trainable)


def active_adapter_names(model: nn.Module) -> list[str]:
    """
    Names of the adapters active in at least one tuner layer of `model`, in the order the layers list them.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import active_adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> active_adapter_names(model)
    ['default']

    ```
    """
    active: dict[str, None] = {}
    for _, layer in named_tuner_layers(model):
        for name in layer.active_adapters:
            active.setdefault(name, None)
    return list(active)


def _as_name_list(value: str | Sequence[str], argument: str) -> list[str]:
    """An adapter name or a sequence of names as a list without repeats; TypeError for anything else."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, Sequence) or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"`{argument}` must be an adapter name or a list of adapter names, got {value!r}.")
    return list(dict.fromkeys(names))


def _check_known(
    model: nn.Module, names: Sequence[str], argument: str, *, hint: str = "", known: Sequence[str] | None = None
) -> None:
    known = adapter_names(model) if known is None else sorted(known)
    for name in names:
        if name not in known:
            raise ValueError(
                f"Unknown adapter {name!r} in `{argument}`: {type(model).__name__} has the adapters {known}.{hint}"
            )


def check_adapter_names(
    model: nn.Module, value: str | Sequence[str], argument: str, *, hint: str = "", known: Sequence[str] | None = None
) -> list[str]:
    """The adapter names an optional `adapter_names=`-style argument gives: at least one, each carried by `model`
    (whose adapter names the caller may pass as `known`, when it has them already)."""
    names = _as_name_list(value, argument)
    if not names:
        raise ValueError(f"`{argument}` is empty; name at least one adapter, or leave it unset for the default.")
    _check_known(model, names, argument, hint=hint, known=known)
    return names


def freeze_adapter(model: nn.Module, adapter_name: str) -> None:
    """
    Sets `requires_grad=False` on every parameter of one adapter, in every tuner layer of `model`.

    This does not change which adapters are active. PEFT's and diffusers' `set_adapter` make the adapters they
    activate trainable again; use [`activate_adapters`] to activate a frozen adapter and keep it frozen.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).
        adapter_name (`str`):
            The adapter to freeze.

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import freeze_adapter, slider_adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> freeze_adapter(model, "default")
    >>> slider_adapter_names(model)
    []

    ```
    """
    _check_known(model, _as_name_list(adapter_name, "adapter_name"), "adapter_name")
    check_not_held_elsewhere((layer for _, layer in named_tuner_layers(model)), f"freeze adapter {adapter_name!r}")
    for _, layer in named_tuner_layers(model):
        for adapter, param in _layer_adapter_params(layer):
            if adapter == adapter_name:
                param.requires_grad_(False)


def set_active(model: nn.Module, names: list[str]) -> None:
    """Makes exactly `names` the active adapters of every tuner layer, whatever loader added them. PEFT marks the
    adapters it activates trainable: callers restore `requires_grad` (see [`AdapterState`])."""
    if isinstance(model, PeftModel):
        # The tuner keeps its own `active_adapter` record (used by save/merge); set it through the tuner.
        model.base_model.set_adapter(names)
    else:
        # What diffusers' `PeftAdapterMixin.set_adapter` does, without its check that `names` come from one loader.
        for _, layer in named_tuner_layers(model):
            layer.set_adapter(names)


def activate_adapters(
    model: nn.Module, *, slider: str | Sequence[str], frozen: str | Sequence[str] = (), trainable: bool = True
) -> None:
    """
    Makes the slider adapter(s) and the frozen adapter(s) active together; only the slider is trainable.

    All other adapters are deactivated and frozen. PEFT's `set_adapter` marks every adapter it activates as trainable,
    so the frozen adapters are frozen again right after.

    Args:
        model (`torch.nn.Module`):
            A [`~peft.PeftModel`], or a model carrying adapters directly (for example a diffusers model).
        slider (`str` or `list[str]`):
            The slider adapter(s): active, and trainable unless `trainable=False`.
        frozen (`str` or `list[str]`, *optional*, defaults to `()`):
            Adapters that stay active but frozen, such as an assistant adapter.
        trainable (`bool`, *optional*, defaults to `True`):
            Whether the slider adapters are trainable. Pass `False` at inference.

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training.adapters import activate_adapters, active_adapter_names, slider_adapter_names
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    >>> model.add_adapter("assistant", LoraConfig(target_modules=["0"]))
    >>> activate_adapters(model, slider="default", frozen=["assistant"])
    >>> active_adapter_names(model), slider_adapter_names(model)
    (['default', 'assistant'], ['default'])

    ```
    """
    slider_names = _as_name_list(slider, "slider")
    frozen_names = _as_name_list(frozen, "frozen")
    if not slider_names:
        raise ValueError("`slider` must name at least one adapter, got an empty list.")
    overlap = sorted(set(slider_names) & set(frozen_names))
    if overlap:
        raise ValueError(f"Adapters {overlap} are in both `slider` and `frozen`; an adapter is one or the other.")
    _check_known(model, slider_names, "slider")
    _check_known(model, frozen_names, "frozen")
    check_not_held_elsewhere((layer for _, layer in named_tuner_layers(model)), "activate adapters")

    set_active(model, slider_names + frozen_names)
    frozen_set = set(frozen_names) if trainable else set(frozen_names) | set(slider_names)
    for _, layer in named_tuner_layers(model):
        for adapter, param in _layer_adapter_params(layer):
            if adapter in frozen_set:
                param.requires_grad_(False)
