# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests of peft_slider.training.data: strength-carrying datasets through real DataLoaders (workers included), the image +
caption folder on real PNG files, and the SimpleTuner dataloader-JSON loader."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from peft_slider.training.data import (
    ImageCaptionFolder,
    SliderConcatDataset,
    SliderDataset,
    batch_strength,
    load_simpletuner_backends,
)
from peft_slider.training.sampler import SliderBatchSampler


class Tagged(Dataset):
    """Samples that say where they come from: {"backend": k, "local": i} as tensors."""

    def __init__(self, backend: int, size: int):
        self.backend, self.size = backend, size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        return {"backend": torch.tensor(self.backend), "local": torch.tensor(index)}


def tagged_dataset(sizes_and_strengths):
    return SliderConcatDataset(
        SliderDataset(Tagged(k, size), slider_strength=strength, name=f"b{k}")
        for k, (size, strength) in enumerate(sizes_and_strengths)
    )


# --------------------------------------------------------------------------------------------------- wrapper


def test_slider_dataset_adds_the_strength_to_every_sample():
    wrapped = SliderDataset(Tagged(0, 3), slider_strength=-0.75, name="less")
    sample = wrapped[2]
    assert sample["slider_strength"] == -0.75
    assert sample["local"].item() == 2 and sample["backend"].item() == 0
    assert len(wrapped) == 3
    # Neutral: None and 0 both read as 0.0, a number the default collate can batch.
    assert SliderDataset(Tagged(0, 1))[0]["slider_strength"] == 0.0
    assert SliderDataset(Tagged(0, 1), slider_strength=0)[0]["slider_strength"] == 0.0
    # Non-dict samples are wrapped under "sample".
    plain = SliderDataset([(torch.ones(2), 7)], slider_strength=1.5)
    sample = plain[0]
    assert set(sample) == {"sample", "slider_strength"} and sample["sample"][1] == 7
    collated = default_collate([plain[0], plain[0]])
    assert collated["slider_strength"].dtype == torch.float64
    assert batch_strength(collated) == 1.5


def test_slider_dataset_refuses_a_contradicting_sample_strength():
    wrapped = SliderDataset([{"x": 1, "slider_strength": 0.5}], slider_strength=-0.5, name="less")
    with pytest.raises(ValueError, match=r"backend 'less' already has `slider_strength` 0.5.*contradicts"):
        wrapped[0]
    agreeing = SliderDataset([{"x": 1, "slider_strength": -0.5}], slider_strength=-0.5)
    assert agreeing[0] == {"x": 1, "slider_strength": -0.5}


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"slider_strength": torch.tensor([0.25, 0.25, 0.25])}, 0.25),
        ({"slider_strength": [-1.0, -1.0]}, -1.0),
        ({"slider_strength": 2.0}, 2.0),
        ([{"slider_strength": 0.0}, {"slider_strength": 0.0}], 0.0),
    ],
)
def test_batch_strength_reads_collated_and_uncollated_batches(batch, expected):
    assert batch_strength(batch) == expected


@pytest.mark.parametrize(
    ("batch", "error", "pattern"),
    [
        ({"slider_strength": torch.tensor([1.0, -1.0])}, ValueError, r"mixes slider strengths \[-1.0, 1.0\]"),
        ({"pixel_values": torch.zeros(1)}, ValueError, r"no 'slider_strength' field \(keys: \['pixel_values'\]\)"),
        ([{"slider_strength": 1.0}, {"x": 0}], ValueError, r"Sample 1 of the batch has no 'slider_strength'"),
        ({"slider_strength": []}, ValueError, r"The batch is empty"),
        (torch.zeros(2), TypeError, r"`batch` must be a dict or a list of sample dicts, got Tensor"),
    ],
)
def test_batch_strength_errors(batch, error, pattern):
    with pytest.raises(error, match=pattern):
        batch_strength(batch)


