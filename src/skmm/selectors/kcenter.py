"""k-center greedy: farthest-point traversal in Euclidean distance (Gonzalez 1985).

Minimizes, greedily, the covering radius max_i min_{j∈S} ‖x_i − x_j‖: start from one center,
then repeatedly add the row farthest from its nearest center. This is the "core-set"
approach of Sener & Savarese (ICLR 2018) and DeepCore's ``kCenterGreedy``; the greedy is a
2-approximation of the optimal radius.

Cost: one distance pass (a matrix–vector product over the centered, column-major rows) per
center, O(nNd) time and O(N) extra memory beyond the centered copy; no N×N matrix. Passes
skip rows that the triangle inequality proves cannot move to the new center c: a row x at
distance ρ from its nearest center a keeps ρ when ‖c − a‖ ≥ 2ρ. Once there are more centers
than clusters this skips most of the work on clustered data; on isotropic high-dimensional
data nothing is skipped and each pass reads every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..inputs import DEFAULT_CHUNK_BYTES, FeatureMatrix, check_choice
from ..progress import progress_bar
from ..seeding import numpy_rng
from .base import MethodOutput, Selector, register

KCENTER_INITS = ("random", "mean")
FULL_PASS_FRACTION = 1 / 32
MAX_TEST_GAP = 8
PRUNE_SLACK = 1e-3


def centered_features(features: FeatureMatrix) -> torch.Tensor:
    """The rows minus the pool mean, x_i − μ, column-major: (N, d) with strides (1, N).

    Two chunked passes. Distances are unchanged; centering keeps ‖y‖² + ‖c‖² − 2⟨y, c⟩
    accurate in float32, and the column-major layout makes the products of all rows with
    one vector stream through memory (see :func:`by_column`).
    """
    total = torch.zeros(features.n_cols, dtype=torch.float64, device=features.device)
    for _, rows in features.chunks():
        total += rows.sum(dim=0, dtype=torch.float64)
    mean = total / features.n_rows
    out = torch.empty(
        features.n_cols, features.n_rows, dtype=features.compute_dtype, device=features.device
    ).T
    for start, rows in features.chunks():
        out[start : start + rows.shape[0]] = (rows.to(torch.float64) - mean).to(out.dtype)
    return out


def squared_norms(points: torch.Tensor) -> torch.Tensor:
    """‖x_i‖² for every row, in the points' dtype, computed in row blocks of either layout."""
    step = max(1, DEFAULT_CHUNK_BYTES // max(1, points.shape[1] * points.element_size()))
    if points.stride(0) == 1 and points.shape[1] > 1:
        by_column = points.T
        return torch.cat(
            [
                by_column[:, i : i + step].square().sum(dim=0)
                for i in range(0, points.shape[0], step)
            ]
        )
    return torch.cat(
        [points[i : i + step].square().sum(dim=1) for i in range(0, points.shape[0], step)]
    )


def by_column(points: torch.Tensor) -> torch.Tensor:
    """The (d, N) row-major transpose of ``points``: a view when they are column-major.

    Products ⟨x_i, c⟩ for all i then stream through memory (about twice as fast on CPU as
    the row-major product).
    """
    return points.T if points.stride(0) == 1 else points.T.contiguous()


def squared_distances_to(
    columns: torch.Tensor, norms: torch.Tensor, center: torch.Tensor, rows: torch.Tensor | None
) -> torch.Tensor:
    """‖x_i − c‖² = ‖x_i‖² + ‖c‖² − 2⟨x_i, c⟩ for ``rows`` (None: all rows).

    ``columns`` is the (d, N) transpose of the points (see :func:`by_column`). Rounding can
    leave values slightly below 0 for near-duplicates; callers clamp where it matters.
    """
    center_norm = center.square().sum()
    if rows is None:
        return torch.addmv(norms, columns.T, center, alpha=-2.0).add_(center_norm)
    step = max(1, DEFAULT_CHUNK_BYTES // max(1, columns.shape[0] * columns.element_size()))
    parts = []
    for i in range(0, rows.numel(), step):
        block = rows[i : i + step]
        parts.append(
            torch.addmv(norms[block], columns.index_select(1, block).T, center, alpha=-2.0)
        )
    return torch.cat(parts).add_(center_norm)


def farthest_point_traversal(
    points: torch.Tensor, n: int, first: int, progress: bool | None = False
) -> tuple[np.ndarray, torch.Tensor, int]:
    """Gonzalez's greedy: c_1 = ``first``, c_{t+1} = argmax_i min_{s≤t} ‖x_i − c_s‖².

    Returns the centers in pick order, each row's squared distance to its nearest center
    (−inf for the centers themselves), and how many row distances were computed in all.
    Ties go to the lowest row index. A row x with nearest center a at squared distance ρ²
    is skipped when (‖c − a‖ − slack)²/4 ≥ ρ² (then ‖x − c‖ ≥ ρ); when more than
    FULL_PASS_FRACTION of the rows remain, every distance is computed instead, and the test
    is tried again after 1, 2, 4 then every MAX_TEST_GAP picks (cheap where it never helps).
    """
    n_rows = points.shape[0]
    columns = by_column(points)
    norms = squared_norms(points)
    slack = PRUNE_SLACK * float(norms.max().sqrt())
    nearest = torch.full((n_rows,), float("inf"), dtype=points.dtype, device=points.device)
    assigned = torch.zeros(n_rows, dtype=torch.int64, device=points.device)
    centers = torch.empty(n, points.shape[1], dtype=points.dtype, device=points.device)
    center_norms = torch.empty(n, dtype=points.dtype, device=points.device)
    order = np.empty(n, dtype=np.int64)
    evaluated = 0
    next_test, test_gap = 1, 1
    pick = first
    bar = progress_bar(n, "k-center", progress, unit="pick")
    for k in range(n):
        order[k] = pick
        center = columns[:, pick].contiguous()
        centers[k] = center
        center_norms[k] = norms[pick]
        rows = None
        if k == next_test:
            between = squared_distances_to(centers[:k].T, center_norms[:k], center, None)
            keep_within = (between.clamp_min_(0.0).sqrt_() - slack).clamp_min_(0.0)
            keep_within = keep_within.square_().div_(4.0)
            moved = (keep_within[assigned] < nearest).nonzero().squeeze(1)
            if moved.numel() <= FULL_PASS_FRACTION * n_rows:
                rows, test_gap = moved, 1
            else:
                test_gap = min(2 * test_gap, MAX_TEST_GAP)
            next_test = k + test_gap
        if rows is None:
            distances = squared_distances_to(columns, norms, center, None)
            closer = distances < nearest
            nearest = torch.minimum(nearest, distances)
            assigned.masked_fill_(closer, k)
            evaluated += n_rows
        elif rows.numel() > 0:
            distances = squared_distances_to(columns, norms, center, rows)
            closer = distances < nearest[rows]
            nearest[rows[closer]] = distances[closer]
            assigned[rows[closer]] = k
            evaluated += rows.numel()
        nearest[pick] = -float("inf")
        if k + 1 < n:
            pick = int(torch.argmax(nearest))
        bar.update(1)
    bar.close()
    return order, nearest, evaluated


@register
class KCenterGreedy(Selector):
    """k-center greedy (Sener & Savarese 2018): farthest-point traversal in Euclidean distance.

    ``init``: the first center, ``"random"`` (a row drawn with the seed) or ``"mean"`` (the
    row closest to the pool mean). Indices come in pick order.
    """

    name = "kcenter"

    def __init__(
        self,
        n: int,
        *,
        init: str = "random",
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.init = init

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_choice(self.init, "init", KCENTER_INITS)

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        return centered_features(features), {}

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        n_rows = data.shape[0]
        if self.init == "random":
            first = int(numpy_rng(seed, "kcenter", "init").integers(n_rows))
        else:
            mean = (data.sum(dim=0, dtype=torch.float64) / n_rows).to(data.dtype)
            distances = squared_distances_to(by_column(data), squared_norms(data), mean, None)
            first = int(torch.argmin(distances))
        order, nearest, evaluated = farthest_point_traversal(data, n, first, self.progress)
        radius = float(nearest.max().clamp_min(0.0).sqrt())
        info = {
            "radius": radius,
            "first_center": first,
            "distance_evaluations": evaluated,
            "pruned_fraction": 1.0 - evaluated / (n * n_rows),
        }
        return MethodOutput(order, None, info)
