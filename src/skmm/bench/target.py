"""The targeted benchmark, offline: select from a pool for a target task that differs from it.

A user with a target task holds a few hundred of its examples and a large mixed pool. Here the
pool is the Fashion-MNIST pool of the real benchmark (:mod:`skmm.bench.tasks`, its validation
part set aside), the target set is cut from that validation part and the test split from the
official test images, by the same class shares (:data:`TARGET_TASKS`):

- ``fashion-mnist-tops``: the four upper-body classes (T-shirt/top, Pullover, Coat, Shirt),
  the classes the network confuses most, and nothing else;
- ``fashion-mnist-shift``: every class, the four upper-body ones making 70% of the rows (a
  shifted class mix).

A 10-class linear probe trained on a coreset of the pool is scored on the target's test rows
(accuracy, and macro-F1 over the target's classes). The selectors see no labels: embeddings
(or, with ``features="gradients"``, LESS's sketched warm-up gradients) of the pool and the
target set (``skmm`` with ``target=``, the LESS-style ``less``, ``knn``), or of the pool alone
(``uniform`` and SkMM's untargeted default). The probe's L2 penalty is tuned per n on uniform
coresets of the pool, scored by the cross-entropy on the target set (never on the test
split), and is the same for every method. Three references (:data:`REFERENCES`) frame the
table: uniform coresets of the pool with the target set's class mix (a label oracle no
selector has), the target set alone, the whole pool. Runs go to the resumable journal of
:mod:`skmm.bench.journal`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import select
from ..io import read_json
from ..seeding import numpy_rng
from ..sketch import SketchMap
from .journal import Journal, RealRun, read_runs_csv, run_grid, write_runs_csv
from .report import Report, summarize_real, targeted_report
from .tasks import Encoded, PreparedTask, hold_out_validation, prepare_task
from .training import PENALTY_GRID, StandardizedLogistic, scores, train_linear, tune_linear

TOPS = (0, 2, 4, 6)
"""Fashion-MNIST's upper-body classes: T-shirt/top, Pullover, Coat, Shirt."""
TARGET_TASKS = {
    "fashion-mnist-tops": {"task": "fashion-mnist", "shares": {c: 1.0 for c in TOPS}},
    "fashion-mnist-shift": {
        "task": "fashion-mnist",
        "shares": {c: 1.0 if c in TOPS else 2 / 7 for c in range(10)},
    },
}
"""Each targeted task: the real task it is cut from, and the share of each target class's
held-out (and test) rows kept: the four upper-body classes alone, or every class with those
four at 70% of the rows (a shifted class mix)."""
METHODS = ("uniform", "less", "knn", "skmm-targeted", "skmm-near", "skmm")
"""``skmm-targeted`` is SkMM given the target set; ``skmm-near`` the same with its design
restricted to the target's neighbourhood (``candidates``); ``skmm`` its untargeted default."""
NEAR_CANDIDATES = 4
"""``skmm-near``'s candidates factor: the design chooses n rows among the 4n nearest."""
NEAR_ABLATION = {"skmm-near-2": 2, "skmm-near-8": 8}
"""Other candidates factors, run only when named (``--methods skmm-near-2 skmm-near-8``)."""
TARGETED = {
    "skmm-targeted": ("skmm", {}),
    "skmm-near": ("skmm", {"candidates": NEAR_CANDIDATES}),
    **{name: ("skmm", {"candidates": factor}) for name, factor in NEAR_ABLATION.items()},
    "less": ("less", {}),
    "knn": ("knn", {}),
}
"""Grid names of the methods that receive the target set: the method each runs, its options."""
METHOD_CHOICES = (*METHODS, *NEAR_ABLATION)
REFERENCES = ("pool-target-mix", "target-only", "full-pool")
CEILINGS = {"target-only": "Target set only", "full-pool": "Full pool"}
DEFAULT_BUDGETS = (50, 100, 200, 500, 1000)
FEATURES = ("embeddings", "gradients")
"""What the selectors see: the frozen embeddings, or LESS's features (:func:`probe_gradients`)."""
WARMUP = {"fraction": 0.05, "seed": 0, "sketch_dim": 256}
"""LESS's warm-up: a probe trained on a seeded uniform share of the pool, whose per-row loss
gradients are sketched to ``sketch_dim`` columns by one Gaussian map (seed 0)."""
GRADIENT_ROWS = 512
"""Rows whose gradients are formed and sketched at once."""
QUICK = {"budgets": (20,), "image_size": 32, "limit_train": 400, "limit_test": 200}