@pytest.mark.parametrize(
    ("factory", "error", "pattern"),
    [
        (
            lambda: SliderDataset([1], slider_strength="high", name="smile_plus"),
            ValueError,
            r"`slider_strength` of backend 'smile_plus' must be a finite number or None, got 'high'",
        ),
        (lambda: SliderDataset([], slider_strength=1.0, name="empty"), ValueError, r"backend 'empty' is empty"),
        (lambda: SliderConcatDataset([]), ValueError, r"`datasets` is empty"),
        (lambda: SliderConcatDataset([[1, 2]]), TypeError, r"`datasets\[0\]` must be a SliderDataset, got list"),
    ],
    ids=["text strength", "empty", "no datasets", "not wrapped"],
)
def test_wrapper_errors(factory, error, pattern):
    with pytest.raises(error, match=pattern):
        factory()


def test_concat_order_matches_the_sampler_indices():
    dataset = tagged_dataset([(3, 1.0), (2, -1.0), (4, None)])
    assert [b.name for b in dataset.backends] == ["b0", "b1", "b2"]
    assert [b.num_samples for b in dataset.backends] == [3, 2, 4]
    expected_backend = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert [dataset[i]["backend"].item() for i in range(len(dataset))] == expected_backend


# --------------------------------------------------------------------------------------------------- DataLoader


def test_dataloader_with_workers_yields_one_strength_per_batch():
    strengths = [0.5, 1.0, -0.5, -1.0, None]
    sizes = [9, 7, 10, 6, 5]
    dataset = tagged_dataset(list(zip(sizes, strengths)))
    sampler = SliderBatchSampler(dataset.backends, batch_size=3, seed=5)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    batches = list(loader)
    plan = sampler.plan()
    assert len(loader) == len(batches) == len(plan)
    seen = set()
    for batch, info in zip(batches, plan):
        backends = set(batch["backend"].tolist())
        assert backends == {info.backend_index}
        (k,) = backends
        assert batch_strength(batch) == (strengths[k] or 0.0) == info.slider_strength
        seen.update((k, i) for i in batch["local"].tolist())
    assert seen == {(k, i) for k, size in enumerate(sizes) for i in range(size)}


def test_resume_after_worker_prefetch_with_batches_consumed():
    dataset = tagged_dataset([(40, 1.0), (40, -1.0)])
    kwargs = dict(batch_size=2, seed=9)
    reference = [
        (b["backend"].tolist(), b["local"].tolist())
        for b in DataLoader(dataset, batch_sampler=SliderBatchSampler(dataset.backends, **kwargs))
    ]
    sampler = SliderBatchSampler(dataset.backends, **kwargs)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2, prefetch_factor=2)
    consumed = 0
    for _ in loader:
        consumed += 1
        if consumed == 5:
            break
    # The workers fetched ahead: the sampler's own count is past what training used.
    assert sampler.state_dict()["step"] > consumed
    state = json.loads(json.dumps(sampler.state_dict(batches_consumed=consumed)))  # plain values survive JSON
    resumed = SliderBatchSampler(dataset.backends, **kwargs)
    resumed.load_state_dict(state)
    rest = [(b["backend"].tolist(), b["local"].tolist()) for b in DataLoader(dataset, batch_sampler=resumed)]
    assert rest == reference[consumed:]


# --------------------------------------------------------------------------------------------------- images


def _png(path: Path, size=(32, 32), color=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def test_image_caption_folder_pixels_layout_and_range(tmp_path):
    # No resize (resolution = size): the tensor must be exact, channels first, rows top to bottom.
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 4, 4))  # top-left red
    image.paste((0, 0, 255), (4, 4, 8, 8))  # bottom-right blue
    image.save(tmp_path / "quad.png")
    (tmp_path / "quad.txt").write_text("four squares\n")
    sample = ImageCaptionFolder(tmp_path, resolution=8)[0]
    pixels = sample["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (3, 8, 8)
    assert sample["caption"] == "four squares" and sample["path"] == str(tmp_path / "quad.png")
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]), atol=0.0, rtol=0.0)
    torch.testing.assert_close(pixels[:, 7, 7], torch.tensor([-1.0, -1.0, 1.0]), atol=0.0, rtol=0.0)
    torch.testing.assert_close(pixels[:, 0, 7], torch.tensor([-1.0, -1.0, -1.0]), atol=0.0, rtol=0.0)


