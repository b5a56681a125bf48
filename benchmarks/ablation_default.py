"""SkMM's default against its variants and the references, paired over seeds (docs/benchmarks.md).

Three studies, each printing one table per metric with, for every variant and budget n, the
mean over seeds and the paired difference to uniform sampling on the same seed (mean ± SE):

- ``synthetic``: the paper's Gaussian mixture (N = 2000, r = 2400, 8 clusters; pool seeds 0,
  1, 2), ridge risk with α cross-validated on the coreset; a failure is a risk above 10× the
  pool's noise floor (docs/benchmarks.md).
- ``digits``: scikit-learn's handwritten digits (1,797 images of 8 × 8 pixels in [0, 1],
  shipped with scikit-learn), a fixed stratified split of 500 test images; a logistic
  regression probe (C = 10) on each coreset of the other 1,297. ``--relu`` maps the pixels
  through a fixed random ReLU layer of 400 units first (wider nonnegative features, r > m).
- ``linear TASK``: the real benchmark's linear probing protocol (``skmm bench real``) on the
  cached embeddings of ``food-reviews`` or ``fashion-mnist``.

Results are appended to a JSON file (``--out``), so an interrupted run resumes and variants can
be added later; the table is printed from everything the file holds.

    python benchmarks/ablation_default.py digits --out bench-out/ablation/digits.json
    python benchmarks/ablation_default.py linear food-reviews --out bench-out/ablation/food.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from common import machine

import skmm
from skmm.io import write_json

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("uniform", {}),
    "uniform-stratified": ("uniform", {"stratify": True}),
    "facility_location": ("facility_location", {}),
    "skmm": ("skmm", {}),
    "skmm-unstratified": ("skmm", {"stratify": False}),
    "skmm-uncentered": ("skmm", {"center": False, "stratify": False}),
    "skmm-gap-uncentered": ("skmm", {"center": False, "directions": "gap", "stratify": False}),
    "skmm-logdet": ("skmm", {"objective": "logdet", "stratify": False}),
    "skmm-diagonal": ("skmm", {"objective": "diagonal", "stratify": False}),
    "skmm-quarter-unstratified": (
        "skmm",
        {"directions": lambda n: max(1, n // 4), "stratify": False},
    ),
    "skmm-eighth-unstratified": (
        "skmm",
        {"directions": lambda n: max(1, n // 8), "stratify": False},
    ),
    "skmm-ridge0.1-unstratified": ("skmm", {"ridge": 0.1, "stratify": False}),
    "skmm-ridge1-unstratified": ("skmm", {"ridge": 1.0, "stratify": False}),
}
"""label -> (method, options). Labels are passed to every method, so ``skmm`` is the default
with labels (per-class budgets); the other SkMM variants select over the whole pool, and
``skmm-gap-uncentered`` is the previous default's usual choice (the uncentered moment cut at
its largest eigengap) on the current sketch. An option given as a function is called with n:
``skmm-quarter-unstratified`` and ``skmm-eighth-unstratified`` keep k = n/4 and n/8 directions
instead of the default's n/2 (over the whole pool, to compare with ``skmm-unstratified``);
``skmm-ridge0.1-unstratified`` and ``skmm-ridge1-unstratified`` raise ε in M_S + εI (whitened
coordinates, where the pool's moment is I) from 1e-6, so that a row far out along a direction
already covered gains less."""
SYNTHETIC_BUDGETS = (24, 48, 100, 200, 400)
REAL_BUDGETS = (50, 100, 200, 500, 1000, 2000)
DIGITS_BUDGETS = (20, 40, 80, 160)


def _run(
    study: str,
    labels: list[str],
    budgets: tuple[int, ...],
    seeds: int,
    out: Path,
    evaluate: Any,
) -> list[dict[str, Any]]:
    """Every (label, n, seed) not yet in ``out``: ``evaluate(method, options, n, seed)``."""
    rows = json.loads(out.read_text()) if out.exists() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    have = {(r["label"], r["n"], r["seed"]) for r in rows}
    for label in labels:
        method, given = VARIANTS[label]
        for n in budgets:
            options = {k: v(n) if callable(v) else v for k, v in given.items()}
            for seed in range(seeds):
                if (label, n, seed) in have:
                    continue
                began = time.perf_counter()
                metrics = evaluate(method, options, n, seed)
                rows.append(
                    {
                        "study": study,
                        "label": label,
                        "n": n,
                        "seed": seed,
                        **metrics,
                        "seconds": time.perf_counter() - began,
                    }
                )
                write_json(out, rows)
        print(f"{label}: done", file=sys.stderr, flush=True)
    return rows


def paired_table(rows: list[dict[str, Any]], metric: str, pool_key: str | None = None) -> str:
    """Mean over seeds and the paired difference to uniform (mean ± SE) per label and n."""
    values: dict[tuple[str, int], dict[tuple, float]] = defaultdict(dict)
    for row in rows:
        key = (row.get(pool_key), row["seed"]) if pool_key else (row["seed"],)
        values[(row["label"], row["n"])][key] = row[metric]
    labels = list(dict.fromkeys(row["label"] for row in rows))
    budgets = sorted({row["n"] for row in rows})
    lines = [
        f"| {metric} | " + " | ".join(f"n = {n}" for n in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for label in labels:
        cells = []
        for n in budgets:
            mine, base = values[(label, n)], values[("uniform", n)]
            keys = sorted(set(mine) & set(base))
            if not keys:
                cells.append("")
                continue
            mean = float(np.mean([mine[k] for k in keys]))
            if label == "uniform":
                cells.append(f"{mean:.4g}")
                continue
            diff = np.array([mine[k] - base[k] for k in keys])
            se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else float("nan")
            cells.append(f"{mean:.4g} ({diff.mean():+.3g} ± {se:.2g})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def synthetic(args: argparse.Namespace) -> list[dict[str, Any]]:
    from skmm.bench.synthetic import evaluate, make_mixture, noise_floor

    pools = {seed: make_mixture(seed=seed) for seed in (0, 1, 2)}
    floors = {seed: noise_floor(seed, None) for seed in pools}
    rows: list[dict[str, Any]] = []
    for pool_seed, pool in pools.items():

        def one(method, options, n, seed, pool=pool, pool_seed=pool_seed):
            selection = skmm.select(pool.features, n, method, random_state=seed, **options)
            risk, _, _ = evaluate(pool, selection.indices, seed)
            covered = int(np.unique(pool.clusters[selection.indices]).size)
            failed = float(risk > 10 * floors[pool_seed])
            return {"pool": pool_seed, "risk": risk, "failed": failed, "covered": covered}

        out = args.out.with_name(f"{args.out.stem}-pool{pool_seed}{args.out.suffix}")
        rows += _run("synthetic", args.variants, args.budgets, args.seeds, out, one)
    return rows


def digits(args: argparse.Namespace) -> list[dict[str, Any]]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_digits()
    features = (data.data / 16.0).astype(np.float32)
    pool, test, labels, truth = train_test_split(
        features, data.target, test_size=500, random_state=0, stratify=data.target
    )
    if args.relu:
        layer = np.random.default_rng(0).standard_normal((64, 400)).astype(np.float32)
        pool, test = np.maximum(pool @ layer, 0), np.maximum(test @ layer, 0)

    def one(method, options, n, seed):
        selection = skmm.select(pool, n, method, labels=labels, random_state=seed, **options)
        rows = selection.indices
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = LogisticRegression(C=10.0, max_iter=3000).fit(pool[rows], labels[rows])
        classes = np.unique(labels[rows]).size
        return {"accuracy": float(probe.score(test, truth)), "classes": classes}

    return _run("digits", args.variants, args.budgets, args.seeds, args.out, one)


def linear(args: argparse.Namespace) -> list[dict[str, Any]]:
    from skmm.bench.tasks import prepare_task
    from skmm.bench.training import scores, train_linear, tune_linear

    cache = Path(args.cache)
    task = prepare_task(
        args.task, cache, limit_train=None, limit_test=None, max_length=128, image_size=96,
        sources=None, progress=False,
    )  # fmt: skip
    penalties = tune_linear(task, args.budgets, cache)
    features, labels = task.train.embedding, task.train.labels

    def one(method, options, n, seed):
        selection = skmm.select(features, n, method, labels=labels, random_state=seed, **options)
        rows = selection.indices
        probe = train_linear(features[rows], labels[rows], task.n_classes, penalties[str(n)])
        predicted = probe.logits(task.test.embedding).argmax(1).numpy()
        return scores(predicted, task.test.labels, task.n_classes)

    return _run(f"linear-{args.task}", args.variants, args.budgets, args.seeds, args.out, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["synthetic", "digits", "linear"])
    parser.add_argument("task", nargs="?", choices=["food-reviews", "fashion-mnist"])
    parser.add_argument("--out", type=Path, required=True, help="JSON of the runs (resumed)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--budgets", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None, help="default 16 synthetic, 5 else")
    parser.add_argument("--relu", action="store_true", help="digits: a random ReLU layer first")
    parser.add_argument("--cache", default="bench-out/cache", help="the real benchmark's cache")
    args = parser.parse_args()
    if args.study == "linear" and args.task is None:
        parser.error("linear needs a task: food-reviews or fashion-mnist")
    defaults = {"synthetic": SYNTHETIC_BUDGETS, "digits": DIGITS_BUDGETS, "linear": REAL_BUDGETS}
    args.budgets = tuple(args.budgets or defaults[args.study])
    args.seeds = args.seeds or (16 if args.study == "synthetic" else 5)
    if "uniform" not in args.variants:
        args.variants = ["uniform", *args.variants]
    print(f"# {machine()}", flush=True)
    rows = {"synthetic": synthetic, "digits": digits, "linear": linear}[args.study](args)
    if args.study == "synthetic":
        for metric in ("risk", "failed", "covered"):
            print(paired_table(rows, metric, pool_key="pool"), "\n", flush=True)
    else:
        for metric in ("accuracy", "macro_f1", "classes"):
            if all(metric in row for row in rows):
                print(paired_table(rows, metric), "\n", flush=True)


if __name__ == "__main__":
    main()
