# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests of training.paired_images: image pairs read from a folder or a manifest, checked up front, drawn by the
slider sampler, noised alike, and a slider trained on them.

The data is real: scikit-learn's handwritten digits (8x8, upscaled to 16x16). A pair is a digit ("before") and the
same digit with its right half brighter ("after"), a concept measured by projecting onto `after - before`.

- The folder convention, a JSON and a CSV manifest give the same dataset, pixel for pixel.
- One table of bad inputs: every error names the file, the row or the field, and the value.
- The DataLoader with `SliderBatchSampler` over the pairs' backend: two ranks split it, a resume gives the same batches.
- `paired_noisy_batch` gives both images of a pair the same noise and timestep; `paired_slider_loss` is one pass.
- A LoRA trained with `paired_slider_loss` on a tiny real SD3 transformer: strength 0 is the base bit for bit, and the
  concept statistic rises strictly with strength, for epsilon, v-prediction and flow matching; pairs whose two images
  are the same learn no direction, so that check can fail.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from torch.utils.data import DataLoader

from peft_slider import SliderLoraConfig
from peft_slider.training import (
    EpsilonObjective,
    FlowMatchingObjective,
    ImagePair,
    ImagePairDataset,
    SliderBatchSampler,
    SliderScaler,
    VPredictionObjective,
    batch_strength,
    load_image_pairs,
)
from peft_slider.training.paired_images import paired_noisy_batch, paired_slider_loss
from tests.denoisers import DENOISERS

PAIRS = 16
SIZE = 16  # the upscaled digits' edge, also the datasets' resolution: squaring leaves them unchanged
BRIGHTER = 96  # what the concept adds to the right half (uint8 levels)


# ---------------------------------------------------------------------------------------------------------------------
# Data: real digits, written as PNG pairs


