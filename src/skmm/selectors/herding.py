"""Herding: greedily match the pool mean in feature space (Welling 2009; Chen, Welling &
Smola 2010, "Super-samples from kernel herding"; the herding baseline of DeepCore and of
the SkMM paper).

Rule implemented (greedy mean matching, with the norm term): with S_t the first t picks and
μ the pool mean,

    p_t = argmin_{i∉S_t} ‖(t+1)μ − Σ_{j∈S_t} x_j − x_i‖²
        = argmax_{i∉S_t} ⟨x_i, w_t⟩ − ‖x_i‖²/2,   w_t = (t+1)μ − Σ_{j∈S_t} x_j,

so each pick brings the coreset mean as close to μ as one more row can. Kernel herding's
original rule argmax ⟨x_i, w_t⟩ drops the norm term; the two agree when all rows have the
same norm. The first pick is the row nearest the mean. Cost: one matrix–vector product per
pick, O(nNd) time, O(N) extra memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inputs import FeatureMatrix
from ..progress import progress_bar
from .base import MethodOutput, Selector, register
from .kcenter import by_column, centered_features, squared_norms


def herd(points: torch.Tensor, n: int, progress: bool | None = False) -> tuple[np.ndarray, float]:
    """Greedy mean matching: n distinct rows picked by argmax ⟨x_i, w_t⟩ − ‖x_i‖²/2.

    ``points`` should be roughly centered (float32 accuracy) and are best column-major
    (strides (1, N)), which makes each product stream through memory; row-major input is
    transposed once. Returns the picks in order and ‖mean_S − μ‖ of the final coreset.
    Ties go to the lowest row index.
    """
    n_rows = points.shape[0]
    columns = by_column(points)
    # −‖x_i‖²/2, set to −inf once row i is picked so that it never wins again.
    offsets = squared_norms(points).div_(-2.0)
    mean = points.sum(dim=0, dtype=torch.float64) / n_rows
    chosen_sum = torch.zeros_like(mean)
    order = np.empty(n, dtype=np.int64)
    bar = progress_bar(n, "herding", progress, unit="pick")
    for t in range(n):
        target = ((t + 1) * mean - chosen_sum).to(points.dtype)
        pick = int(torch.argmax(torch.addmv(offsets, columns.T, target)))
        order[t] = pick
        offsets[pick] = -float("inf")
        chosen_sum += columns[:, pick].to(torch.float64)
        bar.update(1)
    bar.close()
    discrepancy = float(torch.linalg.vector_norm(chosen_sum / n - mean))
    return order, discrepancy


@register
class Herding(Selector):
    """Herding: each pick brings the coreset mean closest to the pool mean (indices in pick
    order). No options beyond the common ones; deterministic (the seed is unused)."""

    name = "herding"

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return centered_features(features), {}

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        order, discrepancy = herd(data, n, self.progress)
        scale = float(squared_norms(data).to(torch.float64).mean().sqrt())
        info = {
            "mean_discrepancy": discrepancy,
            "relative_mean_discrepancy": discrepancy / scale if scale > 0 else 0.0,
        }
        return MethodOutput(order, None, info)
