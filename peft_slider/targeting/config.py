"""Slider adapter configs: PEFT's LoRA, LoKr and LoHa configs that resolve their own targets.

The configs stay plain PEFT configs (`peft_type` LORA/LOKR/LOHA). The slider-only options (`architecture`, `scope`,
`model`, `allow_text_targets`) are used once, in `__post_init__`, to fill `target_modules`, and never serialized:
`to_dict()` (which both PEFT's adapter_config.json and diffusers' safetensors metadata use) leaves them out, so a saved
slider loads with a plain `LoraConfig`, `PeftModel.from_pretrained` and diffusers' `load_lora_weights`.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peft import LoHaConfig, LoKrConfig, LoraConfig

from .targets import (
    TargetingError,
    base_modules,
    find_architecture,
    resolve_targets,
    text_path_modules,
    unwrap_denoiser,
)

__all__ = ["REFUSED_PEFT_OPTIONS", "SLIDER_ONLY_FIELDS", "SliderLoHaConfig", "SliderLoKrConfig", "SliderLoraConfig"]

SLIDER_ONLY_FIELDS = ("architecture", "scope", "model", "allow_text_targets")
"""Fields a slider config has beyond its PEFT parent; never written to adapter_config.json or safetensors metadata."""


def _unset(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, tuple, set, str)) and not value)


# The PEFT options a slider refuses: field -> (is the value fine?, why not, how to fix). A slider is a signed direction:
# strength s must scale its whole effect by s, and strength 0 must give the base model. Every other field of PEFT
# 0.21's LoraConfig (and of LoKr/LoHa) is honoured: r, lora_alpha, lora_dropout, target_modules, exclude_modules,
# use_rslora, rank_pattern, alpha_pattern,
# init_lora_weights True/False/"gaussian", layers_to_transform/layers_pattern (see `_apply_layer_selection`),
# inference_mode, runtime_config and the bookkeeping fields (task_type, base_model_name_or_path, revision, ...).
REFUSED_PEFT_OPTIONS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "bias": (
        lambda v: v == "none",
        "it trains the base layers' biases, which are not part of the slider's delta: strength does not scale them "
        "and strength 0 is not the base model",
        "leave bias='none'",
    ),
    "modules_to_save": (
        _unset,
        "it trains full copies of those modules, which strength does not scale, so strength 0 is not the base model",
        "leave it unset and let the slider adapt those modules",
    ),
    "use_dora": (
        _unset,
        "DoRA renormalises the weight with a trained magnitude, so the delta is not linear in strength and "
        "strength 0 is not the base model",
        "use plain LoRA (use_dora=False)",
    ),
    "lora_bias": (
        _unset,
        "save_slider and the kohya/ComfyUI formats carry plain LoRA weights only, so the saved slider would lose it",
        "leave lora_bias=False",
    ),
    "fan_in_fan_out": (
        _unset,
        "it is for transformers' Conv1D layers (GPT-2); slider targets are nn.Linear and nn.Conv layers",
        "leave fan_in_fan_out=False",
    ),
    "init_lora_weights": (
        lambda v: v is True or v is False or v == "gaussian",
        "that initialisation rewrites the base weights or starts from a non-zero delta, so strength 0 is not the "
        "base model",
        "use init_lora_weights=True, False or 'gaussian'",
    ),
    "target_parameters": (
        _unset,
        "it adapts raw parameters outside peft_slider's targeting and text-path checks",
        "leave it unset and pass `target_modules` if the defaults do not fit",
    ),
    "trainable_token_indices": (
        _unset,
        "it trains token embeddings, which belong to the text path a slider leaves intact",
        "leave it unset",
    ),
    "layer_replication": (_unset, "it duplicates transformers' decoder layers", "leave it unset"),
    "megatron_config": (_unset, "Megatron layers are not diffusers denoiser layers", "leave it unset"),
    "loftq_config": (_unset, "LoftQ rewrites the (quantised) base weights", "leave it unset"),
    "eva_config": (_unset, "EVA initialises from data and redistributes ranks", "leave it unset"),
    "corda_config": (_unset, "CorDA rewrites the base weights", "leave it unset"),
    "lora_ga_config": (_unset, "LoRA-GA rewrites the base weights", "leave it unset"),
    "alora_invocation_tokens": (
        _unset,
        "activated LoRA is switched on by text tokens of a language model",
        "leave it unset",
    ),
    "use_qalora": (_unset, "QALoRA is for GPTQ-quantised language models", "leave use_qalora=False"),
    "velora_config": (_unset, "slider strength is only checked for plain LoRA layers", "leave it unset"),
    "monteclora_config": (
        _unset,
        "MonteCLoRA samples its delta, so strength does not give one direction",
        "leave it unset",
    ),
    "use_bdlora": (_unset, "slider strength is only checked for plain LoRA layers", "leave it unset"),
    "arrow_config": (_unset, "Arrow routes between several LoRAs per token", "leave it unset"),
    "kasa_config": (_unset, "KaSA changes the base weights' singular values", "leave it unset"),
    "ensure_weight_tying": (
        _unset,
        "it only concerns modules_to_save and token embeddings, which a slider refuses",
        "leave it False",
    ),
}
"""The PEFT options a slider config refuses, with why and how to fix; every other option is honoured."""


def _check_peft_options(config: Any) -> None:
    names = {f.name for f in dataclasses.fields(config)}
    for name, (fine, why, fix) in REFUSED_PEFT_OPTIONS.items():
        if name in names and not fine(getattr(config, name)):
            raise ValueError(
                f"`{name}`={getattr(config, name)!r} is not supported by {type(config).__name__}: {why}. Fix: {fix}."
            )


# PEFT's layer-index rule (peft.tuners.tuners_utils.check_target_module_exists): the first number after one of
# `layers_pattern`, or without a pattern the first number that follows a name segment.
def _layer_index(name: str, layers_pattern: str | list[str] | None) -> int | None:
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    return None if match is None else int(match.group("idx"))


@dataclass
class _SliderOptions:
    """The options every slider config adds to its PEFT parent."""

    architecture: str | None = field(
        default=None,
        metadata={
            "help": "A diffusers class name from peft_slider's table or a family alias ('flux', 'sdxl', 'zimage', ...). "
            "Without it and without `model`, the universal rules are used."
        },
    )
    scope: str = field(
        default="visual",
        metadata={
            "help": "'visual': image-token self-attention, image-only conv/proj and timestep layers. 'joint': also the "
            "attention of single-stream blocks that run on concatenated text + image tokens."
        },
    )
    model: Any = field(
        default=None,
        repr=False,
        compare=False,
        metadata={
            "help": "A denoiser (or pipeline) to resolve against exactly; the config keeps only the module names, not "
            "the model."
        },
    )
    allow_text_targets: bool = field(
        default=False,
        metadata={"help": "Do not warn when user-given `target_modules` include text-path modules."},
    )

    def _resolve_slider_targets(self, variant: str) -> None:
        model, self.model = self.model, None  # never keep (or deep-copy) the model on the config
        _check_peft_options(self)
        if self.target_modules is None:
            targets = resolve_targets(model=model, architecture=self.architecture, scope=self.scope, variant=variant)
            self.target_modules = targets.regex
            if self.architecture is None and targets.class_name is not None:
                self.architecture = targets.class_name
            self._apply_layer_selection(targets.modules)
            return
        # User-given targets win; warn (unless allowed) when they reach the text path of a known model.
        resolve_targets(architecture=self.architecture, scope=self.scope, variant=variant)  # validates the options
        if model is None or self.allow_text_targets:
            return
        try:
            spec = find_architecture(model)
        except TargetingError:
            return  # a model peft_slider does not know: its text path is unknown, the user's targets stand

        names = list(base_modules(unwrap_denoiser(model)))
        hits = [name for name in text_path_modules(names, spec) if _peft_matches(self.target_modules, name)]
        if hits:
            shown = ", ".join(hits[:8]) + (" ..." if len(hits) > 8 else "")
            warnings.warn(
                f"`target_modules` adapt {len(hits)} text-path module(s) of {spec.class_name}: {shown}. A slider should "
                "leave the text path intact; drop them, or pass allow_text_targets=True if this is intended.",
                UserWarning,
                stacklevel=4,
            )

    def _apply_layer_selection(self, modules: tuple[str, ...] | None) -> None:
        """Honours `layers_to_transform` / `layers_pattern` on resolved targets.

        PEFT ignores both when `target_modules` is a regex (and its own config refuses the pair on load), so the
        selection is applied here, by PEFT's layer-index rule, to the exact module names resolved against `model=`;
        the config then holds those names and no longer the two fields, and a saved slider loads anywhere. Targets
        outside any numbered layer (patch embedding, timestep layers, final projection) are dropped, as PEFT drops
        them from a `target_modules` list.
        """
        layers = getattr(self, "layers_to_transform", None)
        if layers is None or (isinstance(layers, list) and not layers):
            return
        pattern = getattr(self, "layers_pattern", None)
        if modules is None:
            raise TargetingError(
                f"`layers_to_transform`={layers!r} needs the model's module names: pass `model=` (the denoiser or the "
                "pipeline), or pass `target_modules` as a list, which PEFT filters by layer itself."
            )
        wanted = {layers} if isinstance(layers, int) else set(layers)
        indices = {name: _layer_index(name, pattern) for name in modules}
        chosen = [name for name in modules if indices[name] in wanted]
        if not chosen:
            found = sorted({index for index in indices.values() if index is not None})
            raise TargetingError(
                f"`layers_to_transform`={layers!r} with `layers_pattern`={pattern!r} selects none of the "
                f"{len(modules)} slider targets of {self.architecture}; their layer indices are {found}. Pick indices "
                "from those, or set `layers_pattern` to the name of the block list (e.g. 'transformer_blocks')."
            )
        self.target_modules = "(?:" + "|".join(re.escape(name) for name in chosen) + ")"
        self.layers_to_transform = None
        self.layers_pattern = None

    def to_dict(self) -> dict:
        """The PEFT dict of this config, without the slider-only fields."""
        output = super().to_dict()  # type: ignore[misc]
        for name in SLIDER_ONLY_FIELDS:
            output.pop(name, None)
        return output


def _peft_matches(target_modules: str | set[str] | list[str], name: str) -> bool:
    """PEFT's matching rule: a string is fullmatched; a list entry matches the name or a `.`-suffix of it."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


