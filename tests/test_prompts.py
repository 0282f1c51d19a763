# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Tests for peft_slider.inference.prompts: the prompt-library format, its checks and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_slider.inference.prompts import PromptEntry, check_strength, load_prompt_library

# Accepted forms: source -> the entries expected, written out by hand.
FORMATS = [
    pytest.param({"plain": "a photo"}, [PromptEntry("plain", "a photo")], id="name-to-string"),
    pytest.param(
        {"plus": {"prompt": "a photo", "adapter_strength": 1.2}},
        [PromptEntry("plus", "a photo", strength=1.2)],
        id="object-with-prompt",
    ),
    pytest.param(
        {"minus": {"caption": "a photo", "adapter_strength": -1}},
        [PromptEntry("minus", "a photo", strength=-1.0)],
        id="caption-synonym",
    ),
    pytest.param(
        {"same": {"prompt": "a photo", "caption": "a photo"}},
        [PromptEntry("same", "a photo")],
        id="prompt-and-equal-caption",
    ),
    pytest.param(
        {"zero": {"prompt": "a photo", "adapter_strength": 0}},
        [PromptEntry("zero", "a photo", strength=0.0)],
        id="strength-zero",
    ),
    pytest.param(
        {"both": {"prompt": "a photo", "adapter_strength": {"smile": 1, "age": -0.5}}},
        [PromptEntry("both", "a photo", strength={"smile": 1.0, "age": -0.5})],
        id="strength-per-adapter",
    ),
    pytest.param(
        {"full": {"prompt": "a photo", "adapter_strength": 2.0, "negative_prompt": "blurry", "seed": 7}},
        [PromptEntry("full", "a photo", strength=2.0, negative_prompt="blurry", seed=7)],
        id="every-key",
    ),
    pytest.param(
        {"null": {"prompt": "a photo", "adapter_strength": None}},
        [PromptEntry("null", "a photo")],
        id="null-strength-is-omitted",
    ),
    pytest.param(
        [{"name": "a", "prompt": "a cat"}, {"caption": "a dog", "adapter_strength": 0.5}, "a bird"],
        [PromptEntry("a", "a cat"), PromptEntry("prompt_1", "a dog", strength=0.5), PromptEntry("prompt_2", "a bird")],
        id="list-form",
    ),
    pytest.param(
        {"first": "one", "second": {"prompt": "two"}, "third": "three"},
        [PromptEntry("first", "one"), PromptEntry("second", "two"), PromptEntry("third", "three")],
        id="order-kept",
    ),
]


@pytest.mark.parametrize("source, expected", FORMATS)
@pytest.mark.parametrize("via", ["data", "json_str_path", "json_pathlib"])
def test_accepted_forms(source, expected, via, tmp_path):
    if via != "data":
        path = tmp_path / "library.json"
        path.write_text(json.dumps(source))
        source = str(path) if via == "json_str_path" else path
    assert load_prompt_library(source) == expected


def test_prompt_entries_pass_through():
    entries = [PromptEntry("x", "a cat", strength=-2.0), PromptEntry("y", "a dog", seed=3)]
    assert load_prompt_library(entries) == entries
    with pytest.raises(ValueError, match=r"entry 'z' holds a PromptEntry named 'x'"):
        load_prompt_library({"z": entries[0]})


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "library.json"
    path.write_text(text)
    return str(path)


