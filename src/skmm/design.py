"""Matrix moment matching: greedy optimal design on the top sketched directions, whitened.

With Σ̃ = VΛVᵀ and its top-k directions V_k, whitened coordinates z_i = Λ_k^{-1/2} V_kᵀ g̃_i
make the pool's second moment the identity, (1/N) Σ_i z_i z_iᵀ = I. A coreset S weighted
uniformly has moment M_S = (1/n) Σ_{i∈S} z_i z_iᵀ, whose eigenvalues γ_1..γ_k are the
generalized eigenvalues of (Σ̃_S, Σ̃) on that subspace: the matrix form of the seed's γ_j, with
c_S = 1/γ_min. Matching the full matrix (not only its diagonal in V) means a coreset that
misses a group of rows spanning a direction has a singular M_S there, however the sketch mixes
groups into eigenvectors. Greedy selection, one row at a time, maximizes with M = M_S + εI:

- ``"logdet"``: Σ_j log γ_j = log det M (D-optimal design). The gain of row i is
  log(1 + z_iᵀ M⁻¹ z_i / n); log det is submodular, so gains only shrink and lazy evaluation
  (Minoux) returns exactly the plain greedy's picks at a fraction of the cost.
- ``"aopt"``: −Σ_j 1/γ_j = −tr M⁻¹ = −tr(Σ̃ Σ̃_S⁻¹) (A-optimal design, the variance term of
  the paper's bound). The gain of row i is z_iᵀ M⁻² z_i / (n + z_iᵀ M⁻¹ z_i). Plain greedy
  updates all N gains, O(N·k) per pick; past N·n·k = 2·10⁸ the lazy variant is used.

ε (``ridge``) keeps the empty coreset's value finite; a small ε makes every direction worth
far more before it is covered than after, so the first picks cover the directions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .progress import progress_bar
from .spectrum import Spectrum, intrinsic_dimension

CRITERIA = ("logdet", "aopt")
MIN_CLEAN_GAP = 10.0
PLAIN_GREEDY_LIMIT = 2 * 10**8
REFRESH_DROP = 1e-4


@dataclass(frozen=True)
class DirectionChoice:
    """How many top directions are matched, by which rule, and the eigengap ratio λ_k/λ_{k+1}
    the rule saw (None when k was given or the rank is 1)."""

    k: int
    rule: str
    gap: float | None


def choose_directions(
    spectrum: Spectrum, requested: int | str, sketch_dim: int | None, budget: int | None = None
) -> DirectionChoice:
    """The number k of top directions to match.

    An int is used as given (capped at the effective rank). ``"gap"``: the k with the largest
    ratio λ_k/λ_{k+1}, among k ≤ m/4 for a sketch of dimension m (a sketch separates k
    directions reliably when m ≥ 4k; ``sketch_dim=None`` for unsketched features). ``"auto"``:
    that k when the gap is clean (ratio ≥ 10), else the intrinsic dimension
    r̄ = min{t : Σ_{j>t} λ_j ≤ Σλ/N}, capped at m/2 and at n/2 for a budget of n rows (a
    design needs rows to spare per direction, and the greedy's cost grows as k²).
    """
    values = spectrum.eigenvalues.cpu().numpy()
    rank = max(1, spectrum.effective_rank())
    if not isinstance(requested, str):
        return DirectionChoice(min(int(requested), rank), "given", None)
    if rank == 1:
        return DirectionChoice(1, "rank", None)
    cap = rank if sketch_dim is None else max(1, min(rank, sketch_dim // 2))
    if budget is not None:
        cap = max(1, min(cap, budget // 2))
    limit = max(1, min(rank - 1, rank if sketch_dim is None else sketch_dim // 4))
    floor = values[0] * 1e-15
    logs = np.log(np.maximum(values[: limit + 1], floor))
    gaps = logs[:limit] - logs[1 : limit + 1]
    k_gap = int(np.argmax(gaps)) + 1
    ratio = float(np.exp(gaps[k_gap - 1]))
    if requested == "gap" or ratio >= MIN_CLEAN_GAP:
        return DirectionChoice(k_gap, "eigengap", ratio)
    r_bar = intrinsic_dimension(values, spectrum.n_rows)
    return DirectionChoice(max(1, min(r_bar, cap)), "intrinsic", ratio)


def whiten(rows: torch.Tensor, spectrum: Spectrum, k: int) -> torch.Tensor:
    """z_i = Λ_k^{-1/2} V_kᵀ g̃_i for every row, float64: (N, k)."""
    basis = spectrum.eigenvectors[:, :k].to(rows.device)
    scale = spectrum.eigenvalues[:k].to(rows.device).rsqrt()
    return (rows.to(torch.float64) @ basis) * scale


@dataclass
class GreedyResult:
    """Picks in order, the gain of each, and how many gains were evaluated."""

    order: np.ndarray
    gains: np.ndarray
    evaluations: int


def greedy_design(
    whitened: torch.Tensor,
    n: int,
    criterion: str = "aopt",
    ridge: float = 1e-6,
    *,
    lazy: bool | None = None,
    progress: bool | None = False,
) -> GreedyResult:
    """n distinct rows chosen greedily for ``criterion`` on M = (1/n)Σ_S z zᵀ + εI.

    ``lazy=None`` picks lazy evaluation for "logdet" (exact: its gains only shrink) and, for
    "aopt", plain greedy while N·n·k ≤ 2·10⁸ and lazy beyond (then a heuristic: A-optimal
    gains can grow, rarely, so a pick may differ from plain greedy's). Ties go to the lowest
    row index, so the result is deterministic.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    n_rows, k = whitened.shape
    if lazy is None:
        lazy = criterion == "logdet" or n_rows * n * k > PLAIN_GREEDY_LIMIT
    if not lazy and criterion == "aopt":
        return _greedy_aopt(whitened, n, ridge, progress)
    gain = _logdet_gain if criterion == "logdet" else _aopt_gain
    return _lazy_greedy(whitened.cpu().numpy(), n, ridge, gain, criterion, progress)


def _logdet_gain(block: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
    """log det(M + zzᵀ/n) − log det M = log(1 + zᵀM⁻¹z/n) for each row z of ``block``."""
    return np.log1p(((block @ inverse) * block).sum(axis=1) / n)


def _aopt_gain(block: np.ndarray, inverse: np.ndarray, n: int) -> np.ndarray:
    """tr M⁻¹ − tr (M + zzᵀ/n)⁻¹ = ‖M⁻¹z‖²/(n + zᵀM⁻¹z) for each row z of ``block``."""
    image = block @ inverse
    return (image * image).sum(axis=1) / (n + (image * block).sum(axis=1))


def _lazy_greedy(
    points: np.ndarray,
    n: int,
    ridge: float,
    gain: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
    criterion: str,
    progress: bool | None,
) -> GreedyResult:
    """Lazy greedy with vectorized refreshes (Minoux).

    Stale gains serve as upper bounds. Each step refreshes the best bound, then every stale
    row whose bound reaches the best fresh gain, until none is left; the winner is the
    lowest-index row with the best gain, as in plain greedy.
    """
    n_rows, k = points.shape
    inverse = np.eye(k) / ridge
    bounds = gain(points, inverse, n)
    fresh_at = np.zeros(n_rows, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    evaluations = n_rows
    with progress_bar(n, f"greedy {criterion}", progress, unit="pick") as bar:
        for step in range(n):
            best = int(np.argmax(bounds))
            threshold = bounds[best] if fresh_at[best] == step else -math.inf
            while True:
                over = np.flatnonzero(bounds >= threshold) if threshold > -math.inf else [best]
                stale = np.asarray(over)[fresh_at[over] != step]
                if stale.size == 0:
                    break
                evaluations += stale.size
                bounds[stale] = gain(points[stale], inverse, n)
                fresh_at[stale] = step
                threshold = max(threshold, float(bounds[stale].max()))
            row = int(np.flatnonzero(bounds == threshold)[0])
            order[step], gains[step] = row, threshold
            bounds[row] = -math.inf
            point = points[row]
            image = inverse @ point
            inverse -= np.outer(image, image) / (n + float(point @ image))
            bar.update(1)
    return GreedyResult(order, gains, evaluations)


def _greedy_aopt(points: torch.Tensor, n: int, ridge: float, progress: bool | None) -> GreedyResult:
    """Plain greedy for −tr M⁻¹, keeping q_i = zᵢᵀM⁻¹zᵢ and w_i = ‖M⁻¹zᵢ‖² for all rows.

    The rank-one updates start from M⁻¹ = I/ε, so w_i starts near ‖zᵢ‖²/ε² and shrinks by many
    orders of magnitude as the directions get covered; updating it in place would leave an
    absolute error of about ε_mach/ε² (1e-4 for ε = 1e-6), enough to reorder close gains. So
    q and w are recomputed from M⁻¹ whenever max w has fallen by REFRESH_DROP since the last
    recomputation (about once per selection).
    """
    n_rows, k = points.shape
    inverse = torch.eye(k, dtype=torch.float64, device=points.device) / ridge
    images = points / ridge
    quadratic = (points * images).sum(dim=1)
    squared = (images * images).sum(dim=1)
    refreshed_at = float(squared.max())
    available = torch.ones(n_rows, dtype=torch.bool, device=points.device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    with progress_bar(n, "greedy A-optimal", progress, unit="pick") as bar:
        for step in range(n):
            gain = torch.where(available, squared / (n + quadratic), -torch.inf)
            row = int(torch.argmax(gain))
            order[step], gains[step] = row, float(gain[row])
            available[row] = False
            image = inverse @ points[row]
            denominator = n + float(points[row] @ image)
            inverse -= torch.outer(image, image) / denominator
            along = points @ image
            shift = images @ image
            images -= torch.outer(along, image) / denominator
            quadratic -= along.square() / denominator
            squared += (along.square() * float(image @ image) / denominator - 2 * along * shift) / (
                denominator
            )
            if float(squared.max()) < REFRESH_DROP * refreshed_at:
                images = points @ inverse
                quadratic = (points * images).sum(dim=1)
                squared = (images * images).sum(dim=1)
                refreshed_at = float(squared.max())
            bar.update(1)
    return GreedyResult(order, gains, n * n_rows)
