# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Prompt libraries: named validation prompts, each optionally carrying its own slider strength.

The JSON format is the one slider trainers use for A/B validation (SimpleTuner's prompt libraries):

```json
{
  "plain": "a portrait photo of a woman",
  "slider_plus": {"prompt": "a portrait photo of a woman", "adapter_strength": 1.2},
  "slider_minus": {"caption": "a portrait photo of a woman", "adapter_strength": -1.0},
  "composed": {"prompt": "a portrait photo of a woman", "adapter_strength": {"smile": 1.0, "age": -0.5}}
}
```

An entry is a prompt string, or an object with `prompt` (or its synonym `caption`) and optionally `adapter_strength`
(a number, or an object giving one number per adapter name), `negative_prompt` and `seed`. A list of such objects,
each with a `name`, is accepted too. An entry without `adapter_strength` is generated at the global strength.
Everything is checked when the library is loaded, and an error names the entry. Only the standard library is used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..utils.checks import check_finite, check_seed

__all__ = ["PromptEntry", "load_prompt_library"]

# Keys an entry object may have. `caption` is SimpleTuner's synonym for `prompt`.
_ENTRY_KEYS = ("name", "prompt", "caption", "adapter_strength", "negative_prompt", "seed")
_STRENGTH_HINT = "a finite number such as 1.2, or an object of numbers per adapter such as {'smile': 1.0}"


@dataclass(frozen=True)
class PromptEntry:
    """
    One prompt of a prompt library.

    Args:
        name (`str`):
            The entry's name, the key its image is returned under.
        prompt (`str`):
            The prompt.
        strength (`float` or `dict[str, float]`, *optional*):
            The slider strength for this prompt: one number for the sliders of the call, or a number per adapter name
            (composing several sliders). `None` means the global strength.
        negative_prompt (`str`, *optional*):
            A negative prompt for this entry.
        seed (`int`, *optional*):
            A seed for this entry; `None` means the global seed.

    Example:

    ```py
    >>> from peft_slider.inference import PromptEntry
    >>> PromptEntry("slider_plus", "a portrait photo", strength=1.2)
    PromptEntry(name='slider_plus', prompt='a portrait photo', strength=1.2, negative_prompt=None, seed=None)

    ```
    """

    name: str
    prompt: str
    strength: float | dict[str, float] | None = None
    negative_prompt: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"A prompt library entry needs a non-empty string name, got {self.name!r}.")
        where = f"entry {self.name!r}"
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"{where}: `prompt` must be a non-empty string, got {self.prompt!r}.")
        if self.strength is not None:
            object.__setattr__(self, "strength", check_strength(self.strength, where=f"{where}: `adapter_strength`"))
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError(f"{where}: `negative_prompt` must be a string, got {self.negative_prompt!r}.")
        if self.seed is not None:
            try:
                check_seed(self.seed, argument=f"{where}: `seed`")
            except TypeError as error:
                # A library is data (often JSON): every bad value in it is a ValueError.
                raise ValueError(str(error)) from None


def check_strength(value: Any, *, where: str) -> float | dict[str, float]:
    """
    Checks a slider strength: a finite number, or a non-empty mapping of adapter name to finite number.

    Returns a float, or a new dict of floats. `where` opens the error message (e.g. "entry 'x': `adapter_strength`").

    Example:

    ```py
    >>> from peft_slider.inference.prompts import check_strength
    >>> check_strength({"smile": 1, "age": -0.5}, where="`strength`")
    {'smile': 1.0, 'age': -0.5}
    >>> check_strength("high", where="`strength`")
    Traceback (most recent call last):
    ...
    ValueError: `strength` must be a finite number such as 1.2, or an object of numbers per adapter such as {'smile': 1.0}, got 'high'.

    ```
    """
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{where} is an empty mapping; name at least one adapter, e.g. {{'smile': 1.0}}.")
        checked = {}
        for adapter, number in value.items():
            if not isinstance(adapter, str) or not adapter:
                raise ValueError(
                    f"{where} must map adapter names (non-empty strings) to numbers, got key {adapter!r}."
                )
            checked[adapter] = check_finite(number, argument=f"{where} for adapter {adapter!r}")
        return checked
    return check_finite(value, argument=where, expected=_STRENGTH_HINT)


def _entry_from_object(name: str, data: Mapping[str, Any]) -> PromptEntry:
    where = f"entry {name!r}"
    unknown = [key for key in data if key not in _ENTRY_KEYS]
    if unknown:
        # A misspelt `adapter_strength` would otherwise silently generate at the global strength.
        raise ValueError(f"{where} has unknown keys {unknown}; an entry may have {list(_ENTRY_KEYS)}.")
    if "prompt" in data and "caption" in data and data["prompt"] != data["caption"]:
        raise ValueError(f"{where} has both `prompt` and `caption` with different texts; keep one.")
    prompt = data.get("prompt", data.get("caption"))
    if prompt is None:
        raise ValueError(f"{where} has no prompt; give it a `prompt` (or `caption`) string.")
    return PromptEntry(
        name=name,
        prompt=prompt,
        strength=data.get("adapter_strength"),
        negative_prompt=data.get("negative_prompt"),
        seed=data.get("seed"),
    )


