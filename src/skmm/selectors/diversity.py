"""Contextual diversity (Agarwal et al., ECCV 2020): k-center greedy on predicted distributions.

The linear probe of :mod:`.probe` is trained on the pool; each row is represented by its
predicted class distribution p_i. As in DeepCore's ``ContextualDiversity`` (a
``kCenterGreedy`` whose metric is overloaded), the distance between two rows is the
symmetric KL divergence

    d(p, q) = ½ KL(p‖q) + ½ KL(q‖p) = ½ Σ_c (p_c − q_c)(log p_c − log q_c),

and rows are picked by farthest-first traversal: start from a uniformly drawn row, then
repeatedly add the row whose distance to its nearest picked row is largest. This greedily
minimizes the covering radius max_i min_{j∈S} d(p_i, p_j). A min-distance vector is updated
once per pick in row blocks: O(n·N·C) time, O(N·C) memory, never N × N.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inputs import FeatureMatrix
from ..progress import progress_bar
from ..seeding import numpy_rng
from .base import MethodOutput, register
from .gradient_matching import block_rows
from .probe import ProbeSelector


def symmetric_kl_to(log_probs: torch.Tensor, center: int) -> torch.Tensor:
    """d(p_i, p_center) = ½ Σ_c (p_ic − p_c)(log p_ic − log p_c) for every row i, in blocks.

    Each term is ≥ 0, so the sum has no cancellation; ``log_probs`` are log-softmax outputs.
    """
    n_rows, n_classes = log_probs.shape
    center_log = log_probs[center]
    center_prob = center_log.exp()
    out = torch.empty(n_rows, dtype=log_probs.dtype, device=log_probs.device)
    step = block_rows(n_rows, 3 * n_classes * log_probs.element_size())
    for start in range(0, n_rows, step):
        block = log_probs[start : start + step]
        out[start : start + step] = 0.5 * ((block.exp() - center_prob) * (block - center_log)).sum(
            dim=1
        )
    return out


def kcenter_symmetric_kl(
    log_probs: torch.Tensor, n: int, first: int, *, progress: bool | None = False
) -> tuple[np.ndarray, float]:
    """Farthest-first traversal of n rows under the symmetric KL, starting at row ``first``.

    Returns the picks in order and the covering radius max_i min_{j∈S} d(p_i, p_j)
    (0 when every row is picked). Ties go to the lowest row index.
    """
    n_rows = log_probs.shape[0]
    nearest = torch.full((n_rows,), torch.inf, dtype=log_probs.dtype, device=log_probs.device)
    picks = [first]
    with progress_bar(n, "contextual_diversity", progress, unit="pick") as bar:
        while True:
            nearest = torch.minimum(nearest, symmetric_kl_to(log_probs, picks[-1]))
            nearest[picks[-1]] = -torch.inf
            bar.update(1)
            if len(picks) == n:
                break
            picks.append(int(torch.argmax(nearest)))
    radius = float(nearest.max().clamp_min(0.0)) if n < n_rows else 0.0
    return np.asarray(picks, dtype=np.int64), radius


@register
class ContextualDiversity(ProbeSelector):
    """Contextual diversity (Agarwal et al. 2020) as in DeepCore: k-center greedy under the
    symmetric KL divergence between the probe's predicted class distributions.

    Options: the probe's ``epochs``, ``lr``, ``weight_decay``, ``batch_size``. The first
    center is drawn uniformly from the seed. Cost O(n·N·C) after training the probe.
    """

    name = "contextual_diversity"

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

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert labels is not None
        standardized, _, info = self._fit_probe(features, labels, seed)
        logits = standardized @ self.probe_.weight.T + self.probe_.bias
        return torch.log_softmax(logits, dim=1), info

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        first = int(numpy_rng(seed, "contextual_diversity").integers(data.shape[0]))
        indices, radius = kcenter_symmetric_kl(data, n, first, progress=self.progress)
        return MethodOutput(indices, None, {"first": first, "covering_radius": radius})
