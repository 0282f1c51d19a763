# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Scorers: image -> concept score, and image pair -> preservation distance. Built-ins need no downloaded weights.

An image is a float tensor of shape `(3, H, W)` with values in [0, 1] (what diffusers' `output_type="pt"` gives per
image; PIL and numpy outputs are turned into this). A concept scorer is any `callable(image) -> float`, a distance any
`callable(image, reference) -> float` that grows as the image moves away from the reference (the strength-0 image).

Built-in concept scorers (pixel statistics, `luminance = 0.299 R + 0.587 G + 0.114 B`):

| name | score |
|---|---|
| `brightness` | mean luminance |
| `contrast` | standard deviation of luminance |
| `colorfulness` | mean of `max(R, G, B) - min(R, G, B)` |
| `ink` | mean of `1 - luminance` (ink mass of dark strokes on a light page) |
| `horizontal_balance` | mean luminance of the right half minus the left half (light from the right) |
| `vertical_balance` | mean luminance of the top half minus the bottom half |

Built-in distances:

| name | distance |
|---|---|
| `ssim` | `(1 - SSIM) / 2` on luminance, 7x7 box windows, `C1 = 0.01^2`, `C2 = 0.03^2`: 0 for the same structure, 1 for inverted |
| `mae` | mean absolute pixel difference |

[`outside_mask`] turns any distance into one that sees only what changes outside the concept's region (preservation
"outside the concept"). Optional: [`ClipScore`] scores text-image similarity with a CLIP model from a local folder (never downloaded).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CONCEPT_SCORERS", "DISTANCES", "ClipScore", "outside_mask", "resolve_scorer", "to_image_tensor"]

_LUMA = (0.299, 0.587, 0.114)


def to_image_tensor(image: Any) -> torch.Tensor:
    """An image as a float32 CPU tensor `(3, H, W)` in [0, 1]: from a tensor `(3, H, W)` or `(H, W, 3)` in [0, 1], a
    PIL image, or a numpy array (uint8 0-255 or float 0-1)."""
    if not isinstance(image, torch.Tensor):
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
            import numpy as np

            image = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        else:
            image = torch.as_tensor(image)
    image = image.detach().to("cpu")
    if image.dtype == torch.uint8:
        image = image.float() / 255
    image = image.float()
    if image.ndim == 3 and image.shape[0] not in (1, 3) and image.shape[-1] in (1, 3):
        image = image.permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"An image must be (3, H, W) or (H, W, 3), got shape {tuple(image.shape)}.")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _luminance(image: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMA, dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(0)


def brightness(image: torch.Tensor) -> float:
    return float(_luminance(image).mean())


def contrast(image: torch.Tensor) -> float:
    return float(_luminance(image).std(unbiased=False))


def colorfulness(image: torch.Tensor) -> float:
    return float((image.amax(0) - image.amin(0)).mean())


def ink(image: torch.Tensor) -> float:
    return float((1 - _luminance(image)).mean())


def horizontal_balance(image: torch.Tensor) -> float:
    luma = _luminance(image)
    half = luma.shape[1] // 2
    return float(luma[:, luma.shape[1] - half :].mean() - luma[:, :half].mean())


def vertical_balance(image: torch.Tensor) -> float:
    luma = _luminance(image)
    half = luma.shape[0] // 2
    return float(luma[:half].mean() - luma[luma.shape[0] - half :].mean())


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x[None, None], size, stride=1)[0, 0]


def ssim_distance(image: torch.Tensor, reference: torch.Tensor) -> float:
    x, y = _luminance(image).double(), _luminance(reference).double()
    if x.shape != y.shape:
        raise ValueError(f"ssim: the images differ in size, {tuple(x.shape)} and {tuple(y.shape)}.")
    size = min(7, *x.shape)
    c1, c2 = 0.01**2, 0.03**2
    mx, my = _box(x, size), _box(y, size)
    vx = _box(x * x, size) - mx * mx
    vy = _box(y * y, size) - my * my
    cov = _box(x * y, size) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float((1 - ssim.mean()) / 2)


def mae_distance(image: torch.Tensor, reference: torch.Tensor) -> float:
    return float((image - reference).abs().mean())


CONCEPT_SCORERS: dict[str, Callable[[torch.Tensor], float]] = {
    "brightness": brightness,
    "colorfulness": colorfulness,
    "contrast": contrast,
    "horizontal_balance": horizontal_balance,
    "ink": ink,
    "vertical_balance": vertical_balance,
}
"""The built-in concept scorers by name (see the module docstring)."""

DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {"mae": mae_distance, "ssim": ssim_distance}
"""The built-in preservation distances by name (see the module docstring)."""


