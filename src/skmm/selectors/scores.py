"""Score-based baselines: train the linear probe, score every example, keep the n best.

The classification study's score-based family, as implemented in DeepCore (Guo, Zhao & Bai
2022) on top of a selection model, here the linear softmax probe of :mod:`.probe`:

- ``entropy``, ``margin``, ``least_confidence``: uncertainty sampling (Coleman et al. 2020,
  "Selection via proxy"): the n examples the probe is least sure about, by predictive
  entropy −Σ_c p_c log p_c (highest), top-2 margin p_(1) − p_(2) (lowest) or least
  confidence 1 − max_c p_c (highest).
- ``el2n``, ``grand``: data-diet scores (Paul, Ganguli & Dziugaite 2021): the error norm
  ‖p(x) − e_y‖₂ and the per-example loss-gradient norm ‖∇ℓ‖₂ = ‖p − e_y‖₂·√(‖x̂‖² + 1) of the
  head, averaged over ``repeats`` independently seeded probes trained briefly; keep the
  highest.
- ``forgetting``: forgetting events (Toneva et al. 2019): how often an example goes from
  correctly to incorrectly classified between consecutive presentations during training;
  never-learned examples count as forgotten infinitely often; keep the highest.

Every method scores the whole pool once (so stratified selection ranks within each class by
scores of one probe trained on all classes) and breaks ties by a seeded random key.
DeepFool margins (Ducoffe & Precioso 2018) live in :mod:`.deepfool` on the same base class.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from ..inputs import FeatureMatrix, check_positive_int
from ..seeding import numpy_rng
from .base import MethodOutput, register
from .probe import LinearProbe, ProbeSelector

SCORE_BLOCK_BYTES = 256 * 2**20


def block_rows(n_cols: int, n_classes: int) -> int:
    """Rows per block so that a block's features and logits take at most ~SCORE_BLOCK_BYTES."""
    return max(1, SCORE_BLOCK_BYTES // (8 * (n_cols + 2 * n_classes)))


def per_row_scores(
    probe: LinearProbe,
    features: torch.Tensor,
    labels: torch.Tensor | None,
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> torch.Tensor:
    """score(x̂, logits, y) over row blocks, concatenated: (N,) float64.

    ``x̂`` are the probe's standardized features (in the probe's dtype) and ``logits`` =
    W x̂ + b, cast to float64 so that probabilities near 0 and 1 keep their precision.
    """
    step = block_rows(features.shape[1], probe.n_classes)
    parts = []
    for start in range(0, features.shape[0], step):
        standardized = probe.standardize(features[start : start + step])
        logits = (standardized @ probe.weight.T + probe.bias).to(torch.float64)
        block_labels = None if labels is None else labels[start : start + step]
        parts.append(score(standardized, logits, block_labels))
    return torch.cat(parts)


def _entropy(standardized: torch.Tensor, logits: torch.Tensor, labels: object) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def _margin(standardized: torch.Tensor, logits: torch.Tensor, labels: object) -> torch.Tensor:
    top2 = torch.softmax(logits, dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def _least_confidence(
    standardized: torch.Tensor, logits: torch.Tensor, labels: object
) -> torch.Tensor:
    return 1.0 - torch.softmax(logits, dim=1).amax(dim=1)


def _error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    residual = torch.softmax(logits, dim=1)
    residual[torch.arange(labels.shape[0], device=labels.device), labels] -= 1.0
    return torch.linalg.vector_norm(residual, dim=1)


def _el2n(standardized: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _error(logits, labels)


def _grand(standardized: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    squared_norms = standardized.square().sum(dim=1).to(torch.float64)
    return _error(logits, labels) * torch.sqrt(squared_norms + 1.0)


def entropy_scores(probe: LinearProbe, features: torch.Tensor) -> torch.Tensor:
    """Predictive entropy H(p(x)) = −Σ_c p_c log p_c of each row: (N,) float64."""
    return per_row_scores(probe, features, None, _entropy)


def margin_scores(probe: LinearProbe, features: torch.Tensor) -> torch.Tensor:
    """Top-2 margin p_(1)(x) − p_(2)(x) of each row (small = uncertain): (N,) float64."""
    return per_row_scores(probe, features, None, _margin)


def least_confidence_scores(probe: LinearProbe, features: torch.Tensor) -> torch.Tensor:
    """Least confidence 1 − max_c p_c(x) of each row: (N,) float64."""
    return per_row_scores(probe, features, None, _least_confidence)


def el2n_scores(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N ‖p(x) − e_y‖₂ of each row: (N,) float64."""
    return per_row_scores(probe, features, labels, _el2n)


def grand_scores(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GraNd ‖∇_(W,b) ℓ(x, y)‖₂ = ‖p(x) − e_y‖₂·√(‖x̂‖² + 1) of each row: (N,) float64."""
    return per_row_scores(probe, features, labels, _grand)


def probe_accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose predicted class argmax_c logits_c(x) equals the label."""
    correct = per_row_scores(
        probe,
        features,
        labels,
        lambda standardized, logits, y: (logits.argmax(dim=1) == y).to(torch.float64),
    )
    return float(correct.mean())


class ForgettingCounter:
    """Forgetting events per row from the correctness at each presentation (Toneva et al.).

    A forgetting event is a transition correct → incorrect between consecutive presentations;
    a row never classified correctly at any presentation has infinitely many.
    """

    def __init__(self, n_rows: int, device: torch.device | str = "cpu") -> None:
        self.events = torch.zeros(n_rows, dtype=torch.int64, device=device)
        self.ever_correct = torch.zeros(n_rows, dtype=torch.bool, device=device)
        self.previous: torch.Tensor | None = None
        self.presentations = 0

    def update(self, correct: torch.Tensor) -> None:
        """Record one presentation of every row: ``correct`` (N,) bool."""
        correct = correct.to(device=self.events.device, dtype=torch.bool)
        if self.previous is not None:
            self.events += (self.previous & ~correct).to(torch.int64)
        self.ever_correct |= correct
        self.previous = correct.clone()
        self.presentations += 1

    def scores(self) -> torch.Tensor:
        """Forgetting counts as float64, +inf for never-learned rows: (N,)."""
        counts = self.events.to(torch.float64)
        return torch.where(self.ever_correct, counts, torch.full_like(counts, math.inf))


def score_summary(scores: np.ndarray) -> dict[str, Any]:
    """min/mean/max of the finite scores, and how many are infinite."""
    finite = scores[np.isfinite(scores)]
    summary: dict[str, Any] = {
        "min": float(finite.min()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
    }
    if finite.size < scores.size:
        summary["n_infinite"] = int(scores.size - finite.size)
    return summary


def top_by_score(scores: np.ndarray, n: int, keep: str, rng: np.random.Generator) -> np.ndarray:
    """The n rows with the highest (``keep="highest"``) or lowest scores, best first.

    Ties are broken by a uniform random key per row drawn from ``rng``.
    """
    keys = rng.random(scores.size)
    primary = -scores if keep == "highest" else scores
    return np.lexsort((keys, primary))[:n].astype(np.int64)


class ProbeScoreSelector(ProbeSelector):
    """Base of the score-based family: train the probe on the pool, score, keep the n best.

    Options shared by every member: ``epochs``, ``lr``, ``weight_decay`` and ``batch_size``
    of the probe's training (minibatch Adam on cross-entropy, see :func:`.probe.train_probe`).
    Subclasses set ``keep`` ("highest" or "lowest"), ``score_name``, and implement
    :meth:`_score`.
    """

    requires_labels = True
    keep: ClassVar[str] = "highest"
    score_name: ClassVar[str] = ""

    def __init__(
        self,
        n: int,
        *,
        epochs: int = 20,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size

    def _score(
        self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-row scores (N,) float64 and diagnostics (probe accuracy, timings)."""
        raise NotImplementedError

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        n_classes = self._class_count(labels)
        data = features.to_tensor()
        label_tensor = torch.as_tensor(labels, dtype=torch.int64, device=data.device)
        scores, info = self._score(data, label_tensor, n_classes, seed)
        if bool(torch.isnan(scores).any()):
            raise RuntimeError(f"{self.name} produced NaN scores")
        return scores, {"score": self.score_name, "keep": self.keep, **info}

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        scores = data.detach().cpu().numpy().astype(np.float64)
        indices = top_by_score(scores, n, self.keep, numpy_rng(seed, "score-ties"))
        info = {"scores": {"chosen": score_summary(scores[indices]), "pool": score_summary(scores)}}
        return MethodOutput(indices, None, info)


class UncertaintySelector(ProbeScoreSelector):
    """Uncertainty sampling on one probe trained for ``epochs`` (Coleman et al. 2020)."""

    score_function: ClassVar[Callable[[LinearProbe, torch.Tensor], torch.Tensor]]

    def _score(
        self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        began = time.perf_counter()
        probe = self._train_probe(features, labels, n_classes, seed)
        trained = time.perf_counter()
        scores = type(self).score_function(probe, features)
        info = {"probe": {"accuracy": probe_accuracy(probe, features, labels)}}
        timings = {"probe": trained - began, "scores": time.perf_counter() - trained}
        return scores, {**info, "timings": timings}


@register
class Entropy(UncertaintySelector):
    """The n rows of highest predictive entropy −Σ_c p_c log p_c under the probe."""

    name = "entropy"
    keep = "highest"
    score_name = "entropy"
    score_function = staticmethod(entropy_scores)


@register
class Margin(UncertaintySelector):
    """The n rows of smallest gap p_(1) − p_(2) between the probe's top two probabilities."""

    name = "margin"
    keep = "lowest"
    score_name = "margin"
    score_function = staticmethod(margin_scores)


@register
class LeastConfidence(UncertaintySelector):
    """The n rows of lowest top probability max_c p_c (highest 1 − max_c p_c)."""

    name = "least_confidence"
    keep = "highest"
    score_name = "least_confidence"
    score_function = staticmethod(least_confidence_scores)


class DataDietSelector(ProbeScoreSelector):
    """EL2N / GraNd averaged over ``repeats`` probes, each scored after ``score_epoch`` epochs.

    Options beyond the common ones: ``repeats`` (independently seeded probes, default 10 as
    in Paul et al. and DeepCore) and ``score_epoch`` (the epoch, 1..epochs, after which each
    probe is scored; None: after the last, ``epochs``). Training stops at ``score_epoch``.
    """

    score_function: ClassVar[Callable[[LinearProbe, torch.Tensor, torch.Tensor], torch.Tensor]]

    def __init__(
        self,
        n: int,
        *,
        repeats: int = 10,
        score_epoch: int | None = None,
        epochs: int = 5,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            stratify=stratify,
            random_state=random_state,
            device=device,
            progress=progress,
        )
        self.repeats = repeats
        self.score_epoch = score_epoch

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        super()._check_params(n_pool, n_cols)
        check_positive_int(self.repeats, "repeats")
        if self.score_epoch is not None:
            check_positive_int(self.score_epoch, "score_epoch")
            if self.score_epoch > self.epochs:
                raise ValueError(
                    f"score_epoch = {self.score_epoch} is after the last epoch (epochs = "
                    f"{self.epochs}); use 1 <= score_epoch <= epochs"
                )

    def _resolved_options(self) -> dict[str, Any]:
        """``score_epoch`` None: scored after the last epoch."""
        return {"score_epoch": self.epochs} if self.score_epoch is None else {}

    def _score(
        self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        epochs = self.epochs if self.score_epoch is None else self.score_epoch
        total = torch.zeros(features.shape[0], dtype=torch.float64, device=features.device)
        accuracies = []
        training = scoring = 0.0
        for repeat in range(self.repeats):
            began = time.perf_counter()
            probe = self._train_probe(
                features, labels, n_classes, seed, repeat=repeat, epochs=epochs
            )
            trained = time.perf_counter()
            total += type(self).score_function(probe, features, labels)
            accuracies.append(probe_accuracy(probe, features, labels))
            training += trained - began
            scoring += time.perf_counter() - trained
        info = {
            "probe": {
                "accuracy": float(np.mean(accuracies)),
                "accuracy_per_repeat": accuracies,
                "score_epoch": epochs,
            },
            "timings": {"probe": training, "scores": scoring},
        }
        return total / self.repeats, info


@register
class EL2N(DataDietSelector):
    """The n rows of highest mean error norm ‖p(x) − e_y‖₂ early in training (EL2N)."""

    name = "el2n"
    keep = "highest"
    score_name = "el2n"
    score_function = staticmethod(el2n_scores)


@register
class GraNd(DataDietSelector):
    """The n rows of highest mean loss-gradient norm ‖∇_(W,b) ℓ‖₂ early in training (GraNd)."""

    name = "grand"
    keep = "highest"
    score_name = "grand"
    score_function = staticmethod(grand_scores)


@register
class Forgetting(ProbeScoreSelector):
    """The n rows forgotten most often while the probe trains (Toneva et al. 2019).

    Correctness at each presentation comes from the training batches (before the step on
    that batch); counts are over ``epochs`` presentations; never-learned rows rank first.
    """

    name = "forgetting"
    keep = "highest"
    score_name = "forgetting_events"

    def _score(
        self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        began = time.perf_counter()
        counter = ForgettingCounter(features.shape[0], features.device)
        probe = self._train_probe(
            features,
            labels,
            n_classes,
            seed,
            on_epoch=lambda epoch, snapshot, correct: counter.update(correct),
        )
        trained = time.perf_counter()
        scores = counter.scores()
        info = {
            "probe": {"accuracy": probe_accuracy(probe, features, labels)},
            "never_learned": int((~counter.ever_correct).sum()),
            "timings": {"probe": trained - began, "scores": time.perf_counter() - trained},
        }
        return scores, info
