"""Sketching an (N, r) matrix: skmm's Gaussian and sparse sign maps beside the peers and the limit.

Contenders, all on the same float32 matrix G (N × r) in one process, alternating each repeat:

- limit: ``G @ Γ`` with a dense Gaussian Γ (r × m) generated beforehand (one GEMM, the
  machine's rate for the Gaussian case; skmm must also generate Γ, block by block);
- skmm: ``skmm.sketch(G, m, kind)`` for kind = gaussian and sparse_sign (map built inside);
- TRAK (PyPI ``traker``) ``BasicProjector`` and dattri ``BasicProjector`` (normal and
  rademacher), built and applied to all N rows in one ``project`` call. Their other CPU
  projectors: TRAK's ``NoOpProjector`` does not project; dattri's sjlt and GraSS need CUDA
  (their CPU path fails), and ``random_mask`` keeps m coordinates (not a JL map).

Tables: rows/s (median of --repeats) and ratios; the streamed case (B rows per call, as
gradients arrive); time against N (the slope); and selection quality of the two skmm maps on
the paper's synthetic benchmark (failure rate and median risk, same seeds).

    python benchmarks/bench_sketch.py            # full: r = 1e5 and 2.4e6, m = 128 and 512
    python benchmarks/bench_sketch.py --quick    # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
from collections.abc import Callable

import numpy as np
import torch
from common import (
    interleaved,
    log_log_exponent,
    median,
    preamble,
    set_threads,
    slope,
    table,
)

import skmm
from skmm.bench.synthetic import Variant, noise_floor, run_benchmark, summarize
from skmm.sketch import SketchMap

PEERS = (
    ("TRAK normal", "trak.projectors", "normal"),
    ("TRAK rademacher", "trak.projectors", "rademacher"),
    ("dattri normal", "dattri.func.projection", "normal"),
    ("dattri rademacher", "dattri.func.projection", "rademacher"),
)


def peer_projectors(r: int, m: int) -> tuple[dict[str, Callable[[torch.Tensor], object]], list]:
    """Build-and-project callables of the installed peers, and notes on the missing ones."""
    found: dict[str, Callable[[torch.Tensor], object]] = {}
    notes = []
    for label, module_name, kind in PEERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            notes.append(f"{label}: not installed (pip install traker / dattri)")
            continue

        def run(rows: torch.Tensor, module=module, kind=kind) -> object:
            projector = module.BasicProjector(
                r, m, 0, module.ProjectionType(kind), torch.device("cpu")
            )
            return projector.project(rows, 0)

        found[label] = run
    return found, notes


def rates_rows(
    sizes: list[tuple[int, int]], dims: list[int], repeats: int
) -> tuple[list[list[object]], list[list[object]], list[str]]:
    """Own table (limit, gaussian, sparse) and peer table rows, from one interleaved run."""
    own, peers_rows, notes = [], [], []
    for r, n_rows in sizes:
        rows = torch.randn(n_rows, r, generator=torch.Generator().manual_seed(0))
        for m in dims:
            gamma = torch.randn(r, m, generator=torch.Generator().manual_seed(1)) / math.sqrt(m)
            peers, missing = peer_projectors(r, m)
            notes.extend(note for note in missing if note not in notes)
            contenders: dict[str, Callable[[], object]] = {
                "limit": lambda rows=rows, gamma=gamma: rows @ gamma,
                "gaussian": lambda rows=rows, m=m: skmm.sketch(rows, m, "gaussian"),
                "sparse_sign": lambda rows=rows, m=m: skmm.sketch(rows, m, "sparse_sign"),
            }
            for label, run in peers.items():
                contenders[label] = lambda rows=rows, run=run: run(rows)
            times = interleaved(contenders, repeats)
            rate = {name: n_rows / median(values) for name, values in times.items()}
            own.append(
                [
                    f"{r:,}",
                    m,
                    n_rows,
                    f"{rate['limit']:,.0f}",
                    f"{rate['gaussian']:,.0f}",
                    f"**{rate['gaussian'] / rate['limit']:.2f}**",
                    f"{rate['sparse_sign']:,.0f}",
                    f"**{rate['sparse_sign'] / rate['gaussian']:.1f}**",
                ]
            )
            best_peer = max((rate[label] for label in peers), default=math.nan)
            peers_rows.append(
                [
                    f"{r:,}",
                    m,
                    n_rows,
                    *(f"{rate[label]:,.0f}" if label in rate else "—" for label, _, _ in PEERS),
                    f"**{rate['gaussian'] / best_peer:.2f}**",
                    f"**{rate['sparse_sign'] / best_peer:.1f}**",
                ]
            )
            del gamma, contenders
            gc.collect()
        del rows
        gc.collect()
    return own, peers_rows, notes


def streamed_rows(r: int, n_rows: int, batch: int, dims: list[int], repeats: int) -> list[list]:
    """Rows arriving B at a time (gradient batches): one SketchMap / projector per pass."""
    rows = torch.randn(n_rows, r, generator=torch.Generator().manual_seed(0))
    batches = [rows[start : start + batch] for start in range(0, n_rows, batch)]
    out = []
    trak = None
    try:
        trak = importlib.import_module("trak.projectors")
    except ImportError:
        pass
    for m in dims:

        def skmm_pass(kind: str, m: int = m) -> None:
            sketch_map = SketchMap(r, m, kind, 0)
            for part in batches:
                sketch_map.apply(part)

        contenders: dict[str, Callable[[], object]] = {
            "gaussian": lambda: skmm_pass("gaussian"),
            "sparse_sign": lambda: skmm_pass("sparse_sign"),
        }
        if trak is not None:

            def trak_pass(m: int = m) -> None:
                projector = trak.BasicProjector(
                    r, m, 0, trak.ProjectionType.normal, torch.device("cpu")
                )
                for part in batches:
                    projector.project(part, 0)

            contenders["TRAK normal"] = trak_pass
        times = interleaved(contenders, repeats)
        rate = {name: n_rows / median(values) for name, values in times.items()}
        trak_rate = rate.get("TRAK normal", math.nan)
        out.append(
            [
                f"{r:,}",
                m,
                n_rows,
                batch,
                f"{rate['gaussian']:,.0f}",
                f"{rate['sparse_sign']:,.0f}",
                f"{trak_rate:,.0f}",
                f"**{rate['gaussian'] / trak_rate:.1f}**",
                f"**{rate['sparse_sign'] / trak_rate:.1f}**",
            ]
        )
    return out


def scaling_rows(r: int, counts: list[int], m: int, repeats: int) -> list[list]:
    """Seconds against N for both maps, and the fitted slope (linear time in N)."""
    rows = torch.randn(max(counts), r, generator=torch.Generator().manual_seed(0))
    out = []
    for kind in ("gaussian", "sparse_sign"):
        contenders = {n: (lambda n=n, kind=kind: skmm.sketch(rows[:n], m, kind)) for n in counts}
        times = interleaved(contenders, repeats)
        seconds = [median(times[n]) for n in counts]
        per_row, intercept, r2 = slope(counts, seconds)
        out.append(
            [
                kind,
                f"{r:,}",
                m,
                *(f"{s:.3f}" for s in seconds),
                f"{1e3 * per_row:.3f}",
                f"{intercept:.3f}",
                f"{r2:.4f}",
                f"{log_log_exponent(counts, seconds):.2f}",
            ]
        )
    return out


def quality_rows(
    budgets: list[int], seeds: int, pools: list[int], m: int, pool_options: dict | None
) -> list[list]:
    """The synthetic benchmark with each sketch kind at sketch_dim m: same pools and seeds."""
    variants = [
        Variant(kind, "skmm", {"sketch": kind, "sketch_dim": m})
        for kind in ("gaussian", "sparse_sign")
    ]
    runs = run_benchmark(variants, budgets, seeds, pools, pool_options, progress=False)
    floors = {pool: noise_floor(pool, pool_options, seeds=min(seeds, 8)) for pool in pools}
    summary = {(s.label, s.n): s for s in summarize(runs, floors)}
    out = []
    for n in budgets:
        g, s = summary[("gaussian", n)], summary[("sparse_sign", n)]
        out.append(
            [
                n,
                f"{g.failure_rate:.0%}",
                f"{s.failure_rate:.0%}",
                f"{g.median:.2e}",
                f"{s.median:.2e}",
                f"{g.mean:.2e}",
                f"{s.mean:.2e}",
            ]
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke, seconds)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cols", type=int, nargs="+", default=None, help="r values")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="N for each r")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="m values")
    parser.add_argument("--skip", nargs="*", default=[], choices=["streamed", "scaling", "quality"])
    args = parser.parse_args()
    set_threads(args.threads)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    cols = args.cols or ([5_000, 20_000] if quick else [100_000, 2_400_000])
    rows = args.rows or ([64] * len(cols) if quick else [4096, 256][: len(cols)])
    if len(rows) != len(cols):
        parser.error("--rows needs one N per --cols value")
    dims = args.dims or [128, 512]
    preamble("Sketching an (N, r) float32 matrix")

    own, peers, notes = rates_rows(list(zip(cols, rows, strict=True)), dims, repeats)
    print(f"## Rates: rows/s, median of {repeats} interleaved run(s), map built inside\n")
    print(
        table(
            [
                "r",
                "m",
                "N",
                "limit: G @ Γ (Γ precomputed)",
                "skmm gaussian",
                "gaussian / limit",
                "skmm sparse_sign",
                "sparse / gaussian",
            ],
            own,
        )
    )
    print("\n## Peers: rows/s, same runs (one build + project call over all N rows)\n")
    print(
        table(
            [
                "r",
                "m",
                "N",
                *(label for label, _, _ in PEERS),
                "skmm gaussian / best peer",
                "skmm sparse / best peer",
            ],
            peers,
        )
    )
    for note in notes:
        print(f"- {note}")

    if "streamed" not in args.skip:
        r, n_rows, batch = (cols[0], 128, 32) if quick else (cols[0], 1024, 64)
        print(
            f"\n## Streamed: rows arrive B at a time (one map / projector per pass), rows/s, "
            f"median of {repeats}\n"
        )
        print(
            table(
                [
                    "r",
                    "m",
                    "N",
                    "B",
                    "skmm gaussian",
                    "skmm sparse_sign",
                    "TRAK normal",
                    "gaussian / TRAK",
                    "sparse / TRAK",
                ],
                streamed_rows(r, n_rows, batch, dims, repeats),
            )
        )

    if "scaling" not in args.skip:
        r = cols[0]
        counts = [64, 128, 256] if quick else [1024, 2048, 4096, 8192]
        print(f"\n## Time against N (r = {r:,}, m = {dims[-1]}): seconds, median of {repeats}\n")
        print(
            table(
                [
                    "kind",
                    "r",
                    "m",
                    *(f"N={n}" for n in counts),
                    "slope ms/row",
                    "intercept s",
                    "R²",
                    "log-log exponent",
                ],
                scaling_rows(r, counts, dims[-1], repeats),
            )
        )

    if "quality" not in args.skip:
        budgets, seeds, pools = ([24], 1, [0]) if quick else ([24, 48, 100], 8, [0, 1])
        pool = {"n_rows": 400, "n_features": 600} if quick else None
        m = min(dims[-1], 128) if quick else dims[-1]
        shape = "N = 400, r = 600" if quick else "N = 2000, r = 2400"
        print(
            f"\n## Selection quality, synthetic benchmark ({shape}, 8 clusters), SkMM default "
            f"objective, sketch_dim = {m}, {seeds} seed(s) × {len(pools)} pool(s)\n"
        )
        print(
            table(
                [
                    "n",
                    "failure gaussian",
                    "failure sparse_sign",
                    "median risk gaussian",
                    "median risk sparse_sign",
                    "mean risk gaussian",
                    "mean risk sparse_sign",
                ],
                quality_rows(budgets, seeds, pools, m, pool),
            )
        )
    print(f"\nnumpy {np.__version__}; sketches are float32 in, float64 accumulation inside skmm")


if __name__ == "__main__":
    main()
