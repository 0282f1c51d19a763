# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.inference.grid: cell placement, label regions, input types and the PNG round trip.

Cells are solid colours that appear nowhere else, so each cell is found in the grid by its colour alone; the tests
never reuse the module's layout arithmetic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from peft_slider.inference.grid import format_strength, make_sweep_grid, save_sweep_grid

WHITE = np.array([255, 255, 255])


def colour(r, c):
    # Distinct, far from the white background and the black ink.
    return (40 + 50 * r, 60 + 40 * c, 200 - 30 * c)


def solid_rows(rows, columns, size=(24, 16)):
    return [[Image.new("RGB", size, colour(r, c)) for c in range(columns)] for r in range(rows)]


def bbox_of(array, rgb):
    ys, xs = np.nonzero((array == np.array(rgb)).all(axis=-1))
    assert ys.size, f"colour {rgb} not found"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, ys.size


def has_ink(region):
    return bool((region != WHITE).any(axis=-1).any())


@pytest.mark.parametrize("rows, columns", [(1, 1), (2, 5), (3, 2)])
@pytest.mark.parametrize("labels", [True, False])
@pytest.mark.parametrize("title", [None, "smile slider"])
def test_cells_are_placed_whole_in_order_with_label_regions(rows, columns, labels, title):
    width, height, padding = 24, 16, 4
    grid = make_sweep_grid(
        solid_rows(rows, columns, (width, height)),
        row_labels=[f"prompt {r}" for r in range(rows)] if labels else None,
        column_labels=[format_strength(c - 2.0) for c in range(columns)] if labels else None,
        title=title,
        padding=padding,
    )
    array = np.asarray(grid)
    boxes = {(r, c): bbox_of(array, colour(r, c)) for r in range(rows) for c in range(columns)}
    for (r, c), (x0, y0, x1, y1, count) in boxes.items():
        assert (x1 - x0, y1 - y0, count) == (width, height, width * height)  # whole, unscaled, not overdrawn
        if c:
            assert x0 == boxes[(r, c - 1)][2] + padding and y0 == boxes[(r, c - 1)][1]
        if r:
            assert y0 == boxes[(r - 1, c)][3] + padding and x0 == boxes[(r - 1, c)][0]
    left, top = boxes[(0, 0)][:2]
    right, bottom = boxes[(rows - 1, columns - 1)][2:4]
    assert grid.size[0] >= right + padding and grid.size[1] == bottom + padding
    if labels or title:
        assert top > padding  # room above for column labels or the title
    if not labels and not title:
        assert (left, top) == (padding, padding) and grid.size == (right + padding, bottom + padding)
    # Row labels: ink left of every row. Column labels: ink above every column. Nothing drawn when not asked for.
    for r in range(rows):
        y0, y1 = boxes[(r, 0)][1], boxes[(r, 0)][3]
        assert has_ink(array[y0:y1, :left]) == labels
    for c in range(columns):
        x0, x1, y0 = boxes[(0, c)][0], boxes[(0, c)][2], boxes[(0, c)][1]
        if labels:
            assert has_ink(array[:y0, x0:x1])
    if title is not None:
        assert has_ink(array[: padding + 8, :])
    if not labels and title is None:
        assert not has_ink(array[:top, :]) and not has_ink(array[:, :left])


@pytest.mark.parametrize(
    ("size", "cell_size", "font_size", "shown"),
    [
        # (image size, cell_size, font_size, size of the image in the grid)
        ((32, 32), 128, 16, (128, 128)),  # a tiny model's sample, 4x, sharp
        ((48, 32), 128, None, (144, 96)),  # whole factor 3: the longer side reaches 128
        ((256, 256), 128, 16, (256, 256)),  # never made smaller
        ((32, 32), None, 16, (32, 32)),  # unchanged by default
    ],
)
def test_cell_size_enlarges_small_images_and_labels_stay_off_them(size, cell_size, font_size, shown):
    cells = [[Image.new("RGB", size, colour(r, c)) for c in range(3)] for r in range(2)]
    grid = make_sweep_grid(
        cells,
        row_labels=["a photo of a room", "a street"],
        column_labels=["-2", "0", "+2"],
        title="light from the right - flux",
        cell_size=cell_size,
        font_size=font_size,
    )
    array = np.asarray(grid)
    for r in range(2):
        for c in range(3):
            x0, y0, x1, y1, count = bbox_of(array, colour(r, c))
            assert (x1 - x0, y1 - y0, count) == (*shown, shown[0] * shown[1])  # whole, not overdrawn by a label


