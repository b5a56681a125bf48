"""What SkMM's coresets look like beside the others' (docs/benchmarks.md), on cached real tasks.

- ``target``: the targeted benchmark's ``fashion-mnist-tops`` task on LESS's features (the warm-up
  probe's sketched loss gradients, :func:`skmm.bench.target.probe_gradients`) and on the
  embeddings: for SkMM given the target (plain, and with candidates on the embeddings) and for
  kNN, the share of coreset rows from the target's classes, the median gradient norm relative
  to the pool's, and the class counts.
- ``food``: the food reviews' MiniLM embeddings: for uniform, SkMM (with and without labels)
  and facility location, the majority-class share and the median distance of the coreset's
  rows to the pool mean relative to the pool's median.
- ``text``: the targeted text task ``text-food`` on LESS's loss gradients and on Jacobian
  sketches: for each selector, the share of food reviews (the target's domain) and of " yes"
  answers in the coreset, and its median feature norm relative to the pool's.

All read the benchmarks' cache (``skmm bench real`` / ``skmm bench target`` fill it).

    python benchmarks/diagnose_coresets.py target
    python benchmarks/diagnose_coresets.py food --seeds 3
    python benchmarks/diagnose_coresets.py text
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from common import machine

import skmm
from skmm.bench.target import (
    DEFAULT_BUDGETS,
    NEAR_CANDIDATES,
    TARGET_TASKS,
    cut_target,
    probe_gradients,
    target_penalties,
)
from skmm.bench.tasks import hold_out_validation, prepare_task
from skmm.selection import SelectionWarning


def target(cache: Path, seed: int) -> None:
    base = prepare_task("fashion-mnist", cache, progress=False)
    spec = TARGET_TASKS["fashion-mnist-tops"]
    task = cut_target(hold_out_validation(base), "fashion-mnist-tops", spec["shares"])
    penalties = target_penalties(task, DEFAULT_BUDGETS, cache)  # as skmm bench target tunes
    pool, target_rows = probe_gradients(task, penalties)
    norms = np.linalg.norm(pool, axis=1)
    inside = np.isin(task.pool.labels, task.classes)
    print(
        f"pool: target-class share {inside.mean():.2f}, median gradient norm {np.median(norms):.3f}"
    )
    runs = [
        ("skmm-targeted, gradients", pool, {"target": target_rows}),
        ("knn, gradients", pool, {"method": "knn", "target": target_rows}),
        ("skmm-targeted, embeddings", task.pool.embedding, {"target": task.target.embedding}),
        (
            "knn, embeddings",
            task.pool.embedding,
            {"method": "knn", "target": task.target.embedding},
        ),
        (
            "skmm-near, embeddings",
            task.pool.embedding,
            {"target": task.target.embedding, "candidates": NEAR_CANDIDATES},
        ),
    ]
    for n in (100, 500):
        for name, features, options in runs:
            rows = skmm.select(features, n, random_state=seed, **options).indices
            ratio = np.median(norms[rows]) / np.median(norms)
            counts = np.bincount(task.pool.labels[rows], minlength=task.n_classes).tolist()
            print(
                f"n = {n} {name}: target-class share {inside[rows].mean():.2f}, median gradient "
                f"norm ratio {ratio:.2f}, classes {counts}"
            )


def food(cache: Path, seeds: int) -> None:
    task = prepare_task("food-reviews", cache, progress=False)
    features, labels = task.train.embedding, task.train.labels
    majority = np.bincount(labels).argmax()
    distance = np.linalg.norm(features - features.mean(0), axis=1)
    print(f"pool: majority share {(labels == majority).mean():.3f}, {features.shape}")
    variants = [
        ("uniform", {"method": "uniform"}),
        ("skmm-unstratified", {"stratify": False}),
        ("skmm (labels)", {"labels": labels}),
        ("facility_location", {"method": "facility_location"}),
    ]
    for n in (100, 500, 1000):
        for name, options in variants:
            shares, ratios = [], []
            for seed in range(seeds):
                rows = skmm.select(features, n, random_state=seed, **options).indices
                shares.append((labels[rows] == majority).mean())
                ratios.append(np.median(distance[rows]) / np.median(distance))
            print(
                f"n = {n} {name}: majority share {np.mean(shares):.3f}, median distance to the "
                f"mean {np.mean(ratios):.2f}× the pool's (mean over {seeds} seeds)"
            )


def text(cache: Path, seed: int) -> None:
    from skmm.bench.text_target import prepare_text_target, selector_features, tuned_recipe

    task = prepare_text_target(cache, progress=False)
    _, hyper = tuned_recipe(task, cache)
    food = task.domains == "food"
    print(f"pool: food share {food.mean():.2f}, yes share {task.pool.labels.mean():.2f}")
    for features in ("gradients", "jacobian"):
        pool, target_rows = selector_features(task, features, hyper, cache)
        norms = np.linalg.norm(pool, axis=1)
        runs = [
            ("uniform", {"method": "uniform"}),
            ("less", {"method": "less", "target": target_rows}),
            ("knn", {"method": "knn", "target": target_rows}),
            ("skmm-targeted", {"target": target_rows}),
            ("skmm-near", {"target": target_rows, "candidates": NEAR_CANDIDATES}),
            ("skmm", {}),
        ]
        for n in (50, 200):
            for name, options in runs:
                rows = skmm.select(pool, n, random_state=seed, **options).indices
                ratio = np.median(norms[rows]) / np.median(norms)
                print(
                    f"{features}, n = {n} {name}: food {food[rows].mean():.2f}, yes "
                    f"{task.pool.labels[rows].mean():.2f}, median norm ratio {ratio:.1f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["target", "food", "text"])
    parser.add_argument("--cache", type=Path, default=Path("bench-out/cache"))
    parser.add_argument("--seed", type=int, default=0, help="target, text: the selection seed")
    parser.add_argument("--seeds", type=int, default=3, help="food: seeds averaged")
    args = parser.parse_args()
    print(f"# {machine()}")
    warnings.simplefilter("ignore", SelectionWarning)
    if args.study == "target":
        target(args.cache, args.seed)
    elif args.study == "text":
        text(args.cache, args.seed)
    else:
        food(args.cache, args.seeds)


if __name__ == "__main__":
    main()
