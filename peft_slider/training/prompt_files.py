# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Text-prompt slider files: Concept Sliders' prompt YAML, ai-toolkit's slider config and our own format.

`load_prompt_slider` reads a YAML or JSON file into a `PromptSliderSpec` (a `.json` file as JSON, any other as YAML,
which reads JSON too) and tells the format from the content; `save_prompt_slider` writes our own format. YAML is read
with the safe loader (plain data only: a tag such as `!!python/object` is refused and nothing is run), and a key given
twice in one mapping is refused (YAML and JSON readers would keep the last one without a word). Entries are counted
from 1 in every message ("entry 2 of 3"), and each `PromptSet` / `AnchorPrompt` read is named by its file and entry,
so later messages point back into the file.

**Concept Sliders** (rohitgandikota/sliders, `trainscripts/textsliders/data/prompts*.yaml`): a YAML list of mappings
with the fields of their `PromptSettings`, and their defaults:

| their field | here | their default, kept |
| --- | --- | --- |
| `target` (required) | `target` | |
| `positive` | `positive` | the target |
| `unconditional` | `negative` | `""` |
| `neutral` | `neutral` | the unconditional prompt (not the target) |
| `action` `erase` / `enhance` | `action` | `"erase"` |
| `guidance_scale` | `guidance_scale` (`eta`, any finite number) | `1.0` |
| `resolution` | `resolution` | none: the `resolution` argument, else the run's (their 512 is an SD 1.x size) |
| `batch_size` | `batch_size` | `1` |
| `dynamic_resolution`, `dynamic_crops` | `false` only | `false` |

Their loss is `target(+1) -> neutral + guidance_scale * (positive - unconditional)` for `enhance` and `neutral -
guidance_scale * (...)` for `erase`, which is `PromptSet`'s. Their trainer runs the slider at multiplier 1.0 only (the
`-1` side follows from the LoRA's linearity), so sets read from their files have `strength=1.0` and `mirror=False`.
`dynamic_resolution: true` (a random size per step) and `dynamic_crops: true` (random SDXL crop conditioning) change
what is trained in ways the prompt mode does not reproduce, so they are refused. Their example files
`prompts-*_GPT.yaml` also carry `guidance` and `rank`, which their reader drops without a word (those entries trained
at `guidance_scale` 1.0): both are refused here with what to write instead. Their `--attributes` (each prompt
prefixed with each attribute) is an option of their trainer, not of the file.

**ai-toolkit** (ostris/ai-toolkit, `config/examples/train_slider.example.yml`, `TrainSliderProcess`): a whole job
config (`config: process: [...]` whose one entry with a `slider:` section is used; its `type` must be `slider` or
`slider_old`), a mapping with a `slider:` key (one process entry), or the slider section itself. Everything outside
the slider section (network, train, model, sample, save, meta) is the trainer's business and is ignored here: the
rank, steps and `train: batch_size` are options of the training run. The section's fields:

| their field | here |
| --- | --- |
| `targets[].target_class`, `positive`, `negative` | `target`, `positive`, `negative`; `neutral=""` (empty prompt) |
| `targets[].multiplier` (default 1) | `strength=abs(multiplier)`; a negative one: `action="erase"` (reversed) |
| `targets[].weight` (default 1) | `weight` (> 0) |
| `targets[].shuffle` | `true`: up to 8 sets per target whose comma-separated phrases are in different orders |
| `anchors[].prompt` / `multiplier` | `AnchorPrompt(prompt, strength=abs(multiplier))` |
| `anchors[].neg_prompt` | read and dropped: their anchor prediction is taken at guidance 1, where it cancels |
| `resolutions` (`[w, h]` or an int) | square only; one set per target per size (they draw one size per step) |
| `batch_full_slide` | accepted: it batches a step's four parts; both signs are trained either way |
| `prompt_tensors`, `low_ram` | accepted and ignored (an embedding cache, a memory option) |
| `prompt_file`, `use_adapter`, `adapter_img_dir` | refused when set (extra neutral prompts, a T2I adapter) |

ai-toolkit's slider loss at `+multiplier` is `target_class -> empty + 1.0 * (positive - negative)` and the mirror at
`-multiplier`: so `action="enhance"`, `guidance_scale=1.0` (fixed in `TrainSliderProcess`; no field sets it) and
`mirror=True`. With `shuffle: true` their trainer takes 8 of the orderings at random; here the written order comes
first and the others are drawn with a fixed seed, so one file always gives the same sets. Their newer `concept_slider`
process (`positive_prompt`, `guidance_strength`, `anchor_class`, ...) trains on a dataset's images with targets
rescaled to the neutral prediction's statistics, which is not a text-prompt slider: it is refused with that reason.
Anchors are held at `+multiplier` and `-multiplier` (the sign of the slide they are trained beside), so `abs` is exact;
`TrainSliderProcessOld` adds their loss, and the current `TrainSliderProcess` builds them but leaves them out.

