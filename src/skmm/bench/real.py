"""Real finetuning benchmarks, offline: select a coreset of a real pool, train on it, test.

One grid per task (:mod:`skmm.bench.tasks`): every protocol × method × n × seed selects a
coreset from the same features, trains on it (:mod:`skmm.bench.training`) and scores the
untouched test split. A validation part of the pool
(:func:`~skmm.bench.tasks.hold_out_validation`) tunes and early-stops the training; no
selector sees it. Beside the methods, every grid holds two references (:data:`REFERENCES`):
class-stratified uniform coresets at each n, and the whole pool (the protocol's ceiling).
Selection features are the frozen embeddings for ``linear`` and, for ``finetune``, the
sketched per-sample gradients of the finetuned layers
(``target="jacobian"``, m = 256), cached in a resumable store; a method named
``METHOD@TARGET`` (``skmm@jacobian_blocks``, ``skmm@loss``, ``skmm@loss_random``) selects from
the sketch of that gradient target instead (:func:`split_method`). Runs go to a journal
(:mod:`skmm.bench.journal`) that several processes may share; :func:`real_report` writes
its tables and plot (:mod:`skmm.bench.report`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import get_method, select
from ..api import methods as method_names
from ..gradients import GradientSketch, sketch_gradients
from ..gradients.per_sample import TARGETS as GRADIENT_TARGETS
from ..io import atomic_write, file_lock, read_json
from .journal import Journal, RealRun, read_runs_csv, run_grid, write_runs_csv
from .report import Report, plot_real, real_markdown, summarize_real, training_line
from .tasks import TASKS, PreparedTask, hold_out_validation, prepare_task
from .training import (
    PENALTY_GRID,
    finetune,
    predict,
    scores,
    train_linear,
    tune_finetune,
    tune_linear,
)

PROTOCOLS = ("linear", "finetune")
REFERENCES = ("uniform-stratified", "full-pool")
"""Runs beside the methods: uniform within each class (class-proportional budgets), and
training on the whole pool."""
DEFAULT_BUDGETS = (50, 100, 200, 500, 1000, 2000)
SKETCH_DIM = 256
QUICK = {
    "budgets": (20,),
    "max_length": 32,
    "image_size": 32,
    "limit_train": 160,
    "limit_test": 80,
    "finetune_steps": 10,
    "methods": ("skmm", "uniform"),
}
QUICK_FILLS = ("methods", "budgets", "limit_train", "limit_test")  # where the request gives none
DEFAULT_GRADIENTS = "jacobian"


def split_method(name: str) -> tuple[str, str]:
    """(method, gradient target) of a grid's method name: ``"skmm@loss"`` → ("skmm", "loss");
    a name without ``@`` selects from the :data:`DEFAULT_GRADIENTS` sketch."""
    method, _, gradients = name.partition("@")
    if gradients and gradients not in GRADIENT_TARGETS:
        raise ValueError(
            f"{name!r}: unknown gradient target {gradients!r}; after '@' name one of: "
            f"{', '.join(GRADIENT_TARGETS)}"
        )
    return method, gradients or DEFAULT_GRADIENTS


def run_real(
    task_name: str = "food-reviews",
    *,
    protocols: Sequence[str] = PROTOCOLS,
    methods: Sequence[str] | None = None,
    budgets: Sequence[int] | None = None,
    seeds: int = 5,
    cache_dir: str | os.PathLike[str] = "bench-out/cache",
    max_length: int = 128,
    image_size: int = 96,
    sources: dict[str, str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    finetune_steps: int | None = None,
    tune: bool = True,
    stratify: bool = False,
    references: bool = True,
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """Every protocol × method × budget × seed of one task (features and gradients cached).

    ``methods``: every registered method that needs no target by default; ``budgets``:
    :data:`DEFAULT_BUDGETS` by default. ``sources``: for stanford-cars, hub ids or local
    directories of ``dataset``, ``linear_model`` and ``finetune_model`` (:mod:`skmm.bench.online`).
    ``tune``: choose the finetuning learning rates with
    :func:`~skmm.bench.training.tune_finetune` (else the task's defaults in
    :data:`~skmm.bench.tasks.FINETUNE`). ``stratify``: every method selects with
    class-proportional budgets (its ``stratify=True`` option) instead of over the whole
    pool. ``references``: add the :data:`REFERENCES` runs to the grid. ``finetune_steps``:
    train every coreset for exactly this many steps (a smoke test) instead of the task's
    schedule. ``journal``: a CSV rewritten atomically after every run, next to a JSON of the
    settings; a rerun with the same settings keeps the runs it holds and does only the
    missing ones, so an interruption loses at most one run. Several processes may share one
    journal (:class:`~skmm.bench.journal.Journal`): each takes the runs no other has taken,
    and each returns the whole grid once all are done.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from: {', '.join(PROTOCOLS)}")
    if methods is None:
        methods = [m for m in method_names() if not get_method(m).requires_target]
    budgets = DEFAULT_BUDGETS if budgets is None else budgets
    for name in methods:
        method, _ = split_method(name)
        if get_method(method).requires_target:
            raise ValueError(
                f"method {method!r} selects only for a target set, and this benchmark has none"
            )
        if "@" in name and "linear" in protocols:
            raise ValueError(
                f"{name!r} names the gradients it selects from, which only the finetune "
                "protocol uses (linear probing selects from the embeddings): run it with "
                "--protocols finetune"
            )
    cache = Path(cache_dir)
    task = prepare_task(
        task_name,
        cache,
        limit_train=limit_train,
        limit_test=limit_test,
        max_length=max_length,
        image_size=image_size,
        sources=sources,
        progress=progress,
    )
    task = hold_out_validation(task)
    pool = len(task.train.labels)
    too_big = [n for n in budgets if n >= pool]
    if too_big:
        raise ValueError(
            f"budgets {too_big} must be below the pool size {pool} (after setting "
            f"{task.settings['validation_rows']} validation rows aside)"
        )
    hyper = dict(task.finetune)
    if finetune_steps:
        hyper.update(min_steps=finetune_steps, max_steps=finetune_steps)
    settings: dict[str, Any] = {"task": task_name, **task.settings}
    if stratify:
        settings["stratify"] = True
    penalties: dict[str, float] = {}
    if "linear" in protocols:
        penalties = tune_linear(task, [*budgets, pool] if references else budgets, cache)
        settings.update(penalty_grid=list(PENALTY_GRID), penalties=penalties)
    if "finetune" in protocols:
        tuning = tune_finetune(task, hyper, cache, progress) if tune else None
        if tuning is not None:
            hyper.update(lr_body=tuning["lr_body"], lr_head=tuning["lr_head"])
        settings.update(finetune=hyper, tuning=tuning, sketch_dim=SKETCH_DIM)
    shared = None if journal is None else Journal(Path(journal), settings)
    cells = [(n, m) for n in budgets for m in methods]
    if references:
        cells += [(n, "uniform-stratified") for n in budgets] + [(pool, "full-pool")]
    grid = [(p, n, m, s) for p in protocols for n, m in cells for s in range(seeds)]
    features: dict[tuple[str, str], object] = {}  # computed on the first run that needs them

    def run(key: tuple) -> RealRun:
        protocol, n, method, seed = key
        which = (protocol, split_method(method)[1])
        if which not in features:
            features[which] = _selection_features(protocol, task, cache, progress, which[1])
        return _one_run(
            (protocol, method, n, seed), features[which], task, hyper, penalties, stratify
        )

    return run_grid(grid, shared, run, progress)