def test_image_caption_folder_resizes_the_short_edge_and_center_crops(tmp_path):
    # 64x32, left half black, right half white -> short edge 16: 32x16, center crop keeps x in [8, 24): the left
    # half of the crop is black and the right half white. Bicubic rings at the edge, so stay 2 px away from it
    # and allow 0.05 (a few levels of 255).
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    image.paste((255, 255, 255), (32, 0, 64, 32))
    image.save(tmp_path / "half.png")
    pixels = ImageCaptionFolder(tmp_path, resolution=16, caption_strategy="filename")[0]["pixel_values"]
    assert pixels.shape == (3, 16, 16)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    torch.testing.assert_close(pixels[:, :, :6], torch.full((3, 16, 6), -1.0), atol=0.05, rtol=0.0)
    torch.testing.assert_close(pixels[:, :, 10:], torch.full((3, 16, 6), 1.0), atol=0.05, rtol=0.0)
    # A portrait image crops vertically the same way.
    _png(tmp_path / "tall" / "p.png", size=(20, 50), color=(0, 255, 0))
    tall = ImageCaptionFolder(tmp_path / "tall", resolution=10, caption_strategy="filename")[0]["pixel_values"]
    torch.testing.assert_close(
        tall, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 10, 10), atol=0.0, rtol=0.0
    )


def test_image_caption_folder_finds_images_and_captions(tmp_path):
    _png(tmp_path / "b_smiling_face.png")
    _png(tmp_path / "nested" / "a_grin.JPG")
    _png(tmp_path / ".hidden" / "skip.png")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "b_smiling_face.txt").write_text("smiling\nbig smile\n\n")
    (tmp_path / "nested" / "a_grin.txt").write_text("a grin")

    folder = ImageCaptionFolder(tmp_path, resolution=8)
    assert [p.relative_to(tmp_path).as_posix() for p in folder.paths] == ["b_smiling_face.png", "nested/a_grin.JPG"]
    assert folder.captions == [["smiling", "big smile"], ["a grin"]]
    torch.manual_seed(0)
    drawn = {folder[0]["caption"] for _ in range(40)}
    assert drawn == {"smiling", "big smile"}

    single = ImageCaptionFolder(tmp_path, resolution=8, disable_multiline_split=True)
    assert single.captions[0] == ["smiling\nbig smile"]
    by_name = ImageCaptionFolder(tmp_path, resolution=8, caption_strategy="filename")
    assert by_name.captions == [["b smiling face"], ["a grin"]]
    prompt = ImageCaptionFolder(tmp_path, resolution=8, caption_strategy="instanceprompt", instance_prompt="sks")
    assert prompt.captions == [["sks"], ["sks"]]
    prefixed = ImageCaptionFolder(tmp_path, resolution=8, prepend_instance_prompt=True, instance_prompt="sks")
    assert prefixed.captions == [["sks smiling", "sks big smile"], ["sks a grin"]]


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(root="missing"), FileNotFoundError, r"`root` '.*missing' is not an existing folder"),
        (dict(resolution=0), ValueError, r"`resolution` must be an int in \[1, 65536\] \(pixels\), got 0"),
        (dict(caption_strategy="parquet"), ValueError, r"`caption_strategy` must be one of .*got 'parquet'"),
        (dict(caption_strategy="instanceprompt"), ValueError, r"`instance_prompt` is required"),
        (dict(), FileNotFoundError, r"needs a .txt caption beside every image.*missing: lonely.txt"),
    ],
    ids=["missing folder", "resolution", "strategy", "no instance prompt", "missing caption"],
)
def test_image_caption_folder_errors(tmp_path, kwargs, error, pattern):
    _png(tmp_path / "lonely.png")
    kwargs = {"root": tmp_path, "resolution": 8, **kwargs}
    if kwargs["root"] == "missing":
        kwargs["root"] = tmp_path / "missing"
    with pytest.raises(error, match=pattern):
        ImageCaptionFolder(**kwargs)


