# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""`evaluate_slider`: render a slider's sweeps, score them, and report its metrics, table, JSON and plot.

One batched pass per prompt and seed ([`~peft_slider.inference.SliderPipelineMixin.sweep`]): every strength of a sweep
starts from the same noise, so the scores differ only by the slider. The metrics are those of
`peft_slider.evaluation.metrics`; [`SliderEvaluation.strength_map`] calibrates ([`calibrate`]).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats.strength_map import StrengthMap
from ..inference.pipeline import SliderPipelineMixin, enable_sliders
from ..utils.checks import check_seed
from .calibration import calibrate
from .metrics import SliderMetrics, compute_metrics, format_summary
from .scorers import resolve_scorer, to_image_tensor

__all__ = ["SliderEvaluation", "evaluate_slider"]


@dataclass
class SliderEvaluation:
    """What [`evaluate_slider`] measured: the raw tables and the metrics.

    Args:
        strengths (`list[float]`): The strengths (calibrated ones when `calibrated` is set).
        samples (`list[tuple[str, int]]`): `(prompt, seed)` per row of the tables.
        scores (`list[list[float]]`): The concept score per sample and strength.
        distances (`list[list[float]]`): The distance to the sample's strength-0 image per sample and strength.
        metrics ([`SliderMetrics`]): The metrics.
        concept (`str`): The concept scorer's name.
        distance (`str`): The distance's name.
        calibrated (`bool`): Whether the strengths were calibrated strengths.
        images (`list[list]`, *optional*): The images per sample and strength, with `keep_images=True`.
    """

    strengths: list[float]
    samples: list[tuple[str, int]]
    scores: list[list[float]]
    distances: list[list[float]]
    metrics: SliderMetrics
    concept: str
    distance: str
    calibrated: bool = False
    images: list[list[Any]] | None = field(default=None, repr=False)

    def strength_map(self) -> StrengthMap:
        """The calibration ([`calibrate`] of the metrics); raises [`NoEffectError`] for a slider without effect."""
        if self.calibrated:
            raise ValueError("This evaluation ran at calibrated strengths; calibrate from a raw evaluation.")
        return calibrate(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready."""
        return {
            "concept": self.concept,
            "distance": self.distance,
            "calibrated": self.calibrated,
            "strengths": self.strengths,
            "samples": [{"prompt": prompt, "seed": seed} for prompt, seed in self.samples],
            "scores": self.scores,
            "distances": self.distances,
            "metrics": self.metrics.to_dict(),
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        """Writes [`to_dict`] as JSON to `path`; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """The metrics and the per-strength means as text."""
        m = self.metrics
        unit = "calibrated strength" if self.calibrated else "strength"
        lines = [f"concept: {self.concept}   distance: {self.distance}   samples: {len(self.samples)}", ""]
        lines.append(f"  {unit:>20}  {'concept score':>14}  {'distance':>9}")
        for j, strength in enumerate(m.strengths):
            distance = "-" if m.mean_distances is None else f"{m.mean_distances[j]:.4f}"
            lines.append(f"  {strength:>+20.3f}  {m.mean_scores[j]:>+14.4f}  {distance:>9}")
        lines += ["", format_summary(m), "", f"  {m.diagnosis}"]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None, *, title: str | None = None) -> Any:
        """The score and distance curves against strength, saturation marked, as a PIL image (saved if `path`)."""
        from .plot import plot_metrics

        label = "calibrated strength" if self.calibrated else "strength"
        return plot_metrics(
            self.metrics,
            concept=self.concept,
            distance=self.distance,
            title=title,
            x_label=label,
            scores=self.scores,
            path=path,
        )


def _check_numbers(values: Any, name: str, example: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"`{name}` must be a non-empty list, such as {example}, got {values!r}.")
    return list(values)