def _selection_features(
    protocol: str,
    task: PreparedTask,
    cache: Path,
    progress: bool | None,
    gradients: str = DEFAULT_GRADIENTS,
) -> np.ndarray | GradientSketch:
    """The embeddings (linear), or the gradient sketch of target ``gradients`` (finetune),
    computed once into a store in ``cache``: a sketch of ``"jacobian_blocks"`` carries its
    blocks to SkMM."""
    if protocol == "linear":
        return task.train.embedding
    train = task.train
    batches = [
        {
            **train.tensors(slice(start, start + 32)),
            "labels": torch.from_numpy(train.labels[start : start + 32]),
        }
        for start in range(0, len(train.labels), 32)
    ]
    digest = hashlib.sha256(train.embedding.tobytes()).hexdigest()[:16]
    name = f"grads-{digest}" if gradients == DEFAULT_GRADIENTS else f"grads-{gradients}-{digest}"
    with file_lock(cache / f"{name}.lock"):  # one process sketches, the others load
        return sketch_gradients(
            task.base,
            batches,
            sketch_dim=SKETCH_DIM,
            target=gradients,
            batch_size=32,
            store=cache / name,
            progress=progress,
        )


def _one_run(
    key: tuple[str, str, int, int],
    features: np.ndarray | GradientSketch,
    task: PreparedTask,
    hyper: dict[str, Any],
    penalties: dict[str, float],
    stratify: bool,
) -> RealRun:
    protocol, method, n, seed = key
    train, test = task.train, task.test
    began = time.perf_counter()
    rows = _coreset(features, n, method, train.labels, seed, stratify)
    select_seconds = time.perf_counter() - began
    began = time.perf_counter()
    steps = 0
    if protocol == "linear":
        probe = train_linear(
            train.embedding[rows], train.labels[rows], task.n_classes, penalties[str(n)]
        )
        predicted = probe.logits(test.embedding).argmax(1).numpy()
    else:
        trained = finetune(task.base, train, rows, seed, hyper, task.validation)
        predicted, steps = predict(trained.model, test), trained.best_step
    metrics = scores(predicted, test.labels, task.n_classes)
    return RealRun.of(
        task.name,
        (protocol, n, method, seed),  # the targeted grids' key order
        metrics,
        select_seconds,
        time.perf_counter() - began,
        steps,
    )