# --------------------------------------------------------------------------------------------------- SimpleTuner


def _slider_tree(root: Path):
    for name, count, color in (("more", 4, (255, 255, 255)), ("less", 4, (0, 0, 0)), ("plain", 2, (128, 0, 0))):
        for i in range(count):
            _png(root / name / f"{name}_{i}.png", size=(40, 24), color=color)
            (root / name / f"{name}_{i}.txt").write_text(f"{name} photo {i}")
    return [
        {
            "id": "more",
            "type": "local",
            "instance_data_dir": str(root / "more"),
            "caption_strategy": "textfile",
            "slider_strength": 0.5,
            "crop": True,
            "crop_style": "center",
            "resolution": 16,
            "resolution_type": "pixel",
            "cache_dir_vae": "cache/vae/more",
            "repeats": 0,
        },
        {
            "id": "less",
            "type": "local",
            "instance_data_dir": "less",
            "caption_strategy": "textfile",
            "slider_strength": -0.5,
            "resolution": 16,
            "resolution_type": "pixel_area",
            "probability": 1.0,
        },
        {
            "id": "plain",
            "type": "local",
            "instance_data_dir": "plain",
            "caption_strategy": "filename",
            "resolution": 16,
            "repeats": 1,
        },
        {"id": "off", "type": "local", "instance_data_dir": "nowhere", "disabled": True},
        {"id": "text-embeds", "type": "aws", "dataset_type": "text_embeds", "default": True, "aws_bucket_name": "x"},
        {"id": "vae", "type": "local", "dataset_type": "image_embeds", "cache_dir": "cache/vae"},
    ]


def test_simpletuner_config_trains_end_to_end(tmp_path):
    config = _slider_tree(tmp_path)
    config_file = tmp_path / "multidatabackend.json"
    config_file.write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean config loads without warnings
        backends = load_simpletuner_backends(config_file, base_dir=tmp_path)
    assert [(b.name, b.slider_strength, b.probability, len(b)) for b in backends] == [
        ("more", 0.5, 1.0, 4),
        ("less", -0.5, 1.0, 4),
        ("plain", None, 1.0, 4),  # 2 images, repeats 1: each seen twice
    ]
    dataset = SliderConcatDataset(backends)
    sampler = SliderBatchSampler(dataset.backends, batch_size=2, seed=0, strict_balance=True)
    loader = DataLoader(dataset, batch_sampler=sampler)
    expected_pixel = {"more": 1.0, "less": -1.0}
    groups = []
    for batch, info in zip(loader, sampler.plan()):
        strength = batch_strength(batch)
        assert batch["pixel_values"].shape == (2, 3, 16, 16)
        folders = {Path(p).parent.name for p in batch["path"]}
        assert folders == {info.backend}
        assert strength == {"more": 0.5, "less": -0.5, "plain": 0.0}[info.backend]
        if info.backend in expected_pixel:
            torch.testing.assert_close(
                batch["pixel_values"], torch.full((2, 3, 16, 16), expected_pixel[info.backend]), atol=0.0, rtol=0.0
            )
            assert all(c.startswith(f"{info.backend} photo ") for c in batch["caption"])
        else:
            assert all(re.fullmatch(r"plain [01]", c) for c in batch["caption"])
        groups.append(info.group)
    assert groups == ["positive", "negative", "neutral", "positive", "negative", "neutral"]


def test_simpletuner_relative_folders_follow_the_working_directory(tmp_path, monkeypatch):
    config = _slider_tree(tmp_path)[:2]
    monkeypatch.chdir(tmp_path)
    backends = load_simpletuner_backends(config)
    assert [len(b) for b in backends] == [4, 4]
    with pytest.raises(FileNotFoundError, match=r"`instance_data_dir` of backend 'less' is not an existing folder"):
        load_simpletuner_backends(config, base_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("resolution", "resolution_type", "expected"),
    [(24, "pixel", 24), (20, "pixel_area", 20), (0.0041, "area", 64), (None, None, 1024)],
)
def test_simpletuner_resolution(tmp_path, resolution, resolution_type, expected):
    _png(tmp_path / "a" / "x.png", size=(8, 8))
    entry = {"id": "a", "type": "local", "instance_data_dir": str(tmp_path / "a")}
    if resolution is not None:
        entry.update(resolution=resolution, resolution_type=resolution_type)
    (backend,) = load_simpletuner_backends([entry])
    assert backend.dataset.resolution == expected
    (override,) = load_simpletuner_backends([entry], resolution=12)
    assert override[0]["pixel_values"].shape == (3, 12, 12)


