"""SkMM's greedy design: lazy against plain A-optimal greedy, and selection time at large N.

Two tables (docs/skmm.md "Cost" quotes them):

- **Lazy against plain greedy.** ``skmm.design.greedy_design(Z, n, "aopt", lazy=...)`` on
  Z = N rows of k standard normal features scaled by 1/√j (a power-law spectrum), then each
  column to unit variance, as SkMM's whitening leaves them. The two run alternately in one
  process; the table gives median seconds, the ratio, the picks they share and the design
  quality tr M⁻¹ of each (M = (1/n)Σ_S z zᵀ + 10⁻⁶I, lower is better) beside that of n
  uniform rows (seed 0).
- **End-to-end selection.** ``skmm.select(X, n, directions=k, random_state=0)`` on
  X = the first N rows of bench_scale.py's pool (256 standard normal features scaled by 1/j,
  float32), with SkMM's own stage timings (spectrum, greedy design); one run each (the
  spectrum is O(N·m²) and dominates).

    python benchmarks/bench_greedy.py --threads 1     # N = 2·10⁵ greedy; N = 10⁶ selection,
                                                      # n up to 10⁴ (docs/design.md §7's scale)
    python benchmarks/bench_greedy.py --quick         # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_scale import WIDTH, fill_pool
from common import fmt_seconds, interleaved, median, preamble, set_threads, table

import skmm
from skmm.design import greedy_design

RIDGE = 1e-6


def whitened_rows(rows: int, k: int, seed: int) -> torch.Tensor:
    """N(0, diag(1/j)) rows, j = 1..k, each column scaled to unit variance (float64)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, k)) / np.sqrt(np.arange(1, k + 1))
    return torch.from_numpy(z / z.std(axis=0))


def trace_inverse(z: torch.Tensor, picks: np.ndarray) -> float:
    """tr M⁻¹ for M = (1/n)Σ_S z zᵀ + εI."""
    chosen = z[torch.from_numpy(np.asarray(picks, dtype=np.int64))].double()
    moment = chosen.T @ chosen / len(picks) + RIDGE * torch.eye(z.shape[1], dtype=torch.float64)
    return float(torch.linalg.inv(moment).trace())


def greedy_table(rows: int, cases: list[tuple[int, int]], repeats: int) -> str:
    out = []
    for k, n in cases:
        z = whitened_rows(rows, k, seed=0)
        results = {}

        def run(lazy: bool, z=z, n=n, results=results) -> None:
            results[lazy] = greedy_design(z, n, "aopt", RIDGE, lazy=lazy).order

        times = interleaved({"plain": lambda: run(False), "lazy": lambda: run(True)}, repeats)
        uniform = np.random.default_rng(0).choice(rows, size=n, replace=False)
        plain, lazy = median(times["plain"]), median(times["lazy"])
        out.append(
            [
                f"{rows:,}",
                k,
                n,
                fmt_seconds(plain),
                fmt_seconds(lazy),
                f"{plain / lazy:.1f}×",
                f"{len(set(results[False]) & set(results[True]))}/{n}",
                f"{trace_inverse(z, results[False]):.2f}",
                f"{trace_inverse(z, results[True]):.2f}",
                f"{trace_inverse(z, uniform):.2f}",
            ]
        )
    header = [
        "N",
        "k",
        "n",
        "plain s",
        "lazy s",
        "plain/lazy",
        "same picks",
        "tr M⁻¹ plain",
        "tr M⁻¹ lazy",
        "tr M⁻¹ uniform",
    ]
    return table(header, out)


def selection_table(rows: int, cases: list[tuple[int, int]]) -> str:
    pool = fill_pool(np.empty((rows, WIDTH), dtype=np.float32))
    out = []
    for k, n in cases:
        began = time.perf_counter()
        selection = skmm.select(pool, n, directions=k, random_state=0)
        total = time.perf_counter() - began
        timings = selection.info["timings"]
        out.append(
            [
                f"{rows:,}",
                WIDTH,
                k,
                n,
                fmt_seconds(total),
                fmt_seconds(timings["spectrum"]),
                fmt_seconds(timings["design"]),
                f"{selection.info['c_S']:.3g}",
            ]
        )
    header = ["N", "m", "k", "n", "total s", "spectrum s", "greedy s", "c_S"]
    return table(header, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--greedy-rows", type=int, default=200_000)
    parser.add_argument("--select-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each greedy")
    args = parser.parse_args()
    set_threads(args.threads)
    preamble("SkMM greedy design: lazy against plain, and selection time at large N")
    greedy_cases = [(32, 500), (64, 200)]
    select_cases = [(64, 100), (64, 1000), (32, 1000), (64, 10_000)]
    if args.quick:
        args.greedy_rows, args.select_rows = 5_000, 20_000
        greedy_cases, select_cases = [(8, 40)], [(16, 50)]
    print("## Lazy against plain A-optimal greedy\n")
    print(greedy_table(args.greedy_rows, greedy_cases, args.repeats) + "\n", flush=True)
    print("## End-to-end SkMM selection\n")
    print(selection_table(args.select_rows, select_cases) + "\n", flush=True)


if __name__ == "__main__":
    main()