def outside_mask(distance: str | Callable, mask: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A distance that ignores the concept's region: inside `mask` the image is replaced by the reference first.

    Args:
        distance (`str` or `callable`):
            A built-in distance name or `callable(image, reference) -> float`.
        mask (`torch.Tensor`):
            `(H, W)` weights in [0, 1], 1 where the concept lives (a face for a smile slider).

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.evaluation import outside_mask
    >>> mask = torch.zeros(8, 8)
    >>> mask[:, :4] = 1  # the concept lives in the left half
    >>> reference, image = torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)
    >>> image[:, :, :4] = 1.0  # only the left half changed
    >>> outside_mask("mae", mask)(image, reference)
    0.0

    ```
    """
    name, function = resolve_scorer(distance, kind="distance")
    mask = torch.as_tensor(mask, dtype=torch.float32)
    if mask.ndim != 2 or not bool(((mask >= 0) & (mask <= 1)).all()):
        raise ValueError(f"`mask` must be an (H, W) tensor of weights in [0, 1], got shape {tuple(mask.shape)}.")

    def masked(image: torch.Tensor, reference: torch.Tensor) -> float:
        if image.shape[-2:] != mask.shape:
            raise ValueError(f"`mask` is {tuple(mask.shape)} but the images are {tuple(image.shape[-2:])}.")
        return function(image * (1 - mask) + reference * mask, reference)

    masked.__name__ = f"{name} outside mask"
    return masked


def resolve_scorer(scorer: str | Callable, *, kind: str = "concept") -> tuple[str, Callable]:
    """`(name, callable)` for a built-in name, a `"module:function"` path, or a callable.

    Args:
        scorer (`str` or `callable`):
            A name of [`CONCEPT_SCORERS`] (`kind="concept"`) or [`DISTANCES`] (`kind="distance"`), a
            `"package.module:function"` to import, or the callable itself.
        kind (`str`, *optional*, defaults to `"concept"`):
            ``"concept"`` or ``"distance"``.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.evaluation import resolve_scorer
    >>> name, score = resolve_scorer("brightness")
    >>> name, score(torch.full((3, 8, 8), 0.25))
    ('brightness', 0.25)

    ```
    """
    table = CONCEPT_SCORERS if kind == "concept" else DISTANCES
    argument = "concept" if kind == "concept" else "distance"
    if callable(scorer):
        return getattr(scorer, "__name__", type(scorer).__name__), scorer
    if not isinstance(scorer, str):
        raise TypeError(f"`{argument}` must be a name, 'module:function' or a callable, got {type(scorer).__name__}.")
    if scorer in table:
        return scorer, table[scorer]
    if ":" in scorer:
        module_name, _, attribute = scorer.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"`{argument}` {scorer!r} cannot be imported ({error}); give 'package.module:function' on PYTHONPATH."
            ) from None
        if not callable(function):
            raise ValueError(f"`{argument}` {scorer!r} is not callable.")
        return attribute, function
    raise ValueError(
        f"`{argument}` {scorer!r} is not a built-in {kind} scorer ({sorted(table)}) nor a 'module:function' path."
    )


class ClipScore:
    """Optional concept scorer: CLIP similarity of the image to `positive` minus to `negative`, from a local CLIP model.

    The model is loaded with `local_files_only=True`: nothing is ever downloaded, so a missing folder is an error, not a
    silent download.

    Args:
        model_path (`str` or `os.PathLike`):
            A local folder holding a `transformers` CLIP model and its processor (`save_pretrained` output).
        positive (`str`):
            Text describing the concept ("a smiling person").
        negative (`str`, *optional*):
            Text describing its opposite ("a person with a neutral face"); without it the score is the cosine
            similarity to `positive` alone.
    """

    def __init__(self, model_path: str | os.PathLike, positive: str, negative: str | None = None) -> None:
        if not os.path.isdir(model_path):
            raise ValueError(
                f"`model_path` {os.fspath(model_path)!r} is not a local folder. ClipScore never downloads weights: "
                "save a CLIP model there first (CLIPModel.from_pretrained(...).save_pretrained(path), and its processor)."
            )
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError:  # pragma: no cover - transformers is a test/examples dependency
            raise ImportError("ClipScore needs transformers: pip install transformers") from None
        self.model = CLIPModel.from_pretrained(model_path, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(model_path, local_files_only=True)
        texts = [positive] if negative is None else [positive, negative]
        with torch.no_grad():
            inputs = self.processor(text=texts, return_tensors="pt", padding=True)
            features = self.model.get_text_features(**inputs)
            self.text = torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)
        self.__name__ = "clip"

    def __call__(self, image: torch.Tensor) -> float:
        pixels = (to_image_tensor(image).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        with torch.no_grad():
            inputs = self.processor(images=pixels, return_tensors="pt")
            features = self.model.get_image_features(**inputs)
            features = torch.nn.functional.normalize(getattr(features, "pooler_output", features), dim=-1)
        similarity = (features @ self.text.T)[0]
        return float(similarity[0] - similarity[1]) if similarity.numel() > 1 else float(similarity[0])