def _entry(tmp_path, **fields):
    _png(tmp_path / "imgs" / "one.png")
    base = {
        "id": "smile_plus",
        "type": "local",
        "instance_data_dir": str(tmp_path / "imgs"),
        "caption_strategy": "filename",
        "slider_strength": 1.0,
    }
    return [{k: v for k, v in {**base, **fields}.items() if v is not ...}]


@pytest.mark.parametrize(
    ("fields", "error", "pattern"),
    [
        (
            dict(instance_data_dir="/definitely/not/here"),
            FileNotFoundError,
            r"`instance_data_dir` of backend 'smile_plus' is not an existing folder: '/definitely/not/here'",
        ),
        (dict(instance_data_dir=...), ValueError, r"backend 'smile_plus' needs `instance_data_dir`"),
        (dict(type="aws"), ValueError, r"`type` 'aws' of backend 'smile_plus' is not supported"),
        (dict(dataset_type="video"), ValueError, r"`dataset_type` 'video' of backend 'smile_plus' is not supported"),
        (dict(caption_strategy="parquet"), ValueError, r"`caption_strategy` 'parquet' of backend 'smile_plus'"),
        (dict(caption_strategy="textfile"), FileNotFoundError, r"backend 'smile_plus': caption_strategy='textfile'"),
        (
            dict(slider_strength="high"),
            ValueError,
            r"`slider_strength` of backend 'smile_plus' must be a finite number or None, got 'high'",
        ),
        (dict(probability=-1), ValueError, r"`probability` of backend 'smile_plus' must be a finite number >= 0"),
        (
            dict(repeats=-1),
            ValueError,
            r"`repeats` of backend 'smile_plus' must be an int in \[0, 10000\], got -1\. 0 shows",
        ),
        (dict(max_num_samples=10), ValueError, r"`max_num_samples` = 10 in backend 'smile_plus' is not supported"),
        (dict(start_step=100), ValueError, r"`start_step` = 100 in backend 'smile_plus'"),
        (dict(is_regularisation_data=True), ValueError, r"`is_regularisation_data` = True"),
        (dict(slider_strenght=1.0), ValueError, r"Unknown field 'slider_strenght'.*did you mean 'slider_strength'"),
        (dict(id=...), ValueError, r"Entry 0 of the config needs a non-empty string `id`"),
        (dict(resolution="big"), ValueError, r"`resolution` of backend 'smile_plus' must be a positive number"),
        (dict(resolution=16, resolution_type="bucket"), ValueError, r"`resolution_type` 'bucket'"),
        (dict(disabled=True), ValueError, r"no enabled image backend"),
    ],
    ids=lambda v: None if not isinstance(v, dict) else ",".join(v),
)
def test_simpletuner_config_errors(tmp_path, fields, error, pattern):
    with pytest.raises(error, match=pattern):
        load_simpletuner_backends(_entry(tmp_path, **fields))


def test_simpletuner_config_file_and_shape_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`config` '.*nope.json' is not a file"):
        load_simpletuner_backends(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"is not valid JSON"):
        load_simpletuner_backends(bad)
    with pytest.raises(ValueError, match=r"a list of backend entries, got dict"):
        load_simpletuner_backends({"id": "x"})
    twice = _entry(tmp_path) * 2
    with pytest.raises(ValueError, match=r"Backend id 'smile_plus' occurs twice"):
        load_simpletuner_backends(twice)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"backend 'smile_plus' is empty: no image"):
        load_simpletuner_backends(_entry(tmp_path, instance_data_dir=str(tmp_path / "empty")))


