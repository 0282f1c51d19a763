# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The argument checks every module shares: a finite real number, a seed, a Hub repo id. Standard library only.

An error names the argument, shows the value and says what is expected. `argument` is the argument's name
(``"slider_start"``, shown as `` `slider_start` ``) or, where the name alone does not say which value is meant, a
longer label, used as it is (``"`strength` for adapter 'smile'"``, ``"entry 'x': `seed`"``).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

__all__ = ["REPO_ID", "check_finite", "check_seed", "is_finite_number", "is_real_number", "is_repo_id"]

# A Hub repo id, "owner/name" (a bare name would be mistaken for a missing local file). Neither part starts with a
# dot or a dash, so `./x` and `../x` are local paths.
REPO_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*")
# Suffixes that make a name a file, never a Hub repo ("owner/slider.safetensors" is a local path).
_FILE_SUFFIXES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".ckpt")

_SEED_LIMIT = 2**63  # torch generators take seeds up to 2**64 - 1; 2**63 leaves room for `seed + epoch`


def _label(argument: str) -> str:
    return f"`{argument}`" if argument.isidentifier() else argument


def is_real_number(value: Any) -> bool:
    """Whether `value` is a real number (int, float, a numpy scalar, ...). `bool` is an int subclass, but
    `strength=True` is a mistake, not a number.

    Example:

    ```py
    >>> from peft_slider.utils import is_real_number
    >>> is_real_number(2), is_real_number(True), is_real_number("2")
    (True, False, False)

    ```
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """Whether `value` is a real number (see [`is_real_number`]) that is neither NaN nor infinite.

    Example:

    ```py
    >>> import numpy as np
    >>> from peft_slider.utils import is_finite_number
    >>> is_finite_number(np.float32(0.5)), is_finite_number(float("nan")), is_finite_number(10**400)
    (True, False, True)

    ```
    """
    # An int is always finite (and `math.isfinite` overflows on one beyond the float range).
    return is_real_number(value) and (isinstance(value, numbers.Integral) or math.isfinite(value))


def check_finite(value: Any, *, argument: str, expected: str = "a finite number", hint: str = "") -> float:
    """Returns `value` as a float if it is a finite real number; raises a ValueError naming `argument` otherwise.

    Args:
        value (`Any`):
            The value to check: an int, float or numpy scalar; not a bool, a string, NaN or an infinity.
        argument (`str`):
            The argument's name, or a label that quotes it (see the module docstring).
        expected (`str`, *optional*, defaults to `"a finite number"`):
            What the message says the value must be.
        hint (`str`, *optional*):
            A sentence added to the message, saying how to fix it.

    Example:

    ```py
    >>> from peft_slider.utils import check_finite
    >>> check_finite(2, argument="slider_start")
    2.0
    >>> check_finite("high", argument="`slider_strength` of backend 'smile_plus'")
    Traceback (most recent call last):
    ...
    ValueError: `slider_strength` of backend 'smile_plus' must be a finite number, got 'high'.

    ```
    """
    if not is_finite_number(value):
        raise ValueError(f"{_label(argument)} must be {expected}, got {value!r}." + (f" {hint}" if hint else ""))
    return float(value)


def check_seed(seed: Any, *, argument: str = "seed") -> int:
    """Returns `seed` as an int if it is an integer in [0, 2**63).

    Raises:
        `TypeError`: `seed` is not an integer (a bool, a float, a string). `ValueError`: it is out of range.

    Example:

    ```py
    >>> from peft_slider.utils import check_seed
    >>> check_seed(3)
    3
    >>> check_seed(-1, argument="seeds")
    Traceback (most recent call last):
    ...
    ValueError: `seeds` must be an integer in [0, 2**63), got -1; pass a non-negative int such as 0.

    ```
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{_label(argument)} must be an int, got {seed!r}.")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(
            f"{_label(argument)} must be an integer in [0, 2**63), got {seed!r}; pass a non-negative int such as 0."
        )
    return int(seed)


def is_repo_id(text: str) -> bool:
    """Whether `text` names a Hub repo (``"owner/name"``) rather than a local path: `./x`, `../x`, `x.safetensors`,
    `dir/x.safetensors` and absolute paths are local, so a missing local file never turns into a Hub request."""
    return (
        isinstance(text, str)
        and REPO_ID.fullmatch(text) is not None
        and ".." not in text
        and not text.lower().endswith(_FILE_SUFFIXES)
    )