@dataclass
class TargetTask:
    """A pool, a target set the selectors see, and the target's test split."""

    name: str
    pool: Encoded
    target: Encoded
    test: Encoded
    n_classes: int
    classes: tuple[int, ...]
    settings: dict[str, Any]


def cut_target(task: PreparedTask, name: str, shares: dict[int, float]) -> TargetTask:
    """``task`` (its validation part held out) as a targeted task: of each class c of
    ``shares``, a seeded share of its validation rows joins the target set and the same share
    of its test rows the test split (share 1: all of them)."""
    if task.validation is None:
        raise ValueError("the task needs a held-out validation part (hold_out_validation)")
    shares = {int(c): float(share) for c, share in shares.items() if share > 0}
    classes = tuple(shares)
    target_rows = _share_rows(task.validation.labels, shares, "target")
    test_rows = _share_rows(task.test.labels, shares, "test")
    missing = sorted(set(classes) - set(task.validation.labels[target_rows].tolist()))
    if missing or not len(test_rows):
        raise ValueError(
            f"target classes {list(classes)}: the validation part has no rows of {missing} "
            f"or the test split none of them ({len(test_rows)} test rows); use a larger pool"
        )
    settings = {**task.settings, "target_classes": list(classes)}
    if any(share < 1 for share in shares.values()):
        settings["target_shares"] = {str(c): share for c, share in shares.items()}
    settings.update(target_rows=len(target_rows), test_rows=len(test_rows))
    return TargetTask(
        name,
        task.train,
        task.validation.subset(target_rows),
        task.test.subset(test_rows),
        task.n_classes,
        classes,
        settings,
    )


