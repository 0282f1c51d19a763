# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.training.prompt_files: Concept Sliders', ai-toolkit's and our prompt files, and their errors.

The foreign files are written in the shapes of the projects' own example files (Concept Sliders'
trainscripts/textsliders/data/prompts*.yaml, ai-toolkit's config/examples/train_slider.example.yml), other prompts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from peft_slider.training import (
    AnchorPrompt,
    PromptFileError,
    PromptSet,
    PromptSliderSpec,
    load_prompt_slider,
    save_prompt_slider,
)

CONCEPT_SLIDERS = """\
- target: "a dog" # the prompt the slider acts on
  positive: "a dog, fluffy fur" # more of the concept
  unconditional: "a dog, short fur" # less of it
  neutral: "a dog" # where the target starts
  action: "enhance" # erase or enhance
  guidance_scale: 4
  resolution: 512
  dynamic_resolution: false
  batch_size: 1
# - target: "a cat"
#   positive: "a cat, fluffy fur"
- target: "a cat"
  positive: "a cat, fluffy fur"
  unconditional: "a cat, short fur"
  neutral: "a cat"
  action: "erase"
  guidance_scale: 2.5
  resolution: 1024
  dynamic_resolution: false
  batch_size: 2
  dynamic_crops: false
- target: "van gogh" # every other field takes Concept Sliders' default
"""

AI_TOOLKIT = """\
---
job: train
config:
  name: fur_slider_v1
  training_folder: "output/LoRA"
  device: cuda:0
  process:
    - type: slider
      network:
        type: "lierla"
        linear: 8
        linear_alpha: 4
      train:
        noise_scheduler: "ddpm"
        steps: 500
        lr: 2e-4
        batch_size: 1
        dtype: bf16
      model:
        name_or_path: "some/model"
        is_xl: false
      sample:
        sampler: "ddpm"
        prompts:
          - "a dog on a sofa --m -3"
          - "a dog on a sofa --m 3"
        neg: "cartoon"
        guidance_scale: 7
      slider:
        resolutions:
          - [ 512, 512 ]
#          - [ 768, 768 ]
        batch_full_slide: true
        targets:
          - target_class: "animal"
            positive: "fluffy fur, long hair"
            negative: "short fur, smooth coat"
            weight: 1.0
            shuffle: false
          - target_class: "person"
            positive: "curly hair"
            negative: "straight hair"
            multiplier: -0.5
            weight: 0.25
        anchors:
          - prompt: "a car"
            neg_prompt: "animal"
            multiplier: 1.0
          - prompt: "a house"
            neg_prompt: "animal"
            multiplier: -0.5
meta:
  name: "[name]"
"""


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _fields(item) -> dict:
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item) if f.name != "name"}


def test_concept_sliders_file(tmp_path):
    path = _write(tmp_path, "prompts.yaml", CONCEPT_SLIDERS)
    spec = load_prompt_slider(path)
    assert (spec.format, spec.source, spec.anchors) == ("concept_sliders", str(path), ())
    common = {"strength": 1.0, "weight": 1.0, "mirror": False}
    assert [_fields(s) for s in spec.prompt_sets] == [
        {
            "target": "a dog",
            "positive": "a dog, fluffy fur",
            "negative": "a dog, short fur",
            "neutral": "a dog",
            "action": "enhance",
            "guidance_scale": 4.0,
            "resolution": 512,
            "batch_size": 1,
            **common,
        },
        {
            "target": "a cat",
            "positive": "a cat, fluffy fur",
            "negative": "a cat, short fur",
            "neutral": "a cat",
            "action": "erase",
            "guidance_scale": 2.5,
            "resolution": 1024,
            "batch_size": 2,
            **common,
        },
        {  # their defaults: positive = target, unconditional = "", neutral = unconditional, action = erase
            "target": "van gogh",
            "positive": "van gogh",
            "negative": "",
            "neutral": "",
            "action": "erase",
            "guidance_scale": 1.0,
            "resolution": None,
            "batch_size": 1,
            **common,
        },
    ]
    assert spec.prompt_sets[2].name == f"{path} entry 3 of 3 (target 'van gogh')"
    # `resolution` fills only the sets that give none; JSON content reads the same.
    filled = load_prompt_slider(path, resolution=768)
    assert [s.resolution for s in filled.prompt_sets] == [512, 1024, 768]
    as_json = _write(tmp_path, "prompts.json", json.dumps(yaml.safe_load(CONCEPT_SLIDERS)))
    assert [_fields(s) for s in load_prompt_slider(as_json).prompt_sets] == [_fields(s) for s in spec.prompt_sets]


