"""Uniform sampling without replacement: the baseline every method must beat."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inputs import FeatureMatrix
from ..seeding import numpy_rng
from .base import MethodOutput, Selector, register


@register
class Uniform(Selector):
    """n rows drawn uniformly without replacement; reads no feature values (O(N))."""

    name = "uniform"

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        return torch.arange(features.n_rows), {}

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        rng = numpy_rng(seed, "uniform")
        return MethodOutput(np.sort(rng.choice(data.numel(), size=n, replace=False)))
