# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""Re-exports imported on first use (PEP 562), so `import peft_slider` and the command line import no torch, PEFT or
diffusers until a name that needs them is used. Standard library only."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """
    The module-level `__getattr__` and `__dir__` of a package that re-exports names of its modules, importing a module
    the first time one of its names is looked up.

    Args:
        package (`str`):
            The package's `__name__`.
        exports (`Mapping[str, Sequence[str]]`):
            For each module, relative to `package` (``"training.scaling"``), the names the package re-exports from it.

    Returns:
        `tuple`: `(__getattr__, __dir__)`, to assign in the package's `__init__.py`.

    Example:

    ```py
    >>> from peft_slider.utils.imports import lazy_exports
    >>> getattr_, dir_ = lazy_exports("peft_slider.targeting", {"architectures": ["SCOPES"]})
    >>> getattr_("SCOPES")
    ('visual', 'joint')
    >>> "SCOPES" in dir_()
    True

    ```
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # found: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *module_of})

    return __getattr__, __dir__
