# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Slider datasets: samples that carry their `slider_strength`, an image + caption folder, SimpleTuner configs.

`SliderDataset` wraps any map-style dataset so each sample (and so each batch collated by torch's default collate)
carries the signed strength of its backend; `batch_strength` reads it back. `SliderConcatDataset` concatenates the
wrapped backends in the order `SliderBatchSampler` indexes them. `ImageCaptionFolder` and
`load_simpletuner_backends` turn a SimpleTuner dataloader JSON into such backends. `read_image` (open, RGB, square)
and `read_text` (UTF-8, with an error naming the file) are the readers the image datasets here and in
`peft_slider.training.paired_images` share.

Only torch and PIL are needed (PIL for the image readers).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..utils.checks import check_int, is_finite_number, show_value
from .sampler import SliderBackend

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageCaptionFolder",
    "SliderConcatDataset",
    "SliderDataset",
    "batch_strength",
    "load_simpletuner_backends",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Bounds that keep every size an int64 and every value a float: beyond them a value is a typo, not a setting.
_MAX_RESOLUTION = 65536
_MAX_REPEATS = 10_000

STRENGTH_KEY = "slider_strength"


class SliderDataset(Dataset):
    """Wrap a map-style dataset as one slider backend: every sample gets the backend's `slider_strength`.

    A sample that is a mapping is returned as a new dict with `"slider_strength"` added. Any other sample (a tensor,
    a tuple, ...) is returned as `{"sample": sample, "slider_strength": strength}`. The strength is a Python float,
    0.0 for a neutral backend (`slider_strength` None or 0), so torch's default collate turns it into a float64
    tensor of shape `(batch_size,)`.

    Args:
        dataset (`Dataset`):
            The map-style dataset (with `__len__` and `__getitem__`).
        slider_strength (`float`, *optional*, defaults to `None`):
            The backend's signed strength; None or 0 marks a neutral backend.
        probability (`float`, *optional*, defaults to `1.0`):
            Weight of this backend within its group, see `SliderBackend`.
        name (`str`, *optional*, defaults to `None`):
            The backend's name in errors, warnings and `SliderBatchSampler.batch_info`.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import SliderDataset
    >>> more = SliderDataset([torch.zeros(2)] * 3, slider_strength=0.8, name="more")
    >>> more[0]
    {'sample': tensor([0., 0.]), 'slider_strength': 0.8}
    >>> more.backend.group
    'positive'
    ```
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        slider_strength: float | None = None,
        probability: float = 1.0,
        name: str | None = None,
    ):
        self.dataset = dataset
        # One backend, built (and validated) once: the strength the sampler plans with is the one samples carry.
        self._backend = SliderBackend(self, slider_strength=slider_strength, probability=probability, name=name)
        self._strength = self._backend.strength

    @property
    def backend(self) -> SliderBackend:
        """This dataset as a `SliderBackend` for `SliderBatchSampler`."""
        return self._backend

    @property
    def slider_strength(self) -> float | None:
        """The backend's signed strength as given (None for a neutral backend); read-only."""
        return self._backend.slider_strength

    @property
    def probability(self) -> float:
        """The backend's weight within its group; read-only."""
        return self._backend.probability

    @property
    def name(self) -> str | None:
        """The backend's name; read-only."""
        return self._backend.name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if not isinstance(sample, Mapping):
            return {"sample": sample, STRENGTH_KEY: self._strength}
        if STRENGTH_KEY in sample and float(sample[STRENGTH_KEY]) != self._strength:
            raise ValueError(
                f"Sample {index} of backend {self.name!r} already has `slider_strength` {sample[STRENGTH_KEY]!r}, "
                f"which contradicts the backend's {self._strength!r}. Remove the field from the samples or make "
                "them agree."
            )
        return {**sample, STRENGTH_KEY: self._strength}

    def __repr__(self) -> str:
        return (
            f"SliderDataset(name={self.name!r}, slider_strength={self.slider_strength!r}, "
            f"probability={self.probability!r}, samples={len(self)})"
        )


class SliderConcatDataset(ConcatDataset):
    """Concatenate `SliderDataset`s in the order `SliderBatchSampler` numbers them; `.backends` feeds the sampler.

    Args:
        datasets (`Iterable[SliderDataset]`):
            The backends, each a `SliderDataset`.

    Example:

    ```py
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> from peft_slider.training import SliderBatchSampler, SliderConcatDataset, SliderDataset, batch_strength
    >>> dataset = SliderConcatDataset([
    ...     SliderDataset(torch.arange(4.0), slider_strength=1.0, name="more"),
    ...     SliderDataset(torch.arange(4.0), slider_strength=-1.0, name="less"),
    ... ])
    >>> sampler = SliderBatchSampler(dataset.backends, batch_size=2, seed=0)
    >>> loader = DataLoader(dataset, batch_sampler=sampler)
    >>> [batch_strength(batch) for batch in loader]
    [1.0, -1.0, 1.0, -1.0]
    ```
    """

    def __init__(self, datasets: Iterable[SliderDataset]):
        datasets = list(datasets)
        if not datasets:
            raise ValueError("`datasets` is empty; give at least one SliderDataset.")
        for i, dataset in enumerate(datasets):
            if not isinstance(dataset, SliderDataset):
                raise TypeError(
                    f"`datasets[{i}]` must be a SliderDataset, got {type(dataset).__name__}. Wrap it as "
                    "`SliderDataset(dataset, slider_strength=..., name=...)`."
                )
        super().__init__(datasets)

    @property
    def backends(self) -> list[SliderBackend]:
        """The backends, in concatenation order, for `SliderBatchSampler(dataset.backends, ...)`."""
        return [dataset.backend for dataset in self.datasets]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if isinstance(index, (list, tuple)) or (isinstance(index, torch.Tensor) and index.dim() > 0):
            shown = list(index[:4]) + (["..."] if len(index) > 4 else [])
            shown = "[" + ", ".join(str(int(i)) if i != "..." else i for i in shown) + "]"
            # torch's ConcatDataset would fail on `index < 0` with "'<' not supported between 'list' and 'int'".
            raise TypeError(
                f"SliderConcatDataset got the index {shown}, a whole batch: a SliderBatchSampler was passed as "
                "`sampler=`, so the DataLoader batched its batches. Pass it as "
                "`DataLoader(dataset, batch_sampler=sampler)`."
            )
        return super().__getitem__(index)


def batch_strength(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> float:
    """Return the single `slider_strength` of a batch of `SliderDataset` samples.

    Accepts a batch collated by torch's default collate (a dict whose `"slider_strength"` is a tensor) or an
    uncollated list of sample dicts. Raises if the batch mixes strengths, which means it was not drawn by
    `SliderBatchSampler`.

    Args:
        batch (`Mapping` or `Sequence[Mapping]`): The batch.

    Example:

    ```py
    >>> import torch
    >>> from peft_slider.training import batch_strength
    >>> batch_strength({"pixel_values": torch.zeros(2, 3), "slider_strength": torch.tensor([-0.5, -0.5])})
    -0.5
    ```
    """
    if isinstance(batch, Mapping):
        if STRENGTH_KEY not in batch:
            raise ValueError(
                f"The batch has no 'slider_strength' field (keys: {sorted(batch)}). Wrap each backend's dataset in "
                "SliderDataset so its samples carry their strength."
            )
        value = batch[STRENGTH_KEY]
        if isinstance(value, torch.Tensor):
            values = value.reshape(-1).tolist()
        elif isinstance(value, (list, tuple)):
            values = list(value)
        else:
            values = [value]
    elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        values = []
        for i, sample in enumerate(batch):
            if not isinstance(sample, Mapping) or STRENGTH_KEY not in sample:
                raise ValueError(
                    f"Sample {i} of the batch has no 'slider_strength' field. Wrap each backend's dataset in "
                    "SliderDataset so its samples carry their strength."
                )
            values.append(sample[STRENGTH_KEY])
    else:
        raise TypeError(f"`batch` must be a dict or a list of sample dicts, got {type(batch).__name__}.")
    if not values:
        raise ValueError("The batch is empty; it has no strength.")
    strengths = sorted({float(v) for v in values})
    if len(strengths) > 1:
        raise ValueError(
            f"The batch mixes slider strengths {strengths}. Draw batches with "
            "`DataLoader(dataset, batch_sampler=SliderBatchSampler(...))` so each batch has one strength."
        )
    return strengths[0]


class ImageCaptionFolder(Dataset):
    """Images of a folder (searched recursively, hidden entries skipped) with their captions.

    Each sample is `{"pixel_values": tensor, "caption": str, "path": str}`: the image in RGB, its shorter edge
    resized to `resolution` (bicubic), center-cropped to `resolution x resolution`, as a float32 tensor `(3, H, W)`
    in [-1, 1].

    Captions (`caption_strategy`), as in SimpleTuner:
    - `"textfile"`: from `<image stem>.txt` beside the image; each non-empty line is a caption variant (unless
      `disable_multiline_split`), and one variant is drawn at random (torch's generator) each time.
    - `"filename"`: the file stem with underscores turned into spaces.
    - `"instanceprompt"`: `instance_prompt` for every image.
    With `prepend_instance_prompt`, `instance_prompt` and a space come before every caption.

    Args:
        root (`str` or `os.PathLike`):
            The folder.
        resolution (`int`, *optional*, defaults to `512`):
            Edge of the square output images in pixels.
        caption_strategy (`str`, *optional*, defaults to `"textfile"`):
            `"textfile"`, `"filename"` or `"instanceprompt"`.
        instance_prompt (`str`, *optional*):
            Required by `"instanceprompt"` and `prepend_instance_prompt`.
        prepend_instance_prompt (`bool`, *optional*, defaults to `False`):
            Put `instance_prompt` before each caption.
        disable_multiline_split (`bool`, *optional*, defaults to `False`):
            Read a caption file as one caption, line breaks included.
        extensions (`Sequence[str]`, *optional*, defaults to `IMAGE_EXTENSIONS`):
            Image file suffixes to pick up (case-insensitive).

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from peft_slider.training import ImageCaptionFolder
    >>> folder = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (48, 32), (255, 0, 0)).save(folder / "red.png")
    >>> _ = (folder / "red.txt").write_text("a red square")
    >>> sample = ImageCaptionFolder(folder, resolution=16)[0]
    >>> tuple(sample["pixel_values"].shape), sample["caption"]
    ((3, 16, 16), 'a red square')
    ```
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        resolution: int = 512,
        caption_strategy: str = "textfile",
        instance_prompt: str | None = None,
        prepend_instance_prompt: bool = False,
        disable_multiline_split: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"`root` {str(root)!r} is not an existing folder; point it at the image folder.")
        check_int(
            resolution, argument="resolution", low=1, high=_MAX_RESOLUTION, bounds=f"[1, {_MAX_RESOLUTION}] (pixels)"
        )
        strategies = ("textfile", "filename", "instanceprompt")
        if caption_strategy not in strategies:
            raise ValueError(f"`caption_strategy` must be one of {strategies}, got {caption_strategy!r}.")
        if (caption_strategy == "instanceprompt" or prepend_instance_prompt) and not instance_prompt:
            raise ValueError(
                f"`instance_prompt` is required with caption_strategy={caption_strategy!r} and "
                f"prepend_instance_prompt={prepend_instance_prompt!r}, got {instance_prompt!r}."
            )
        suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        self.root = root
        self.resolution = resolution
        self.caption_strategy = caption_strategy
        self.paths = sorted(
            (
                path
                for path in root.rglob("*")
                if path.suffix.lower() in suffixes
                and path.is_file()
                and not any(part.startswith(".") for part in path.relative_to(root).parts)
            ),
            key=lambda path: path.relative_to(root).as_posix(),
        )
        prefix = instance_prompt + " " if prepend_instance_prompt else ""
        self.captions: list[list[str]] = []
        missing = []
        for path in self.paths:
            if caption_strategy == "instanceprompt":
                variants = [instance_prompt]
            elif caption_strategy == "filename":
                variants = [path.stem.replace("_", " ").strip()]
            else:
                text_file = path.with_suffix(".txt")
                if not text_file.is_file():
                    missing.append(text_file.name)
                    continue
                text = read_text(text_file, what="The caption file").strip()
                lines = [line.strip() for line in text.splitlines() if line.strip()]
                variants = [text] if disable_multiline_split or not lines else lines
            self.captions.append([prefix + v if prefix else v for v in variants])
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"caption_strategy='textfile' needs a .txt caption beside every image in {str(root)!r}; missing: "
                f"{shown}. Add them or use caption_strategy='filename' or 'instanceprompt'."
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        pixel_values = read_image(path, resolution=self.resolution)
        variants = self.captions[index]
        caption = variants[0] if len(variants) == 1 else variants[int(torch.randint(len(variants), ()).item())]
        return {"pixel_values": pixel_values, "caption": caption, "path": str(path)}

    def __repr__(self) -> str:
        return f"ImageCaptionFolder(root={str(self.root)!r}, images={len(self)}, resolution={self.resolution})"


def read_text(path: str | os.PathLike, *, what: str) -> str:
    """Read a text file as UTF-8, with an error that names the file and says how to fix it.

    Args:
        path (`str` or `os.PathLike`): The file.
        what (`str`): What the file is, to begin the error message with (`"The caption file"`, `` "`config`" ``).

    Raises:
        `ValueError`: the file is not UTF-8, naming the file, the reason and the byte offset.

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from peft_slider.training.data import read_text
    >>> path = Path(tempfile.mkdtemp()) / "caption.txt"
    >>> _ = path.write_bytes(b"caf\\xe9")
    >>> read_text(path, what="The caption file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The caption file '...caption.txt' is not UTF-8 text (unexpected end of data at byte 3). Re-save it as UTF-8.
    ```
    """
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {str(path)!r} is not UTF-8 text ({error.reason} at byte {error.start}). Re-save it as UTF-8."
        ) from None


def read_image(path: str | os.PathLike, *, resolution: int) -> torch.Tensor:
    """Read an image as a square training tensor, the way every image dataset of this package does.

    The image is converted to RGB, its shorter edge resized to `resolution` (bicubic) and center-cropped to
    `resolution x resolution`, then returned as a float32 tensor `(3, resolution, resolution)` in [-1, 1].
    `ImageCaptionFolder` and `peft_slider.training.paired_images.ImagePairDataset` both read their images with it, so
    the two images of a pair are squared exactly like a folder's images.

    Args:
        path (`str` or `os.PathLike`): The image file.
        resolution (`int`): Edge of the square output in pixels.

    Raises:
        `OSError`: the file cannot be read as an image, naming the file (PIL's own messages do not).

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from peft_slider.training.data import read_image
    >>> path = Path(tempfile.mkdtemp()) / "wide.png"
    >>> Image.new("RGB", (48, 32), (255, 0, 0)).save(path)
    >>> pixels = read_image(path, resolution=16)
    >>> tuple(pixels.shape), pixels[:, 0, 0].tolist()
    ((3, 16, 16), [1.0, -1.0, -1.0])
    ```
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL's messages ("image file is truncated") do not say which of thousands of files is broken.
        raise OSError(
            f"Cannot read the image {str(path)!r} ({error}). Re-save the file or remove it from the dataset."
        ) from error
    return _square_tensor(image, resolution)


def _square_tensor(image, resolution: int) -> torch.Tensor:
    from PIL import Image

    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return pixels.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class _RepeatedDataset(Dataset):
    # SimpleTuner's `repeats: n` shows every sample n + 1 times per epoch; as distinct indices, so the sampler's
    # "each index once per epoch" still holds.
    def __init__(self, dataset: Dataset, times: int):
        self.dataset = dataset
        self.times = times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


# SimpleTuner dataloader fields, by how the loader treats them.
_USED_FIELDS = {
    "id",
    "type",
    "dataset_type",
    "instance_data_dir",
    "slider_strength",
    "probability",
    "caption_strategy",
    "instance_prompt",
    "prepend_instance_prompt",
    "only_instance_prompt",
    "disable_multiline_split",
    "disabled",
    "disable",
    "repeats",
    "resolution",
    "resolution_type",
}
# Image preparation, caching and metadata: they do not change which samples exist or their strength. Every image is
# resized and center-cropped to a square of `resolution` instead.
_IGNORED_FIELDS = {
    "crop",
    "crop_style",
    "crop_aspect",
    "crop_aspect_buckets",
    "minimum_image_size",
    "maximum_image_size",
    "target_downsample_size",
    "minimum_aspect_ratio",
    "maximum_aspect_ratio",
    "max_upscale_threshold",
    "cache_dir_vae",
    "cache_dir",
    "vae_cache_clear_each_epoch",
    "vae_cache_ondemand",
    "vae_cache_disable",
    "skip_file_discovery",
    "preserve_data_backend_cache",
    "metadata_backend",
    "metadata_update_interval",
    "text_embeds",
    "image_embeds",
    "conditioning_image_embeds",
    "cache_dir_conditioning_image_embeds",
    "hash_filenames",
    "default",
    "write_batch_size",
    "delete_unwanted_images",
    "delete_problematic_images",
    "delete_nsfw_images",
}
# Fields that change which samples are trained or how; refused unless they hold their neutral value.
_UNSUPPORTED_FIELDS = {
    "max_num_samples": (None,),
    "start_epoch": (None, 0, 1),
    "start_step": (None, 0, 1),
    "end_epoch": (None,),
    "end_step": (None,),
    "is_regularisation_data": (None, False),
    "is_regularization_data": (None, False),
    "conditioning_data": (None, [], ""),
    "conditioning": (None, []),
    "caption_shuffle": (None, {}, {"enable": False}),
    "grounding": (None, {}, {"enabled": False}),
}
# Cache entries, not image datasets.
_SKIPPED_DATASET_TYPES = {"text_embeds", "image_embeds", "conditioning_image_embeds"}


def load_simpletuner_backends(
    config: str | os.PathLike | Sequence[Mapping[str, Any]],
    *,
    resolution: int | None = None,
    base_dir: str | os.PathLike | None = None,
) -> list[SliderDataset]:
    """Load a SimpleTuner dataloader config (`multidatabackend.json`) as slider backends over image folders.

    Each enabled image entry becomes a `SliderDataset` named by its `id`, with its `slider_strength` and
    `probability`, over an `ImageCaptionFolder` of its `instance_data_dir`; `repeats: n` shows each image n + 1 times
    per epoch. Entries with `dataset_type` `text_embeds`, `image_embeds` or `conditioning_image_embeds` (caches) and
    disabled entries are skipped.

    Errors: a missing folder raises `FileNotFoundError`; a storage `type` other than `"local"`, a `dataset_type`
    other than `"image"`, a caption strategy other than textfile / filename / instanceprompt, and fields that change
    which samples are trained (`max_num_samples`, `start_*`/`end_*` schedules, regularisation, conditioning, caption
    shuffling, grounding) raise `ValueError`, as does an unknown field that looks like a misspelt field this loader
    reads (e.g. `"slider_strenght"`). Other unknown fields are ignored with a warning. Cropping, bucketing and cache
    fields are ignored silently: every image is resized and center-cropped to a square.

    Args:
        config (`str`, `os.PathLike` or `Sequence[Mapping]`):
            Path of the JSON file, or its already parsed list of entries.
        resolution (`int`, *optional*):
            Square image edge in pixels for every backend. Defaults to each entry's `resolution` (megapixels
            converted to an edge rounded to 64 for `resolution_type: "area"`), else 1024.
        base_dir (`str` or `os.PathLike`, *optional*):
            Folder that relative `instance_data_dir`s are resolved against. Defaults to the working directory, as
            in SimpleTuner.

    Returns:
        `list[SliderDataset]`: the backends in config order; pass them to `SliderConcatDataset`.

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from peft_slider.training import SliderConcatDataset, load_simpletuner_backends
    >>> root = Path(tempfile.mkdtemp())
    >>> for folder in ("smile", "frown"):
    ...     (root / folder).mkdir()
    ...     Image.new("RGB", (32, 32)).save(root / folder / f"{folder}_face.png")
    >>> config = [
    ...     {"id": "smile", "type": "local", "instance_data_dir": "smile", "caption_strategy": "filename",
    ...      "slider_strength": 0.5},
    ...     {"id": "frown", "type": "local", "instance_data_dir": "frown", "caption_strategy": "filename",
    ...      "slider_strength": -0.5},
    ...     {"id": "text-cache", "type": "local", "dataset_type": "text_embeds", "default": True, "cache_dir": "x"},
    ... ]
    >>> backends = load_simpletuner_backends(config, resolution=16, base_dir=root)
    >>> [(b.name, b.slider_strength, len(b)) for b in backends]
    [('smile', 0.5, 1), ('frown', -0.5, 1)]
    >>> SliderConcatDataset(backends)[1]["caption"]
    'frown face'
    ```
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"`config` {str(path)!r} is not a file; give the dataloader JSON's path.")
        text = read_text(path, what="`config`")
        try:
            entries = json.loads(text, object_pairs_hook=refuse_duplicate_keys)
        except json.JSONDecodeError as error:
            raise ValueError(f"`config` {str(path)!r} is not valid JSON: {error}.") from None
        except ValueError as error:  # a duplicate key
            raise ValueError(f"`config` {str(path)!r}: {error}") from None
    else:
        entries = config
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise ValueError(
            f"A SimpleTuner dataloader config is a list of backend entries, got {type(entries).__name__}."
        )
    if resolution is not None:
        check_int(
            resolution, argument="resolution", low=1, high=_MAX_RESOLUTION, bounds=f"[1, {_MAX_RESOLUTION}] (pixels)"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    datasets: list[SliderDataset] = []
    seen_ids: set[str] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"Entry {position} of the config must be a JSON object, got {entry!r}.")
        backend_id = entry.get("id")
        if not isinstance(backend_id, str) or not backend_id:
            raise ValueError(f"Entry {position} of the config needs a non-empty string `id`, got {backend_id!r}.")
        if backend_id in seen_ids:
            raise ValueError(f"Backend id {backend_id!r} occurs twice in the config; ids must be unique.")
        seen_ids.add(backend_id)
        where = f"backend {backend_id!r}"
        if _flag(where, entry, "disabled") or _flag(where, entry, "disable"):
            continue
        dataset_type = entry.get("dataset_type", "image")
        if dataset_type in _SKIPPED_DATASET_TYPES:
            continue
        datasets.append(_load_entry(backend_id, entry, dataset_type, resolution, base))
    if not datasets:
        raise ValueError("The config has no enabled image backend (entries with dataset_type 'image' or none).")
    return datasets


def _load_entry(
    backend_id: str, entry: Mapping[str, Any], dataset_type: Any, resolution: int | None, base: Path
) -> SliderDataset:
    where = f"backend {backend_id!r}"
    _check_fields(where, entry)
    if dataset_type != "image":
        raise ValueError(
            f"`dataset_type` {dataset_type!r} of {where} is not supported; only 'image' backends load here "
            "(text_embeds / image_embeds cache entries are skipped)."
        )
    storage = entry.get("type", "local")
    if storage != "local":
        raise ValueError(f"`type` {storage!r} of {where} is not supported; only 'local' folders load here.")
    folder = entry.get("instance_data_dir")
    if not isinstance(folder, str) or not folder:
        raise ValueError(f"{where} needs `instance_data_dir`, the path of its image folder, got {folder!r}.")
    folder_path = Path(folder).expanduser()
    if not folder_path.is_absolute():
        folder_path = base / folder_path
    if not folder_path.is_dir():
        raise FileNotFoundError(f"`instance_data_dir` of {where} is not an existing folder: {str(folder_path)!r}.")
    strategy = entry.get("caption_strategy", "filename")
    if _flag(where, entry, "only_instance_prompt"):
        strategy = "instanceprompt"
    if strategy not in ("textfile", "filename", "instanceprompt"):
        raise ValueError(
            f"`caption_strategy` {strategy!r} of {where} is not supported; use 'textfile', 'filename' or "
            "'instanceprompt'."
        )
    repeats = entry.get("repeats", 0)
    if repeats is None:
        repeats = 0
    check_int(
        repeats, argument=f"`repeats` of {where}", low=0, high=_MAX_REPEATS, hint="0 shows each image once per epoch."
    )
    edge = resolution if resolution is not None else _entry_resolution(where, entry)
    try:
        folder_dataset = ImageCaptionFolder(
            folder_path,
            resolution=edge,
            caption_strategy=strategy,
            instance_prompt=entry.get("instance_prompt"),
            prepend_instance_prompt=_flag(where, entry, "prepend_instance_prompt"),
            disable_multiline_split=_flag(where, entry, "disable_multiline_split"),
        )
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{where}: {error}") from None
    if len(folder_dataset) == 0:
        raise ValueError(
            f"{where} is empty: no image ({', '.join(IMAGE_EXTENSIONS)}) in {str(folder_path)!r}. Add images or "
            "disable the entry."
        )
    dataset = _RepeatedDataset(folder_dataset, repeats + 1) if repeats else folder_dataset
    probability = entry.get("probability", 1.0)
    return SliderDataset(
        dataset,
        slider_strength=entry.get("slider_strength"),
        probability=1.0 if probability is None else probability,
        name=backend_id,
    )


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A `json.loads` `object_pairs_hook` that refuses a key given twice in one object (a ValueError naming the key,
    both values and the object's `id` when it has one), where JSON readers keep the last without a word.

    Shared by the readers of JSON files in `training` (SimpleTuner configs, image-pair manifests).

    Example:

    ```py
    >>> import json
    >>> from peft_slider.training.data import refuse_duplicate_keys
    >>> json.loads('{"id": "smile_plus", "slider_strength": 1.0, "slider_strength": -1.0}',
    ...            object_pairs_hook=refuse_duplicate_keys)
    Traceback (most recent call last):
    ...
    ValueError: backend 'smile_plus' has the field `slider_strength` twice (1.0 and -1.0); JSON keeps only the last one. Keep one of them.

    ```
    """
    # A flipped `slider_strength` or a second "after" would otherwise go unnoticed.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            owner = dict(pairs).get("id")
            where = f"backend {owner!r}" if isinstance(owner, str) else "an object"
            raise ValueError(
                f"{where} has the field `{key}` twice ({result[key]!r} and {value!r}); JSON keeps only the last one. "
                "Keep one of them."
            )
        result[key] = value
    return result


def _flag(where: str, entry: Mapping[str, Any], key: str) -> bool:
    # Strict: the string "false" is truthy, and `"disabled": "false"` would silently drop the backend.
    value = entry.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        spelled = value.strip().lower() if isinstance(value, str) else None
        fix = f"write {spelled} without quotes" if spelled in ("true", "false") else "use true or false"
        raise ValueError(f"`{key}` of {where} must be true or false (a JSON boolean), got {value!r}; {fix}.")
    return value


def _check_fields(where: str, entry: Mapping[str, Any]):
    for key, allowed in _UNSUPPORTED_FIELDS.items():
        if key in entry and entry[key] not in allowed:
            raise ValueError(
                f"`{key}` = {entry[key]!r} in {where} is not supported by this loader (it changes which samples are "
                "trained). Remove it, or build the dataset yourself and wrap it in SliderDataset."
            )
    known = _USED_FIELDS | _IGNORED_FIELDS | set(_UNSUPPORTED_FIELDS)
    unknown = sorted(key for key in entry if key not in known)
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(_USED_FIELDS), n=1, cutoff=0.8)
        if close:
            raise ValueError(f"Unknown field {key!r} in {where}; did you mean {close[0]!r}? Fix the spelling.")
    if unknown:
        warnings.warn(f"Ignoring fields this loader does not know in {where}: {unknown}.", UserWarning, stacklevel=4)


def _entry_resolution(where: str, entry: Mapping[str, Any]) -> int:
    value = entry.get("resolution")
    if value is None:
        return 1024
    kind = entry.get("resolution_type", "pixel")
    # An edge of at most _MAX_RESOLUTION pixels, or that square's area in megapixels.
    limit, unit = (_MAX_RESOLUTION**2 // 1_000_000, "megapixels") if kind == "area" else (_MAX_RESOLUTION, "pixels")
    if not is_finite_number(value) or not 0 < value <= limit:
        raise ValueError(
            f"`resolution` of {where} must be a positive number of at most {limit} ({unit}), got {show_value(value)}."
        )
    if kind == "area":
        # Megapixels: the edge of a square of that area, rounded to a multiple of 64 like SimpleTuner's buckets.
        return max(64, round(math.sqrt(value * 1_000_000) / 64) * 64)
    if kind in ("pixel", "pixel_area"):
        return int(value)
    raise ValueError(f"`resolution_type` {kind!r} of {where} must be 'pixel', 'pixel_area' or 'area'.")
