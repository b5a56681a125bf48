"""Baselines side by side: facility location vs apricot, k-center and herding vs blocked torch.

- facility location: ``skmm.select(X, n, "facility_location", similarity="sqeuclidean")``
  (lazy greedy over similarity tiles, nothing N×N stored) against apricot-select's
  ``FacilityLocationSelection(n, metric="euclidean", optimizer="lazy")`` (the same function:
  apricot's "euclidean" is the squared distance; it builds the dense N×N matrix).
- SkMM itself (default options) is timed on the same pools for its time against N.
- k-center greedy and herding: skmm against a straightforward blocked torch implementation of
  the same rule (distances or scores of all rows to the new center / target by row blocks of
  ‖x‖² − 2⟨x, c⟩ + ‖c‖², the same first pick), the strongest simple peer on a CPU.

Pools: float32 rows of d features around 100 Gaussian clusters. Every pair runs in one process,
alternating; the tables give medians, the ratio, how far the picks agree, and time against N
with the fitted slope.

    python benchmarks/bench_baselines.py            # N up to 100,000 (k-center, herding)
    python benchmarks/bench_baselines.py --quick    # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import gc
import importlib

import numpy as np
import torch
from common import interleaved, log_log_exponent, median, preamble, set_threads, slope, table

import skmm
import skmm.selectors.herding
import skmm.selectors.kcenter
import skmm.selectors.submodular  # these three imports register the methods timed here

BLOCK_ROWS = 65_536


def make_pool(n_rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    """float32 rows: 100 centers N(0, 9I) plus N(0, I) noise."""
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((100, n_cols), dtype=np.float32)
    noise = rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    return noise + centers[rng.integers(100, size=n_rows)]


def blocked_scores(points: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """⟨x_i, v⟩ for every row, row block by row block."""
    return torch.cat(
        [points[i : i + BLOCK_ROWS] @ vector for i in range(0, points.shape[0], BLOCK_ROWS)]
    )


def blocked_kcenter(points: torch.Tensor, n: int, first: int) -> list[int]:
    """Farthest-point traversal: nearest-center distances updated by blocked products."""
    norms = points.square().sum(dim=1)
    nearest = torch.full((points.shape[0],), float("inf"))
    picks = [first]
    for _ in range(n - 1):
        center = points[picks[-1]]
        distances = norms - 2.0 * blocked_scores(points, center) + center.square().sum()
        nearest = torch.minimum(nearest, distances)
        nearest[picks[-1]] = -float("inf")
        picks.append(int(torch.argmax(nearest)))
    return picks


def blocked_herding(points: torch.Tensor, n: int) -> list[int]:
    """Greedy mean matching, argmax ⟨x_i, (t+1)μ − Σ_S x⟩ − ‖x_i‖²/2, by blocked products."""
    offsets = points.square().sum(dim=1).div_(-2.0)
    mean = points.sum(dim=0, dtype=torch.float64) / points.shape[0]
    chosen = torch.zeros_like(mean)
    picks = []
    for t in range(n):
        target = ((t + 1) * mean - chosen).float()
        pick = int(torch.argmax(blocked_scores(points, target) + offsets))
        picks.append(pick)
        offsets[pick] = -float("inf")
        chosen += points[pick].double()
    return picks


def overlap(a: object, b: object) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / max(len(a), 1)


def geometry_rows(sizes: list[int], cols: int, n: int, repeats: int) -> tuple[list, list]:
    """Rows of the k-center / herding table and of the time-against-N table."""
    out, times_by_method = [], {"SkMM": {}, "kcenter": {}, "herding": {}}
    for rows in sizes:
        features = make_pool(rows, cols)
        tensor = torch.from_numpy(features)
        centered = tensor - tensor.double().mean(dim=0).float()
        first = int(torch.argmin(centered.square().sum(dim=1)))
        results: dict[str, object] = {}
        calls = {
            "skmm skmm": lambda f=features: skmm.select(f, n, "skmm", random_state=0).indices,
            "skmm kcenter": lambda f=features: skmm.select(f, n, "kcenter", init="mean").indices,
            "torch kcenter": lambda t=tensor, first=first: blocked_kcenter(t, n, first),
            "skmm herding": lambda f=features: skmm.select(f, n, "herding").indices,
            "torch herding": lambda t=tensor: blocked_herding(t, n),
        }
        contenders = {
            name: (lambda name=name, call=call, out=results: out.__setitem__(name, call()))
            for name, call in calls.items()
        }
        times = interleaved(contenders, repeats)
        times_by_method["SkMM"][rows] = (median(times["skmm skmm"]), None)
        for method in ("kcenter", "herding"):
            ours, theirs = median(times[f"skmm {method}"]), median(times[f"torch {method}"])
            times_by_method[method][rows] = (ours, theirs)
            out.append(
                [
                    method,
                    f"{rows:,}",
                    cols,
                    n,
                    f"{ours:.2f}",
                    f"{theirs:.2f}",
                    f"**{theirs / ours:.1f}×**",
                    f"{overlap(results[f'skmm {method}'], results[f'torch {method}']):.0%}",
                ]
            )
        del features, tensor, centered
        gc.collect()
    scaling = []
    for method, by_size in times_by_method.items():
        counts = sorted(by_size)
        for index, label in ((0, "skmm"), (1, "blocked torch")):
            if by_size[counts[0]][index] is None:
                continue
            seconds = [by_size[c][index] for c in counts]
            per_row, _, r2 = slope(counts, seconds)
            scaling.append(
                [
                    method,
                    label,
                    *(f"{s:.2f}" for s in seconds),
                    f"{1e6 * per_row:.2f}",
                    f"{r2:.4f}",
                    f"{log_log_exponent(counts, seconds):.2f}",
                ]
            )
    return out, scaling


def facility_rows(
    sizes: list[int], cols: int, n: int, repeats: int, peer: bool
) -> tuple[list, list[str]]:
    threads = torch.get_num_threads()
    try:
        apricot = importlib.import_module("apricot") if peer else None
    except ImportError:
        apricot = None
    notes = [
        "apricot JIT-compiles its numba kernels in every `fit` (several CPU seconds, counted: "
        "its users pay it per call); numba runs on as many threads as torch"
        if apricot
        else "apricot not run (--quick, or not installed: pip install apricot-select)"
    ]
    if apricot:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(threads)  # numba's OpenMP start-up resets torch's thread count
    out = []
    for rows in sizes:
        features = make_pool(rows, cols)
        results: dict[str, object] = {}

        def ours(features=features, results=results) -> None:
            selection = skmm.select(features, n, "facility_location", similarity="sqeuclidean")
            results["skmm"] = selection.indices

        def theirs(features=features, results=results) -> None:
            selector = apricot.FacilityLocationSelection(n, metric="euclidean", optimizer="lazy")
            results["apricot"] = selector.fit(features).ranking

        contenders = {"skmm": ours, "apricot": theirs} if apricot else {"skmm": ours}
        times = interleaved(contenders, repeats)
        mine = median(times["skmm"])
        if apricot:
            peer = median(times["apricot"])
            cells = [
                f"{peer:.2f}",
                f"**{peer / mine:.1f}×**",
                f"{overlap(results['skmm'], results['apricot']):.0%}",
            ]
        else:
            cells = ["—", "—", "—"]
        out.append([f"{rows:,}", cols, n, f"{mine:.2f}", *cells, f"{8 * rows * rows / 2**20:,.0f}"])
        del features
        gc.collect()
    return out, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke, seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="N, k-center/herding")
    parser.add_argument("--cols", type=int, default=None, help="d, the feature dimension")
    parser.add_argument("--n", type=int, default=None, help="picks for k-center and herding")
    parser.add_argument("--fl-rows", type=int, nargs="+", default=None, help="N, facility loc.")
    parser.add_argument("--fl-n", type=int, default=None, help="picks for facility location")
    args = parser.parse_args()
    set_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    cols = args.cols or (32 if quick else 512)
    rows = args.rows or ([2_000, 4_000] if quick else [10_000, 30_000, 100_000])
    n = args.n or (20 if quick else 1000)
    fl_rows = args.fl_rows or ([300] if quick else [2_500, 5_000, 10_000, 20_000])
    fl_n = args.fl_n or (10 if quick else 100)
    preamble("Baselines: skmm beside apricot and blocked torch")

    geometry, scaling = geometry_rows(rows, cols, n, repeats)
    print(f"## k-center greedy and herding: seconds, median of {repeats} interleaved run(s)\n")
    print(
        table(
            [
                "method",
                "N",
                "d",
                "n",
                "skmm s",
                "blocked torch s",
                "speed-up",
                "same picks",
            ],
            geometry,
        )
    )
    print(
        f"\n## Time against N (n = {n}; skmm = SkMM's default selection, sketch to m = 256 "
        "and greedy A-optimal design): seconds, fitted slope\n"
    )
    print(
        table(
            [
                "method",
                "implementation",
                *(f"N={r:,}" for r in rows),
                "slope µs/row",
                "R²",
                "log-log exponent",
            ],
            scaling,
        )
    )
    facility, notes = facility_rows(fl_rows, cols, fl_n, repeats, peer=not quick)
    print(
        f"\n## Facility location (squared Euclidean): seconds, median of {repeats} interleaved "
        "run(s)\n"
    )
    print(
        table(
            [
                "N",
                "d",
                "n",
                "skmm s",
                "apricot s",
                "speed-up",
                "same picks",
                "apricot's N×N float64 MiB",
            ],
            facility,
        )
    )
    for note in notes:
        print(f"- {note}")
    print(
        "\n- skmm times are whole `skmm.select` calls (input checks, centering, selection); "
        "the peers get the rows ready-made; k-center starts at the row nearest the mean in both"
    )


if __name__ == "__main__":
    main()
