"""Run every benchmark in this folder, one after the other, and print their tables.

python benchmarks/run_all.py            # full runs (several minutes on 2 CPU cores)
python benchmarks/run_all.py --quick    # short runs
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    quick = ["--quick"] if "--quick" in sys.argv[1:] else []
    failures = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n## {script.name}\n", flush=True)
        result = subprocess.run([sys.executable, str(script), *quick])
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
