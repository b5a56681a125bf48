"""Time SkMM's moment-matching solver (the seed's objective) on sketched features.

Usage: python benchmarks/bench_solver.py [--sizes 16000 ...] [--dim 512] [--n 160] [--c 1.0]

Features are drawn with a decaying spectrum (column j scaled by j^-0.75) and taken as the
sketch G̃ directly; the table gives the spectrum and solver times, iterations and how the
solver stopped, median of --repeats runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from skmm.moments import MomentProblem, solve
from skmm.spectrum import spectrum


def run(rows: int, dim: int, n: int, c: float, max_iter: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    sketch = torch.from_numpy(
        (rng.standard_normal((rows, dim)) * np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    )
    began = time.perf_counter()
    spec = spectrum(sketch)
    moments = (sketch.double() @ spec.eigenvectors).square()
    problem = MomentProblem(moments, spec.eigenvalues / c, 1.0 / n)
    spectrum_seconds = time.perf_counter() - began
    start = torch.zeros(rows, dtype=torch.float64)
    start[torch.from_numpy(rng.choice(rows, n, replace=False))] = 1.0 / n
    result = solve(problem, start, max_iter=max_iter)
    return {
        "spectrum_s": spectrum_seconds,
        "solve_s": result.seconds,
        "iterations": result.iterations,
        "ms_per_iter": 1e3 * result.seconds / max(result.iterations, 1),
        "objective": result.objective,
        "gap": result.gap,
        "reason": result.reason,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n", type=int, default=160)
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print("| N | m | n | c | spectrum (s) | solve (s) | iterations | ms/iter | objective | stop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for rows in args.sizes:
        for c in args.c:
            runs = [run(rows, args.dim, args.n, c, args.max_iter, s) for s in range(args.repeats)]
            pick = sorted(runs, key=lambda r: r["solve_s"])[len(runs) // 2]
            print(
                f"| {rows} | {args.dim} | {args.n} | {c} | "
                f"{statistics.median(r['spectrum_s'] for r in runs):.2f} | "
                f"{statistics.median(r['solve_s'] for r in runs):.2f} | {pick['iterations']} | "
                f"{pick['ms_per_iter']:.1f} | {pick['objective']:.3e} | {pick['reason']} |"
            )


if __name__ == "__main__":
    main()
