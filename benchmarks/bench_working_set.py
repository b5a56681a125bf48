"""The moment-matching solver's working-set size: time and final objective per choice.

``skmm.moments.solve`` solves large pools on a working set of rows, adding ``working_set``
rows per round (default n + k). This script times the solve with the default and with other
sizes on the same problem (bench_moments.py's: N rows of m Gaussian features with a decaying
spectrum, n = fraction·N, the paper's start), one process, so the sizes see the same load.

    python benchmarks/bench_working_set.py --sizes 1000000 --threads 1
    python benchmarks/bench_working_set.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_moments import make_problem
from common import preamble, set_threads, table

from skmm.moments import MomentProblem, solve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512, help="m, the sketch dimension")
    parser.add_argument("--fraction", type=float, default=0.01, help="n = fraction·N")
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument(
        "--factors",
        type=float,
        nargs="+",
        default=[1.0, 2.0],
        help="rows added per round, as multiples of n + k (1 is the default)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dim = [2_000], 64
    set_threads(args.threads)
    preamble("Moment matching: working-set size")
    rows_out = []
    for rows in args.sizes:
        n = max(1, int(rows * args.fraction))
        moments, eigenvalues, _ = make_problem(rows, args.dim, seed=0)
        start = torch.zeros(rows, dtype=torch.float64)
        chosen = np.random.default_rng(1).choice(rows, n, replace=False)
        start[torch.from_numpy(chosen)] = 1.0 / n
        for c in args.c:
            problem = MomentProblem(moments, eigenvalues / c, 1.0 / n)
            for factor in args.factors:
                added = int(factor * (n + problem.n_directions))
                began = time.perf_counter()
                result = solve(problem, start, working_set=added)
                seconds = time.perf_counter() - began
                sets = result.trace.get("working_set", [])
                rows_out.append(
                    [
                        f"{rows:,}",
                        n,
                        c,
                        f"{added:,}" + (" (default)" if factor == 1.0 else ""),
                        f"{seconds:.1f}",
                        f"{result.objective:.3e}",
                        result.iterations,
                        result.reason,
                        f"{sets[0]:,.0f} → {sets[-1]:,.0f}" if sets else "all rows",
                    ]
                )
                print(table_of(rows_out[-1:]), flush=True)
    print()
    print(table_of(rows_out))


def table_of(rows: list[list[object]]) -> str:
    header = ["N", "n", "c", "rows added per round", "solve s", "final f", "iterations"]
    return table([*header, "stop", "working set (first → last round)"], rows)


if __name__ == "__main__":
    main()