def _entry(name: str, value: Any) -> PromptEntry:
    if isinstance(value, PromptEntry):
        if value.name != name:
            raise ValueError(f"entry {name!r} holds a PromptEntry named {value.name!r}; use one name.")
        return value
    if isinstance(value, str):
        return PromptEntry(name=name, prompt=value)
    if isinstance(value, Mapping):
        return _entry_from_object(name, value)
    raise ValueError(
        f"entry {name!r} must be a prompt string or an object with a `prompt`, got {type(value).__name__}: {value!r}."
    )


def _entries_from_list(items: Sequence[Any]) -> list[PromptEntry]:
    entries = []
    for index, item in enumerate(items):
        if isinstance(item, PromptEntry):
            entries.append(item)
        elif isinstance(item, str):
            entries.append(PromptEntry(name=f"prompt_{index}", prompt=item))
        elif isinstance(item, Mapping):
            name = item.get("name", f"prompt_{index}")
            if not isinstance(name, str) or not name:
                raise ValueError(f"entry {index} of the list has `name` {name!r}; a name must be a non-empty string.")
            entries.append(_entry_from_object(name, item))
        else:
            raise ValueError(
                f"entry {index} of the list must be a prompt string or an object with a `prompt`, got "
                f"{type(item).__name__}: {item!r}."
            )
    return entries


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load keeps the last of two equal keys without a word; two entries with one name would lose one silently.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"entry {key!r} appears twice; give every entry its own name.")
        result[key] = value
    return result


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise FileNotFoundError(f"Prompt library {path!r} does not exist; pass the path of a JSON file.") from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Prompt library {path!r} is not UTF-8 text ({error.reason} at byte {error.start}). Re-save it as UTF-8."
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Prompt library {path!r} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from None
    except ValueError as error:  # a duplicate name
        raise ValueError(f"Prompt library {path!r}: {error}") from None


def load_prompt_library(
    source: str | os.PathLike | Mapping[str, Any] | Sequence[Any],
) -> list[PromptEntry]:
    """
    Reads and checks a prompt library.

    Args:
        source (`str`, `os.PathLike`, `dict` or `list`):
            The path of a JSON file, or the parsed data: a mapping of name to prompt string or entry object, or a list
            of entry objects with a `name` (a missing name becomes `prompt_<index>`), prompt strings or
            [`PromptEntry`] objects.

    Returns:
        `list[PromptEntry]`: the entries, in the library's order.

    Raises:
        `ValueError`: for an empty library, malformed JSON, an entry without a prompt, an unknown key, a strength that
            is not a finite number (or mapping of them), or two entries with one name. The message names the entry.

    Example:

    ```py
    >>> from peft_slider.inference import load_prompt_library
    >>> library = load_prompt_library(
    ...     {
    ...         "plain": "a portrait photo",
    ...         "slider_plus": {"prompt": "a portrait photo", "adapter_strength": 1.2},
    ...         "composed": {"caption": "a portrait photo", "adapter_strength": {"smile": 1.0, "age": -0.5}},
    ...     }
    ... )
    >>> [(entry.name, entry.strength) for entry in library]
    [('plain', None), ('slider_plus', 1.2), ('composed', {'smile': 1.0, 'age': -0.5})]
    >>> load_prompt_library({"slider_plus": {"prompt": "a photo", "adapter_strength": "high"}})
    Traceback (most recent call last):
    ...
    ValueError: entry 'slider_plus': `adapter_strength` must be a finite number such as 1.2, or an object of numbers per adapter such as {'smile': 1.0}, got 'high'.

    ```
    """
    origin = ""
    if isinstance(source, (str, os.PathLike)):
        origin = f" {os.fspath(source)!r}"
        data = _read_json(os.fspath(source))
    else:
        data = source
    try:
        if isinstance(data, Mapping):
            entries = [_entry(name, value) for name, value in data.items()]
        elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            entries = _entries_from_list(data)
        else:
            raise ValueError(
                f"must be a JSON object of name -> prompt (or a list of entries), got {type(data).__name__}."
            )
    except ValueError as error:
        raise ValueError(f"Prompt library{origin}: {error}" if origin else str(error)) from None
    if not entries:
        raise ValueError(f"Prompt library{origin} is empty; add at least one entry, e.g. {{'plain': 'a photo'}}.")
    names = [entry.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Prompt library{origin} has several entries named {duplicates}; names must be unique.")
    return entries
