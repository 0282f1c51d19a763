# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Text-prompt sliders: a slider trained from prompts alone, with the frozen base model's predictions as the target.

A prompt set names four prompts: the `target` the slider acts on, a `positive` and a `negative` prompt whose difference
is the concept, and the `neutral` prompt the target prediction starts from (the target itself by default). At an
intermediate latent `x_t`, the frozen base (the slider at strength 0, no gradient) predicts for `neutral`,
`positive` and `negative`; the slider at `+s` is trained so that its prediction for `target` equals

    neutral + eta * (positive - negative)        (action "enhance"; "erase" flips the sign of eta)

and, mirrored, at `-s` the same with the sign flipped. Anchor prompts are trained at `+s` and `-s` to keep the base's
prediction (the slider leaves them alone).

This module holds the prompt sets (`PromptSet`, `AnchorPrompt`, `PromptSliderSpec`); `prompt_files` reads them from
Concept Sliders', ai-toolkit's and our own files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..utils.checks import check_finite, check_int, show_value

__all__ = ["ACTIONS", "AnchorPrompt", "PromptSet", "PromptSliderSpec"]

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
    name: str | None = None

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
    name: str | None = None

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
