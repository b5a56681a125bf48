"""Run every side-by-side benchmark, in quick (CI smoke) or full size, one after the other.

    python benchmarks/run_all.py --quick     # seconds each: checks that every table prints
    python benchmarks/run_all.py             # the full sizes (tens of minutes; see
                                             # docs/performance.md for the measured tables)
    python benchmarks/run_all.py --only sketch moments --threads 2

Each script runs in its own process (a clean interpreter and memory per benchmark); its
output is streamed through, and the exit status is non-zero if any script fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "sketch": "bench_sketch.py",
    "moments": "bench_moments.py",
    "gradients": "bench_gradients.py",
    "baselines": "bench_baselines.py",
    "gradmatch": "bench_gradmatch.py",
    "greedy": "bench_greedy.py",
    "sparse": "bench_sparse.py",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        command = [sys.executable, str(HERE / SCRIPTS[name])]
        if args.quick:
            command.append("--quick")
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        began = time.perf_counter()
        print(f"\n<!-- {name}: {' '.join(command[1:])} -->\n", flush=True)
        status = subprocess.run(command, check=False).returncode
        print(f"\n<!-- {name}: exit {status}, {time.perf_counter() - began:.1f} s -->", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
