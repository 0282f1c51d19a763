# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Sweep grids: one labelled image of a slider at several strengths (columns) for several prompts or seeds (rows).

Images may be PIL images, numpy arrays (`(H, W, C)`, uint8 or floats in [0, 1]) or torch tensors (`(C, H, W)`, floats
in [0, 1]), as diffusers pipelines return them for `output_type="pil"`, `"np"` and `"pt"`; for video the first frame
is shown. Labels use PIL's default font. The PNG carries the labels as a `peft_slider` text chunk (JSON), so a saved
grid says what it shows. Needs Pillow (`pip install pillow`); torch and numpy are only touched when given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["format_strength", "make_sweep_grid", "save_sweep_grid"]

# The PNG text chunk that records what a grid shows.
PNG_METADATA_KEY = "peft_slider"
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
# Row labels longer than this many characters are cut with an ellipsis, so a long prompt does not dwarf the images.
_MAX_ROW_LABEL_CHARS = 48


def _require_pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as error:
        raise ImportError("Sweep grids are drawn with Pillow: `pip install pillow`.") from error
    return Image, ImageDraw, ImageFont


def format_strength(strength: float | dict[str, float]) -> str:
    """
    A short column label for a strength: `"+1"`, `"-0.5"`, `"0"`, or `"smile +1, age -0.5"` for several sliders.

    Example:

    ```py
    >>> from peft_slider.inference import format_strength
    >>> [format_strength(s) for s in (-2.0, 0.0, 0.5, 1.25)]
    ['-2', '0', '+0.5', '+1.25']
    >>> format_strength({"smile": 1.0, "age": -0.5})
    'smile +1, age -0.5'

    ```
    """
    if isinstance(strength, dict):
        return ", ".join(f"{name} {format_strength(value)}" for name, value in strength.items())
    value = float(strength)
    if value == 0:
        return "0"  # also for -0.0
    text = f"{value:g}"
    return text if value < 0 else f"+{text}"


def _to_pil(image: Any, where: str) -> Image.Image:
    """One image as an RGB PIL image; the first frame of a video."""
    Image, _, _ = _require_pil()
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (list, tuple)) and image:  # video as a list of PIL frames
        return _to_pil(image[0], where)
    module = type(image).__module__
    if module.startswith("torch"):
        tensor = image.detach().float().cpu()
        if tensor.ndim == 4:  # (frames, C, H, W)
            tensor = tensor[0]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"{where} is a tensor of shape {tuple(image.shape)}; expected (C, H, W) with C in 1, 3, 4."
            )
        array = tensor.permute(1, 2, 0).numpy()
    elif module.startswith("numpy"):
        array = image
        if array.ndim == 4:  # (frames, H, W, C)
            array = array[0]
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{where} is an array of shape {array.shape}; expected (H, W, C) with C in 1, 3, 4.")
    else:
        raise TypeError(f"{where} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")
    import numpy as np

    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]), mode="RGB")


