"""Training and tuning for the real benchmark: the linear probe, finetuning, their scores.

- ``linear`` protocol (the paper's CLIP study): a multinomial logistic regression trained on
  the standardized coreset embeddings (:func:`train_linear`). Its L2 penalty is chosen once
  per n without the test split (:func:`tune_linear`: uniform coresets of the pool, validated
  on the task's validation part) and is the same for every method.
- ``finetune`` protocol (the paper's ResNet18 study): the last two layers are finetuned on
  the coreset (:func:`finetune`: AdamW for :func:`schedule_steps` steps, which grow with n
  between a floor and a cap, stopped early on the validation part; one recipe for every
  method). The learning rates are tuned once per task without the test split
  (:func:`tune_finetune`).

Accuracy and macro-F1 (:func:`scores`) are measured on the untouched test split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import read_json, write_json
from ..progress import progress_bar
from ..seeding import derive_seed, numpy_rng
from .tasks import Encoded, PreparedTask

PENALTY_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
TUNING = {"lr_scales": (0.3, 1.0, 3.0), "budget": 200, "seeds": 2, "validation_rows": 1000}


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
class StandardizedLogistic:
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
) -> StandardizedLogistic:
    """Standardize the coreset's embeddings (its own mean and std), fit :func:`fit_logistic`."""
    mean = embedding.mean(0)
    scale = embedding.std(0) + 1e-6
    x = torch.from_numpy(((embedding - mean) / scale).astype(np.float32))
    weight, bias = fit_logistic(x, torch.from_numpy(labels), n_classes, penalty)
    return StandardizedLogistic(mean, scale, weight, bias)


def _tuning_rows(pool: int, n: int, seed: int, stream: str) -> tuple[np.ndarray, np.ndarray]:
    """A uniform coreset of n pool rows and up to ``validation_rows`` other pool rows."""
    rows = np.sort(numpy_rng(seed, stream).choice(pool, n, replace=False))
    rest = np.setdiff1d(np.arange(pool), rows)
    size = min(TUNING["validation_rows"], len(rest))
    return rows, np.sort(numpy_rng(seed, f"{stream}-validation").choice(rest, size, replace=False))


def _validation(task: PreparedTask, n: int, seed: int, stream: str) -> tuple[np.ndarray, Encoded]:
    """A uniform coreset of n pool rows and the split that validates it: the task's
    validation part when it holds one out, else up to ``validation_rows`` other pool rows."""
    rows, held_out = _tuning_rows(len(task.train.labels), n, seed, stream)
    if task.validation is not None:
        return rows, task.validation
    return rows, task.train.subset(held_out)


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
    (a few seeds) train the probe, scored by the mean cross-entropy on the task's validation
    part (or, without one, up to ``TUNING["validation_rows"]`` other pool rows); the lowest
    wins and every method uses it. Cached as JSON.
    """
    path = _tuning_cache(task, cache, "linear", sorted(budgets), PENALTY_GRID)
    if path.exists():
        return read_json(path)
    train = task.train
    chosen = {}
    for n in sorted(budgets):
        loss = {}
        for penalty in PENALTY_GRID:
            total = 0.0
            for seed in range(TUNING["seeds"]):
                rows, held_out = _validation(task, n, seed, "tune-linear")
                probe = train_linear(
                    train.embedding[rows], train.labels[rows], task.n_classes, penalty
                )
                logits = probe.logits(held_out.embedding)
                total += float(F.cross_entropy(logits, torch.from_numpy(held_out.labels)))
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


def schedule_steps(n: int, hyper: dict[str, Any]) -> int:
    """Steps for a coreset of n rows: ``epochs``·⌈n / batch⌉, within [min_steps, max_steps]."""
    epochs = hyper["epochs"] * math.ceil(n / hyper["batch_size"])
    return min(hyper["max_steps"], max(hyper["min_steps"], epochs))


@dataclass
class Finetuned:
    """A finetuned model (its best validated state) and how its training went."""

    model: nn.Module
    steps: int
    best_step: int
    validation_score: float | None
    """The kept state's validation accuracy, or minus its mean cross-entropy (stop_on="loss")."""


