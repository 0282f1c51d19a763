# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Paired-image sliders: a slider trained from pairs of images that differ only in the concept.

A pair is a "before" image without the concept and an "after" image with it: the same subject, the same framing.
Both images of a pair are noised with the same noise at the same timestep, and in one forward pass (one strength per
sample) the slider at `+s` learns to denoise the "after" image and at `-s` the "before" one. What differs between the
two targets is only the concept, so that is what the slider's direction learns.

- `ImagePair`, `ImagePairDataset`: the pairs, checked up front, read and squared like `ImageCaptionFolder` reads its
  images; `.backend` is a paired `SliderBackend` for `SliderBatchSampler` (it balances itself).
- `load_image_pairs`: pairs from a folder (`before/` and `after/`, matched by file name) or a JSON / CSV manifest.
- `paired_noisy_batch`, `paired_slider_loss`: one training step on a batch of pairs.

Only torch and PIL (lazily) are needed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import Dataset

from ..utils.checks import check_int, is_finite_number, show_value
from .data import IMAGE_EXTENSIONS, read_image, read_text, refuse_duplicate_keys
from .objectives import DenoisingObjective, NoisyBatch
from .sampler import SliderBackend

if TYPE_CHECKING:
    from .scaling import SliderScaler

__all__ = [
    "ImagePair",
    "ImagePairDataset",
    "PairedSliderLoss",
    "load_image_pairs",
    "paired_noisy_batch",
    "paired_slider_loss",
]

_MAX_RESOLUTION = 65536
# The manifest fields, in the order a CSV header lists them.
_MANIFEST_FIELDS = ("before", "after", "caption")
_REQUIRED_FIELDS = ("before", "after")
# Shown in messages: at most this many files of a list.
_SHOWN = 5


def _show_list(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _check_resolution(resolution: Any) -> int:
    return check_int(
        resolution, argument="resolution", low=1, high=_MAX_RESOLUTION, bounds=f"[1, {_MAX_RESOLUTION}] (pixels)"
    )


def _check_pair_strength(value: Any, *, argument: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not is_finite_number(value) or value <= 0:
        raise ValueError(
            f"`{argument}` must be a finite number > 0, got {show_value(value)}. A pair trains its after image at "
            "+s and its before image at -s, so s itself is positive; swap `before` and `after` to flip the direction."
        )
    return float(value)


@dataclass(frozen=True)
class ImagePair:
    """Two images that differ only in the concept, and the caption both are trained with.

    Args:
        before (`Path`): The image without the concept (trained at `-s`). A `str` is turned into a `Path`.
        after (`Path`): The same subject with the concept (trained at `+s`).
        caption (`str`): The caption of both images ("" for none).
        name (`str`): The pair's name in messages and samples: the file stem in a folder, the manifest row
            (`"pairs.csv line 3"`, `"pairs.json entry 0"`) in a manifest.

    Example:

    ```py
    >>> from peft_slider.training import ImagePair
    >>> ImagePair("before/cat.png", "after/cat.png", "a cat", "cat").after.as_posix()
    'after/cat.png'
    ```
    """

    before: Path
    after: Path
    caption: str
    name: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"`name` of an ImagePair must be a non-empty string, got {show_value(self.name)}.")
        for field_name in ("before", "after"):
            value = getattr(self, field_name)
            if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
                raise TypeError(
                    f"Pair {self.name!r}: `{field_name}` must be a path (str or os.PathLike), got {show_value(value)}."
                )
            object.__setattr__(self, field_name, Path(value))
        if not isinstance(self.caption, str):
            raise TypeError(
                f'Pair {self.name!r}: `caption` must be a string ("" for none), got {show_value(self.caption)}.'
            )


def _image_size(path: Path, *, where: str) -> tuple[int, int]:
    from PIL import Image

    try:
        # `Image.open` reads the header only; the pixels are decoded when a sample is drawn.
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"{where} {str(path)!r} is not an image PIL can read ({error}). Re-save it as PNG or JPEG, or remove the "
            "pair."
        ) from None


