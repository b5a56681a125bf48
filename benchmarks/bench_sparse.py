"""Sketching a sparse (N, r) matrix: the sparse kernel against the dense path on the same matrix.

Contenders, on the same float32 matrix in one process, alternating each repeat:

- sparse: ``skmm.sketch(csr, m, kind)`` on a scipy CSR matrix (never densified; O(nnz·m)
  for the Gaussian map, O(nnz·ζ) for the sparse sign map, plus generating Γ's blocks);
- dense: ``skmm.sketch(csr.toarray(), m, kind)`` (the densifying is not timed).

Both give the same bytes (checked here once per case). N·r is fixed and the density varies,
so the sparse time should follow nnz while the dense time stays flat.

    python benchmarks/bench_sparse.py            # full: N = 2,000, r = 50,000
    python benchmarks/bench_sparse.py --quick    # seconds (CI smoke)
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse
from common import fmt_seconds, interleaved, median, preamble, set_threads, slope, table

import skmm

KINDS = ("gaussian", "sparse_sign")


def random_csr(n_rows: int, n_cols: int, density: float, seed: int = 0) -> scipy.sparse.csr_array:
    """A float32 CSR matrix with about density·N·r standard normal entries at uniform places."""
    return scipy.sparse.random_array(
        (n_rows, n_cols),
        density=density,
        format="csr",
        dtype=np.float32,
        rng=np.random.default_rng(seed),
        data_sampler=np.random.default_rng(seed + 1).standard_normal,
    )


def against_dense_rows(
    n_rows: int, n_cols: int, densities: list[float], dims: list[int], repeats: int
) -> tuple[list[list[object]], dict[tuple[str, int], list[tuple[int, float]]]]:
    """Table rows (density, nnz, kind, m, seconds, ratio, s per M nnz) and the sparse
    seconds by (kind, m) against nnz, for the slope table."""
    rows: list[list[object]] = []
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for density in densities:
        csr = random_csr(n_rows, n_cols, density)
        dense = csr.toarray()
        for kind in KINDS:
            for m in dims:
                same = skmm.sketch(csr, m, kind).tobytes() == skmm.sketch(dense, m, kind).tobytes()
                if not same:
                    raise AssertionError(f"sparse and dense sketches differ ({kind}, m = {m})")
                times = interleaved(
                    {
                        "sparse": lambda csr=csr, m=m, kind=kind: skmm.sketch(csr, m, kind),
                        "dense": lambda dense=dense, m=m, kind=kind: skmm.sketch(dense, m, kind),
                    },
                    repeats,
                )
                sparse_s, dense_s = median(times["sparse"]), median(times["dense"])
                series.setdefault((kind, m), []).append((csr.nnz, sparse_s))
                rows.append(
                    [
                        f"{density:.2%}",
                        f"{csr.nnz:,}",
                        kind,
                        m,
                        fmt_seconds(sparse_s),
                        fmt_seconds(dense_s),
                        f"{dense_s / sparse_s:.1f}",
                        f"{sparse_s / max(csr.nnz, 1) * 1e6:.3f}",
                    ]
                )
        del dense
    return rows, series


def slope_rows(series: dict[tuple[str, int], list[tuple[int, float]]]) -> list[list[object]]:
    """Least-squares t = a + b·nnz for each (kind, m)."""
    rows = []
    for (kind, m), points in series.items():
        b, a, fit = slope([nnz for nnz, _ in points], [s for _, s in points])
        rows.append([kind, m, f"{b * 1e6:.3f}", f"{a:.3f}", f"{fit:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke, seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rows", type=int, default=None, help="N")
    parser.add_argument("--cols", type=int, default=None, help="r")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="m values")
    parser.add_argument("--densities", type=float, nargs="+", default=None, help="nnz/(N·r)")
    args = parser.parse_args()
    set_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    n_rows = args.rows or (200 if quick else 2_000)
    n_cols = args.cols or (5_000 if quick else 50_000)
    dims = args.dims or [128, 512]
    densities = args.densities or [1e-4, 1e-3, 1e-2, 1e-1]
    preamble("Sketching a sparse (N, r) float32 matrix against its dense form")

    rows, series = against_dense_rows(n_rows, n_cols, densities, dims, repeats)
    print(
        f"## Sparse against dense (N = {n_rows:,}, r = {n_cols:,}): seconds, median of "
        f"{repeats} interleaved run(s), map built inside, same bytes\n"
    )
    print(
        table(
            [
                "density",
                "nnz",
                "kind",
                "m",
                "sparse s",
                "dense s",
                "dense / sparse",
                "sparse s per M nnz",
            ],
            rows,
        )
    )
    print(f"\n## Time against nnz (N = {n_rows:,}, r = {n_cols:,}): t = a + b·nnz\n")
    print(table(["kind", "m", "b: s per M nnz", "a: s", "R²"], slope_rows(series)))
    print(f"\nnumpy {np.__version__}, scipy {scipy.__version__}")


if __name__ == "__main__":
    main()
