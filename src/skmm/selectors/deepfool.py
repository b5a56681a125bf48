"""DeepFool margins: pick the examples closest to the probe's decision boundary.

Ducoffe & Precioso (2018, "Adversarial active learning") query the examples whose smallest
adversarial perturbation is shortest, measured with DeepFool (Moosavi-Dezfooli et al. 2016);
DeepCore (Guo, Zhao & Bai 2022) uses it as a coreset baseline. For the linear probe
f(x̂) = W x̂ + b DeepFool is exact in one step: the region predicted ŷ is the polyhedron
∩_k {f_ŷ ≥ f_k}, and the distance of x̂ to its complement is

    d(x̂) = min_{k ≠ ŷ} (f_ŷ(x̂) − f_k(x̂)) / ‖w_ŷ − w_k‖₂,

measured in the probe's standardized feature space. The n rows of smallest d are kept.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .base import register
from .probe import LinearProbe
from .scores import ProbeScoreSelector, per_row_scores, probe_accuracy


def deepfool_distances(probe: LinearProbe, features: torch.Tensor) -> torch.Tensor:
    """d(x̂) = min_{k≠ŷ} (f_ŷ − f_k)/‖w_ŷ − w_k‖ for each row (standardized space): (N,) float64.

    A class k whose weights equal w_ŷ is unreachable (infinite distance) unless it ties with
    ŷ everywhere (distance 0).
    """
    weight = probe.weight.to(torch.float64)
    gaps_between_weights = torch.cdist(weight, weight, compute_mode="donot_use_mm_for_euclid_dist")

    def distance(standardized: torch.Tensor, logits: torch.Tensor, labels: object) -> torch.Tensor:
        predicted = logits.argmax(dim=1)
        gaps = logits.gather(1, predicted[:, None]) - logits
        norms = gaps_between_weights[predicted]
        unreachable = torch.where(gaps > 0, math.inf, 0.0)
        ratios = torch.where(norms > 0, gaps / norms.clamp_min(1e-300), unreachable)
        ratios.scatter_(1, predicted[:, None], math.inf)
        return ratios.amin(dim=1)

    return per_row_scores(probe, features, None, distance)


@register
class DeepFool(ProbeScoreSelector):
    """The n rows with the smallest DeepFool perturbation to change the probe's prediction."""

    name = "deepfool"
    keep = "lowest"
    score_name = "deepfool_distance"

    def _score(
        self, features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        began = time.perf_counter()
        probe = self._train_probe(features, labels, n_classes, seed)
        trained = time.perf_counter()
        scores = deepfool_distances(probe, features)
        info = {
            "probe": {"accuracy": probe_accuracy(probe, features, labels)},
            "timings": {"probe": trained - began, "scores": time.perf_counter() - trained},
        }
        return scores, info