def digit_pairs(count: int = PAIRS, *, concept: bool = True) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(stem, before, after, caption) per digit: uint8 RGB arrays (SIZE, SIZE, 3); after = right half brighter."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pairs = []
    for index in range(count):
        grey = np.kron(digits.images[index], np.ones((2, 2))) * (255 / 16)  # 0..16 -> 0..255, 8x8 -> 16x16
        after = grey.copy()
        if concept:
            after[:, SIZE // 2 :] += BRIGHTER

        def rgb(image):
            return np.repeat(np.clip(image, 0, 255).round().astype(np.uint8)[..., None], 3, axis=-1)

        pairs.append((f"d{index:02d}", rgb(grey), rgb(after), f"a handwritten {digits.target[index]}"))
    return pairs


def write_folder(root, pairs):
    """The folder convention; captions beside the after image for even digits and beside the before image for odd
    ones (both places are read), plus hidden files a Mac or a cache leaves, which must be ignored."""
    for side in ("before", "after"):
        (root / side).mkdir(parents=True)
    for index, (stem, before, after, caption) in enumerate(pairs):
        Image.fromarray(before).save(root / "before" / f"{stem}.png")
        Image.fromarray(after).save(root / "after" / f"{stem}.png")
        (root / ("after" if index % 2 == 0 else "before") / f"{stem}.txt").write_text(caption)
    (root / "before" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "after" / "._d00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "before" / ".cache").mkdir()
    Image.fromarray(pairs[0][1]).save(root / "before" / ".cache" / "orphan.png")
    return root


@pytest.fixture(scope="module")
def digits():
    return digit_pairs()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory, digits):
    return write_folder(tmp_path_factory.mktemp("digits"), digits)


def expected_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------------------------------
# One dataset, three ways to write it down


def test_folder_json_and_csv_manifests_give_the_same_dataset(digit_folder, digits):
    rows = [
        {"before": f"before/{stem}.png", "after": f"after/{stem}.png", "caption": caption}
        for stem, _, _, caption in digits
    ]
    (digit_folder / "pairs.json").write_text(json.dumps({"pairs": rows}))
    with open(digit_folder / "pairs.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["caption", "after", "before"])  # any column order
        writer.writeheader()
        for i, row in enumerate(rows):
            # Absolute paths work too.
            writer.writerow({**row, "after": str(digit_folder / row["after"])} if i % 3 == 0 else row)

    folder = load_image_pairs(digit_folder, resolution=SIZE, slider_strength=0.75, name="brighter")
    from_json = load_image_pairs(digit_folder / "pairs.json", resolution=SIZE, slider_strength=0.75)
    from_csv = load_image_pairs(digit_folder / "pairs.csv", resolution=SIZE, slider_strength=0.75)

    assert [p.name for p in folder.pairs] == [stem for stem, *_ in digits]  # hidden files ignored, stems sorted
    assert [p.name for p in from_json.pairs] == [f"pairs.json entry {i}" for i in range(PAIRS)]
    assert [p.name for p in from_csv.pairs] == [f"pairs.csv line {i + 2}" for i in range(PAIRS)]
    assert (folder.name, from_json.name, from_csv.name) == ("brighter", "pairs", "pairs")
    assert repr(folder) == f"ImagePairDataset(name='brighter', pairs={PAIRS}, resolution={SIZE}, slider_strength=0.75)"

    def files(dataset):
        return [(p.before.resolve(), p.after.resolve(), p.caption) for p in dataset.pairs]

    assert files(folder) == files(from_json) == files(from_csv)
    for i, (stem, before, after, caption) in enumerate(digits):
        samples = [dataset[i] for dataset in (folder, from_json, from_csv)]
        for sample in samples[1:]:
            torch.testing.assert_close(sample["before"], samples[0]["before"], rtol=0, atol=0)
            torch.testing.assert_close(sample["after"], samples[0]["after"], rtol=0, atol=0)
        sample = samples[0]
        assert (sample["caption"], sample["slider_strength"], sample["pair"]) == (caption, 0.75, stem)
        torch.testing.assert_close(sample["before"], expected_tensor(before), rtol=0, atol=1e-6)
        torch.testing.assert_close(sample["after"], expected_tensor(after), rtol=0, atol=1e-6)
        # The pair differs only in the concept: nothing on the left half, only brighter on the right.
        change = sample["after"] - sample["before"]
        assert change[..., : SIZE // 2].abs().max() == 0
        assert change[..., SIZE // 2 :].min() >= 0 and change[..., SIZE // 2 :].mean() > 0.3


def test_folder_pairs_match_by_path_and_caption_from_either_side(tmp_path):
    # Subfolders and suffixes: before/men/01.jpg pairs with after/men/01.PNG; a caption file beside both must agree.
    for side, suffix in (("before", ".jpg"), ("after", ".PNG")):
        (tmp_path / side / "men").mkdir(parents=True)
        Image.new("RGB", (20, 12), (10, 20, 30)).save(tmp_path / side / "men" / f"01{suffix}", format="PNG")
        (tmp_path / side / "men" / "01.txt").write_text("  a man \n")
    dataset = load_image_pairs(tmp_path, resolution=8, caption="unused default")
    (pair,) = dataset.pairs
    assert (pair.name, pair.caption, pair.before.name, pair.after.name) == ("men/01", "a man", "01.jpg", "01.PNG")
    assert dataset[0]["before"].shape == (3, 8, 8)
    # No caption file: the default, and caption="" on purpose.
    for side in ("before", "after"):
        (tmp_path / side / "men" / "01.txt").unlink()
    assert load_image_pairs(tmp_path, resolution=8, caption="").pairs[0].caption == ""
    assert load_image_pairs(tmp_path, resolution=8, caption="a face").pairs[0].caption == "a face"


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: one table


def png(size=(16, 16), shade=0):
    return ("png", size, shade)


def build(root, files):
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            Image.new("RGB", content[1], (content[2],) * 3).save(path, format="PNG")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


PAIR = {"before/a.png": png(), "after/a.png": png(shade=200)}
CSV_HEADER = "before,after,caption\n"


def _manifest(rows):
    return json.dumps(rows)


def _load(target="", **kwargs):
    kwargs.setdefault("resolution", 16)
    return lambda root: load_image_pairs(root / target, **kwargs)


def _objective():
    return FlowMatchingObjective()


BAD_INPUTS = [
    # (id, files, call, error, message pattern)
    (
        "before without partner",
        {**PAIR, "before/b.png": png()},
        _load(caption=""),
        ValueError,
        r"before/b\.png in '.*' has no partner in after/ .*Add the after image",
    ),
    (
        "after without partner",
        {**PAIR, "after/sub/c.jpg": png()},
        _load(caption=""),
        ValueError,
        r"after/sub/c\.jpg in '.*' has no partner in before/",
    ),
    (
        "sizes differ",
        {"before/a.png": png((16, 16)), "after/a.png": png((16, 12))},
        _load(caption=""),
        ValueError,
        r"Pair 'a': the images differ in size, `before` '.*before/a\.png' is 16x16 and `after` '.*after/a\.png' is "
        r"16x12",
    ),
    (
        "not an image",
        {"before/a.png": png(), "after/a.png": b"GIF? no, just bytes"},
        _load(caption=""),
        ValueError,
        r"Pair 'a': `after` '.*after/a\.png' is not an image PIL can read",
    ),
    (
        "ambiguous stem",
        {**PAIR, "before/a.jpg": png()},
        _load(caption=""),
        ValueError,
        r"'.*before/a\.jpg' and '.*before/a\.png' have the same name 'a'",
    ),
    (
        "no after folder",
        {"before/a.png": png()},
        _load(caption=""),
        FileNotFoundError,
        r"'.*after' is not a folder\. A pairs folder holds before/",
    ),
    ("empty folders", {"before/x.txt": "", "after/.keep": ""}, _load(caption=""), ValueError, r"holds no image pair"),
    (
        "no caption",
        {**PAIR, "before/b.png": png(), "after/b.png": png(), "after/b.txt": "a bee"},
        _load(),
        ValueError,
        r"1 pair\(s\) in '.*' have no caption: a\. Add <name>\.txt .*caption=''",
    ),
    (
        "captions disagree",
        {**PAIR, "before/a.txt": "a cat", "after/a.txt": "a smiling cat"},
        _load(),
        ValueError,
        r"Pair 'a' has two different captions, 'a cat' in '.*before/a\.txt' and 'a smiling cat' in '.*after/a\.txt'",
    ),
    (
        "caption not UTF-8",
        {**PAIR, "after/a.txt": b"caf\xe9"},
        _load(),
        ValueError,
        r"The caption file '.*after/a\.txt' is not UTF-8 text",
    ),
    ("strength zero", PAIR, _load(caption="", slider_strength=0), ValueError, r"`slider_strength` must be a finite "),
    (
        "strength negative",
        PAIR,
        _load(caption="", slider_strength=-1.0),
        ValueError,
        r"`slider_strength` must be a finite number > 0, got -1\.0\. .*swap `before` and `after`",
    ),
    ("strength nan", PAIR, _load(caption="", slider_strength=math.nan), ValueError, r"`slider_strength`.*got nan"),
    ("strength text", PAIR, _load(caption="", slider_strength="1"), ValueError, r"`slider_strength`.*got '1'"),
    ("resolution zero", PAIR, _load(caption="", resolution=0), ValueError, r"`resolution` must be an int.*got 0"),
    ("resolution float", PAIR, _load(caption="", resolution=8.0), ValueError, r"`resolution`.*got 8\.0"),
    ("resolution bool", PAIR, _load(caption="", resolution=True), ValueError, r"`resolution`.*got True"),
    ("caption not text", PAIR, _load(caption=3), TypeError, r"`caption` must be a string or None, got 3"),
    ("missing path", {}, _load("nowhere"), FileNotFoundError, r"`path` '.*nowhere' does not exist"),
    ("other suffix", {"pairs.yaml": ""}, _load("pairs.yaml"), ValueError, r"is a \.yaml file; give a folder"),
    (
        "json missing file",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "after/zz.png", "caption": ""}])},
        _load("m.json"),
        FileNotFoundError,
        r"Pair 'm\.json entry 0': `after` '.*after/zz\.png' does not exist",
    ),
    (
        "json unknown field",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "after/a.png", "captoin": "x"}])},
        _load("m.json"),
        ValueError,
        r"m\.json entry 0 has unknown field\(s\) \['captoin'\]; the known fields are \['before', 'after', 'caption'\]",
    ),
    (
        "json unknown top-level field",
        {**PAIR, "m.json": json.dumps({"pairs": [], "version": 2})},
        _load("m.json"),
        ValueError,
        r"object with the fields \['pairs', 'version'\]; the only known field is 'pairs'",
    ),
    (
        "json same file",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "./before/a.png", "caption": ""}])},
        _load("m.json"),
        ValueError,
        r"Pair 'm\.json entry 0': `before` and `after` are the same file, '.*before/a\.png'",
    ),
    (
        "json duplicate pair",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "after/a.png"}] * 2)},
        _load("m.json", caption="x"),
        ValueError,
        r"Pair 'm\.json entry 1' repeats pair 'm\.json entry 0' \(`before` '.*before/a\.png', `after`",
    ),
    (
        "json reversed pair",
        {
            **PAIR,
            "m.json": _manifest(
                [
                    {"before": "before/a.png", "after": "after/a.png"},
                    {"before": "after/a.png", "after": "before/a.png"},
                ]
            ),
        },
        _load("m.json", caption="x"),
        ValueError,
        r"Pair 'm\.json entry 1' is pair 'm\.json entry 0' reversed",
    ),
    (
        "json path not text",
        {**PAIR, "m.json": _manifest([{"before": 7, "after": "after/a.png"}])},
        _load("m.json", caption=""),
        ValueError,
        r"m\.json entry 0: `before` must be the path of an image, got 7",
    ),
    (
        "json caption not text",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "after/a.png", "caption": ["x"]}])},
        _load("m.json"),
        ValueError,
        r"m\.json entry 0: `caption` must be a string, got \['x'\]",
    ),
    (
        "json no caption",
        {**PAIR, "m.json": _manifest([{"before": "before/a.png", "after": "after/a.png", "caption": None}])},
        _load("m.json"),
        ValueError,
        r"1 row\(s\) of '.*m\.json' have no caption: m\.json entry 0\. Fill their `caption`",
    ),
    (
        "json duplicate key",
        {**PAIR, "m.json": '[{"before": "before/a.png", "after": "after/a.png", "after": "after/b.png"}]'},
        _load("m.json", caption=""),
        ValueError,
        r"'.*m\.json': an object has the field `after` twice \('after/a\.png' and 'after/b\.png'\)",
    ),
    ("json syntax", {**PAIR, "m.json": "[{"}, _load("m.json"), ValueError, r"'.*m\.json' is not valid JSON: .*line 1"),
    ("json empty", {**PAIR, "m.json": "[]"}, _load("m.json"), ValueError, r"'.*m\.json' holds no image pair"),
    (
        "json not a list",
        {**PAIR, "m.json": '"before/a.png"'},
        _load("m.json"),
        ValueError,
        r"must hold a list of .* got str",
    ),
    ("json entry not an object", {**PAIR, "m.json": '["a"]'}, _load("m.json"), ValueError, r"entry 0 must be an obj"),
    (
        "csv missing column",
        {**PAIR, "m.csv": "before,caption\nbefore/a.png,x\n"},
        _load("m.csv"),
        ValueError,
        r"header of the manifest '.*m\.csv' \(line 1\) is \['before', 'caption'\]: missing \['after'\]\. The known "
        r"columns are \['before', 'after', 'caption'\]",
    ),
    (
        "csv unknown column",
        {**PAIR, "m.csv": "before,after,weight\nbefore/a.png,after/a.png,2\n"},
        _load("m.csv"),
        ValueError,
        r"\(line 1\) is \['before', 'after', 'weight'\]: unknown \['weight'\]",
    ),
    (
        "csv repeated column",
        {**PAIR, "m.csv": "before,after,after\n"},
        _load("m.csv"),
        ValueError,
        r"repeated \['after'\]",
    ),
    ("csv empty", {**PAIR, "m.csv": ""}, _load("m.csv"), ValueError, r"'.*m\.csv' is empty; its first line must be"),
    (
        "csv short row",
        {**PAIR, "m.csv": CSV_HEADER + "\nbefore/a.png,after/a.png\n"},
        _load("m.csv"),
        ValueError,
        r"m\.csv line 3 has 2 cells, but the header names 3 columns",
    ),
    (
        "csv empty path",
        {**PAIR, "m.csv": CSV_HEADER + "before/a.png,,x\n"},
        _load("m.csv"),
        ValueError,
        r"m\.csv line 2: `after` must be the path of an image, got None",
    ),
    (
        "csv missing file",
        {**PAIR, "m.csv": CSV_HEADER + "before/a.png,after/a.png,x\nbefore/gone.png,after/a.png,y\n"},
        _load("m.csv"),
        FileNotFoundError,
        r"Pair 'm\.csv line 3': `before` '.*before/gone\.png' does not exist",
    ),
    (
        "csv folder as image",
        {**PAIR, "m.csv": CSV_HEADER + "before,after/a.png,x\n"},
        _load("m.csv"),
        FileNotFoundError,
        r"Pair 'm\.csv line 2': `before` '.*before' is a folder, not an image file",
    ),
    (
        "csv not UTF-8",
        {**PAIR, "m.csv": CSV_HEADER.encode() + "before/a.png,after/a.png,caf\u00e9\n".encode("latin-1")},
        _load("m.csv"),
        ValueError,
        r"The manifest '.*m\.csv' is not UTF-8 text \(invalid continuation byte at byte 49\)",
    ),
    (
        "pairs not a sequence",
        PAIR,
        lambda root: ImagePairDataset(root, resolution=16),
        TypeError,
        r"`pairs` must be a sequence of ImagePair, got PosixPath\. To read a folder .*load_image_pairs",
    ),
    (
        "pairs empty",
        PAIR,
        lambda root: ImagePairDataset([], resolution=16),
        ValueError,
        r"`pairs` is empty; a paired-image slider needs at least one pair",
    ),
    (
        "pair not an ImagePair",
        PAIR,
        lambda root: ImagePairDataset([("before/a.png", "after/a.png")], resolution=16),
        TypeError,
        r"`pairs\[0\]` must be an ImagePair, got tuple",
    ),
    (
        "pair caption not text",
        PAIR,
        lambda root: ImagePair(root / "before/a.png", root / "after/a.png", None, "a"),
        TypeError,
        r"Pair 'a': `caption` must be a string \(\"\" for none\), got None",
    ),
    (
        "pair without name",
        PAIR,
        lambda root: ImagePair(root / "before/a.png", root / "after/a.png", "", ""),
        TypeError,
        r"`name` of an ImagePair must be a non-empty string, got ''",
    ),
    (
        "latents differ",
        {},
        lambda root: paired_noisy_batch(_objective(), torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 6), strength=1.0),
        ValueError,
        r"`after` \(2, 4, 8, 8\) torch\.float32 on cpu and `before` \(2, 4, 8, 6\) torch\.float32 on cpu must match",
    ),
    (
        "latents not float",
        {},
        lambda root: paired_noisy_batch(
            _objective(), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4), strength=1
        ),
        TypeError,
        r"`after` must be a floating-point tensor shaped \(pairs, \.\.\.\)",
    ),
    (
        "batch strength negative",
        {},
        lambda root: paired_noisy_batch(_objective(), torch.zeros(2, 4), torch.zeros(2, 4), strength=-0.5),
        ValueError,
        r"`strength` must be a finite number > 0, got -0\.5",
    ),
    (
        "noise for 2B samples",
        {},
        lambda root: paired_noisy_batch(
            _objective(), torch.zeros(2, 4), torch.zeros(2, 4), strength=1.0, noise=torch.zeros(4, 4)
        ),
        ValueError,
        r"`noise` must be shaped like `after` \(2, 4\), one noise per pair .*got \(4, 4\)",
    ),
    (
        "timesteps for 2B samples",
        {},
        lambda root: paired_noisy_batch(
            _objective(), torch.zeros(2, 4), torch.zeros(2, 4), strength=1.0, timesteps=torch.zeros(4)
        ),
        ValueError,
        r"`timesteps` must have shape \(2,\), one noise level per pair, got \(4,\)",
    ),
    (
        "not an objective",
        {},
        lambda root: paired_noisy_batch("flow", torch.zeros(2, 4), torch.zeros(2, 4), strength=1.0),
        TypeError,
        r"`objective` must be a DenoisingObjective .*got str",
    ),
]