def finetune(
    model: nn.Module,
    train: Encoded,
    rows: np.ndarray,
    seed: int,
    hyper: dict[str, Any],
    validation: Encoded | None = None,
) -> Finetuned:
    """AdamW on the coreset rows for :func:`schedule_steps` steps, with early stopping.

    Every ``eval_every`` steps (and at the last) the model is scored on ``validation`` (by
    accuracy, or with ``hyper["stop_on"] == "loss"`` by mean cross-entropy, which moves
    smoothly where accuracy sits at a class's share for a while); the best state (the first
    of equal score) is kept, and training stops after ``patience``
    scores without a better one. Without ``validation`` it trains every step and keeps the
    last state. Batches are drawn without replacement within a step from a seeded
    generator; dropout draws from a torch generator seeded by ``seed``: a run is
    reproducible.
    """
    steps = schedule_steps(len(rows), hyper)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "dropout"))
        model = copy.deepcopy(model).train()
        optimizer = torch.optim.AdamW(model.param_groups(hyper["lr_body"], hyper["lr_head"]))
        rng = numpy_rng(seed, "finetune")
        inputs = train.tensors(rows)
        labels = torch.from_numpy(train.labels[rows])
        batch = min(hyper["batch_size"], len(rows))
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        waited = 0
        for step in range(1, steps + 1):
            pick = torch.from_numpy(rng.choice(len(rows), size=batch, replace=False))
            logits = model(**{name: values[pick] for name, values in inputs.items()})
            loss = F.cross_entropy(logits, labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if validation is None or (step % hyper["eval_every"] and step < steps):
                continue
            score = _validation_score(model.eval(), validation, hyper.get("stop_on", "accuracy"))
            model.train()
            if best is None or score > best[0]:
                best, waited = (score, step, copy.deepcopy(model.state_dict())), 0
            else:
                waited += 1
                if waited >= hyper["patience"]:
                    break
    if best is None:
        return Finetuned(model.eval(), step, step, None)
    model.load_state_dict(best[2])
    return Finetuned(model.eval(), step, best[1], best[0])


@torch.no_grad()
def _validation_score(model: nn.Module, split: Encoded, stop_on: str) -> float:
    """Higher is better: accuracy, or minus the mean cross-entropy (``stop_on="loss"``)."""
    if stop_on == "accuracy":
        return float(np.mean(predict(model, split) == split.labels))
    if stop_on != "loss":
        raise ValueError(f"stop_on must be 'accuracy' or 'loss', got {stop_on!r}")
    total = 0.0
    for start in range(0, len(split.labels), 256):
        rows = np.arange(start, min(start + 256, len(split.labels)))
        logits = model(**split.tensors(rows))
        labels = torch.from_numpy(split.labels[rows])
        total += float(F.cross_entropy(logits, labels, reduction="sum"))
    return -total / len(split.labels)


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


def tune_finetune(
    task: PreparedTask, hyper: dict[str, Any], cache: Path, progress: bool | None = None
) -> dict[str, Any]:
    """Learning rates for ``finetune``, chosen without the test split; cached as JSON.

    For each scale s of :data:`TUNING` (both learning rates × s) and a few seeds, a uniform
    coreset of ``TUNING["budget"]`` pool rows trains the model with the task's schedule and
    early stopping; the scale of best mean validation accuracy wins (the task's validation
    part, or, without one, up to ``TUNING["validation_rows"]`` other pool rows).
    """
    pool = len(task.train.labels)
    budget = max(2, min(TUNING["budget"], pool // 4))
    path = _tuning_cache(task, cache, "finetune", hyper)
    if path.exists():
        return read_json(path)
    accuracy = {}
    runs = len(TUNING["lr_scales"]) * TUNING["seeds"]
    with progress_bar(runs, "tune learning rate", progress, unit="run") as bar:
        for scale in TUNING["lr_scales"]:
            scaled = {
                **hyper,
                "lr_body": hyper["lr_body"] * scale,
                "lr_head": hyper["lr_head"] * scale,
            }
            values = []
            for seed in range(TUNING["seeds"]):
                rows, held_out = _validation(task, budget, seed, "tune")
                model = finetune(task.base, task.train, rows, seed, scaled, held_out).model
                values.append(float(np.mean(predict(model, held_out) == held_out.labels)))
                bar.update(1)
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