def test_simpletuner_unknown_fields_warn(tmp_path):
    with pytest.warns(
        UserWarning,
        match=r"Ignoring fields this loader does not know in backend 'smile_plus': "
        r"\['my_note'\]",
    ):
        (backend,) = load_simpletuner_backends(_entry(tmp_path, my_note="hello"))
    assert backend.slider_strength == 1.0


# --------------------------------------------------------------------------------------------------- docs


# Docstring examples run in tests/test_docs.py.


def test_readme_example(tmp_path, monkeypatch):
    # The README's example, on a real folder tree; only the data paths and the loop lengths differ.
    monkeypatch.chdir(tmp_path)
    Path("multidatabackend.json").write_text(json.dumps(_slider_tree(tmp_path)))
    num_epochs, checkpoint_every = 2, 4

    from torch.utils.data import DataLoader

    from peft_slider.training.data import SliderConcatDataset, batch_strength, load_simpletuner_backends
    from peft_slider.training.sampler import SliderBatchSampler

    backends = load_simpletuner_backends("multidatabackend.json", resolution=16)
    dataset = SliderConcatDataset(backends)
    sampler = SliderBatchSampler(dataset.backends, batch_size=2, seed=42)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2)

    strengths = []
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        for step, batch in enumerate(loader):
            strength = batch_strength(batch)  # one signed strength per batch: +0.5, -0.5 or 0.0 (neutral)
            strengths.append(strength)
            if (step + 1) % checkpoint_every == 0:
                state = {"epoch": epoch, "sampler": sampler.state_dict(batches_consumed=step + 1)}
                torch.save(state, "checkpoint.pt")

    # Resuming, in a new process: the loop continues with the batches that were still due.
    checkpoint = torch.load("checkpoint.pt")
    sampler.load_state_dict(checkpoint["sampler"])
    resumed = []
    for epoch in range(checkpoint["epoch"], num_epochs):
        sampler.set_epoch(epoch)  # the checkpoint's epoch keeps the resume point
        for batch in loader:
            resumed.append(batch_strength(batch))

    assert strengths == [0.5, -0.5, 0.0, 0.5, -0.5, 0.0] * num_epochs
    assert resumed == strengths[-2:]


def test_slider_dataset_options_are_read_only():
    """The sampler plans with the backend's strength; samples must carry the same one, so it cannot drift."""
    dataset = SliderDataset([torch.zeros(1)] * 2, slider_strength=0.5, name="more")
    with pytest.raises(AttributeError):
        dataset.slider_strength = -1.0
    assert dataset.backend.strength == dataset[0]["slider_strength"] == 0.5


# --------------------------------------------------------------------------------------------------- strict parsing


@pytest.mark.parametrize(
    "field", ["disabled", "disable", "prepend_instance_prompt", "only_instance_prompt", "disable_multiline_split"]
)
@pytest.mark.parametrize("value", ["false", "true", 0, 1])
def test_simpletuner_booleans_must_be_json_booleans(tmp_path, field, value):
    # "false" is a non-empty string: read as truthy it used to drop the backend (`disabled`) without a word.
    entry = _entry(tmp_path, **{field: value}, instance_prompt="a face")
    fix = f"write {value} without quotes" if isinstance(value, str) else "use true or false"
    with pytest.raises(
        ValueError,
        match=rf"`{field}` of backend 'smile_plus' must be true or false \(a JSON boolean\), got .*; {fix}\.",
    ):
        load_simpletuner_backends(entry)


def test_simpletuner_duplicate_keys_name_the_backend_and_the_field(tmp_path):
    _png(tmp_path / "imgs" / "one.png")
    path = tmp_path / "multidatabackend.json"
    # json.loads keeps the last of two equal keys: this entry would silently train at -1 instead of +1.
    path.write_text(
        '[{"id": "smile_plus", "type": "local", "instance_data_dir": "imgs", "caption_strategy": "filename", '
        '"slider_strength": 1.0, "slider_strength": -1.0}]'
    )
    with pytest.raises(
        ValueError,
        match=r"multidatabackend.json.*backend 'smile_plus' has the field `slider_strength` twice \(1.0 and -1.0\)",
    ):
        load_simpletuner_backends(path, base_dir=tmp_path)