@pytest.mark.parametrize(
    ("files", "call", "error", "pattern"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_raises_naming_the_file_row_field_and_value(tmp_path, files, call, error, pattern):
    root = build(tmp_path, files)
    with pytest.raises(error, match=pattern):
        call(root)


def test_a_good_pair_loads_beside_the_bad_table(tmp_path):
    # The table's base files are valid on their own, so each row fails for its own reason only.
    dataset = load_image_pairs(build(tmp_path, PAIR), resolution=16, caption="")
    assert len(dataset) == 1 and dataset[0]["after"].mean() > dataset[0]["before"].mean()


# ---------------------------------------------------------------------------------------------------------------------
# The sampler over the pairs' backend


def batches(loader):
    return [(batch["pair"], batch["before"], batch["after"], batch_strength(batch)) for batch in loader]


def test_sampler_shards_the_pairs_over_two_ranks_and_resumes_mid_epoch(digit_folder):
    dataset = load_image_pairs(digit_folder, resolution=SIZE, slider_strength=1.5)
    # A pairs-only run: the paired backend balances itself, so building the sampler does not warn (warnings from
    # peft_slider are errors in this suite).
    samplers = [SliderBatchSampler([dataset.backend], batch_size=3, num_replicas=2, rank=r, seed=4) for r in (0, 1)]
    ranks = [batches(DataLoader(dataset, batch_sampler=sampler)) for sampler in samplers]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(PAIRS / 6)
    names = [[name for batch in rank for name in batch[0]] for rank in ranks]
    assert set(names[0]).isdisjoint(names[1])
    assert sorted(names[0] + names[1]) == [p.name for p in dataset.pairs]  # 16 = 2 x (3 + 3 + 2): nothing padded
    for rank in ranks:
        for pair_names, before, after, strength in rank:
            assert strength == 1.5 and before.shape == after.shape == (len(pair_names), 3, SIZE, SIZE)

    consumed = 1
    sampler = SliderBatchSampler([dataset.backend], batch_size=3, num_replicas=2, rank=0, seed=4)
    iterator = iter(DataLoader(dataset, batch_sampler=sampler))
    for _ in range(consumed):
        next(iterator)
    state = sampler.state_dict(batches_consumed=consumed)
    resumed = SliderBatchSampler([dataset.backend], batch_size=3, num_replicas=2, rank=0, seed=4)
    resumed.load_state_dict(state)
    rest = batches(DataLoader(dataset, batch_sampler=resumed))
    assert [b[0] for b in rest] == [b[0] for b in ranks[0][consumed:]]
    for got, want in zip(rest, ranks[0][consumed:]):
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)
        torch.testing.assert_close(got[2], want[2], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Noising pairs, and the loss of one step

OBJECTIVES = {
    "epsilon": lambda: EpsilonObjective.from_scheduler(DDPMScheduler()),
    "v_prediction": lambda: VPredictionObjective.from_scheduler(DDPMScheduler()),
    "flow_matching": lambda: FlowMatchingObjective(),
}


@pytest.mark.parametrize("kind", list(OBJECTIVES))
def test_paired_noisy_batch_shares_noise_and_timestep_per_pair(kind):
    objective = OBJECTIVES[kind]()
    generator = torch.Generator().manual_seed(0)
    after, before = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    noisy, strengths = paired_noisy_batch(
        objective, after, before, strength=0.8, generator=torch.Generator().manual_seed(1)
    )
    assert noisy.noisy.shape == (6, 4, 8, 8)
    assert strengths.dtype == torch.float32 and strengths.tolist() == pytest.approx([0.8] * 3 + [-0.8] * 3)
    for field in ("noise", "timesteps", "sigmas"):
        first, second = getattr(noisy, field).chunk(2)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert len(set(noisy.timesteps[:3].tolist())) == 3  # drawn per pair, not one for the batch
    # Each half is the objective's own noising of its images with that noise and level.
    levels = noisy.sigmas[:3] if kind == "flow_matching" else noisy.timesteps[:3]
    for half, images in ((slice(0, 3), after), (slice(3, 6), before)):
        alone = objective.add_noise(images, noise=noisy.noise[:3], timesteps=levels)
        torch.testing.assert_close(noisy.noisy[half], alone.noisy, rtol=0, atol=0)
        torch.testing.assert_close(noisy.target[half], alone.target, rtol=0, atol=0)
    # So the two inputs of a pair differ only by the concept, scaled by the signal's weight at that level.
    signal = (1 - noisy.sigmas[:3]) if kind == "flow_matching" else objective.alphas_cumprod[levels].sqrt().float()
    torch.testing.assert_close(
        noisy.noisy[:3] - noisy.noisy[3:], signal.view(-1, 1, 1, 1) * (after - before), rtol=1e-5, atol=1e-5
    )
    # Given noise and levels are used as they are.
    again, _ = paired_noisy_batch(objective, after, before, strength=0.8, noise=noisy.noise[:3], timesteps=levels)
    torch.testing.assert_close(again.noisy, noisy.noisy, rtol=0, atol=0)


def tiny_sd3(seed: int = 0):
    """The tiny real SD3 transformer and a predict function with one fixed text conditioning for every sample."""
    model = DENOISERS["sd3"].build(seed)
    generator = torch.Generator().manual_seed(99)
    text, pooled = torch.randn(1, 7, 32, generator=generator), torch.randn(1, 24, generator=generator)

    def predict(noisy):
        batch = noisy.noisy.shape[0]
        return model(
            hidden_states=noisy.noisy,
            timestep=noisy.timesteps.float(),
            encoder_hidden_states=text.expand(batch, -1, -1),
            pooled_projections=pooled.expand(batch, -1),
        ).sample

    return model, predict


def slider_on_tiny_sd3(*, checkpointing: bool = False):
    model, predict = tiny_sd3()
    model.requires_grad_(False)
    # A random slider (the same after every build: `build` seeds the global generator), so it changes the output.
    model.add_adapter(SliderLoraConfig(r=4, lora_alpha=4, init_lora_weights=False), adapter_name="slider")
    if checkpointing:
        model.enable_gradient_checkpointing()
    return model, predict, SliderScaler(model)


def one_paired_step(predict, scaler, after, before, objective):
    calls = []

    def counting_predict(noisy):
        calls.append(noisy.noisy.shape[0])
        return predict(noisy)

    def backward(loss):
        calls.append("backward")
        loss.backward()

    step = paired_slider_loss(
        counting_predict,
        scaler,
        after,
        before,
        objective=objective,
        strength=0.5,
        generator=torch.Generator().manual_seed(7),
        backward=backward,
    )
    return calls, step


def test_paired_slider_loss_is_one_pass_at_plus_and_minus_s():
    objective = FlowMatchingObjective()
    generator = torch.Generator().manual_seed(5)
    after, before = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    gradients = []
    for checkpointing in (False, True):
        model, predict, scaler = slider_on_tiny_sd3(checkpointing=checkpointing)
        calls, step = one_paired_step(predict, scaler, after, before, objective)
        assert calls == [4, "backward", 4]  # one trained pass over the 2B samples, its backward, one base pass
        assert step.loss.requires_grad and not step.base_loss.requires_grad
        assert step.strengths.tolist() == [0.5, 0.5, -0.5, -0.5]
        gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    # Gradient checkpointing runs the forward pass again inside backward: the same gradients only if backward ran
    # while the per-sample strengths were still set.
    assert gradients[0] and all(g.abs().sum() > 0 for g in gradients[0])
    for plain, checkpointed in zip(*gradients):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)

    # The same noisy batch by hand: the after half at +s alone, the before half at -s alone, and the base.
    noisy, _ = paired_noisy_batch(objective, after, before, strength=0.5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        with scaler.at(0.5):
            plus = predict(noisy)[:2]
        with scaler.at(-0.5):
            minus = predict(noisy)[2:]
        with scaler.at(0.0):
            base = predict(noisy)
    torch.testing.assert_close(
        step.loss.detach(), objective.loss(torch.cat([plus, minus]), noisy.target), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(step.base_loss, objective.loss(base, noisy.target), rtol=0, atol=0)
    assert step.loss.item() != pytest.approx(step.base_loss.item(), rel=1e-3)  # the random slider has an effect

    with pytest.raises(ValueError, match=r"`predict` must return a tensor shaped like `noisy\.noisy` \(4, 4, 8, 8\)"):
        paired_slider_loss(lambda noisy: predict(noisy)[:2], scaler, after, before, objective=objective, strength=0.5)


# ---------------------------------------------------------------------------------------------------------------------
# A slider trained on pairs learns the concept's direction

BASE_STEPS = 300
SLIDER_STEPS = 150
STRENGTHS = [-2.0, -1.0, 0.0, 1.0, 2.0]
# The smallest move, at strength 2 against -2, of the x0 estimate along the concept, as a fraction of the concept's
# size. Here the sliders move it by 5% (epsilon: its loss weighs the noisy levels, where the two images of a pair are
# hard to tell apart, least) to 60% (v-prediction); the control, trained on pairs without a concept, by 1e-8, which
# can still be strictly increasing: hence a floor as well as the order.
MIN_EFFECT = 1e-3
# Probe noise levels: flow-matching sigmas, and for DDPM the timesteps with the same signal-to-noise ratio.
PROBE_SIGMAS = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.3, 0.5, 0.7])


def encoder():
    """A fixed random projection from pixels (3, 16, 16) to latents (4, 8, 8): 2x2 pixel blocks, orthonormal rows."""
    q, _ = torch.linalg.qr(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)))
    projection = q.T.contiguous()
    return lambda pixels: torch.einsum("oc,bchw->bohw", projection, torch.nn.functional.pixel_unshuffle(pixels, 2))