def _check_pairs(pairs: Sequence[ImagePair]) -> None:
    """Every check that needs the files: both exist, are different images PIL reads, of the same size; no pair twice."""
    seen: dict[tuple[Path, Path], str] = {}
    for index, pair in enumerate(pairs):
        if not isinstance(pair, ImagePair):
            raise TypeError(
                f"`pairs[{index}]` must be an ImagePair, got {type(pair).__name__}. Build pairs with "
                "`ImagePair(before, after, caption, name)` or read them with `load_image_pairs`."
            )
        where = f"Pair {pair.name!r}"
        for field_name in ("before", "after"):
            path = getattr(pair, field_name)
            if not path.is_file():
                state = "is a folder, not an image file" if path.is_dir() else "does not exist"
                raise FileNotFoundError(
                    f"{where}: `{field_name}` {str(path)!r} {state}. Fix the path or remove the pair."
                )
        if os.path.samefile(pair.before, pair.after):
            raise ValueError(
                f"{where}: `before` and `after` are the same file, {str(pair.before)!r}, so the pair shows no concept. "
                "Point `after` at the image with the concept."
            )
        before_size = _image_size(pair.before, where=f"{where}: `before`")
        after_size = _image_size(pair.after, where=f"{where}: `after`")
        if before_size != after_size:
            raise ValueError(
                f"{where}: the images differ in size, `before` {str(pair.before)!r} is "
                f"{before_size[0]}x{before_size[1]} and `after` {str(pair.after)!r} is {after_size[0]}x{after_size[1]} "
                "(width x height). A pair must differ only in the concept, with the same framing: resize or crop them "
                "alike."
            )
        key = (pair.before.resolve(), pair.after.resolve())
        if key in seen:
            raise ValueError(
                f"{where} repeats pair {seen[key]!r} (`before` {str(pair.before)!r}, `after` {str(pair.after)!r}). "
                "Remove the duplicate; to weigh pairs, repeat the dataset instead."
            )
        if key[::-1] in seen:
            raise ValueError(
                f"{where} is pair {seen[key[::-1]]!r} reversed (`before` {str(pair.before)!r}, `after` "
                f"{str(pair.after)!r}): the slider would learn the direction and its opposite. Remove one of them."
            )
        seen[key] = pair.name


