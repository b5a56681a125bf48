"""A small, real selection model: a linear softmax head trained on frozen features.

Model-based baselines (uncertainty, EL2N, GraNd, forgetting, DeepFool, GLISTER, CRAIG,
GradMatch, ...) need predictions, losses or training dynamics. As DeepCore and similar
libraries do for linear probing, skmm trains a multinomial logistic regression on the
(standardized) features with minibatch Adam, deterministically from a seed, and exposes
per-epoch snapshots for methods that track training dynamics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inputs import (
    DEFAULT_CHUNK_BYTES,
    FeatureMatrix,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
)
from ..seeding import derive_seed
from .base import Selector


@dataclass
class LinearProbe:
    """logits(x) = W((x − μ)/σ) + b for a C-class linear head on standardized features."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """(x − μ)/σ in the probe's dtype and device."""
        return (features.to(self.weight) - self.mean) / self.scale

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) logits, computed in row blocks of about 256 MB of standardized features."""
        row_bytes = features.shape[1] * self.weight.element_size()
        step = max(1, DEFAULT_CHUNK_BYTES // max(1, row_bytes))
        parts = [
            self.standardize(features[i : i + step]) @ self.weight.T + self.bias
            for i in range(0, features.shape[0], step)
        ]
        return torch.cat(parts)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) softmax probabilities."""
        return torch.softmax(self.logits(features), dim=1)

    def copy(self) -> LinearProbe:
        return LinearProbe(
            self.weight.detach().clone(), self.bias.detach().clone(), self.mean, self.scale
        )


def train_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    seed: int,
    epochs: int = 20,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    on_epoch: Callable[[int, LinearProbe, torch.Tensor], None] | None = None,
) -> LinearProbe:
    """Train a linear softmax head by minibatch Adam on cross-entropy + weight decay.

    Features are standardized with the pool's mean and standard deviation. Minibatch order
    comes from a CPU generator seeded by ``seed``, so training is deterministic on a device.
    ``on_epoch(epoch, probe, batch_correct)`` is called after every epoch with a snapshot and
    a bool tensor (N,) saying which rows were classified correctly when last seen in a batch.
    """
    features = features.to(torch.float32) if features.dtype != torch.float64 else features
    device = features.device
    labels = labels.to(device=device, dtype=torch.int64)
    n_rows, n_cols = features.shape
    mean = features.mean(dim=0)
    scale = features.std(dim=0, unbiased=False).clamp_min(1e-12)
    generator = torch.Generator().manual_seed(derive_seed(seed, "probe", "init"))
    bound = 1.0 / math.sqrt(n_cols)
    weight = torch.rand(n_classes, n_cols, generator=generator, dtype=features.dtype) * 2 - 1
    weight = (weight * bound).to(device).requires_grad_(True)
    bias = torch.zeros(n_classes, dtype=features.dtype, device=device, requires_grad=True)
    probe = LinearProbe(weight, bias, mean, scale)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    order_generator = torch.Generator().manual_seed(derive_seed(seed, "probe", "order"))
    last_correct = torch.zeros(n_rows, dtype=torch.bool, device=device)
    for epoch in range(epochs):
        order = torch.randperm(n_rows, generator=order_generator).to(device)
        for start in range(0, n_rows, batch_size):
            rows = order[start : start + batch_size]
            logits = probe.standardize(features[rows]) @ weight.T + bias
            loss = torch.nn.functional.cross_entropy(logits, labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                last_correct[rows] = logits.argmax(dim=1) == labels[rows]
        if on_epoch is not None:
            on_epoch(epoch, probe.copy(), last_correct.clone())
    return LinearProbe(weight.detach(), bias.detach(), mean, scale)


def head_gradients(
    probe: LinearProbe, features: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-sample gradients of the cross-entropy w.r.t. the head (W, b), flattened: (N, C(d+1)).

    In closed form, ∇_W ℓ_i = (p_i − e_{y_i}) x̂_iᵀ and ∇_b ℓ_i = p_i − e_{y_i} with x̂_i the
    standardized features; callers should process rows in blocks when N·C·d is large.
    """
    standardized = probe.standardize(features)
    residual = torch.softmax(standardized @ probe.weight.T + probe.bias, dim=1)
    residual[torch.arange(features.shape[0], device=features.device), targets] -= 1.0
    outer = residual[:, :, None] * standardized[:, None, :]
    return torch.cat([outer.flatten(1), residual], dim=1)


class ProbeSelector(Selector):
    """Base of the methods that train the linear probe on the pool (labels required).

    Subclasses take the options ``epochs``, ``lr``, ``weight_decay`` and ``batch_size`` in
    ``__init__``. Training run ``repeat`` is seeded by ``(random_state, "probe", repeat)``, so
    every probe-based method trains the same probe for the same ``random_state`` and options.
    The probe is trained once on the whole pool, before any per-class split.
    """

    requires_labels = True
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        super()._check_params(n_pool, n_cols)
        check_positive_int(self.epochs, "epochs")
        check_positive_float(self.lr, "lr")
        check_nonnegative_float(self.weight_decay, "weight_decay")
        check_positive_int(self.batch_size, "batch_size")

    def _class_count(self, labels: np.ndarray | None) -> int:
        """Number of classes C; a probe needs labels with at least 2 classes."""
        n_classes = 0 if labels is None else int(labels.max()) + 1
        if n_classes < 2:
            raise ValueError(
                f"method {self.name!r} trains a classifier on the labels and needs at least "
                "2 classes; all rows have the same label"
            )
        return n_classes

    def _train_probe(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        n_classes: int,
        seed: int,
        *,
        repeat: int = 0,
        epochs: int | None = None,
        on_epoch: Callable[[int, LinearProbe, torch.Tensor], None] | None = None,
    ) -> LinearProbe:
        """Training run ``repeat`` of the probe with this selector's options."""
        return train_probe(
            features,
            targets,
            n_classes,
            seed=derive_seed(seed, "probe", repeat),
            epochs=self.epochs if epochs is None else epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            on_epoch=on_epoch,
        )

    def _fit_probe(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Train the probe on all rows and keep it as ``probe_``.

        Returns the standardized features x̂ (the head acts on them: logits = x̂ Wᵀ + b), the
        labels as a tensor, and diagnostics (training accuracy, timing).
        """
        n_classes = self._class_count(labels)
        began = time.perf_counter()
        matrix = features.to_tensor()
        targets = torch.as_tensor(labels, dtype=torch.int64, device=matrix.device)
        self.probe_ = self._train_probe(matrix, targets, n_classes, seed)
        standardized = self.probe_.standardize(matrix)
        logits = standardized @ self.probe_.weight.T + self.probe_.bias
        accuracy = (logits.argmax(dim=1) == targets).double().mean()
        info = {
            "probe": {"n_classes": n_classes, "train_accuracy": float(accuracy)},
            "timings": {"probe": time.perf_counter() - began},
        }
        return standardized, targets, info
