"""SkMM's greedy design: lazy against plain A-optimal greedy, and selection time at large N.

Three tables (docs/skmm.md "Cost" and docs/performance.md quote them):

- **Targets.** The two rows of the performance targets, each measured side by side in this
  run: (1) ``skmm.select(X, 500, random_state=0)`` (SkMM's default) on X = 16,000 rows of
  r = 128 features (bench_moments.py's sketch: standard normal, column j scaled by j^-0.75,
  float32), median of --repeats runs after one warm-up, against 2,000 iterations of
  bench_moments.py's research solver (Adam on the diagonal objective, imported from there)
  on the same rows with n = 500, c = 1; (2) the lazy A-optimal greedy
  ``greedy_design(Z, 10⁴, "aopt", lazy=True)`` on Z = whitened_rows(10⁶, 64) against the
  exact (plain) greedy ``lazy=False`` on the same Z: time, and tr M⁻¹ of each design. The
  exact greedy at this size reads all 10⁶ rows at every pick (minutes).

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
    python benchmarks/bench_greedy.py --only-targets  # the targets table alone
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_moments import RESEARCH_LR, ResearchProblem, make_problem, make_sketch, research_solver
from bench_scale import WIDTH, fill_pool
from common import fmt_seconds, interleaved, median, preamble, set_threads, table

import skmm
from skmm.design import greedy_design

RIDGE = 1e-6
SELECTION_TARGET = 100.0
GREEDY_SECONDS_TARGET = 30.0
OBJECTIVE_TOLERANCE = 0.01


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


def selection_target(rows: int, dim: int, n: int, iterations: int, repeats: int) -> list[object]:
    """Row (1): SkMM's default selection against the research solver on the same rows."""
    features = make_sketch(rows, dim, seed=0).numpy()
    skmm.select(features, n, random_state=0)  # warm-up
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        selection = skmm.select(features, n, random_state=0)
        seconds.append(time.perf_counter() - began)
    ours = median(seconds)
    moments, eigenvalues, _ = make_problem(rows, dim, seed=0)
    problem = ResearchProblem(moments, eigenvalues, 1.0 / n)
    start = torch.zeros(rows, dtype=torch.float64)
    start[torch.from_numpy(np.random.default_rng(1).choice(rows, n, replace=False))] = 1.0 / n
    research = research_solver(
        problem, eigenvalues, 1.0, start, iterations, RESEARCH_LR, float("inf")
    ).seconds[-1]
    timings = selection.info["timings"]
    ratio = research / ours
    return [
        f"SkMM default selection, N = {rows:,}, r = {dim}, n = {n}",
        f"{ours:.3f} s (spectrum {timings['spectrum']:.3f}, design {timings['design']:.3f})",
        f"research solver, {iterations:,} iterations: {research:.2f} s",
        f"{ratio:.1f}× faster",
        f"≥ {SELECTION_TARGET:.0f}×",
        "met" if ratio >= SELECTION_TARGET else "not met",
    ]


def greedy_target(rows: int, k: int, n: int) -> list[object]:
    """Row (2): the lazy A-optimal greedy against the exact (plain) greedy on the same rows."""
    z = whitened_rows(rows, k, seed=0)
    results, seconds = {}, {}
    for lazy in (True, False):
        began = time.perf_counter()
        results[lazy] = greedy_design(z, n, "aopt", RIDGE, lazy=lazy).order
        seconds[lazy] = time.perf_counter() - began
    exact, fast = trace_inverse(z, results[False]), trace_inverse(z, results[True])
    excess = fast / exact - 1
    met = seconds[True] <= GREEDY_SECONDS_TARGET and excess <= OBJECTIVE_TOLERANCE
    return [
        f"lazy A-optimal greedy, N = {rows:,}, k = {k}, n = {n:,}",
        f"{seconds[True]:.1f} s, tr M⁻¹ {fast:.3f}",
        f"exact greedy: {seconds[False]:.1f} s, tr M⁻¹ {exact:.3f}",
        f"{seconds[False] / seconds[True]:.1f}× faster, objective {excess:+.3%}",
        f"≤ {GREEDY_SECONDS_TARGET:.0f} s, objective within {OBJECTIVE_TOLERANCE:.0%}",
        "met" if met else "not met",
    ]


def targets_table(quick: bool, repeats: int) -> str:
    if quick:
        rows = [selection_target(2_000, 32, 60, 100, repeats), greedy_target(20_000, 16, 200)]
    else:
        rows = [
            selection_target(16_000, 128, 500, 2_000, max(repeats, 5)),
            greedy_target(1_000_000, 64, 10_000),
        ]
    header = ["what", "skmm", "side by side", "ratio", "target", "status"]
    return table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--greedy-rows", type=int, default=200_000)
    parser.add_argument("--select-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each greedy")
    parser.add_argument("--only-targets", action="store_true", help="print the targets alone")
    args = parser.parse_args()
    set_threads(args.threads)
    preamble("SkMM greedy design: lazy against plain, and selection time at large N")
    greedy_cases = [(32, 500), (64, 200)]
    select_cases = [(64, 100), (64, 1000), (32, 1000), (64, 10_000)]
    if args.quick:
        args.greedy_rows, args.select_rows = 5_000, 20_000
        greedy_cases, select_cases = [(8, 40)], [(16, 50)]
    print("## Targets\n")
    print(targets_table(args.quick, args.repeats) + "\n", flush=True)
    if args.only_targets:
        return
    print("## Lazy against plain A-optimal greedy\n")
    print(greedy_table(args.greedy_rows, greedy_cases, args.repeats) + "\n", flush=True)
    print("## End-to-end SkMM selection\n")
    print(selection_table(args.select_rows, select_cases) + "\n", flush=True)


if __name__ == "__main__":
    main()