def _coreset(
    features: np.ndarray | GradientSketch,
    n: int,
    method: str,
    labels: np.ndarray,
    seed: int,
    stratify: bool,
) -> np.ndarray:
    """The rows trained on: a method's selection, or a reference's (:data:`REFERENCES`)."""
    if method == "full-pool":
        return np.arange(len(labels))
    if method == "uniform-stratified":
        method, stratify = "uniform", True
    method = split_method(method)[0]
    options = {"stratify": True} if stratify else {}
    return select(features, n, method, labels=labels, random_state=seed, **options).indices


def _quick_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` under the :data:`QUICK` preset: one seed and QUICK's text length, image
    size and finetuning steps; QUICK's methods, budgets and pool limits where none is given."""
    given = {name: options.get(name) or QUICK[name] for name in QUICK_FILLS}
    sizes = {name: value for name, value in QUICK.items() if name not in QUICK_FILLS}
    return {**options, **given, **sizes, "seeds": 1}


def real_report(
    out_dir: str | os.PathLike[str],
    task_name: str = "food-reviews",
    *,
    quick: bool = False,
    **options: Any,
) -> Report:
    """Run :func:`run_real` into the journal ``out_dir``/runs.csv, then write table.md and
    accuracy.png of every run the journal holds (this request's and earlier ones).

    ``quick``: a smoke test (:data:`QUICK`): one seed, short texts, small images and a few
    finetuning steps whatever the request says, and a tiny pool, two methods and one budget
    unless it names others.
    """
    if quick:
        options = _quick_options(options)
    out = Path(out_dir)
    began = time.perf_counter()
    journal = out / "runs.csv"
    runs = run_real(task_name, journal=journal, **options)
    if not journal.exists():
        write_runs_csv(runs, journal)
    runs = read_runs_csv(journal)
    summaries = summarize_real(runs)
    seconds = time.perf_counter() - began
    protocols = ", ".join(dict.fromkeys(run.protocol for run in runs))
    stratified = "; class-proportional budgets (stratify)" if options.get("stratify") else ""
    counts = sorted({summary.seeds for summary in summaries})
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    header = (
        f"Real benchmark {task_name}{stratified}: protocols {protocols}; {seeds} seed(s); "
        f"{seconds:.0f} s.{training_line(read_json(out / 'runs.settings.json'))}\n\n"
    )
    markdown = header + real_markdown(summaries, runs)
    with atomic_write(out / "table.md", "w") as stream:
        stream.write(markdown)
    plot_real(summaries, out / "accuracy.png", task_name)
    return Report(markdown, [out / "table.md", out / "runs.csv", out / "accuracy.png"])