def _slider_section() -> dict:
    return yaml.safe_load(AI_TOOLKIT)["config"]["process"][0]["slider"]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(None, id="job-config"),
        pytest.param({"type": "slider", "slider": "SECTION"}, id="process-entry"),
        pytest.param({"slider": "SECTION"}, id="slider-key"),
        pytest.param("SECTION", id="section-itself"),
    ],
)
def test_ai_toolkit_config(tmp_path, document):
    prefix = "" if document == "SECTION" else "slider."  # how the names spell where the targets are
    if document is None:
        path = _write(tmp_path, "train_slider.yml", AI_TOOLKIT)
    else:
        document = _slider_section() if document == "SECTION" else {**document, "slider": _slider_section()}
        path = _write(tmp_path, "slider.json", json.dumps(document))
    spec = load_prompt_slider(path)
    assert spec.format == "ai_toolkit"
    common = {"neutral": "", "guidance_scale": 1.0, "resolution": 512, "batch_size": 1, "mirror": True}
    assert [_fields(s) for s in spec.prompt_sets] == [
        {
            "target": "animal",
            "positive": "fluffy fur, long hair",
            "negative": "short fur, smooth coat",
            "action": "enhance",
            "strength": 1.0,
            "weight": 1.0,
            **common,
        },
        {  # a negative multiplier trains the slide the other way round
            "target": "person",
            "positive": "curly hair",
            "negative": "straight hair",
            "action": "erase",
            "strength": 0.5,
            "weight": 0.25,
            **common,
        },
    ]
    assert [_fields(a) for a in spec.anchors] == [
        {"prompt": "a car", "strength": 1.0, "weight": 1.0},
        {"prompt": "a house", "strength": 0.5, "weight": 1.0},
    ]
    assert spec.prompt_sets[1].name == f"{path} {prefix}targets entry 2 of 2 (target_class 'person')"
    assert spec.anchors[1].name == f"{path} {prefix}anchors entry 2 of 2 (prompt 'a house')"


def test_ai_toolkit_resolutions_and_shuffle(tmp_path):
    section = {
        "resolutions": [[512, 512], 768, [512, 512]],
        "targets": [{"target_class": "", "positive": "a, b, c", "negative": "x,y", "shuffle": True}],
    }
    path = _write(tmp_path, "slider.yaml", yaml.safe_dump({"slider": section}))
    sets = load_prompt_slider(path).prompt_sets
    # 3! orders of the positive x 2 of the negative, 8 kept (ai-toolkit's limit), each at both distinct sizes.
    assert len(sets) == 16
    assert [s.resolution for s in sets] == [512, 768] * 8
    pairs = [(s.positive, s.negative) for s in sets[::2]]
    assert pairs[0] == ("a, b, c", "x, y")  # the written order first, phrases joined as ai-toolkit joins them
    assert len(set(pairs)) == 8
    assert all(sorted(p.split(", ")) == ["a", "b", "c"] and sorted(n.split(", ")) == ["x", "y"] for p, n in pairs)
    assert load_prompt_slider(path).prompt_sets == sets  # the same file always gives the same sets
    assert sets[3].name.endswith("phrase order 2 of 8, resolution 768")