def _share_rows(labels: np.ndarray, shares: dict[int, float], stream: str) -> np.ndarray:
    """Sorted rows: of each class c, round(shares[c] · its rows) chosen by a seeded draw."""
    rng = numpy_rng(0, f"target-{stream}")
    parts = []
    for c, share in shares.items():
        rows = np.flatnonzero(labels == c)
        keep = len(rows) if share >= 1 else round(share * len(rows))
        parts.append(rows if keep == len(rows) else rng.choice(rows, keep, replace=False))
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def target_scores(predicted: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> dict:
    """Accuracy, and macro-F1 over the target's ``classes`` (a prediction outside them is
    wrong for its row and counts against no class's precision)."""
    code = {c: i for i, c in enumerate(classes)}
    predicted_codes = np.array([code.get(int(p), -1) for p in predicted])
    truth_codes = np.array([code[int(t)] for t in truth])
    return scores(predicted_codes, truth_codes, len(classes))


def run_target(
    task_name: str = "fashion-mnist-tops",
    *,
    methods: Sequence[str] = METHODS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    seeds: int = 5,
    cache_dir: str | os.PathLike[str] = "bench-out/cache",
    image_size: int = 96,
    limit_train: int | None = None,
    limit_test: int | None = None,
    features: str = "embeddings",
    references: bool = True,
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """Every method × n × seed of one targeted task, and the references (linear probe).

    ``features``: what the selectors see (:data:`FEATURES`); the probe always trains on the
    embeddings.
    """
    if task_name not in TARGET_TASKS:
        raise ValueError(f"unknown targeted task {task_name!r}; choose: {', '.join(TARGET_TASKS)}")
    check_methods(methods)
    spec = TARGET_TASKS[task_name]
    cache = Path(cache_dir)
    base = prepare_task(
        spec["task"],
        cache,
        limit_train=limit_train,
        limit_test=limit_test,
        image_size=image_size,
        progress=progress,
    )
    task = cut_target(hold_out_validation(base), task_name, spec["shares"])
    return run_target_task(
        task,
        methods,
        budgets,
        seeds,
        cache,
        features=features,
        references=references,
        journal=journal,
        progress=progress,
    )


def run_target_task(
    task: TargetTask,
    methods: Sequence[str],
    budgets: Sequence[int],
    seeds: int,
    cache: Path,
    *,
    features: str = "embeddings",
    references: bool = True,
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """The grid of :func:`run_target` on a task already cut (:func:`cut_target`)."""
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; choose from: {', '.join(FEATURES)}")
    pool, size = len(task.pool.labels), len(task.target.labels)
    too_big = [n for n in budgets if n >= pool]
    if too_big:
        raise ValueError(f"budgets {too_big} must be below the pool size {pool}")
    penalties = target_penalties(task, budgets, cache)
    settings = {"task": task.name, **task.settings}
    seen = (task.pool.embedding, task.target.embedding)
    if features == "gradients":
        seen = probe_gradients(task, penalties)
        settings.update(features=features, warmup=WARMUP)
    settings.update(penalty_grid=list(PENALTY_GRID), penalties=penalties)
    shared = None if journal is None else Journal(Path(journal), settings)
    cells = [(n, m) for n in budgets for m in methods]
    if references:
        cells += [(n, "pool-target-mix") for n in budgets]
        cells += [(size, "target-only"), (pool, "full-pool")]
    grid = [("linear", n, m, s) for n, m in cells for s in range(seeds)]
    return run_grid(grid, shared, lambda key: _one_run(key, task, seen, penalties), progress)


def target_penalties(task: TargetTask, budgets: Sequence[int], cache: Path) -> dict[str, float]:
    """The probe's L2 penalty for each n of ``budgets``, the target set's size and the pool's:
    :func:`~skmm.bench.training.tune_linear` on uniform pool coresets, validated on the target
    set (cached)."""
    tuning = PreparedTask(
        task.name, task.pool, task.test, None, task.n_classes, {}, task.settings, task.target
    )
    sizes = {*budgets, len(task.target.labels), len(task.pool.labels)}
    return tune_linear(tuning, sorted(sizes), cache)


def probe_gradients(task: TargetTask, penalties: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """LESS's features of the pool's and the target's rows: the warm-up probe's loss gradients
    (:func:`loss_gradients`), sketched to ``WARMUP["sketch_dim"]`` columns by one Gaussian
    map (the rows :func:`skmm.sketch` would give with seed 0), so both live in one space.

    The warm-up probe (:data:`WARMUP`) trains on a seeded uniform share of the pool with the
    penalty tuned for the nearest budget.
    """
    pool = len(task.pool.labels)
    size = max(1, round(WARMUP["fraction"] * pool))
    rows = np.sort(numpy_rng(WARMUP["seed"], "warmup").choice(pool, size, replace=False))
    nearest = min(penalties, key=lambda n: abs(int(n) - size))
    probe = train_linear(
        task.pool.embedding[rows], task.pool.labels[rows], task.n_classes, penalties[nearest]
    )

    n_cols = (task.pool.embedding.shape[1] + 1) * task.n_classes
    sketch_map = SketchMap(n_cols, WARMUP["sketch_dim"], "gaussian", seed=0)  # Γ made once

    def sketched(split: Encoded) -> np.ndarray:
        parts = [
            sketch_map.apply(
                torch.from_numpy(
                    loss_gradients(probe, split.embedding[start:stop], split.labels[start:stop])
                )
            )
            .float()
            .numpy()
            for start, stop in _pieces(len(split.labels), GRADIENT_ROWS)
        ]
        return np.concatenate(parts)

    return sketched(task.pool), sketched(task.target)


def loss_gradients(
    probe: StandardizedLogistic, embedding: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """g_i = (x̂_i, 1) ⊗ (p_i − e_{y_i}) (float32, rows of (d + 1)·C): the gradient of row i's
    cross-entropy with respect to the probe's weights and bias, with x̂ the standardized
    embedding and p the predicted class probabilities."""
    residual = probe.logits(embedding).softmax(1).double().numpy()
    residual[np.arange(len(labels)), labels] -= 1.0
    inputs = np.hstack([(embedding - probe.mean) / probe.scale, np.ones((len(labels), 1))])
    return (inputs[:, :, None] * residual[:, None, :]).reshape(len(labels), -1).astype(np.float32)


def _pieces(total: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _one_run(
    key: tuple[str, int, str, int],
    task: TargetTask,
    seen: tuple[np.ndarray, np.ndarray],
    penalties: dict[str, float],
) -> RealRun:
    _, n, method, seed = key
    began = time.perf_counter()
    if method == "target-only":
        embedding, labels = task.target.embedding, task.target.labels
    else:
        rows = _coreset(task, seen, n, method, seed)
        embedding, labels = task.pool.embedding[rows], task.pool.labels[rows]
    select_seconds = time.perf_counter() - began
    began = time.perf_counter()
    probe = train_linear(embedding, labels, task.n_classes, penalties[str(n)])
    predicted = probe.logits(task.test.embedding).argmax(1).numpy()
    metrics = target_scores(predicted, task.test.labels, task.classes)
    return RealRun.of(task.name, key, metrics, select_seconds, time.perf_counter() - began)


def _coreset(
    task: TargetTask, seen: tuple[np.ndarray, np.ndarray], n: int, method: str, seed: int
) -> np.ndarray:
    """The pool rows trained on: a method's selection on the features ``seen`` (the pool's,
    the target's), or a reference's."""
    labels = task.pool.labels
    pool, target = seen
    if method == "full-pool":
        return np.arange(len(labels))
    if method == "pool-target-mix":
        classes, counts = np.unique(task.target.labels, return_counts=True)
        quotas = _largest_remainder(counts * n / counts.sum(), n)
        budgets = {int(c): int(q) for c, q in zip(classes, quotas, strict=True) if q}
        inside = np.flatnonzero(np.isin(labels, list(budgets)))
        chosen = select(
            pool[inside], n, "uniform", labels=labels[inside], stratify=budgets, random_state=seed
        )
        return inside[chosen.indices]
    return select_for_target(method, pool, target, n, seed)


def check_methods(methods: Sequence[str]) -> None:
    """A clear error for a grid method name that is not one of :data:`METHOD_CHOICES`."""
    for method in methods:
        if method not in METHOD_CHOICES:
            raise ValueError(f"unknown method {method!r}; choose from: {', '.join(METHOD_CHOICES)}")


def select_for_target(method: str, pool: Any, target: Any, n: int, seed: int) -> np.ndarray:
    """The grid method's n pool rows: a targeted one (:data:`TARGETED`) gets ``target``."""
    if method not in TARGETED:
        return select(pool, n, method, random_state=seed).indices
    name, options = TARGETED[method]
    return select(pool, n, name, target=target, random_state=seed, **options).indices


def _largest_remainder(quotas: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total``: the floors of ``quotas``, the rest to the largest
    fractional parts (ties to the lower index)."""
    whole = np.floor(quotas).astype(np.int64)
    extra = np.argsort(-(quotas - whole), kind="stable")[: total - int(whole.sum())]
    whole[extra] += 1
    return whole


def target_report(
    out_dir: str | os.PathLike[str],
    task_name: str = "fashion-mnist-tops",
    *,
    quick: bool = False,
    **options: Any,
) -> Report:
    """Run :func:`run_target` into the journal ``out_dir``/runs.csv, then write table.md and
    accuracy.png of every run it holds. ``quick``: a smoke test (:data:`QUICK`, one seed)."""
    if quick:
        options = {**options, **QUICK, "seeds": 1}
    out = Path(out_dir)
    began = time.perf_counter()
    journal = out / "runs.csv"
    runs = run_target(task_name, journal=journal, **options)
    if not journal.exists():
        write_runs_csv(runs, journal)
    runs = read_runs_csv(journal)
    summaries = summarize_real(runs)
    settings = read_json(out / "runs.settings.json")
    counts = sorted({summary.seeds for summary in summaries})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    penalties = ", ".join(f"n = {n}: {value:g}" for n, value in settings["penalties"].items())
    seen = "the embeddings"
    if settings.get("features") == "gradients":
        warmup = settings["warmup"]
        seen = (
            f"the warm-up probe's loss gradients (probe on a uniform {warmup['fraction']:.0%} "
            f"of the pool), sketched to {warmup['sketch_dim']} columns"
        )
    mix = f"target classes {settings['target_classes']}"
    if "target_shares" in settings:
        mix += (
            " (share of each class's rows kept: "
            + ", ".join(f"{c}: {share:.2f}" for c, share in settings["target_shares"].items())
            + ")"
        )
    header = (
        f"Targeted benchmark {task_name}, selectors see {seen}: {mix}; "
        f"{settings['target_rows']:,} target rows (from the pool's held-out rows) seen by the "
        f"targeted selectors; scored on {settings['test_rows']:,} test rows of the same mix; "
        f"linear probe; {seeds} seed(s); "
        f"{time.perf_counter() - began:.0f} s. L2 penalty tuned on uniform coresets of the "
        f"pool by the cross-entropy on the target rows: {penalties}.\n\n"
    )
    return targeted_report(out, header, runs, task_name, CEILINGS)
