"""Wall-clock scale check of the geometric and submodular baselines; prints markdown tables.

k-center greedy and herding select n of N = 100,000 float32 rows of d = 512 (one isotropic
Gaussian pool, one pool of 100 Gaussian clusters); facility location (lazy and stochastic
greedy) runs on clustered pools as large as its Θ(N²d) cost allows.

    .venv/bin/python benchmarks/bench_geometry_scale.py
    .venv/bin/python benchmarks/bench_geometry_scale.py --rows 20000 --budgets 100 --fl-rows 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import skmm
import skmm.selectors.herding
import skmm.selectors.kcenter
import skmm.selectors.submodular  # these three imports register the methods timed here


def make_pool(kind: str, n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    """float32 rows: ``"isotropic"`` N(0, I), or ``"clustered"``: 100 centers N(0, 9I) + N(0, I)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    if kind == "isotropic":
        return noise
    centers = 3.0 * rng.standard_normal((100, n_cols), dtype=np.float32)
    return noise + centers[rng.integers(100, size=n_rows)]


def timed(features: np.ndarray, n: int, method: str, **options: object) -> tuple[float, dict]:
    began = time.perf_counter()
    selection = skmm.select(features, n, method, random_state=0, **options)
    return time.perf_counter() - began, selection.info


def geometry_rows(args: argparse.Namespace) -> list[str]:
    lines = [
        "| method | pool | N | d | n | seconds | select s | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("isotropic", "clustered"):
        features = make_pool(kind, args.rows, args.cols, args.seed)
        for method in ("kcenter", "herding"):
            for n in args.budgets:
                seconds, info = timed(features, n, method)
                if method == "kcenter":
                    note = f"skipped {info['pruned_fraction']:.0%} of distances"
                else:
                    note = f"‖mean_S − μ‖/rms = {info['relative_mean_discrepancy']:.1e}"
                lines.append(
                    f"| {method} | {kind} | {args.rows:,} | {args.cols} | {n:,} | "
                    f"{seconds:.1f} | {info['timings']['select']:.1f} | {note} |"
                )
    return lines


def facility_rows(args: argparse.Namespace) -> list[str]:
    lines = [
        "| optimizer | N | d | n | seconds | gain evaluations / N | f(S) / f(S_lazy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n_rows in args.fl_rows:
        features = make_pool("clustered", n_rows, args.cols, args.seed)
        reference = None
        for optimizer in ("lazy", "stochastic"):
            seconds, info = timed(
                features, args.fl_budget, "facility_location", optimizer=optimizer
            )
            reference = reference or info["objective"]
            lines.append(
                f"| {optimizer} | {n_rows:,} | {args.cols} | {args.fl_budget} | {seconds:.1f} | "
                f"{info['evaluations_per_row']:.2f} | {info['objective'] / reference:.4f} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="N for kcenter and herding")
    parser.add_argument("--cols", type=int, default=512, help="d, the feature dimension")
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 1000], help="n values")
    parser.add_argument("--fl-rows", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--fl-budget", type=int, default=100, help="n for facility location")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), float32"
    print(f"## k-center greedy and herding ({header})\n")
    print("\n".join(geometry_rows(args)))
    print(f"\n## facility location, clustered pool, ε = 0.1 for stochastic ({header})\n")
    print("\n".join(facility_rows(args)))


if __name__ == "__main__":
    main()
