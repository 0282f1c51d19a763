"""`import peft_slider` cost on top of torch and peft, and proof that it does not import diffusers.

Each measurement runs in a fresh interpreter (`python -X importtime` is not needed: wall time of the import statement),
medians over repeats, side by side, after `import torch, peft`: `import peft_slider` (lazy: it loads no submodule),
then every name of `peft_slider.__all__` (every module but the optional ones), then `import diffusers`.

    python benchmarks/bench_import.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

_SNIPPET = """
import json, sys, time
import torch, peft
start = time.perf_counter()
{extra}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "diffusers": "diffusers" in sys.modules}}))
"""


def _run(extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _SNIPPET.format(extra=extra)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    every_name = "import peft_slider\nfor name in peft_slider.__all__:\n    getattr(peft_slider, name)"
    cases = [
        ("`import peft_slider`", "import peft_slider"),
        ("every name of `peft_slider.__all__`", every_name),
        ("`import diffusers` (for comparison)", "import diffusers"),
    ]
    print("| import (after torch + peft) | median seconds | imports diffusers |")
    print("|---|---|---|")
    for label, code in cases:
        runs = [_run(code) for _ in range(repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"| {label} | {seconds:.3f} | {any(r['diffusers'] for r in runs)} |")


if __name__ == "__main__":
    main()