def test_smaller_images_are_centred_in_their_cell():
    big, small = Image.new("RGB", (20, 20), (10, 200, 30)), Image.new("RGB", (10, 6), (200, 10, 30))
    array = np.asarray(make_sweep_grid([[big, small]], padding=2))
    bx0, by0, bx1, by1, _ = bbox_of(array, (10, 200, 30))
    sx0, sy0, sx1, sy1, _ = bbox_of(array, (200, 10, 30))
    assert (sx1 - sx0, sy1 - sy0) == (10, 6)
    assert sy0 - by0 == (20 - 6) // 2  # vertically centred on the big image's row
    assert sx0 - (bx1 + 2) == (20 - 10) // 2  # horizontally centred in a 20-wide cell


# Every image type a pipeline returns gives the same grid as the PIL image.
PIXELS = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
AS_TYPES = {
    "pil": lambda: Image.fromarray(PIXELS),
    "numpy_uint8": lambda: PIXELS,
    "numpy_float": lambda: PIXELS.astype(np.float32) / 255.0,
    "numpy_video": lambda: np.stack([PIXELS.astype(np.float32) / 255.0, np.zeros((16, 24, 3), np.float32)]),
    "torch_chw": lambda: torch.from_numpy(PIXELS).permute(2, 0, 1).float() / 255.0,
    "torch_video": lambda: torch.stack([torch.from_numpy(PIXELS).permute(2, 0, 1).float() / 255.0] * 2),
    "pil_frames": lambda: [Image.fromarray(PIXELS), Image.new("RGB", (24, 16))],
    "grey_pil": lambda: Image.fromarray(PIXELS[..., 0]).convert("L"),
}


@pytest.mark.parametrize("kind", sorted(AS_TYPES))
def test_every_image_type_gives_the_pil_grid(kind):
    expected_cell = Image.fromarray(PIXELS[..., 0]).convert("RGB") if kind == "grey_pil" else Image.fromarray(PIXELS)
    expected = np.asarray(make_sweep_grid([[expected_cell]], column_labels=["+1"]))
    got = np.asarray(make_sweep_grid([[AS_TYPES[kind]()]], column_labels=["+1"]))
    np.testing.assert_array_equal(got, expected)


BAD = [
    ([], {}, ValueError, r"`images` must be a non-empty list of rows"),
    ([[]], {}, ValueError, r"`images\[0\]` must be a non-empty list"),
    (solid_rows(1, 2) + solid_rows(1, 3), {}, ValueError, r"row 1 has 3"),
    (solid_rows(2, 2), {"row_labels": ["one"]}, ValueError, r"`row_labels` must be a list of 2 labels, one per row"),
    (solid_rows(1, 2), {"column_labels": "ab"}, ValueError, r"`column_labels` must be a list of 2 labels"),
    ([["not an image"]], {}, TypeError, r"`images\[0\]\[0\]` must be a PIL image"),
    ([[torch.zeros(5, 8, 8)]], {}, ValueError, r"`images\[0\]\[0\]` is a tensor of shape \(5, 8, 8\)"),
    (solid_rows(1, 1), {"padding": -1}, ValueError, r"`padding` must be a non-negative int"),
]


@pytest.mark.parametrize("images, kwargs, error, message", BAD)
def test_bad_input_is_a_clear_error(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_sweep_grid(images, **kwargs)


@pytest.mark.parametrize("name", ["grid.png", "grid", "nested/folder/grid.PNG"])
def test_png_round_trip_keeps_pixels_and_labels(name, tmp_path):
    grid = make_sweep_grid(solid_rows(2, 3), row_labels=["a cat", "a dog"], column_labels=["-1", "0", "+1"], title="t")
    path = save_sweep_grid(grid, tmp_path / name)
    assert path.lower().endswith(".png")
    loaded = Image.open(path)
    assert loaded.format == "PNG"
    np.testing.assert_array_equal(np.asarray(loaded.convert("RGB")), np.asarray(grid))
    assert json.loads(loaded.text["peft_slider"]) == {
        "title": "t",
        "rows": ["a cat", "a dog"],
        "columns": ["-1", "0", "+1"],
    }
    # From rows of images directly: the same file content.
    again = save_sweep_grid(
        solid_rows(2, 3),
        tmp_path / "again.png",
        row_labels=["a cat", "a dog"],
        column_labels=["-1", "0", "+1"],
        title="t",
    )
    np.testing.assert_array_equal(np.asarray(Image.open(again).convert("RGB")), np.asarray(grid))
    with pytest.raises(TypeError, match="only apply when rows of images are given"):
        save_sweep_grid(grid, tmp_path / "x.png", title="other")


@pytest.mark.parametrize(
    "strength, label",
    [
        (-2.0, "-2"),
        (-0.5, "-0.5"),
        (0.0, "0"),
        (-0.0, "0"),
        (1, "+1"),
        (1.25, "+1.25"),
        ({"smile": 1.0, "age": -0.5}, "smile +1, age -0.5"),
    ],
)
def test_format_strength(strength, label):
    assert format_strength(strength) == label
