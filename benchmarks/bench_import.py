"""`import peft_slider` cost on top of torch and peft, and proof that it does not import diffusers.

Each measurement runs in a fresh interpreter (`python -X importtime` is not needed: wall time of the import statement),
medians over repeats, side by side: `import torch, peft` alone, then `import torch, peft, peft_slider`.

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
    slider = [_run("import peft_slider") for _ in range(repeats)]
    diffusers = [_run("import diffusers") for _ in range(repeats)]
    slider_s = statistics.median(r["seconds"] for r in slider)
    diffusers_s = statistics.median(r["seconds"] for r in diffusers)
    print("| import (after torch + peft) | median seconds | imports diffusers |")
    print("|---|---|---|")
    print(f"| peft_slider | {slider_s:.3f} | {any(r['diffusers'] for r in slider)} |")
    print(f"| diffusers (for comparison) | {diffusers_s:.3f} | True |")


if __name__ == "__main__":
    main()