class ImagePairDataset(Dataset):
    """Image pairs as a slider backend: each sample is a pair's two images, squared alike, and its caption.

    Each sample is `{"before": tensor, "after": tensor, "caption": str, "slider_strength": float, "pair": str}`: both
    images read with `peft_slider.training.data.read_image` (RGB, shorter edge resized to `resolution`, center-cropped,
    float32 `(3, resolution, resolution)` in [-1, 1]), exactly as `ImageCaptionFolder` reads its images, so the two
    images of a pair stay aligned pixel for pixel. `slider_strength` is `s` (> 0): a batch trains its after images
    at `+s` and its before images at `-s` (`paired_slider_loss`), so `.backend` is a paired `SliderBackend`, which
    the sampler counts toward both directions.

    Every pair is checked when the dataset is built, before any training: both files exist, PIL reads them (their
    headers only), they are two different files of the same size, and no pair occurs twice or reversed. Errors name
    the pair (its file stem or manifest row), the field and the file.

    Beside other backends, concatenate with `torch.utils.data.ConcatDataset` in the order of the sampler's backends.

    Args:
        pairs (`Sequence[ImagePair]`):
            The pairs, at least one.
        resolution (`int`):
            Edge of the square output images in pixels.
        slider_strength (`float`, *optional*, defaults to `1.0`):
            `s` (finite, > 0): after images train at `+s`, before images at `-s`.
        name (`str`, *optional*):
            The backend's name in the sampler's messages and batch infos.

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from peft_slider.training import ImagePair, ImagePairDataset
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (32, 32), (0, 0, 0)).save(folder / "dark.png")
    >>> Image.new("RGB", (32, 32), (255, 255, 255)).save(folder / "light.png")
    >>> pairs = ImagePairDataset(
    ...     [ImagePair(folder / "dark.png", folder / "light.png", "a square", "square")], resolution=8, name="light"
    ... )
    >>> sample = pairs[0]
    >>> tuple(sample["after"].shape), sample["after"].mean().item(), sample["before"].mean().item()
    ((3, 8, 8), 1.0, -1.0)
    >>> sample["caption"], sample["slider_strength"], pairs.backend.paired
    ('a square', 1.0, True)
    ```
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        *,
        resolution: int,
        slider_strength: float = 1.0,
        name: str | None = None,
    ):
        if isinstance(pairs, (str, bytes, os.PathLike, ImagePair)) or not isinstance(pairs, Sequence):
            raise TypeError(
                f"`pairs` must be a sequence of ImagePair, got {type(pairs).__name__}. To read a folder or a "
                "manifest, use `load_image_pairs(path, resolution=...)`."
            )
        if len(pairs) == 0:
            raise ValueError("`pairs` is empty; a paired-image slider needs at least one pair.")
        self.resolution = _check_resolution(resolution)
        strength = _check_pair_strength(slider_strength, argument="slider_strength")
        _check_pairs(pairs)
        self._pairs = tuple(pairs)
        self._backend = SliderBackend(self, slider_strength=strength, name=name, paired=True)

    @property
    def pairs(self) -> tuple[ImagePair, ...]:
        """The pairs, in sample order; read-only."""
        return self._pairs

    @property
    def backend(self) -> SliderBackend:
        """This dataset as a paired `SliderBackend` (strength `s`, counted toward both directions)."""
        return self._backend

    @property
    def slider_strength(self) -> float:
        """`s`: after images train at `+s`, before images at `-s`; read-only."""
        return self._backend.strength

    @property
    def name(self) -> str | None:
        """The backend's name; read-only."""
        return self._backend.name

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self._pairs[index]
        return {
            "before": read_image(pair.before, resolution=self.resolution),
            "after": read_image(pair.after, resolution=self.resolution),
            "caption": pair.caption,
            "slider_strength": self.slider_strength,
            "pair": pair.name,
        }

    def __repr__(self) -> str:
        return (
            f"ImagePairDataset(name={self.name!r}, pairs={len(self)}, resolution={self.resolution}, "
            f"slider_strength={self.slider_strength!r})"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Reading pairs from a folder or a manifest


def load_image_pairs(
    path: str | os.PathLike,
    *,
    resolution: int,
    slider_strength: float = 1.0,
    caption: str | None = None,
    name: str | None = None,
) -> ImagePairDataset:
    """Read image pairs from a folder or a manifest, check all of them, and return them as an `ImagePairDataset`.

    A folder holds two subfolders, `before/` (without the concept) and `after/` (with it). Images (suffixes of
    `IMAGE_EXTENSIONS`, any case, searched recursively) pair up by their path inside the subfolder without the
    suffix, so `before/men/01.jpg` pairs with `after/men/01.png`; that path (`"men/01"`) names the pair. Hidden
    entries (`.DS_Store`, `._01.png`, `.cache/`) and files with other suffixes are ignored, as in
    `ImageCaptionFolder`. Every image needs its partner.

    A manifest is a `.json` file holding a list of `{"before": ..., "after": ..., "caption": ...}` objects (or
    `{"pairs": [...]}`), or a `.csv` file whose header names the columns `before`, `after` and optionally
    `caption`. Paths are relative to the manifest's folder (absolute paths and `~` work too). A pair is named by its
    row: `"pairs.json entry 0"` (counted from 0), `"pairs.csv line 2"` (the file's line, the header being line 1).
    Manifests are UTF-8 (a byte-order mark is allowed).

    Captions: in a folder, `<stem>.txt` beside the before or the after image (the whole file, stripped; if both
    exist they must agree). In a manifest, the `caption` field; an empty CSV cell or a missing / null JSON field
    counts as none. A pair without a caption gets `caption`; if that is None too, loading fails listing the pairs
    without one: pass `caption=""` to train them without a caption on purpose.

    Args:
        path (`str` or `os.PathLike`):
            The folder, or the `.json` / `.csv` manifest.
        resolution (`int`):
            Edge of the square output images in pixels.
        slider_strength (`float`, *optional*, defaults to `1.0`):
            `s` (finite, > 0): after images train at `+s`, before images at `-s`.
        caption (`str`, *optional*):
            The caption of pairs that have none of their own.
        name (`str`, *optional*):
            The backend's name; defaults to the folder's name or the manifest's stem.

    Returns:
        `ImagePairDataset`: the pairs in a fixed order (the folder's sorted stems, or the manifest's rows).

    Raises:
        `FileNotFoundError`: `path`, a subfolder or a pair's file is missing.
        `ValueError`: anything else wrong with the data, naming the file, the row, the field and the value: an image
            without partner, two images of a pair with different sizes, a file PIL cannot read, a pair whose before
            and after are the same file, a duplicate or reversed pair, no pair at all, an unknown manifest field (the
            message lists the known ones), a bad CSV header, a file that is not UTF-8, a missing caption, or a bad
            `resolution` / `slider_strength`.

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from peft_slider.training import load_image_pairs
    >>> root = Path(tempfile.mkdtemp())
    >>> for side, shade in (("before", 40), ("after", 200)):
    ...     (root / side).mkdir()
    ...     Image.new("RGB", (24, 16), (shade, shade, shade)).save(root / side / "wall.png")
    >>> _ = (root / "after" / "wall.txt").write_text("a wall")
    >>> pairs = load_image_pairs(root, resolution=8, slider_strength=0.5, name="lighter")
    >>> pairs
    ImagePairDataset(name='lighter', pairs=1, resolution=8, slider_strength=0.5)
    >>> pairs.pairs[0].name, pairs[0]["caption"]
    ('wall', 'a wall')
    >>> _ = (root / "pairs.csv").write_text("before,after,caption\\nbefore/wall.png,after/wall.png,a wall\\n")
    >>> load_image_pairs(root / "pairs.csv", resolution=8).pairs[0].name
    'pairs.csv line 2'
    ```
    """
    resolution = _check_resolution(resolution)
    slider_strength = _check_pair_strength(slider_strength, argument="slider_strength")
    if caption is not None and not isinstance(caption, str):
        raise TypeError(f"`caption` must be a string or None, got {show_value(caption)}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a folder or a manifest path, got {type(path).__name__}.")
    path = Path(path).expanduser()
    if path.is_dir():
        pairs = _folder_pairs(path, caption)
        default_name = path.resolve().name
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            pairs = _manifest_pairs(path, _json_rows(path), caption)
        elif suffix == ".csv":
            pairs = _manifest_pairs(path, _csv_rows(path), caption)
        else:
            raise ValueError(
                f"`path` {str(path)!r} is a {path.suffix or 'suffix-less'} file; give a folder holding before/ and "
                "after/, or a .json or .csv manifest."
            )
        default_name = path.stem
    else:
        raise FileNotFoundError(
            f"`path` {str(path)!r} does not exist; give a folder holding before/ and after/, or a .json or .csv "
            "manifest."
        )
    if not pairs:
        raise ValueError(
            f"{str(path)!r} holds no image pair. Add pairs (before/ and after/ images of the same name, or manifest "
            "rows)."
        )
    return ImagePairDataset(
        pairs, resolution=resolution, slider_strength=slider_strength, name=default_name if name is None else name
    )


def _folder_images(folder: Path) -> dict[str, Path]:
    """The images of `folder`, keyed by their path inside it without the suffix; hidden entries skipped."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a folder. A pairs folder holds before/ (images without the concept) and after/ "
            "(the same images with it), matched by file name; or give a .json / .csv manifest."
        )
    suffixes = set(IMAGE_EXTENSIONS)
    images: dict[str, Path] = {}
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder)
        if path.suffix.lower() not in suffixes or any(part.startswith(".") for part in relative.parts):
            continue
        if not path.is_file():
            continue
        key = relative.with_suffix("").as_posix()
        if key in images:
            raise ValueError(
                f"{str(images[key])!r} and {str(path)!r} have the same name {key!r} in {str(folder)!r}, so which one "
                "is the pair's image is ambiguous. Rename or remove one."
            )
        images[key] = path
    return images


def _folder_pairs(root: Path, default_caption: str | None) -> list[ImagePair]:
    before = _folder_images(root / "before")
    after = _folder_images(root / "after")
    for images, other, side, other_side in ((before, after, "before", "after"), (after, before, "after", "before")):
        lonely = [f"{side}/{images[key].relative_to(root / side).as_posix()}" for key in images if key not in other]
        if lonely:
            raise ValueError(
                f"{_show_list(lonely)} in {str(root)!r} {'has' if len(lonely) == 1 else 'have'} no partner in "
                f"{other_side}/ (an image of the same name, any of {', '.join(IMAGE_EXTENSIONS)}). Add the "
                f"{other_side} image or remove the lonely one."
            )
    pairs, missing = [], []
    for key in sorted(before):
        texts = {}
        for side, images in (("before", before), ("after", after)):
            text_file = images[key].with_suffix(".txt")
            if text_file.is_file():
                texts[side] = (text_file, read_text(text_file, what="The caption file").strip())
        if len(texts) == 2 and texts["before"][1] != texts["after"][1]:
            (before_file, before_text), (after_file, after_text) = texts["before"], texts["after"]
            raise ValueError(
                f"Pair {key!r} has two different captions, {before_text[:80]!r} in {str(before_file)!r} and "
                f"{after_text[:80]!r} in {str(after_file)!r}. Both images are trained with one caption: keep one "
                "file, or make them agree."
            )
        if texts:
            text = next(iter(texts.values()))[1]
        elif default_caption is not None:
            text = default_caption
        else:
            missing.append(key)
            continue
        pairs.append(ImagePair(before[key], after[key], text, key))
    if missing:
        raise ValueError(
            f"{len(missing)} pair(s) in {str(root)!r} have no caption: {_show_list(missing)}. Add <name>.txt beside "
            "the before or the after image, or pass `caption=` (caption='' trains them without one)."
        )
    return pairs


class _Row(NamedTuple):
    label: str
    fields: dict[str, Any]


def _manifest_text(path: Path) -> str:
    # Spreadsheets save CSV with a byte-order mark; it would otherwise become part of the first column's name.
    return read_text(path, what="The manifest").removeprefix("\ufeff")


def _json_rows(path: Path) -> list[_Row]:
    try:
        data = json.loads(_manifest_text(path), object_pairs_hook=refuse_duplicate_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"The manifest {str(path)!r} is not valid JSON: {error}.") from None
    except ValueError as error:  # a duplicate key
        raise ValueError(f"The manifest {str(path)!r}: {error}") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"pairs"})
        if unknown or "pairs" not in data:
            raise ValueError(
                f"The manifest {str(path)!r} is an object with the fields {sorted(data)}; the only known field is "
                '\'pairs\', a list of {"before", "after", "caption"} objects.'
            )
        data = data["pairs"]
    if not isinstance(data, list):
        raise ValueError(
            f'The manifest {str(path)!r} must hold a list of {{"before", "after", "caption"}} objects (or '
            f'{{"pairs": [...]}}), got {type(data).__name__}.'
        )
    rows = []
    for index, entry in enumerate(data):
        label = f"{path.name} entry {index}"
        if not isinstance(entry, dict):
            raise ValueError(
                f"{label} must be an object with the fields {list(_MANIFEST_FIELDS)}, got {show_value(entry)}."
            )
        rows.append(_Row(label, entry))
    return rows


def _csv_rows(path: Path) -> list[_Row]:
    reader = csv.reader(io.StringIO(_manifest_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(
                f"The manifest {str(path)!r} is empty; its first line must be the header {','.join(_MANIFEST_FIELDS)}."
            )
        columns = [column.strip() for column in header]
        unknown = [column for column in columns if column not in _MANIFEST_FIELDS]
        absent = [column for column in _REQUIRED_FIELDS if column not in columns]
        repeated = sorted({column for column in columns if columns.count(column) > 1})
        if unknown or absent or repeated:
            problems = [f"unknown {unknown}"] if unknown else []
            problems += [f"missing {absent}"] if absent else []
            problems += [f"repeated {repeated}"] if repeated else []
            raise ValueError(
                f"The header of the manifest {str(path)!r} (line 1) is {header!r}: {', '.join(problems)}. The known "
                f"columns are {list(_MANIFEST_FIELDS)} (caption optional), e.g. `before,after,caption`."
            )
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue  # a blank line
            label = f"{path.name} line {reader.line_num}"
            if len(cells) != len(columns):
                raise ValueError(
                    f"{label} has {len(cells)} cells, but the header names {len(columns)} columns {columns}: "
                    f"{cells!r}. Quote cells that hold commas."
                )
            # An empty cell is a missing value: CSV cannot tell "" from nothing.
            rows.append(_Row(label, {c: cell for c, cell in zip(columns, cells) if cell.strip()}))
    except csv.Error as error:
        raise ValueError(f"The manifest {str(path)!r} is not valid CSV (line {reader.line_num}): {error}.") from None
    return rows


def _manifest_pairs(manifest: Path, rows: list[_Row], default_caption: str | None) -> list[ImagePair]:
    pairs, missing = [], []
    for label, fields in rows:
        unknown = sorted(set(fields) - set(_MANIFEST_FIELDS))
        if unknown:
            raise ValueError(
                f"{label} has unknown field(s) {unknown}; the known fields are {list(_MANIFEST_FIELDS)}. Fix the "
                "spelling or remove them."
            )
        paths = {}
        for field_name in _REQUIRED_FIELDS:
            value = fields.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"{label}: `{field_name}` must be the path of an image, got {show_value(value)}. Give the path, "
                    "relative to the manifest's folder."
                )
            file = Path(value.strip()).expanduser()
            paths[field_name] = file if file.is_absolute() else manifest.parent / file
        text = fields.get("caption")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{label}: `caption` must be a string, got {show_value(text)}.")
        if text is None:
            if default_caption is None:
                missing.append(label)
                continue
            text = default_caption
        pairs.append(ImagePair(paths["before"], paths["after"], text, label))
    if missing:
        raise ValueError(
            f"{len(missing)} row(s) of {str(manifest)!r} have no caption: {_show_list(missing)}. Fill their `caption`, "
            "or pass `caption=` (caption='' trains them without one)."
        )
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# Training on pairs


def _check_images(after: Any, before: Any) -> None:
    for argument, value in (("after", after), ("before", before)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim < 2:
            shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"`{argument}` must be a floating-point tensor shaped (pairs, ...), got {shown}.")
    if after.shape != before.shape or after.dtype != before.dtype or after.device != before.device:
        raise ValueError(
            f"`after` {tuple(after.shape)} {after.dtype} on {after.device} and `before` {tuple(before.shape)} "
            f"{before.dtype} on {before.device} must match: pair i is after[i] and before[i]. Encode both images of "
            "every pair the same way."
        )


def paired_noisy_batch(
    objective: DenoisingObjective,
    after: torch.Tensor,
    before: torch.Tensor,
    *,
    strength: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
) -> tuple[NoisyBatch, torch.Tensor]:
    """Noise a batch of pairs as one batch of `2B` samples: the after images, then the before images.

    Sample `i` is `after[i]` and sample `B + i` is `before[i]`, both noised with the same noise and at the same
    timestep (drawn once for the `B` pairs, then repeated), so the two samples of a pair differ only by the concept.
    The strengths are `+s` for the after half and `-s` for the before half, for `SliderScaler.at(strengths)`.

    Args:
        objective (`DenoisingObjective`):
            The model family's objective (`objective_from_scheduler(pipe.scheduler)`).
        after (`torch.Tensor`):
            Latents of the after images, `(B, ...)`.
        before (`torch.Tensor`):
            Latents of the before images, shaped like `after`.
        strength (`float`):
            `s` (finite, > 0).
        generator (`torch.Generator`, *optional*):
            Source of the noise and timesteps, on the latents' device.
        noise (`torch.Tensor`, *optional*):
            One noise per pair, shaped like `after`; drawn when not given.
        timesteps (`torch.Tensor`, *optional*):
            One noise level per pair, `(B,)`, as `objective.add_noise` takes them; drawn when not given.

    Returns:
        `tuple[NoisyBatch, torch.Tensor]`: the `2B` noisy samples and targets, and the float32 strengths
        `[+s] * B + [-s] * B` on the latents' device.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import FlowMatchingObjective
    >>> from peft_slider.training.paired_images import paired_noisy_batch
    >>> after, before = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    >>> noisy, strengths = paired_noisy_batch(
    ...     FlowMatchingObjective(), after, before, strength=0.5, generator=torch.Generator().manual_seed(0)
    ... )
    >>> tuple(noisy.noisy.shape), strengths.tolist()
    ((4, 4, 8, 8), [0.5, 0.5, -0.5, -0.5])
    >>> torch.equal(noisy.noise[:2], noisy.noise[2:]), torch.equal(noisy.timesteps[:2], noisy.timesteps[2:])
    (True, True)
    ```
    """
    if not isinstance(objective, DenoisingObjective):
        raise TypeError(
            f"`objective` must be a DenoisingObjective (e.g. objective_from_scheduler(pipe.scheduler)), got "
            f"{type(objective).__name__}."
        )
    _check_images(after, before)
    strength = _check_pair_strength(strength, argument="strength")
    pairs = after.shape[0]
    if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != after.shape):
        shown = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(
            f"`noise` must be shaped like `after` {tuple(after.shape)}, one noise per pair (both images share it), "
            f"got {shown}."
        )
    if timesteps is not None and (not isinstance(timesteps, torch.Tensor) or timesteps.shape != (pairs,)):
        shown = tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else type(timesteps).__name__
        raise ValueError(f"`timesteps` must have shape ({pairs},), one noise level per pair, got {shown}.")
    first = objective.add_noise(after, noise=noise, timesteps=timesteps, generator=generator)
    # The noise level exactly as `add_noise` takes it back: sigmas for flow matching, integer timesteps for DDPM.
    levels = first.sigmas if objective.prediction_type == "flow_matching" else first.timesteps
    second = objective.add_noise(before, noise=first.noise, timesteps=levels)
    batch = NoisyBatch(*(torch.cat([a, b]) for a, b in zip(first, second)))
    strengths = torch.full((2 * pairs,), strength, dtype=torch.float32, device=after.device)
    strengths[pairs:] = -strength
    return batch, strengths


class PairedSliderLoss(NamedTuple):
    """The losses of one paired step.

    Attributes:
        loss (`torch.Tensor`): The float32 loss of the trained pass (after images at `+s`, before images at `-s`).
        base_loss (`torch.Tensor`): The same loss with the slider at 0 (no gradient): `base_loss - loss` is what the
            slider gains over the base model on this batch.
        strengths (`torch.Tensor`): The `2B` per-sample strengths of the trained pass.
    """

    loss: torch.Tensor
    base_loss: torch.Tensor
    strengths: torch.Tensor


def paired_slider_loss(
    predict: Callable[[NoisyBatch], torch.Tensor],
    scaler: SliderScaler,
    after: torch.Tensor,
    before: torch.Tensor,
    *,
    objective: DenoisingObjective,
    strength: float,
    generator: torch.Generator | None = None,
    backward: Callable[[torch.Tensor], Any] | None = None,
) -> PairedSliderLoss:
    """One training step on a batch of pairs: one forward pass at `+s` (after images) and `-s` (before images).

    The pairs are noised with `paired_noisy_batch`; the denoiser runs once on the `2B` samples inside
    `scaler.at(strengths)`, and `backward(loss)` is called inside that block, because with gradient checkpointing the
    forward pass runs again during backward and must see the same strengths. Then one no-gradient pass with the
    slider at 0 gives `base_loss`.

    Args:
        predict (`Callable[[NoisyBatch], torch.Tensor]`):
            Runs the denoiser on `noisy.noisy` at `noisy.timesteps` (or `.sigmas`, as the family takes them) and
            returns the prediction shaped like `noisy.noisy`. It closes over the conditioning, which must be built for
            `2B` samples: the pairs' caption embeddings repeated `[c, c]`, as the batch is `[after, before]`.
        scaler (`SliderScaler`):
            The slider's scaler on the denoiser.
        after (`torch.Tensor`):
            Latents of the after images, `(B, ...)`.
        before (`torch.Tensor`):
            Latents of the before images, shaped like `after`.
        objective (`DenoisingObjective`):
            The model family's objective.
        strength (`float`):
            `s` (finite, > 0), e.g. `ImagePairDataset.slider_strength` or `batch_strength(batch)`.
        generator (`torch.Generator`, *optional*):
            Source of the noise and timesteps.
        backward (`Callable[[torch.Tensor], Any]`, *optional*):
            Called with the loss inside the strength block, e.g. `accelerator.backward` or `torch.Tensor.backward`.

    Returns:
        `PairedSliderLoss`

    Example:

    ```py
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> from peft_slider.training import EpsilonObjective, SliderScaler
    >>> from peft_slider.training.paired_images import paired_slider_loss
    >>> _ = torch.manual_seed(0)
    >>> model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), LoraConfig(target_modules=["0"]))
    >>> objective = EpsilonObjective(torch.linspace(0.99, 0.01, 100))
    >>> step = paired_slider_loss(
    ...     lambda noisy: model(noisy.noisy), SliderScaler(model), torch.ones(3, 8), torch.zeros(3, 8),
    ...     objective=objective, strength=1.0, generator=torch.Generator().manual_seed(0), backward=torch.Tensor.backward,
    ... )
    >>> step.strengths.tolist()
    [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    >>> torch.equal(step.loss.detach(), step.base_loss)  # a fresh LoRA (B = 0) is the base model
    True
    >>> model.base_model.model[0].lora_B["default"].weight.grad.abs().sum() > 0
    tensor(True)
    ```
    """
    if not callable(predict):
        raise TypeError(f"`predict` must be a callable taking the NoisyBatch, got {type(predict).__name__}.")
    if backward is not None and not callable(backward):
        raise TypeError(f"`backward` must be a callable taking the loss, or None, got {type(backward).__name__}.")
    noisy, strengths = paired_noisy_batch(objective, after, before, strength=strength, generator=generator)
    with scaler.at(strengths):
        loss = objective.loss(_prediction(predict, noisy), noisy.target)
        if backward is not None:
            backward(loss)
    with torch.no_grad(), scaler.at(0.0):
        base_loss = objective.loss(_prediction(predict, noisy), noisy.target)
    return PairedSliderLoss(loss, base_loss, strengths)


def _prediction(predict: Callable[[NoisyBatch], torch.Tensor], noisy: NoisyBatch) -> torch.Tensor:
    prediction = predict(noisy)
    if not isinstance(prediction, torch.Tensor) or prediction.shape != noisy.noisy.shape:
        shown = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
        raise ValueError(
            f"`predict` must return a tensor shaped like `noisy.noisy` {tuple(noisy.noisy.shape)} (after and before "
            f"samples of every pair), got {shown}. Unpack the denoiser's output (e.g. `.sample`) and build the "
            "conditioning for 2B samples, the captions' embeddings repeated [c, c]."
        )
    return prediction