**peft_slider** (ours; `save_prompt_slider` writes it): a JSON (or YAML) mapping ``{"peft_slider_prompts": 1,
"prompt_sets": [...], "anchors": [...]}`` whose entries hold the fields of `PromptSet` / `AnchorPrompt` by name.
Unknown fields and versions other than 1 are refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import random
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

from ..utils.checks import check_int, is_finite_number, show_value
from .text_prompts import ACTIONS, AnchorPrompt, PromptSet, PromptSliderSpec

__all__ = ["PROMPT_FILE_FORMATS", "PromptFileError", "load_prompt_slider", "save_prompt_slider"]

PROMPT_FILE_FORMATS = ("concept_sliders", "ai_toolkit", "peft_slider")
"""The prompt file formats `load_prompt_slider` reads: Concept Sliders' YAML, ai-toolkit's slider config, ours."""

_VERSION_KEY = "peft_slider_prompts"
_VERSION = 1
_MISSING = object()

# Concept Sliders' `PromptSettings` fields (trainscripts/textsliders/prompt_util.py).
_CONCEPT_SLIDERS_FIELDS = (
    "target",
    "positive",
    "unconditional",
    "neutral",
    "action",
    "guidance_scale",
    "resolution",
    "dynamic_resolution",
    "batch_size",
    "dynamic_crops",
)
_CONCEPT_SLIDERS_HINTS = {
    "guidance": (
        "Concept Sliders' reader drops `guidance` without a word (its field is `guidance_scale`), so this entry "
        "trained at guidance_scale 1.0 there: rename it to `guidance_scale` to use its value, or delete it to keep "
        "1.0."
    ),
    "rank": (
        "The rank is not a prompt setting (Concept Sliders' reader drops it; their rank is `network: rank` of the "
        "training config): delete it, and set the rank in the slider's LoRA config."
    ),
    "negative": "Concept Sliders calls the negative prompt `unconditional`: rename the field.",
}
# ai-toolkit's `SliderConfig`, `SliderTargetConfig` and `SliderConfigAnchors` (toolkit/config_modules.py).
_AI_TOOLKIT_SLIDER_FIELDS = (
    "targets",
    "anchors",
    "resolutions",
    "batch_full_slide",
    "prompt_file",
    "prompt_tensors",
    "use_adapter",
    "adapter_img_dir",
    "low_ram",
)
_AI_TOOLKIT_TARGET_FIELDS = ("target_class", "positive", "negative", "multiplier", "weight", "shuffle")
_AI_TOOLKIT_ANCHOR_FIELDS = ("prompt", "neg_prompt", "multiplier")
_AI_TOOLKIT_SLIDER_PROCESSES = ("slider", "slider_old")
# The slider section of ai-toolkit's `concept_slider` process (ConceptSliderTrainerConfig), a different method.
_AI_TOOLKIT_CONCEPT_SLIDER_FIELDS = (
    "positive_prompt",
    "negative_prompt",
    "guidance_strength",
    "anchor_class",
    "anchor_strength",
)
_SHUFFLE_ORDERS = 8  # ai-toolkit's `max_permutations` for `shuffle: true`
_SHUFFLE_SEED = 0


class PromptFileError(ValueError):
    """A prompt file cannot be read: not UTF-8, invalid YAML or JSON, an unknown format, or an entry with a missing,
    unknown or wrong field. The message names the file, the entry (counted from 1) and the field, and says how to fix
    it."""


# ---------------------------------------------------------------------------------------------------------------------
# Reading the document


@lru_cache(maxsize=1)
def _yaml_loader() -> type:
    import yaml

    class NoDuplicateSafeLoader(yaml.SafeLoader):
        """The safe loader (plain data, no tags that build objects) refusing a key given twice in one mapping."""

        def construct_mapping(self, node, deep=False):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override keys: not a duplicate
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so with its line
                    break
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {show_value(key)} appears twice in one mapping (first at line {first.line + 1})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
            return super().construct_mapping(node, deep=deep)

    return NoDuplicateSafeLoader


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise PromptFileError(
                f"key {key!r} appears twice in one object (its keys: {', '.join(k for k, _ in pairs)})."
            )
        result[key] = value
    return result