def evaluate_slider(
    pipe: Any,
    prompts: str | Sequence[str],
    *,
    strengths: Sequence[float] = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0),
    seeds: Sequence[int] = (0, 1, 2),
    concept: str | Callable = "brightness",
    distance: str | Callable = "ssim",
    adapter_names: str | Sequence[str] | None = None,
    slider_start: float = 0.0,
    calibrated: bool | StrengthMap | dict[str, StrengthMap] = False,
    stall_fraction: float = 0.25,
    max_distance: float | None = None,
    min_effect: float = 0.5,
    keep_images: bool = False,
    progress: bool = True,
    **call_kwargs: Any,
) -> SliderEvaluation:
    """Evaluates a slider: one batched sweep per prompt and seed, scored, then the metrics.

    Args:
        pipe (`DiffusionPipeline`):
            A pipeline whose denoiser carries the slider; [`~peft_slider.inference.enable_sliders`] is applied to it.
        prompts (`str` or `list[str]`):
            The prompt(s); each is swept with every seed.
        strengths (`list[float]`, *optional*, defaults to `-2 ... 2` in steps of 0.5):
            Strictly increasing, holding 0 (the reference).
        seeds (`list[int]`, *optional*, defaults to `(0, 1, 2)`):
            The seeds; two or more give the seed spread.
        concept (`str` or `callable`, *optional*, defaults to `"brightness"`):
            The concept scorer: a built-in name, `"module:function"`, or `callable(image) -> float` (an image is a
            `(3, H, W)` float tensor in [0, 1]).
        distance (`str` or `callable`, *optional*, defaults to `"ssim"`):
            The preservation distance: a built-in name, `"module:function"`, or `callable(image, reference) -> float`.
        adapter_names, slider_start, calibrated:
            As for `sweep`.
        stall_fraction, max_distance, min_effect:
            As for [`compute_metrics`].
        keep_images (`bool`, *optional*, defaults to `False`):
            Keep the images in the result.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over the sweeps (tqdm).
        **call_kwargs:
            Further pipeline arguments (`num_inference_steps=`, `height=`, ...).

    Returns:
        [`SliderEvaluation`]

    Example:

    ```py
    >>> from peft_slider import SliderLoraConfig
    >>> from peft_slider.evaluation import evaluate_slider
    >>> from peft_slider.testing import build_tiny_pipeline, tiny_call_kwargs
    >>> pipe = build_tiny_pipeline("flux")
    >>> pipe.transformer.add_adapter(SliderLoraConfig(r=4, lora_alpha=8, init_lora_weights=False), adapter_name="smile")
    >>> evaluation = evaluate_slider(pipe, "a photo of a woman", strengths=[-1, 0, 1], seeds=[0, 1], progress=False,
    ...                              **tiny_call_kwargs("flux"))
    >>> len(evaluation.scores), len(evaluation.scores[0]), evaluation.metrics.strengths
    (2, 3, [-1.0, 0.0, 1.0])

    ```
    """
    prompt_list = [prompts] if isinstance(prompts, str) else _check_numbers(prompts, "prompts", "['a photo']")
    if not all(isinstance(p, str) and p for p in prompt_list):
        raise ValueError(f"`prompts` must be a prompt or a list of non-empty prompts, got {prompts!r}.")
    seed_list = [check_seed(s, argument="seeds") for s in _check_numbers(seeds, "seeds", "[0, 1, 2]")]
    strength_list = _check_numbers(strengths, "strengths", "[-2, -1, 0, 1, 2]")
    compute_metrics(strength_list, [[0.0] * len(strength_list)])  # checks the strengths before any image is made
    concept_name, concept_scorer = resolve_scorer(concept, kind="concept")
    distance_name, distance_scorer = resolve_scorer(distance, kind="distance")
    if not isinstance(pipe, SliderPipelineMixin):
        pipe = enable_sliders(pipe)
    zero = [float(s) for s in strength_list].index(0.0)

    samples = [(prompt, seed) for prompt in prompt_list for seed in seed_list]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), desc="evaluating slider", unit="sweep")
    scores, distances, kept = [], [], []
    try:
        for prompt, seed in samples:
            images = pipe.sweep(
                prompt,
                strength_list,
                seed=seed,
                adapter_names=adapter_names,
                slider_start=slider_start,
                calibrated=calibrated,
                **call_kwargs,
            )
            tensors = [to_image_tensor(image) for image in images]
            scores.append([float(concept_scorer(image)) for image in tensors])
            distances.append([float(distance_scorer(image, tensors[zero])) for image in tensors])
            if keep_images:
                kept.append(list(images))
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    metrics = compute_metrics(
        strength_list,
        scores,
        distances,
        stall_fraction=stall_fraction,
        max_distance=max_distance,
        min_effect=min_effect,
    )
    return SliderEvaluation(
        strengths=metrics.strengths,
        samples=samples,
        scores=scores,
        distances=distances,
        metrics=metrics,
        concept=concept_name,
        distance=distance_name,
        calibrated=calibrated is not False,
        images=kept if keep_images else None,
    )