def test_peft_slider_round_trip(tmp_path):
    spec = PromptSliderSpec(
        prompt_sets=(
            PromptSet("a person", "a happy person", "a sad person"),
            PromptSet(
                "a dog",
                "a big dog",
                "a small dog",
                neutral="",
                action="erase",
                guidance_scale=-2.5,
                resolution=640,
                batch_size=3,
                strength=0.75,
                weight=0.5,
                mirror=False,
                name="from my notes",
            ),
        ),
        anchors=(AnchorPrompt("a car", strength=2.0, weight=0.1), AnchorPrompt("", name=None)),
    )
    path = save_prompt_slider(spec, tmp_path / "new" / "folder" / "slider.json")
    assert path == tmp_path / "new" / "folder" / "slider.json"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left
    assert load_prompt_slider(path) == dataclasses.replace(spec, source=str(path))
    assert json.loads(path.read_text())["peft_slider_prompts"] == 1
    # Saving over a file replaces it; our format written as YAML reads the same.
    save_prompt_slider(dataclasses.replace(spec, prompt_sets=spec.prompt_sets[:1]), path)
    assert len(load_prompt_slider(path).prompt_sets) == 1
    as_yaml = _write(
        tmp_path, "slider.yaml", yaml.safe_dump(json.loads(Path(save_prompt_slider(spec, path)).read_text()))
    )
    assert load_prompt_slider(as_yaml) == dataclasses.replace(spec, source=str(as_yaml))
    # A foreign file saved in ours keeps every set, names included.
    foreign = load_prompt_slider(_write(tmp_path, "prompts.yaml", CONCEPT_SLIDERS))
    again = load_prompt_slider(save_prompt_slider(foreign, tmp_path / "converted.json"))
    assert again == dataclasses.replace(foreign, source=str(tmp_path / "converted.json"), format="peft_slider")


def test_python_tags_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "created_by_yaml"
    text = f"- target: !!python/object/apply:builtins.open [{str(marker)!r}, 'w']\n  positive: x\n"
    # The tag really would create the file with an unsafe loader: the check below can fail.
    yaml.unsafe_load(text)[0]["target"].close()
    assert marker.exists()
    marker.unlink()
    path = _write(tmp_path, "evil.yaml", text)
    with pytest.raises(PromptFileError, match="safe loader") as error:
        load_prompt_slider(path)
    assert str(path) in str(error.value) and "line 1" in str(error.value) and "python/object" in str(error.value)
    assert not marker.exists()