def _parse(text: str, file: str, suffix: str) -> Any:
    if suffix == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as error:
            if suffix == ".json":
                raise PromptFileError(
                    f"{file} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}. Fix the "
                    "syntax there (a JSON file is one object or list, with double-quoted keys and strings)."
                ) from None
            # Not JSON: a YAML flow sequence or mapping, read below.
        except PromptFileError as error:
            raise PromptFileError(f"{file}: {error} Delete one of them: a JSON reader keeps only the last.") from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: plain data only
    except yaml.YAMLError as error:
        raise PromptFileError(_yaml_message(error, file)) from None


def _yaml_message(error: Any, file: str) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    if "could not determine a constructor for the tag" in problem:
        return (
            f"{file}{where}: {problem}. Prompt files are read with YAML's safe loader, which builds only strings, "
            "numbers, booleans, lists and mappings and runs nothing: remove the tag."
        )
    if "appears twice" in problem:
        return (
            f"{file}{where}: {problem}. Delete one of them: a YAML reader would keep only the last, and the other "
            "value would be lost silently."
        )
    context = getattr(error, "context", None)
    problem = f"{context}, {problem}" if context else problem
    return f"{file} is not valid YAML: {problem}{where}. Fix the syntax there (indentation, quotes, a missing colon)."


