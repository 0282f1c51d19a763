# Copyright 2025 The peft_slider authors. Licensed under the Apache License, Version 2.0.
"""The `peft-slider` command line (also `python -m peft_slider`); the console script is `peft_slider.cli:main`.

- `commands`: the parser and its commands (`inspect`, `convert`). Importing it imports no torch, PEFT or diffusers:
  each command imports what it needs when it runs.
"""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
