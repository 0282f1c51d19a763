"""Slider adapter configs: PEFT's LoRA, LoKr and LoHa configs that resolve their own targets.

The configs stay plain PEFT configs (`peft_type` LORA/LOKR/LOHA). The slider-only options (`architecture`, `scope`,
`model`, `allow_text_targets`) are used once, in `__post_init__`, to fill `target_modules`, and never serialized:
`to_dict()` (which both PEFT's adapter_config.json and diffusers' safetensors metadata use) leaves them out, so a saved
slider loads with a plain `LoraConfig`, `PeftModel.from_pretrained` and diffusers' `load_lora_weights`.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from peft import LoHaConfig, LoKrConfig, LoraConfig

from .targets import TargetingError, find_architecture, resolve_targets, text_path_modules, unwrap_denoiser

__all__ = ["SLIDER_ONLY_FIELDS", "SliderLoHaConfig", "SliderLoKrConfig", "SliderLoraConfig"]

SLIDER_ONLY_FIELDS = ("architecture", "scope", "model", "allow_text_targets")
"""Fields a slider config has beyond its PEFT parent; never written to adapter_config.json or safetensors metadata."""


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
        if self.target_modules is None:
            targets = resolve_targets(model=model, architecture=self.architecture, scope=self.scope, variant=variant)
            self.target_modules = targets.regex
            if self.architecture is None and targets.class_name is not None:
                self.architecture = targets.class_name
            return
        # User-given targets win; warn (unless allowed) when they reach the text path of a known model.
        resolve_targets(architecture=self.architecture, scope=self.scope, variant=variant)  # validates the options
        if model is None or self.allow_text_targets:
            return
        try:
            spec = find_architecture(model)
        except TargetingError:
            return  # a model peft_slider does not know: its text path is unknown, the user's targets stand

        names = [name for name, _ in unwrap_denoiser(model).named_modules()]
        hits = [name for name in text_path_modules(names, spec) if _peft_matches(self.target_modules, name)]
        if hits:
            shown = ", ".join(hits[:8]) + (" ..." if len(hits) > 8 else "")
            warnings.warn(
                f"`target_modules` adapt {len(hits)} text-path module(s) of {spec.class_name}: {shown}. A slider should "
                "leave the text path intact; drop them, or pass allow_text_targets=True if this is intended.",
                UserWarning,
                stacklevel=4,
            )

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
        **kwargs: every `peft.LoraConfig` field (`r`, `lora_alpha`, `init_lora_weights`, ...).

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