def probe_levels(objective):
    if objective.prediction_type == "flow_matching":
        return PROBE_SIGMAS
    alphas = objective.alphas_cumprod
    ratio = (1 - alphas).sqrt() / (alphas.sqrt() + (1 - alphas).sqrt())  # the flow sigma of the same SNR
    return torch.stack([torch.argmin((ratio - sigma).abs()) for sigma in PROBE_SIGMAS.tolist()])


def x0_change(objective, noisy, delta):
    """How a change of the prediction moves the x0 estimate at fixed `noisy.noisy`, per prediction type."""
    if objective.prediction_type == "flow_matching":  # x0 = x_t - sigma * (noise - x0)
        return -noisy.sigmas.view(-1, 1, 1, 1) * delta
    alpha = objective.alphas_cumprod[noisy.timesteps].float().view(-1, 1, 1, 1)
    if objective.prediction_type == "epsilon":  # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
        return -((1 - alpha) / alpha).sqrt() * delta
    return -(1 - alpha).sqrt() * delta  # v: x0 = sqrt(a) x_t - sqrt(1 - a) v


@pytest.fixture(scope="module")
def fitted_bases(digits):
    """Per prediction type, the tiny SD3 fitted to denoise the digits, before and after images alike.

    A slider learns the concept from the base's uncertainty between the two images of a pair; on a base that cannot
    denoise at all, it would mostly learn to denoise better at either sign, a change even in the strength.
    """
    encode = encoder()
    pixels = torch.stack([expected_tensor(image) for _, before, after, _ in digits for image in (before, after)])
    latents = encode(pixels)
    cache = {}

    def fitted(kind):
        if kind not in cache:
            objective = OBJECTIVES[kind]()
            model, predict = tiny_sd3()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
            generator = torch.Generator().manual_seed(1)
            model.train()
            for _ in range(BASE_STEPS):
                index = torch.randint(0, len(latents), (16,), generator=generator)
                noisy = objective.add_noise(latents[index], generator=generator)
                objective.loss(predict(noisy), noisy.target).backward()
                optimizer.step()
                optimizer.zero_grad()
            cache[kind] = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model, predict = tiny_sd3()
        model.load_state_dict(cache[kind])
        return model.requires_grad_(False).eval(), predict

    return fitted


