# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Helpers every room shares; standard library only, so importing them is free.

- `checks`: the argument checks (a finite real number, a bounded int, a seed, a Hub repo id) and their error messages.
- `imports`: `lazy_exports`, the packages' re-exports imported on first use.
"""

from .checks import (
    REPO_ID,
    check_finite,
    check_int,
    check_seed,
    is_finite_number,
    is_real_number,
    is_repo_id,
    show_value,
)
from .imports import lazy_exports

__all__ = [
    "REPO_ID",
    "check_finite",
    "check_int",
    "check_seed",
    "is_finite_number",
    "is_real_number",
    "is_repo_id",
    "lazy_exports",
    "show_value",
]