def test_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "multidatabackend.json"
    path.write_bytes(b'[{"id": "caf\xe9"}]')
    with pytest.raises(ValueError, match=r"`config` '.*multidatabackend.json' is not UTF-8 text.*byte 12"):
        load_simpletuner_backends(path)


# --------------------------------------------------------------------------------------------------- data errors


def test_truncated_image_names_the_file_through_a_dataloader(tmp_path):
    _png(tmp_path / "good.png")
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "broken.png")
    data = (tmp_path / "broken.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 2])
    dataset = SliderConcatDataset(
        [SliderDataset(ImageCaptionFolder(tmp_path, resolution=8, caption_strategy="filename"))]
    )
    loader = DataLoader(dataset, batch_sampler=SliderBatchSampler(dataset.backends, batch_size=2, shuffle=False))
    with pytest.raises(OSError, match=r"Cannot read the image '.*broken.png' \(.*truncated.*\)\. Re-save"):
        list(loader)


def test_caption_that_is_not_utf8_names_the_file(tmp_path):
    _png(tmp_path / "one.png")
    (tmp_path / "one.txt").write_bytes("un caf\xe9".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"The caption file '.*one.txt' is not UTF-8 text.*byte 6.*Re-save it as UTF-8"
    ):
        ImageCaptionFolder(tmp_path)


HUGE = 10**400


@pytest.mark.parametrize(
    ("factory", "pattern"),
    [
        (
            lambda: SliderDataset([0], slider_strength=HUGE, name="more"),
            r"`slider_strength` of backend 'more' must be a finite number or None, got an int of 401 digits",
        ),
        (
            lambda: SliderDataset([0], probability=-HUGE, name="more"),
            r"`probability` of backend 'more' must be a finite number >= 0, got a negative int of 401 digits",
        ),
        (
            lambda: ImageCaptionFolder(".", resolution=HUGE),
            r"`resolution` must be an int in \[1, 65536\] \(pixels\), got an int of 401 digits",
        ),
    ],
    ids=["strength", "probability", "resolution"],
)
def test_huge_ints_give_a_clear_error(factory, pattern):
    with pytest.raises(ValueError, match=pattern):
        factory()


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        (dict(slider_strength=HUGE), r"`slider_strength` of backend 'smile_plus' must be a finite number or None"),
        (dict(probability=HUGE), r"`probability` of backend 'smile_plus' must be a finite number >= 0"),
        (dict(repeats=HUGE), r"`repeats` of backend 'smile_plus' must be an int in \[0, 10000\]"),
        (dict(resolution=HUGE), r"`resolution` of backend 'smile_plus' must be a positive number of at most"),
        (dict(resolution=HUGE, resolution_type="area"), r"`resolution` of backend 'smile_plus' must be a positive"),
    ],
    ids=["strength", "probability", "repeats", "resolution", "area"],
)
def test_simpletuner_huge_ints_give_a_clear_error(tmp_path, fields, pattern):
    with pytest.raises(ValueError, match=pattern + r".*an int of 401 digits"):
        load_simpletuner_backends(_entry(tmp_path, **fields))


# --------------------------------------------------------------------------------------------------- misuse


@pytest.mark.parametrize("batch_size", [1, None])
def test_sampler_passed_as_sampler_is_caught(batch_size):
    dataset = tagged_dataset([(4, 1.0), (4, -1.0)])
    sampler = SliderBatchSampler(dataset.backends, batch_size=2)
    # torch wraps a `sampler=` in a BatchSampler, so each "index" is a whole batch (a list).
    loader = DataLoader(dataset, sampler=sampler, batch_size=batch_size)
    with pytest.raises(TypeError, match=r"got the index \[\d+, \d+\].*`DataLoader\(dataset, batch_sampler=sampler\)`"):
        next(iter(loader))