def train_and_measure(fitted_bases, folder, kind):
    """Train a slider on the pairs of `folder`; return the concept statistic per strength and the base check."""
    objective = OBJECTIVES[kind]()
    model, predict = fitted_bases(kind)
    model.add_adapter(SliderLoraConfig(r=4, lora_alpha=4), adapter_name="slider")  # B = 0: the base at first
    scaler = SliderScaler(model)
    encode = encoder()
    dataset = load_image_pairs(folder, resolution=SIZE)
    sampler = SliderBatchSampler([dataset.backend], batch_size=8, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    # Plain SGD: the slider's change stays nearly linear in the strength within the 150 steps.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    generator = torch.Generator().manual_seed(2)
    model.train()
    step, epoch = 0, 0
    while step < SLIDER_STEPS:
        sampler.set_epoch(epoch)
        for batch in loader:
            paired_slider_loss(
                predict,
                scaler,
                encode(batch["after"]),
                encode(batch["before"]),
                objective=objective,
                strength=batch_strength(batch),
                generator=generator,
                backward=torch.Tensor.backward,
            )
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == SLIDER_STEPS:
                break
        epoch += 1
    model.eval()

    # Probe: the real concept's pairs (whatever the slider was trained on), noised from the before images.
    probe = [(expected_tensor(before), expected_tensor(after)) for _, before, after, _ in digit_pairs(8)]
    before = encode(torch.stack([b for b, _ in probe]))
    direction = encode(torch.stack([a for _, a in probe])) - before
    noise = torch.randn(before.shape, generator=torch.Generator().manual_seed(3))
    noisy = objective.add_noise(before, noise=noise, timesteps=probe_levels(objective))
    with torch.no_grad():
        with scaler.at(0.0):
            base = predict(noisy)
        model.disable_adapters()
        disabled = predict(noisy)
        model.enable_adapters()
        statistic = []
        for strength in STRENGTHS:
            with scaler.at(strength):
                change = x0_change(objective, noisy, predict(noisy) - base)
            statistic.append(((change * direction).sum() / direction.square().sum()).item())
    return statistic, base, disabled


def learned_direction(statistic):
    rising = all(a < b for a, b in zip(statistic, statistic[1:]))
    return rising and statistic[-1] - statistic[0] > MIN_EFFECT


@pytest.mark.parametrize("kind", list(OBJECTIVES))
def test_slider_trained_on_pairs_moves_the_concept_monotonically(fitted_bases, digit_folder, kind):
    statistic, base, disabled = train_and_measure(fitted_bases, digit_folder, kind)
    torch.testing.assert_close(base, disabled, rtol=0, atol=0)  # strength 0 is the base, bit for bit
    assert statistic[STRENGTHS.index(0.0)] == 0.0
    assert learned_direction(statistic), statistic


def test_pairs_without_a_concept_learn_no_direction(fitted_bases, tmp_path):
    # The control: the same digits with `after` a copy of `before` (a different file, the same pixels).
    folder = write_folder(tmp_path, digit_pairs(concept=False))
    statistic, _, _ = train_and_measure(fitted_bases, folder, "flow_matching")
    assert max(abs(value) for value in statistic) < MIN_EFFECT / 10, statistic
    assert not learned_direction(statistic)
