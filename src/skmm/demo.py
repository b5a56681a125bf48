"""``skmm demo``: select from the paper's synthetic pool with SkMM and uniform sampling.

The pool is the Gaussian mixture of :mod:`skmm.bench.synthetic` (N = 2000, r = 2400,
8 clusters of random sizes). Each coreset trains a ridge regression (α = 1e-6) whose
risk over the whole pool is reported, with how many clusters the coreset covers.
"""

from __future__ import annotations

import time

import numpy as np

from .api import select
from .bench.synthetic import make_mixture, ridge_fit, risk

DEMO_ALPHA = 1e-6


def run_demo(quick: bool = False) -> int:
    """Print a table of risk and cluster coverage per method and budget; returns 0."""
    rows, cols, seeds = (1000, 1200, 3) if quick else (2000, 2400, 5)
    budgets = (24, 48) if quick else (24, 48, 96)
    pool = make_mixture(rows, cols, n_clusters=8, seed=0)
    sizes = np.bincount(pool.clusters)
    print(f"skmm demo: pool of N = {rows} points in r = {cols} dimensions, 8 clusters")
    print(f"cluster sizes: {', '.join(map(str, sizes))}")
    print(f"ridge regression (alpha = {DEMO_ALPHA}) on each coreset; risk = MSE over the pool")
    print(f"means over {seeds} seeds\n")
    header = f"{'method':8s} {'n':>4s} {'clusters':>9s} {'risk':>10s} {'time (s)':>9s}"
    print(header)
    print("-" * len(header))
    for n in budgets:
        for method in ("uniform", "skmm"):
            covered, risks, seconds = [], [], []
            for seed in range(seeds):
                began = time.perf_counter()
                selection = select(pool.features, n, method, random_state=seed)
                seconds.append(time.perf_counter() - began)
                chosen = selection.indices
                theta = ridge_fit(pool.features[chosen], pool.targets[chosen], DEMO_ALPHA)
                risks.append(risk(pool, theta))
                covered.append(np.unique(pool.clusters[chosen]).size)
            print(
                f"{method:8s} {n:4d} {np.mean(covered):7.2f}/8 {np.mean(risks):10.3e} "
                f"{np.mean(seconds):9.3f}"
            )
    print("\nThe real finetuning demo (MiniLM on food reviews) arrives with its own issue.")
    return 0
