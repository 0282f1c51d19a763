"""Cold start of the `peft-slider` command: each run is a fresh interpreter, as a shell starts it.

Wall time of whole subprocesses, medians over repeats, side by side with the floors they cannot go below:
`python -c pass` (the interpreter) and `python -c "import torch"` (what `inspect` of a built-in needs). The command
runs as `python -m peft_slider`, which imports what the `peft-slider` console script imports. The last row times
`inspect flux` inside one fresh interpreter after `import torch`: what the command adds to that floor.

    python benchmarks/bench_cli.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

# (label, argv after the interpreter, goal in seconds or None, extra environment)
_CASES = [
    ("python -c pass (baseline)", ["-c", "pass"], None, {}),
    ('python -c "import torch" (baseline)', ["-c", "import torch"], None, {}),
    ("peft-slider --help", ["-m", "peft_slider", "--help"], 0.5, {}),
    ("peft-slider --version", ["-m", "peft_slider", "--version"], 0.5, {}),
    ("peft-slider inspect flux", ["-m", "peft_slider", "inspect", "flux"], 2.0, {}),
    ("peft-slider inspect sdxl --json", ["-m", "peft_slider", "inspect", "sdxl", "--json"], 2.0, {}),
    (
        "peft-slider inspect owner/model, HF_HUB_OFFLINE=1, not cached",
        ["-m", "peft_slider", "inspect", "someone/some-model"],
        None,
        {"HF_HUB_OFFLINE": "1"},
    ),
]


_AFTER_TORCH = """
import contextlib, io, time
import torch
start = time.perf_counter()
from peft_slider.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["inspect", "flux"])
print(time.perf_counter() - start)
"""


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], capture_output=True, env=env, check=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as hf_home:
        base_env = {**os.environ, "HF_HOME": hf_home, "OMP_NUM_THREADS": "1"}
        # Interleave the cases, so a burst of load on the machine hits all of them alike.
        times: dict[str, list[float]] = {label: [] for label, *_ in _CASES}
        after_torch = []
        for _ in range(repeats):
            for label, case_argv, _, env in _CASES:
                times[label].append(_time(case_argv, {**base_env, **env}))
            out = subprocess.run([sys.executable, "-c", _AFTER_TORCH], capture_output=True, text=True, env=base_env)
            after_torch.append(float(out.stdout.strip().splitlines()[-1]))
    print(f"| cold command (fresh interpreter, median of {repeats}) | seconds | goal |")
    print("|---|---:|---|")
    for label, _, goal, _ in _CASES:
        median = statistics.median(times[label])
        verdict = "" if goal is None else f"< {goal} s: {'met' if median < goal else 'NOT met'}"
        print(f"| {label} | {median:.2f} | {verdict} |")
    print(f"| inspect flux after `import torch`, in one interpreter | {statistics.median(after_torch):.2f} | |")


if __name__ == "__main__":
    main()