def _enlarge(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled up by the whole factor that brings its longer side to at least `size` (never down)."""
    factor = -(-size // max(image.width, image.height))
    if factor <= 1:
        return image
    Image, _, _ = _require_pil()
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _shorten(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ROW_LABEL_CHARS else text[: _MAX_ROW_LABEL_CHARS - 3] + "..."


def _check_labels(labels: Sequence[str] | None, count: int, argument: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str) or not isinstance(labels, Sequence) or len(labels) != count:
        raise ValueError(f"`{argument}` must be a list of {count} labels, one per {argument[:-7]}, got {labels!r}.")
    return [str(label) for label in labels]


def make_sweep_grid(
    images: Sequence[Sequence[Any]],
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
    padding: int = 4,
    cell_size: int | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """
    Lays images out in a labelled grid: `images[row][column]`, column labels on top, row labels on the left.

    Every cell is as large as the largest image; smaller images are centred in their cell. Images are only resized
    when `cell_size` asks for it.

    Args:
        images (`list[list[image]]`):
            One list per row, all of one length (the columns). An image is a PIL image, a numpy array or a torch
            tensor (see the module docstring).
        row_labels (`list[str]`, *optional*):
            One label per row (a prompt, a seed); long labels are shortened. Without them, no label column is drawn.
        column_labels (`list[str]`, *optional*):
            One label per column (a strength, see [`format_strength`]). Without them, no label row is drawn.
        title (`str`, *optional*):
            A line of text above everything.
        padding (`int`, *optional*, defaults to `4`):
            Pixels between and around cells and labels.
        cell_size (`int`, *optional*):
            Enlarge small images by a whole factor (nearest neighbour, so pixels stay sharp) until their longer side
            is at least this many pixels, e.g. 128 for 32x32 samples of a tiny model. Larger images are kept as they
            are.
        font_size (`int`, *optional*):
            Label height in pixels (Pillow's scalable default font); by default Pillow's small bitmap font.

    Returns:
        `PIL.Image.Image`: the grid, RGB.

    Example:

    ```py
    >>> from PIL import Image
    >>> from peft_slider.inference import make_sweep_grid
    >>> cells = [[Image.new("RGB", (32, 32), (40 * c, 0, 0)) for c in range(3)] for _ in range(2)]
    >>> grid = make_sweep_grid(cells, row_labels=["a cat", "a dog"], column_labels=["-1", "0", "+1"])
    >>> grid.width > 3 * 32 and grid.height > 2 * 32
    True

    ```
    """
    Image, ImageDraw, ImageFont = _require_pil()
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or not images:
        raise ValueError(f"`images` must be a non-empty list of rows (lists of images), got {type(images).__name__}.")
    rows = []
    for r, row in enumerate(images):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
            raise ValueError(f"`images[{r}]` must be a non-empty list of images (one row), got {type(row).__name__}.")
        rows.append([_to_pil(image, f"`images[{r}][{c}]`") for c, image in enumerate(row)])
    columns = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != columns:
            raise ValueError(f"Every row of `images` needs {columns} images (as row 0), but row {r} has {len(row)}.")
    row_labels = _check_labels(row_labels, len(rows), "row_labels")
    column_labels = _check_labels(column_labels, columns, "column_labels")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative int, got {padding!r}.")
    for name, value in (("cell_size", cell_size), ("font_size", font_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
    if cell_size is not None:
        rows = [[_enlarge(image, cell_size) for image in row] for row in rows]

    font = ImageFont.load_default() if font_size is None else ImageFont.load_default(size=font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        # From the drawing origin: a scalable font's glyphs start below it.
        left, _, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom

    cell_w = max(image.width for row in rows for image in row)
    cell_h = max(image.height for row in rows for image in row)
    row_texts = [_shorten(label) for label in row_labels] if row_labels else None
    label_w = max(text_size(text)[0] for text in row_texts) + padding if row_texts else 0
    header_h = max(text_size(text)[1] for text in column_labels) + padding if column_labels else 0
    title_h = text_size(title)[1] + padding if title else 0

    grid_w = padding + label_w + columns * (cell_w + padding)
    grid_h = padding + title_h + header_h + len(rows) * (cell_h + padding)
    if title:
        grid_w = max(grid_w, text_size(title)[0] + 2 * padding)
    grid = Image.new("RGB", (grid_w, grid_h), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((padding, padding), title, fill=_INK, font=font)
    top = padding + title_h + header_h
    left = padding + label_w
    if column_labels:
        for c, text in enumerate(column_labels):
            width, _ = text_size(text)
            x = left + c * (cell_w + padding) + max(0, (cell_w - width) // 2)
            draw.text((x, padding + title_h), text, fill=_INK, font=font)
    for r, row in enumerate(rows):
        y = top + r * (cell_h + padding)
        if row_texts:
            _, height = text_size(row_texts[r])
            draw.text((padding, y + max(0, (cell_h - height) // 2)), row_texts[r], fill=_INK, font=font)
        for c, image in enumerate(row):
            x = left + c * (cell_w + padding)
            grid.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
    # Kept on the image so that save_sweep_grid can record it in the PNG.
    grid.info[PNG_METADATA_KEY] = json.dumps(
        {"title": title, "rows": list(row_labels or []), "columns": list(column_labels or [])}
    )
    return grid


def save_sweep_grid(grid_or_images: Image.Image | Sequence[Sequence[Any]], path: str | os.PathLike, **kwargs) -> str:
    """
    Saves a grid as PNG, with its labels in a `peft_slider` text chunk. Given rows of images, makes the grid first.

    Args:
        grid_or_images (`PIL.Image.Image` or `list[list[image]]`):
            A grid from [`make_sweep_grid`], or the rows of images to make one from.
        path (`str` or `os.PathLike`):
            The file to write; folders are created. A name without the `.png` suffix gets it.
        **kwargs:
            [`make_sweep_grid`]'s options, when images are given.

    Returns:
        `str`: the path written.

    Example:

    ```py
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from peft_slider.inference import save_sweep_grid
    >>> cells = [[Image.new("RGB", (16, 16), "red"), Image.new("RGB", (16, 16), "blue")]]
    >>> path = save_sweep_grid(cells, os.path.join(tempfile.mkdtemp(), "sweep"), column_labels=["-1", "+1"])
    >>> Image.open(path).text["peft_slider"]
    '{"title": null, "rows": [], "columns": ["-1", "+1"]}'

    ```
    """
    Image, _, _ = _require_pil()
    from PIL.PngImagePlugin import PngInfo

    if isinstance(grid_or_images, Image.Image):
        if kwargs:
            raise TypeError(f"Options {sorted(kwargs)} only apply when rows of images are given, not a finished grid.")
        grid = grid_or_images
    else:
        grid = make_sweep_grid(grid_or_images, **kwargs)
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        path += ".png"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    info = PngInfo()
    if PNG_METADATA_KEY in grid.info:
        info.add_text(PNG_METADATA_KEY, str(grid.info[PNG_METADATA_KEY]))
    grid.save(path, format="PNG", pnginfo=info)
    return path