# Rejected input: the error names the entry (or the file) and says what is wrong.
ERRORS = [
    ({}, r"is empty; add at least one entry"),
    ([], r"is empty"),
    ({"smile_up": {"adapter_strength": 1.0}}, r"entry 'smile_up' has no prompt; give it a `prompt` \(or `caption`\)"),
    ({"x": {"prompt": "a", "caption": "b"}}, r"entry 'x' has both `prompt` and `caption`"),
    ({"x": {"prompt": "a", "adapter_strenght": 1}}, r"entry 'x' has unknown keys \['adapter_strenght'\]"),
    (
        {"slider_plus": {"prompt": "a", "adapter_strength": "high"}},
        r"entry 'slider_plus': `adapter_strength` must be a finite number.*got 'high'",
    ),
    (
        {"x": {"prompt": "a", "adapter_strength": float("nan")}},
        r"entry 'x': `adapter_strength` must be a finite number.*nan",
    ),
    ({"x": {"prompt": "a", "adapter_strength": float("-inf")}}, r"entry 'x': .*finite number.*-inf"),
    ({"x": {"prompt": "a", "adapter_strength": True}}, r"entry 'x': .*finite number.*True"),
    ({"x": {"prompt": "a", "adapter_strength": [1, 2]}}, r"entry 'x': .*finite number.*\[1, 2\]"),
    ({"x": {"prompt": "a", "adapter_strength": {}}}, r"entry 'x': `adapter_strength` is an empty mapping"),
    (
        {"x": {"prompt": "a", "adapter_strength": {"smile": "up"}}},
        r"entry 'x': `adapter_strength` for adapter 'smile' must be a finite number, got 'up'",
    ),
    ({"x": {"prompt": "a", "adapter_strength": {"": 1.0}}}, r"entry 'x': .*adapter names.*got key ''"),
    ({"x": {"prompt": ""}}, r"entry 'x': `prompt` must be a non-empty string"),
    ({"x": {"prompt": "   "}}, r"entry 'x': `prompt` must be a non-empty string"),
    ({"x": {"prompt": 3}}, r"entry 'x': `prompt` must be a non-empty string, got 3"),
    ({"x": 3}, r"entry 'x' must be a prompt string or an object"),
    ({"x": {"prompt": "a", "seed": -1}}, r"entry 'x': `seed` must be an integer in \[0, 2\*\*63\), got -1"),
    ({"x": {"prompt": "a", "seed": 1.5}}, r"entry 'x': `seed` must be an int, got 1.5"),
    ({"x": {"prompt": "a", "seed": True}}, r"entry 'x': `seed` must be an int, got True"),
    ({"x": {"prompt": "a", "negative_prompt": 1}}, r"entry 'x': `negative_prompt` must be a string"),
    ({"": "a"}, r"non-empty string name"),
    ([{"name": "a", "prompt": "x"}, {"name": "a", "prompt": "y"}], r"several entries named \['a'\]"),
    ([{"name": 3, "prompt": "x"}], r"entry 0 of the list has `name` 3"),
    ([3], r"entry 0 of the list must be a prompt string"),
    ("not a library", r"does not exist"),
    (5, r"must be a JSON object of name -> prompt"),
]


@pytest.mark.parametrize("source, message", ERRORS)
def test_bad_libraries_are_clear_errors(source, message):
    error = FileNotFoundError if isinstance(source, str) else ValueError
    with pytest.raises(error, match=message):
        load_prompt_library(source)


FILE_ERRORS = [
    ('{"plain": "a photo",}', r"library.json' is not valid JSON: .* at line 1, column \d+"),
    ('{"plain": "a photo"', r"is not valid JSON"),
    ("", r"is not valid JSON"),
    ('{"a": "x", "a": "y"}', r"library.json': entry 'a' appears twice"),
    (
        '{"x": {"prompt": "a", "adapter_strength": NaN}}',
        r"library.json': entry 'x': `adapter_strength` must be a finite number.*nan",
    ),
    ('{"x": {"prompt": "a", "adapter_strength": Infinity}}', r"entry 'x': .*finite number.*inf"),
    ('"a photo"', r"library.json': must be a JSON object"),
    ("{}", r"library.json' is empty"),
]


@pytest.mark.parametrize("text, message", FILE_ERRORS)
def test_bad_library_files_name_the_file_and_entry(text, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        load_prompt_library(_write(tmp_path, text))


@pytest.mark.parametrize(
    "value, expected",
    [(1, 1.0), (-2.5, -2.5), (0, 0.0), ({"smile": 1, "age": -0.5}, {"smile": 1.0, "age": -0.5})],
)
def test_check_strength_returns_floats(value, expected):
    result = check_strength(value, where="`strength`")
    assert result == expected
    assert all(type(v) is float for v in (result.values() if isinstance(result, dict) else [result]))


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
prompts = st.text(min_size=1, max_size=30).filter(lambda s: s.strip())
strengths = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.dictionaries(names, st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, st.tuples(prompts, strengths), min_size=1, max_size=5))
def test_json_round_trip(library):
    data = {
        name: (prompt if strength is None else {"prompt": prompt, "adapter_strength": strength})
        for name, (prompt, strength) in library.items()
    }
    entries = load_prompt_library(json.loads(json.dumps(data)))
    assert [entry.name for entry in entries] == list(library)
    for entry, (prompt, strength) in zip(entries, library.values()):
        assert entry.prompt == prompt
        assert entry.strength == strength  # JSON writes floats with repr: exact


def test_huge_int_strength_is_a_clear_error():
    with pytest.raises(ValueError, match=r"entry 'a': `adapter_strength` must be a finite number.*got an int of 401"):
        load_prompt_library({"a": {"prompt": "a photo", "adapter_strength": 10**400}})


def test_library_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_bytes(b'{"caf\xe9": "a photo"}')
    with pytest.raises(ValueError, match=r"Prompt library '.*prompts.json' is not UTF-8 text.*Re-save it as UTF-8"):
        load_prompt_library(path)