@dataclass
class SliderLoraConfig(_SliderOptions, LoraConfig):
    """A PEFT `LoraConfig` for concept sliders that picks its own targets per architecture.

    Leave `target_modules` unset and the config resolves the modules a slider should adapt: the image-token
    self-attention, image-only patch/conv in/out and timestep layers, never the text path. `peft_type` stays LORA
    and the slider-only options are not serialized, so the saved adapter loads anywhere a LoRA does.

    Args:
        architecture (`str`, *optional*):
            A diffusers class name from the table (``"FluxTransformer2DModel"``) or a family alias (``"flux"``).
        scope (`str`, *optional*, defaults to `"visual"`):
            ``"visual"`` or ``"joint"`` (also single-stream text + image blocks: Flux, Chroma, Flux2, AuraFlow,
            HiDream, Z-Image/Lumina2 main layers, Stable Cascade K/V).
        model (`torch.nn.Module` or pipeline, *optional*):
            Resolve exactly against this model's module names and check that every attention block gets a target.
        allow_text_targets (`bool`, *optional*, defaults to `False`):
            With user-given `target_modules` and a `model`, text-path hits warn unless this is set.
        **kwargs: every `peft.LoraConfig` field (`r`, `lora_alpha`, `init_lora_weights`, ...). Options a slider
            cannot honour (a trained base `bias`, `modules_to_save`, DoRA, base-rewriting initialisations such as
            PiSSA, ...: see `REFUSED_PEFT_OPTIONS`) raise a ValueError naming the field and value. With `model=`,
            `layers_to_transform` / `layers_pattern` select blocks by PEFT's layer-index rule and are folded into the
            exact `target_modules` (without `model=` they raise), so the saved slider loads anywhere.

    Example:

    ```py
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from peft_slider import SliderLoraConfig
    >>> with torch.device("meta"):
    ...     flux = FluxTransformer2DModel()
    >>> config = SliderLoraConfig(r=16, lora_alpha=16, model=flux)  # checks every attention block is covered
    >>> config.architecture, config.peft_type.value
    ('FluxTransformer2DModel', 'LORA')
    >>> "scope" in config.to_dict()
    False
    ```
    """

    def __post_init__(self):
        super().__post_init__()
        self._resolve_slider_targets("lora")


@dataclass
class SliderLoKrConfig(_SliderOptions, LoKrConfig):
    """PEFT's `LoKrConfig` with slider targeting; see `SliderLoraConfig` for the slider options.

    `Conv3d` modules (Wan's patch embedding) are left out: PEFT's LoKr cannot wrap them.

    Example:

    ```py
    >>> from peft_slider import SliderLoKrConfig
    >>> config = SliderLoKrConfig(r=4, architecture="zimage")
    >>> config.peft_type.value, isinstance(config.target_modules, str)
    ('LOKR', True)
    ```
    """

    def __post_init__(self):
        super().__post_init__()
        self._resolve_slider_targets("lokr")


@dataclass
class SliderLoHaConfig(_SliderOptions, LoHaConfig):
    """PEFT's `LoHaConfig` with slider targeting; see `SliderLoraConfig` for the slider options.

    Example:

    ```py
    >>> from peft_slider import SliderLoHaConfig
    >>> SliderLoHaConfig(r=4, architecture="sdxl").peft_type.value
    'LOHA'
    ```
    """

    def __post_init__(self):
        super().__post_init__()
        self._resolve_slider_targets("loha")