# One row per bad input: file name, content (None: nothing written), format, error type, and what the message must
# name besides the file: the entry, the field and the value, where the input has them.
_JOB = "config:\n  process:\n    - type: {type}\n      slider:\n{slider}"
_TARGET = "        targets:\n          - target_class: a\n            positive: b\n            negative: c\n"
BAD = [
    ("missing.yaml", None, None, FileNotFoundError, ["does not exist"]),
    ("folder", "FOLDER", None, IsADirectoryError, ["is a folder"]),
    ("empty.yaml", " \n", None, PromptFileError, ["is empty"]),
    ("comments.yaml", "# nothing yet\n", None, PromptFileError, ["holds no data"]),
    ("latin1.yaml", "- target: caf\xe9\n".encode("latin-1"), None, PromptFileError, ["not UTF-8", "byte 13"]),
    ("bad.yaml", "- target: a\n  positive: [b\n", None, PromptFileError, ["not valid YAML", "line 3"]),
    ("bad.json", '[{"target": "a",}]', None, PromptFileError, ["not valid JSON", "line 1, column 17"]),
    ("dup.yaml", "- target: a\n  target: b\n", None, PromptFileError, ["'target' appears twice", "line 2", "line 1)"]),
    ("dup.json", '[{"target": "a", "target": "b"}]', None, PromptFileError, ["'target' appears twice"]),
    ("scalar.yaml", "just words\n", None, PromptFileError, ["cannot tell its format", "`peft_slider_prompts`"]),
    ("odd.yaml", "name: x\n", None, PromptFileError, ["keys ['name']", "`config: process:`", "`target`"]),
    ("single.yaml", "target: a\npositive: b\n", None, PromptFileError, ["cannot tell", "start each entry with `- `"]),
    ("none.yaml", "[]\n", None, PromptFileError, ["empty list"]),
    ("str.yaml", "- a man\n", None, PromptFileError, ["entry 1 of 1", "must be a mapping", "'a man'"]),
    ("no_target.yaml", "- positive: x\n", None, PromptFileError, ["entry 1 of 1", "`target` is missing"]),
    ("int.yaml", "- target: 1990\n", None, PromptFileError, ["entry 1 of 1", "`target`", "int 1990", "Quote"]),
    ("null.yaml", "- target: a\n  neutral:\n", None, PromptFileError, ["(target 'a')", "`neutral`", "null"]),
    (
        "str_num.yaml",
        "- target: a\n- target: b\n  guidance_scale: high\n",
        None,
        PromptFileError,
        ["entry 2 of 2 (target 'b')", "`guidance_scale`", "'high'"],
    ),
    ("nan.yaml", "- target: a\n  guidance_scale: .nan\n", None, PromptFileError, ["`guidance_scale`", "nan"]),
    ("res.yaml", "- target: a\n  resolution: 512.0\n", None, PromptFileError, ["`resolution`", "512.0"]),
    ("batch.yaml", "- target: a\n  batch_size: -1\n", None, PromptFileError, ["(target 'a')", "`batch_size`", "-1"]),
    ("big.yaml", "- target: a\n  batch_size: 100000\n", None, PromptFileError, ["(target 'a')", "`batch_size`"]),
    ("act.yaml", "- target: a\n  action: remove\n", None, PromptFileError, ["`action`", "'remove'", "enhance"]),
    (
        "typo.yaml",
        "- target: a\n  guidance_scal: 4\n",
        None,
        PromptFileError,
        ["(target 'a')", "`guidance_scal`", "unconditional, neutral", "Did you mean `guidance_scale`"],
    ),
    (
        "gpt.yaml",
        "- target: a\n  guidance: 4\n",
        None,
        PromptFileError,
        ["`guidance`", "rename it to `guidance_scale`"],
    ),
    ("rank.yaml", "- target: a\n  rank: 4\n", None, PromptFileError, ["`rank`", "LoRA config"]),
    ("neg.yaml", "- target: a\n  negative: b\n", None, PromptFileError, ["`negative`", "`unconditional`"]),
    (
        "dyn.yaml",
        "- target: a\n  dynamic_resolution: true\n",
        None,
        PromptFileError,
        ["(target 'a')", "`dynamic_resolution: true`", "Set it to false"],
    ),
    ("crops.yaml", "- target: a\n  dynamic_crops: true\n", None, PromptFileError, ["`dynamic_crops: true`"]),
    ("crops2.yaml", "- target: a\n  dynamic_crops: 1\n", None, PromptFileError, ["`dynamic_crops`", "true or false"]),
    (
        "as_ours.yaml",
        "- target: a\n",
        "peft_slider",
        PromptFileError,
        ["peft_slider prompt file is a mapping", "a list"],
    ),
    # ai-toolkit
    (
        "no_slider.yaml",
        "job: train\nconfig:\n  process:\n    - type: sd_trainer\n      train: {steps: 1}\n",
        None,
        PromptFileError,
        ["no entry of `config.process` has a `slider:` section", "['sd_trainer']", "type: slider"],
    ),
    (
        "two.yaml",
        "config:\n  process:\n    - slider: {targets: []}\n    - type: x\n    - slider: {targets: []}\n",
        None,
        PromptFileError,
        ["entries 1, 3 of `config.process`", "Keep one"],
    ),
    (
        "ui.yaml",
        _JOB.format(type="concept_slider", slider="        positive_prompt: happy\n        target_class: person\n"),
        None,
        PromptFileError,
        ["config.process entry 1 of 1", "`concept_slider` process", "dataset's images"],
    ),
    (
        "ui_section.yaml",
        "slider:\n  positive_prompt: happy\n  guidance_strength: 3\n",
        None,
        PromptFileError,
        ["`concept_slider` process"],
    ),
    ("type.yaml", _JOB.format(type="lora_hack", slider=_TARGET), None, PromptFileError, ["`type`", "'lora_hack'"]),
    ("zero.yaml", "slider:\n  targets: []\n", None, PromptFileError, ["slider", "`targets` is empty"]),
    ("no_targets.yaml", "slider:\n  anchors: []\n", None, PromptFileError, ["slider", "has no `targets`"]),
    (
        "section_key.yaml",
        "slider:\n  resolution: 512\n  targets: [{positive: a}]\n",
        None,
        PromptFileError,
        ["`resolution`", "Did you mean `resolutions`"],
    ),
    (
        "target_key.yaml",
        _JOB.format(type="slider", slider=_TARGET + "            multiplyer: 2\n"),
        None,
        PromptFileError,
        ["slider.targets entry 1 of 1 (target_class 'a')", "`multiplyer`", "target_class, positive, negative"],
    ),
    (
        "target_str.yaml",
        "targets:\n  - a dog\n",
        None,
        PromptFileError,
        ["targets entry 1 of 1", "must be a mapping", "'a dog'"],
    ),
    (
        "same.yaml",
        "targets:\n  - {target_class: a, positive: b, negative: ' b'}\n",
        None,
        PromptFileError,
        ["(target_class 'a')", "`positive` and `negative` are the same"],
    ),
    ("mult0.yaml", "targets:\n  - {positive: b, multiplier: 0}\n", None, PromptFileError, ["`multiplier` is 0"]),
    ("inf.yaml", "targets:\n  - {positive: b, multiplier: .inf}\n", None, PromptFileError, ["`multiplier`", "inf"]),
    ("weight.yaml", "targets:\n  - {positive: b, weight: -1}\n", None, PromptFileError, ["`weight`", "-1.0"]),
    (
        "shuffle.yaml",
        "targets:\n  - {positive: b, shuffle: 'yes'}\n",
        None,
        PromptFileError,
        ["`shuffle`", "true or false", "'yes'"],
    ),
    (
        "wide.yaml",
        "resolutions: [[512, 512], [512, 768]]\ntargets: [{positive: b}]\n",
        None,
        PromptFileError,
        ["`resolutions` entry 2 of 2", "[512, 768]", "not square"],
    ),
    (
        "res3.yaml",
        "resolutions: [[512]]\ntargets: [{positive: b}]\n",
        None,
        PromptFileError,
        ["`resolutions`", "[512]"],
    ),
    ("pfile.yaml", "prompt_file: n.txt\ntargets: [{positive: b}]\n", None, PromptFileError, ["`prompt_file`"]),
    ("adapter.yaml", "use_adapter: depth\ntargets: [{positive: b}]\n", None, PromptFileError, ["`use_adapter`"]),
    (
        "anchors.yaml",
        "targets: [{positive: b}]\nanchors: {prompt: a car}\n",
        None,
        PromptFileError,
        ["`anchors` must be a list", "a mapping"],
    ),
    (
        "anchor_str.yaml",
        "targets: [{positive: b}]\nanchors: [a car]\n",
        None,
        PromptFileError,
        ["anchors entry 1 of 1", "must be a mapping", "'a car'"],
    ),
    (
        "anchor_prompt.yaml",
        "targets: [{positive: b}]\nanchors: [{multiplier: 1}]\n",
        None,
        PromptFileError,
        ["anchors entry 1 of 1", "`prompt` is missing"],
    ),
    (
        "anchor_mult.yaml",
        "targets: [{positive: b}]\nanchors: [{prompt: a car, multiplier: strong}]\n",
        None,
        PromptFileError,
        ["(prompt 'a car')", "`multiplier`", "'strong'"],
    ),
    (
        "anchor_key.yaml",
        "targets: [{positive: b}]\nanchors: [{prompt: a car, weight: 2}]\n",
        None,
        PromptFileError,
        ["(prompt 'a car')", "`weight`", "prompt, neg_prompt, multiplier"],
    ),
    # ours
    (
        "v2.json",
        '{"peft_slider_prompts": 2, "prompt_sets": []}',
        None,
        PromptFileError,
        ["`peft_slider_prompts`", "2"],
    ),
    ("vtrue.json", '{"peft_slider_prompts": true}', None, PromptFileError, ["`peft_slider_prompts`", "True"]),
    ("top.json", '{"peft_slider_prompts": 1, "sets": []}', None, PromptFileError, ["`sets`", "prompt_sets"]),
    (
        "no_sets.json",
        '{"peft_slider_prompts": 1, "prompt_sets": []}',
        None,
        PromptFileError,
        ["`prompt_sets` is empty"],
    ),
    (
        "set_key.json",
        '{"peft_slider_prompts": 1, "prompt_sets": [{"target": "a", "positive": "b", "negative": "c", '
        '"strenght": 2}]}',
        None,
        PromptFileError,
        ["prompt_sets entry 1 of 1 (target 'a')", "`strenght`", "Did you mean `strength`"],
    ),
    (
        "set_missing.json",
        '{"peft_slider_prompts": 1, "prompt_sets": [{"target": "a", "positive": "b"}]}',
        None,
        PromptFileError,
        ["prompt_sets entry 1 of 1 (target 'a')", "`negative` is missing"],
    ),
    (
        "set_type.json",
        '{"peft_slider_prompts": 1, "prompt_sets": [{"target": "a", "positive": "b", "negative": "c", '
        '"weight": "heavy"}]}',
        None,
        PromptFileError,
        ["prompt_sets entry 1 of 1 (target 'a')", "`weight`", "'heavy'"],
    ),
    (
        "set_prompt.json",
        '{"peft_slider_prompts": 1, "prompt_sets": [{"target": "a", "positive": 3, "negative": "c"}]}',
        None,
        PromptFileError,
        ["prompt_sets entry 1 of 1 (target 'a')", "`positive`", "3"],
    ),
    (
        "anchor_ours.json",
        '{"peft_slider_prompts": 1, "prompt_sets": [{"target": "a", "positive": "b", "negative": "c"}], '
        '"anchors": [{"prompt": "x", "strength": -1}]}',
        None,
        PromptFileError,
        ["anchors entry 1 of 1 (prompt 'x')", "`strength`", "-1"],
    ),
]


@pytest.mark.parametrize(("name", "content", "format", "error", "fragments"), BAD, ids=[row[0] for row in BAD])
def test_bad_files(tmp_path, name, content, format, error, fragments):
    path = tmp_path / name
    if content == "FOLDER":
        path.mkdir()
    elif content is not None:
        _write(tmp_path, name, content)
    with pytest.raises(error) as raised:
        load_prompt_slider(path, format=format)
    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda p: load_prompt_slider(p, format="kohya"), ValueError, "`format`"),
        (lambda p: load_prompt_slider(p, resolution=0), ValueError, "`resolution`"),
        (lambda p: load_prompt_slider(3), TypeError, "`path`"),
        (lambda p: save_prompt_slider({"prompt_sets": []}, p), TypeError, "`spec`"),
        (lambda p: save_prompt_slider(load_prompt_slider(p), p.parent), IsADirectoryError, "is a folder"),
    ],
    ids=["format", "resolution", "path-type", "spec-type", "save-to-folder"],
)
def test_bad_arguments(tmp_path, call, error, fragment):
    path = _write(tmp_path, "prompts.yaml", CONCEPT_SLIDERS)
    with pytest.raises(error, match=fragment):
        call(path)