def _read_document(path: Path, file: str) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"Prompt file {file} does not exist; pass the path of a YAML or JSON prompt file.")
    if path.is_dir():
        raise IsADirectoryError(f"Prompt file {file} is a folder; pass the path of a YAML or JSON file in it.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not content
    except UnicodeDecodeError as error:
        raise PromptFileError(
            f"{file} is not UTF-8 text ({error.reason} at byte {error.start}); a prompt file is YAML or JSON text. "
            "Re-save it as UTF-8, or check that this is the prompt file."
        ) from None
    if not text.strip():
        raise PromptFileError(f"{file} is empty; write the prompt sets in it (see `load_prompt_slider`).")
    document = _parse(text, file, path.suffix.lower())
    if document is None:
        raise PromptFileError(f"{file} holds no data (only comments?); write the prompt sets in it.")
    return document


# ---------------------------------------------------------------------------------------------------------------------
# Fields


def _fail(where: str, message: str) -> NoReturn:
    raise PromptFileError(f"{where}: {message}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {show_value(value)}"


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return _describe(value)


def _entry(file: str, section: str, index: int, count: int, entry: Any, key: str) -> str:
    where = f"{file} {section}entry {index} of {count}"
    if isinstance(entry, Mapping) and isinstance(entry.get(key), str):
        where += f" ({key} {_short(entry[key])})"
    return where


def _check_keys(
    entry: Mapping[Any, Any], known: tuple[str, ...], where: str, what: str, hints: Mapping[str, str] | None = None
) -> None:
    for key in entry:
        if key in known:
            continue
        hint = (hints or {}).get(key)
        if hint is None:
            close = difflib.get_close_matches(key, known, n=1) if isinstance(key, str) else []
            hint = f"Did you mean `{close[0]}`?" if close else "Fix its name or delete it."
        shown = f"`{key}`" if isinstance(key, str) else show_value(key)
        _fail(where, f"unknown field {shown}; {what} fields are {', '.join(known)}. {hint}")


def _mapping(entry: Any, where: str, fields: tuple[str, ...]) -> Mapping[Any, Any]:
    if not isinstance(entry, Mapping):
        _fail(where, f"must be a mapping of fields ({', '.join(fields[:3])}, ...), got {_kind(entry)}.")
    return entry


def _list(value: Any, where: str, field: str, what: str, *, empty_ok: bool) -> list[Any]:
    if value is None and empty_ok:
        return []
    if not isinstance(value, list):
        _fail(
            where, f"`{field}` must be a list of {what}, got {_kind(value)}. Write one `- ...` item per {what[:-1]}."
        )
    if not value and not empty_ok:
        _fail(where, f"`{field}` is empty: a text-prompt slider needs at least one {what[:-1]}. Add one.")
    return value


def _text(entry: Mapping[Any, Any], key: str, where: str, default: Any = _MISSING) -> str:
    if key not in entry:
        if default is _MISSING:
            _fail(where, f"`{key}` is missing; every entry needs one (a prompt string, '' for the empty prompt).")
        return default
    value = entry[key]
    if not isinstance(value, str):
        _fail(
            where,
            f"`{key}` must be a prompt (a string), got {_describe(value)}. Quote it (`{key}: \"...\"`); write '' for "
            "the empty prompt.",
        )
    return value


def _number(entry: Mapping[Any, Any], key: str, where: str, default: float) -> float:
    value = entry.get(key, default)
    if not is_finite_number(value):
        _fail(
            where, f"`{key}` must be a finite number, got {_describe(value)}. Write a plain number, e.g. `{key}: 1.0`."
        )
    return float(value)


def _integer(
    entry: Mapping[Any, Any], key: str, where: str, default: int | None, low: int, example: int
) -> int | None:
    value = entry.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(
            where, f"`{key}` must be a whole number >= {low}, got {_describe(value)}. Write e.g. `{key}: {example}`."
        )
    return value


def _flag(entry: Mapping[Any, Any], key: str, where: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        _fail(where, f"`{key}` must be true or false, got {_describe(value)}.")
    return value


def _build(cls: type, **fields: Any) -> Any:
    try:
        return cls(**fields)
    except (TypeError, ValueError) as error:  # the dataclass's own checks; their messages start with `name`
        raise PromptFileError(str(error)) from None


def _fill_resolution(prompt_set: PromptSet, resolution: int | None) -> PromptSet:
    if resolution is None or prompt_set.resolution is not None:
        return prompt_set
    return dataclasses.replace(prompt_set, resolution=resolution)


# ---------------------------------------------------------------------------------------------------------------------
# Concept Sliders


def _read_concept_sliders(document: Any, file: str) -> tuple[list[PromptSet], list[AnchorPrompt]]:
    if not isinstance(document, list):
        _fail(
            file,
            f"a Concept Sliders prompt file is a YAML list of entries (`- target: ...`), got {_kind(document)}. "
            "Write one `- target: ...` item per prompt set.",
        )
    if not document:
        _fail(file, "holds an empty list: a text-prompt slider needs at least one entry (`- target: ...`).")
    prompt_sets = []
    for index, entry in enumerate(document, 1):
        where = _entry(file, "", index, len(document), entry, "target")
        entry = _mapping(entry, where, _CONCEPT_SLIDERS_FIELDS)
        _check_keys(entry, _CONCEPT_SLIDERS_FIELDS, where, "Concept Sliders'", _CONCEPT_SLIDERS_HINTS)
        target = _text(entry, "target", where)
        positive = _text(entry, "positive", where, default=target)
        unconditional = _text(entry, "unconditional", where, default="")
        neutral = _text(entry, "neutral", where, default=unconditional)
        action = entry.get("action", "erase")
        if action not in ACTIONS:
            _fail(where, f"`action` must be one of {', '.join(ACTIONS)}, got {_describe(action)}.")
        if _flag(entry, "dynamic_resolution", where, False):
            _fail(
                where,
                "`dynamic_resolution: true` draws a new width and height per step (multiples of 64 between half the "
                "resolution and the resolution), and peft_slider's text-prompt sliders train one square size per "
                "set. Set it to false (or delete it) to train at `resolution`, or write one entry per size.",
            )
        if _flag(entry, "dynamic_crops", where, False):
            _fail(
                where,
                "`dynamic_crops: true` conditions SDXL on a random larger original size and crop offset, which "
                "peft_slider's text-prompt sliders do not do. Set it to false (or delete it).",
            )
        prompt_set = _build(
            PromptSet,
            target=target,
            positive=positive,
            negative=unconditional,
            neutral=neutral,
            action=action,
            guidance_scale=_number(entry, "guidance_scale", where, 1.0),
            resolution=_integer(entry, "resolution", where, None, 8, 512),
            batch_size=_integer(entry, "batch_size", where, 1, 1, 1),
            strength=1.0,
            weight=1.0,
            mirror=False,  # their trainer runs the slider at multiplier 1.0 only
            name=where,
        )
        prompt_sets.append(prompt_set)
    return prompt_sets, []


# ---------------------------------------------------------------------------------------------------------------------
# ai-toolkit


def _refuse_concept_slider_process(where: str) -> NoReturn:
    _fail(
        where,
        "this is the slider section of ai-toolkit's `concept_slider` process (positive_prompt, negative_prompt, "
        "target_class, guidance_strength, anchor_class, anchor_strength). That process trains on a dataset's images "
        "and rescales its targets to the neutral prediction's mean and spread, which a text-prompt slider does not "
        "do, so it is not read. Write the prompts as a `type: slider` section (`targets: - target_class: ... "
        "positive: ... negative: ...`) or in peft_slider's own format.",
    )


def _slider_section(document: Any, file: str) -> tuple[Mapping[Any, Any], str]:
    """The slider section and the key it sits under (`"slider"`, or `""` for the document itself)."""
    if not isinstance(document, Mapping):
        _fail(
            file,
            f"an ai-toolkit config is a mapping (a job config with `config: process:`, or a `slider:` section), got "
            f"{_kind(document)}.",
        )
    processes, label = None, None
    if "config" in document:
        config = document["config"]
        if not isinstance(config, Mapping) or "process" not in config:
            _fail(
                file, f"`config` of an ai-toolkit job must be a mapping with a `process:` list, got {_kind(config)}."
            )
        processes, label = config["process"], "config.process"
    elif "process" in document:
        processes, label = document["process"], "process"
    if processes is not None:
        if not isinstance(processes, list):
            _fail(file, f"`{label}` must be a list of process entries, got {_kind(processes)}.")
        found = [(i, p) for i, p in enumerate(processes, 1) if isinstance(p, Mapping) and "slider" in p]
        if not found:
            types = [p.get("type") if isinstance(p, Mapping) else None for p in processes]
            _fail(
                file,
                f"no entry of `{label}` has a `slider:` section (their types: {types}), so there is no slider to "
                "read. ai-toolkit's text-prompt slider is a process entry with `type: slider` and a `slider:` "
                "section holding `targets`.",
            )
        if len(found) > 1:
            numbers = ", ".join(str(i) for i, _ in found)
            _fail(
                file,
                f"entries {numbers} of `{label}` (counted from 1) each have a `slider:` section; ai-toolkit trains "
                "them one after the other as separate sliders. Keep one per file.",
            )
        index, process = found[0]
        return _process_slider(process, f"{file} {label} entry {index} of {len(processes)}"), "slider"
    if "slider" in document:  # one process entry
        return _process_slider(document, file), "slider"
    return document, ""  # the slider section itself


def _process_slider(process: Mapping[Any, Any], where: str) -> Mapping[Any, Any]:
    kind = process.get("type")
    if kind == "concept_slider":
        _refuse_concept_slider_process(where)
    if kind is not None and kind not in _AI_TOOLKIT_SLIDER_PROCESSES:
        _fail(
            where,
            f"`type` is {_describe(kind)}; the slider section read here is that of ai-toolkit's text-prompt slider "
            "process (`type: slider` or `slider_old`). Use such a process, or peft_slider's own format.",
        )
    section = process["slider"]
    if not isinstance(section, Mapping):
        _fail(where, f"the `slider:` section must be a mapping with `targets`, got {_kind(section)}.")
    return section


def _ai_toolkit_sizes(section: Mapping[Any, Any], where: str) -> list[int | None]:
    value = section.get("resolutions")
    if value is None:
        return [None]
    if not isinstance(value, list) or not value:
        _fail(where, f"`resolutions` must be a non-empty list of [width, height] pairs, got {_kind(value)}.")
    sizes: list[int | None] = []
    for index, item in enumerate(value, 1):
        pair = item if isinstance(item, list) else [item, item]
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 8 for v in pair):
            _fail(
                where,
                f"`resolutions` entry {index} of {len(value)} must be [width, height] (whole numbers >= 8) or one "
                f"whole number, got {_describe(item)}. Write e.g. `- [512, 512]`.",
            )
        if pair[0] != pair[1]:
            side = max(pair)
            _fail(
                where,
                f"`resolutions` entry {index} of {len(value)} is {pair}, not square; peft_slider's text-prompt "
                f"sliders train square images. Use [{side}, {side}] (or {min(pair)}), or delete the entry.",
            )
        if pair[0] not in sizes:
            sizes.append(pair[0])
    return sizes


def _phrase_orders(text: str, rng: random.Random) -> list[str]:
    """`text`'s comma-separated phrases in up to `_SHUFFLE_ORDERS` distinct orders, the written order first."""
    phrases = [phrase.strip() for phrase in text.split(",") if phrase.strip()]
    distinct = math.factorial(len(phrases))
    for repeats in Counter(phrases).values():
        distinct //= math.factorial(repeats)
    orders = [", ".join(phrases)]
    while len(orders) < min(_SHUFFLE_ORDERS, distinct):
        order = ", ".join(rng.sample(phrases, len(phrases)))
        if order not in orders:
            orders.append(order)
    return orders


def _shuffled_pairs(positive: str, negative: str) -> list[tuple[str, str]]:
    # ai-toolkit pairs every order of the positive with every order of the negative and keeps 8 at random; here the
    # written pair first, then the others in an order drawn with a fixed seed, so one file always reads the same.
    rng = random.Random(_SHUFFLE_SEED)
    pairs = [(p, n) for p in _phrase_orders(positive, rng) for n in _phrase_orders(negative, rng)]
    rest = pairs[1:]
    rng.shuffle(rest)
    return [pairs[0], *rest][:_SHUFFLE_ORDERS]


def _read_ai_toolkit(document: Any, file: str) -> tuple[list[PromptSet], list[AnchorPrompt]]:
    section, key = _slider_section(document, file)
    where = f"{file} {key or 'slider section'}"
    prefix = f"{key}." if key else ""
    if any(key in section for key in _AI_TOOLKIT_CONCEPT_SLIDER_FIELDS):
        _refuse_concept_slider_process(where)
    _check_keys(section, _AI_TOOLKIT_SLIDER_FIELDS, where, "ai-toolkit's slider section")
    if "targets" not in section:
        _fail(where, "has no `targets`; list the slider's targets (`targets: - target_class: ... positive: ...`).")
    targets = _list(section["targets"], where, "targets", "targets", empty_ok=False)
    anchors = _list(section.get("anchors"), where, "anchors", "anchors", empty_ok=True)
    sizes = _ai_toolkit_sizes(section, where)
    _flag(section, "batch_full_slide", where, True)  # batches a step's four parts; both signs are trained either way
    _flag(section, "low_ram", where, False)
    if not isinstance(section.get("prompt_tensors"), (str, type(None))):
        _fail(where, f"`prompt_tensors` must be a file path or null, got {_describe(section['prompt_tensors'])}.")
    if section.get("prompt_file") is not None:
        _fail(
            where,
            f"`prompt_file` ({_describe(section['prompt_file'])}) adds neutral prompts from a text file, which is not "
            "read here. Delete it, or write one prompt set per neutral prompt in peft_slider's own format.",
        )
    for key in ("use_adapter", "adapter_img_dir"):
        if section.get(key) not in (None, False):
            _fail(
                where,
                f"`{key}` ({_describe(section[key])}) trains with a T2I adapter on images, which a text-prompt slider "
                "does not do. Delete it.",
            )

    prompt_sets = []
    for index, entry in enumerate(targets, 1):
        where_target = _entry(file, f"{prefix}targets ", index, len(targets), entry, "target_class")
        entry = _mapping(entry, where_target, _AI_TOOLKIT_TARGET_FIELDS)
        _check_keys(entry, _AI_TOOLKIT_TARGET_FIELDS, where_target, "ai-toolkit's target")
        target_class = _text(entry, "target_class", where_target, default="")
        positive = _text(entry, "positive", where_target, default="")
        negative = _text(entry, "negative", where_target, default="")
        if positive.strip() == negative.strip():
            _fail(
                where_target,
                f"`positive` and `negative` are the same ({_short(positive)}): the slider would have no direction. "
                "Give the two ends of the slider.",
            )
        multiplier = _number(entry, "multiplier", where_target, 1.0)
        if multiplier == 0:
            _fail(where_target, "`multiplier` is 0, which trains nothing; use e.g. 1.0 (a negative value flips it).")
        weight = _number(entry, "weight", where_target, 1.0)
        if weight <= 0:
            _fail(where_target, f"`weight` must be > 0, got {show_value(weight)}; delete the target to drop it.")
        shuffle = _flag(entry, "shuffle", where_target, False)
        orders = _shuffled_pairs(positive, negative) if shuffle else [(positive, negative)]
        for order, (positive_text, negative_text) in enumerate(orders, 1):
            for size in sizes:
                name = where_target
                if len(orders) > 1:
                    name += f", phrase order {order} of {len(orders)}"
                if len(sizes) > 1:
                    name += f", resolution {size}"
                prompt_set = _build(
                    PromptSet,
                    target=target_class,
                    positive=positive_text,
                    negative=negative_text,
                    neutral="",  # ai-toolkit's neutral prediction is the empty prompt's
                    action="enhance" if multiplier > 0 else "erase",
                    guidance_scale=1.0,  # fixed in TrainSliderProcess
                    resolution=size,
                    strength=abs(multiplier),
                    weight=weight,
                    mirror=True,
                    name=name,
                )
                prompt_sets.append(prompt_set)

    anchor_prompts = []
    for index, entry in enumerate(anchors, 1):
        where_anchor = _entry(file, f"{prefix}anchors ", index, len(anchors), entry, "prompt")
        entry = _mapping(entry, where_anchor, _AI_TOOLKIT_ANCHOR_FIELDS)
        _check_keys(entry, _AI_TOOLKIT_ANCHOR_FIELDS, where_anchor, "ai-toolkit's anchor")
        prompt = _text(entry, "prompt", where_anchor)
        _text(entry, "neg_prompt", where_anchor, default="")  # checked, then dropped: it cancels at guidance 1
        multiplier = _number(entry, "multiplier", where_anchor, 1.0)
        if multiplier == 0:
            _fail(where_anchor, "`multiplier` is 0, which holds nothing; use e.g. 1.0, or delete the anchor.")
        anchor_prompts.append(_build(AnchorPrompt, prompt=prompt, strength=abs(multiplier), name=where_anchor))
    return prompt_sets, anchor_prompts


# ---------------------------------------------------------------------------------------------------------------------
# peft_slider's own format


def _dataclass_entry(cls: type, entry: Any, where: str) -> Any:
    names = tuple(f.name for f in dataclasses.fields(cls))
    entry = _mapping(entry, where, names)
    _check_keys(entry, names, where, f"{cls.__name__}'s")
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for name in required:
        if name not in entry:
            _fail(where, f"`{name}` is missing; {cls.__name__} needs {', '.join(required)}.")
    fields = dict(entry)
    name = fields.pop("name", _MISSING)
    if name is not _MISSING and not isinstance(name, (str, type(None))):
        _fail(where, f"`name` must be a string or null, got {_describe(name)}.")
    item = _build(cls, **fields, name=where)  # checked under the entry's place in the file
    return item if name is _MISSING else dataclasses.replace(item, name=name)


def _read_peft_slider(document: Any, file: str) -> tuple[list[PromptSet], list[AnchorPrompt]]:
    if not isinstance(document, Mapping):
        _fail(file, f"a peft_slider prompt file is a mapping with `{_VERSION_KEY}`, got {_kind(document)}.")
    _check_keys(document, (_VERSION_KEY, "prompt_sets", "anchors"), file, "a peft_slider prompt file's")
    version = document.get(_VERSION_KEY, _MISSING)
    if version is _MISSING:
        _fail(file, f"`{_VERSION_KEY}` is missing; write `{_VERSION_KEY}: {_VERSION}` (the format's version).")
    if isinstance(version, bool) or version != _VERSION:
        _fail(
            file,
            f"`{_VERSION_KEY}` is {_describe(version)}; this peft_slider reads version {_VERSION}. "
            + (
                "Upgrade peft_slider to read it."
                if isinstance(version, int) and version > _VERSION
                else f"Write `{_VERSION_KEY}: {_VERSION}`."
            ),
        )
    if "prompt_sets" not in document:
        _fail(file, "`prompt_sets` is missing; list at least one prompt set (target, positive, negative).")
    entries = _list(document["prompt_sets"], file, "prompt_sets", "prompt sets", empty_ok=False)
    anchors = _list(document.get("anchors"), file, "anchors", "anchors", empty_ok=True)
    prompt_sets = [
        _dataclass_entry(PromptSet, entry, _entry(file, "prompt_sets ", index, len(entries), entry, "target"))
        for index, entry in enumerate(entries, 1)
    ]
    anchor_prompts = [
        _dataclass_entry(AnchorPrompt, entry, _entry(file, "anchors ", index, len(anchors), entry, "prompt"))
        for index, entry in enumerate(anchors, 1)
    ]
    return prompt_sets, anchor_prompts


_READERS = {
    "concept_sliders": _read_concept_sliders,
    "ai_toolkit": _read_ai_toolkit,
    "peft_slider": _read_peft_slider,
}


def _detect(document: Any, file: str) -> str:
    if isinstance(document, list):
        return "concept_sliders"
    if isinstance(document, Mapping):
        if _VERSION_KEY in document:
            return "peft_slider"
        if any(key in document for key in ("config", "process", "slider", "targets")):
            return "ai_toolkit"
    found = f"a mapping with keys {sorted(map(str, document))}" if isinstance(document, Mapping) else _kind(document)
    hint = ""
    if isinstance(document, Mapping) and "target" in document:
        hint = " A Concept Sliders file is a list: start each entry with `- ` (`- target: ...`)."
    raise PromptFileError(
        f"{file}: cannot tell its format. Looked for a list of entries with `target` (concept_sliders), a mapping "
        f"with `{_VERSION_KEY}` (peft_slider), and a mapping with `config: process:`, `process:`, `slider:` or "
        f"`targets:` (ai_toolkit); found {found}. Pass `format=` one of {PROMPT_FILE_FORMATS} to read it as that "
        "format and see what is wrong." + hint
    )


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def load_prompt_slider(
    path: str | os.PathLike, *, format: str | None = None, resolution: int | None = None
) -> PromptSliderSpec:
    """Reads a text-prompt slider file: Concept Sliders' prompt YAML, an ai-toolkit slider config, or ours.

    The file is YAML or JSON, told apart by its content. How each format's fields map to `PromptSet` and
    `AnchorPrompt` is in the module docstring.

    Args:
        path (`str` or `os.PathLike`):
            The prompt file.
        format (`str`, *optional*):
            One of `PROMPT_FILE_FORMATS`. Defaults to detecting it: a list is Concept Sliders', a mapping with
            `peft_slider_prompts` is ours, one with `config`, `process`, `slider` or `targets` is ai-toolkit's.
        resolution (`int`, *optional*):
            Square size in pixels for the prompt sets whose file gives none; the others keep theirs.

    Returns:
        `PromptSliderSpec`: the prompt sets and anchors, with `source=str(path)` and `format` set.

    Raises:
        `FileNotFoundError` / `IsADirectoryError`: no file at `path`. `PromptFileError` (a `ValueError`): the content
        cannot be read; the message names the file, the entry (counted from 1) and the field, and says how to fix it.

    Example:

    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from peft_slider.training import load_prompt_slider
    >>> path = Path(tempfile.mkdtemp()) / "prompts.yaml"
    >>> _ = path.write_text('''
    ... - target: "male person"
    ...   positive: "male person, very old"
    ...   unconditional: "male person, very young"
    ...   neutral: "male person"
    ...   action: "enhance"
    ...   guidance_scale: 4
    ...   resolution: 512
    ...   dynamic_resolution: false
    ...   batch_size: 1
    ... ''')
    >>> spec = load_prompt_slider(path)
    >>> spec.format, len(spec.prompt_sets)
    ('concept_sliders', 1)
    >>> s = spec.prompt_sets[0]
    >>> s.negative, s.action, s.guidance_scale, s.resolution, s.mirror
    ('male person, very young', 'enhance', 4.0, 512, False)

    ```
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path (str or os.PathLike), got {type(path).__name__}.")
    if format is not None and format not in PROMPT_FILE_FORMATS:
        raise ValueError(f"`format` must be one of {PROMPT_FILE_FORMATS} or None (detect), got {show_value(format)}.")
    if resolution is not None:
        check_int(resolution, argument="resolution", low=8, high=65536, hint="Pass a square size in pixels.")
    file = str(path)
    document = _read_document(Path(path), file)
    format = format or _detect(document, file)
    prompt_sets, anchors = _READERS[format](document, file)
    prompt_sets = [_fill_resolution(prompt_set, resolution) for prompt_set in prompt_sets]
    return PromptSliderSpec(prompt_sets=tuple(prompt_sets), anchors=tuple(anchors), source=file, format=format)


def save_prompt_slider(spec: PromptSliderSpec, path: str | os.PathLike) -> Path:
    """Writes `spec` in peft_slider's own format (JSON, which YAML readers read too), atomically.

    Every field of every prompt set and anchor is written, so `load_prompt_slider` gives `spec` back, except its
    `source` (the new file) and `format` (`"peft_slider"`). The file is written beside `path` and moved into place
    with one `os.replace`, so a failure leaves an existing file as it was. Missing folders are created.

    Args:
        spec (`PromptSliderSpec`):
            What to write.
        path (`str` or `os.PathLike`):
            The file to write (`.json` by convention).

    Returns:
        `Path`: `path`.

    Example:

    ```py
    >>> import dataclasses, tempfile
    >>> from pathlib import Path
    >>> from peft_slider.training import PromptSet, PromptSliderSpec, load_prompt_slider, save_prompt_slider
    >>> spec = PromptSliderSpec(prompt_sets=(PromptSet("a person", "a happy person", "a sad person"),))
    >>> path = save_prompt_slider(spec, Path(tempfile.mkdtemp()) / "smile.json")
    >>> load_prompt_slider(path) == dataclasses.replace(spec, source=str(path))
    True

    ```
    """
    if not isinstance(spec, PromptSliderSpec):
        raise TypeError(f"`spec` must be a PromptSliderSpec, got {type(spec).__name__}.")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file path (str or os.PathLike), got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"`path` {str(path)!r} is a folder; give the path of the file to write.")

    def entry(item: Any) -> dict[str, Any]:
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}

    document = {
        _VERSION_KEY: _VERSION,
        "prompt_sets": [entry(prompt_set) for prompt_set in spec.prompt_sets],
        "anchors": [entry(anchor) for anchor in spec.anchors],
    }
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
