"""Leverage-score sampling: truncated (top-k subspace) and ridge leverage scores.

- ``leverage``: l_i = ‖U_k[i]‖², U_k the top-k left singular vectors of X (N × d), so
  Σ_i l_i = k; rows are drawn without replacement with probability ∝ l_i, or the n largest
  are kept (Drineas, Mahoney & Muthukrishnan 2008, "Relative-error CUR matrix
  decompositions"; a baseline of the SkMM paper, arXiv 2407.06120).
- ``ridge_leverage``: l_i(λ) = x_iᵀ(XᵀX + λI)⁻¹x_i, so Σ_i l_i = d_λ = Σ_j σ_j²/(σ_j² + λ)
  (Alaoui & Mahoney 2015, "Fast randomized kernel methods with statistical guarantees";
  Cohen, Musco & Musco 2017, "Input sparsity time low-rank approximation via ridge leverage
  score sampling"), optionally computed on a JL sketch XΓ of the feature dimension.

Scores come from the d×d Gram matrix XᵀX accumulated in float64 over row blocks, or from a
randomized SVD (Halko, Martinsson & Tropp 2011) when d is large; never from an N×N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inputs import (
    DEFAULT_CHUNK_BYTES,
    FeatureMatrix,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from ..rounding import successive_sampling
from ..seeding import derive_seed, numpy_rng
from ..sketch import SKETCH_KINDS, discrete_normal, sketch_features
from ..spectrum import UNSKETCHED_MAX_COLUMNS
from .base import MethodOutput, Selector, register

SAMPLINGS = ("random", "top")
SVD_SOLVERS = ("auto", "exact", "randomized")
EXACT_SVD_MIN_COLUMNS = 1024
RANK_TOLERANCE = 1e-10
SCORE_FLOOR = 1e-12
OVERSAMPLES = 10
POWER_ITERATIONS = 2
RANDOMIZED_PASSES = 2 * POWER_ITERATIONS + 2
EIGENVALUES_REPORTED = 64


def _rows_per_block(width: int) -> int:
    """Rows of a float64 block of ``width`` columns that fit the default chunk budget."""
    return max(1, DEFAULT_CHUNK_BYTES // (8 * max(1, width)))


def gram(rows: torch.Tensor) -> torch.Tensor:
    """XᵀX (d × d) in float64, accumulated over row blocks."""
    width = rows.shape[1]
    total = torch.zeros(width, width, dtype=torch.float64, device=rows.device)
    step = _rows_per_block(width)
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].to(torch.float64)
        total += block.T @ block
    return total


def squared_norm_total(rows: torch.Tensor) -> float:
    """tr(XᵀX) = Σ_i ‖x_i‖² in float64, over row blocks."""
    step = _rows_per_block(rows.shape[1])
    return float(
        sum(
            rows[s : s + step].to(torch.float64).square().sum()
            for s in range(0, rows.shape[0], step)
        )
    )


def _times(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """X·M (N × p) in float64, over row blocks."""
    step = _rows_per_block(rows.shape[1] + matrix.shape[1])
    return torch.cat(
        [rows[s : s + step].to(torch.float64) @ matrix for s in range(0, rows.shape[0], step)]
    )


def _transpose_times(rows: torch.Tensor, tall: torch.Tensor) -> torch.Tensor:
    """Xᵀ·Y (d × p) in float64 for Y (N × p), over row blocks."""
    out = torch.zeros(rows.shape[1], tall.shape[1], dtype=torch.float64, device=rows.device)
    step = _rows_per_block(rows.shape[1] + tall.shape[1])
    for start in range(0, rows.shape[0], step):
        out += rows[start : start + step].to(torch.float64).T @ tall[start : start + step]
    return out


def intrinsic_rank(eigenvalues: np.ndarray, total: float, n_rows: int) -> int:
    """r̄ = min{t : total − Σ_{j≤t} λ_j ≤ total/N} (``len(eigenvalues)`` if never reached).

    ``eigenvalues`` are the top eigenvalues of XᵀX in descending order, ``total`` = tr(XᵀX);
    this is the intrinsic dimension of docs/design.md §1, computable from a truncated spectrum.
    """
    if total <= 0 or eigenvalues.size == 0:
        return 0
    tails = total - np.cumsum(eigenvalues)
    reached = np.flatnonzero(tails <= total / n_rows * (1 + 1e-12))
    return int(reached[0]) + 1 if reached.size else int(eigenvalues.size)


@dataclass(frozen=True)
class LeverageScores:
    """Truncated leverage scores l_i = ‖U_k[i]‖² and the spectrum they came from.

    ``eigenvalues``: the leading eigenvalues of XᵀX found (descending); ``intrinsic_rank``:
    r̄ estimated from them; ``k``: the subspace dimension used; ``svd``: "exact" or
    "randomized".
    """

    scores: np.ndarray
    k: int
    intrinsic_rank: int
    eigenvalues: np.ndarray
    svd: str


def _choose_k(k: int | None, budget: int, values: np.ndarray, total: float, n_rows: int) -> int:
    """k as requested, else min(budget, r̄); capped at the numerical rank."""
    rank = int((values > RANK_TOLERANCE * values[0]).sum()) if values.size and values[0] > 0 else 0
    wanted = k if k is not None else min(budget, intrinsic_rank(values, total, n_rows))
    return min(wanted, rank)


def leverage_scores(
    rows: torch.Tensor,
    k: int | None = None,
    *,
    budget: int | None = None,
    svd: str = "auto",
    seed: int = 0,
) -> LeverageScores:
    """l_i = ‖U_k[i]‖² = Σ_{j≤k} (x_iᵀv_j)²/σ_j² for the top-k singular triplets of X.

    U_k is the orthonormal basis (Householder QR) of XV_k, V_k the top-k eigenvectors of
    XᵀX, so the scores are accurate to O(ε·σ_1/σ_k), not O(ε·σ_1²/σ_k²) as dividing by the
    Gram eigenvalues would give. ``k=None`` uses k = min(budget, r̄), r̄ the intrinsic
    dimension of the spectrum (the least t with Σ_{j>t} σ_j² ≤ Σ_j σ_j²/N); k never exceeds
    the numerical rank (σ_j² > 1e-10·σ_1²).

    ``svd``: "exact" eigen-decomposes the d×d Gram matrix (O(N·d² + d³)); "randomized" runs
    a range finder of size ℓ = k + 10 (or budget + 10) with 2 power iterations (6 passes over
    X, O(N·d·ℓ)); "auto" picks the randomized one when d > 1024 and 6ℓ < d, or d > 16384.
    """
    n_rows, width = rows.shape
    if budget is None:
        budget = min(n_rows, width)
    subspace = (k if k is not None else budget) + OVERSAMPLES
    solver = svd
    if solver == "auto":
        cheaper = width > EXACT_SVD_MIN_COLUMNS and RANDOMIZED_PASSES * subspace < width
        solver = "randomized" if cheaper or width > UNSKETCHED_MAX_COLUMNS else "exact"
    if solver == "exact":
        values, vectors = torch.linalg.eigh(gram(rows))
        order = torch.argsort(values, descending=True)
        values, vectors = values[order].clamp_min(0.0), vectors[:, order]
        spectrum = values.cpu().numpy()
        total = float(spectrum.sum())
        used = _choose_k(k, budget, spectrum, total, n_rows)
        coordinates = torch.linalg.qr(_times(rows, vectors[:, :used])).Q
    else:
        total = squared_norm_total(rows)
        basis, singular = _randomized_range(rows, subspace, seed)
        spectrum = singular.square().cpu().numpy()
        used = _choose_k(k, budget, spectrum, total, n_rows)
        coordinates = basis[:, :used]
    scores = coordinates.square().sum(dim=1).cpu().numpy()
    rank_bar = intrinsic_rank(spectrum, total, n_rows)
    return LeverageScores(scores, used, rank_bar, spectrum, solver)


def _randomized_range(
    rows: torch.Tensor, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """U (N × ℓ) and σ (ℓ) of a randomized SVD of X, ℓ = min(size, N, d).

    Range finder with a Gaussian test matrix and power iterations, re-orthonormalized by QR
    after every product (Halko, Martinsson & Tropp 2011, Algorithm 4.4).
    """
    n_rows, width = rows.shape
    size = max(1, min(size, n_rows, width))
    generator = torch.Generator().manual_seed(derive_seed(seed, "range-finder"))
    test = discrete_normal(generator, (width, size)).to(torch.float64)
    basis = torch.linalg.qr(_times(rows, test.to(rows.device))).Q
    for _ in range(POWER_ITERATIONS):
        back = torch.linalg.qr(_transpose_times(rows, basis)).Q
        basis = torch.linalg.qr(_times(rows, back)).Q
    small = _transpose_times(rows, basis).T
    left, singular, _ = torch.linalg.svd(small, full_matrices=False)
    return basis @ left, singular


def ridge_leverage_scores(rows: torch.Tensor, ridge: float) -> np.ndarray:
    """l_i(λ) = x_iᵀ(XᵀX + λI)⁻¹x_i = ‖L⁻¹x_i‖², L the Cholesky factor of XᵀX + λI (float64).

    Raises ValueError when XᵀX + λI is not numerically positive definite (λ too small).
    """
    width = rows.shape[1]
    regularized = gram(rows)
    regularized.diagonal().add_(ridge)
    factor, failure = torch.linalg.cholesky_ex(regularized)
    if int(failure) != 0:
        raise ValueError(
            f"ridge = {ridge:g} is too small: XᵀX + ridge·I is not numerically positive "
            "definite; use a larger ridge (default: tr(XᵀX)/n)"
        )
    scores = torch.empty(rows.shape[0], dtype=torch.float64, device=rows.device)
    step = _rows_per_block(2 * width)
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].to(torch.float64).T
        whitened = torch.linalg.solve_triangular(factor, block, upper=False)
        scores[start : start + step] = whitened.square().sum(dim=0)
    return scores.cpu().numpy()


def draw_by_scores(
    scores: np.ndarray, n: int, sampling: str, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """n distinct rows by their scores, and how many of them were filled in uniformly.

    ``"random"``: successive sampling without replacement with P ∝ score among the rows not
    yet drawn (:func:`skmm.rounding.successive_sampling`), in draw order; ``"top"``: the n
    largest scores, ties to the lower index. When at most n rows have a positive score, all
    of them are taken (largest first) and the rest are drawn uniformly from the zero-score
    rows. Scores below 1e-12 times the largest count as zero (round-off).
    """
    scores = np.where(scores > SCORE_FLOOR * scores.max(initial=0.0), scores, 0.0)
    positive = np.flatnonzero(scores > 0)
    if positive.size <= n:
        ranked = positive[np.argsort(-scores[positive], kind="stable")]
        zero = np.setdiff1d(np.arange(scores.size), positive, assume_unique=True)
        filled = rng.choice(zero, size=n - positive.size, replace=False)
        return np.concatenate([ranked, filled]).astype(np.int64), int(filled.size)
    if sampling == "top":
        return np.argsort(-scores, kind="stable")[:n].astype(np.int64), 0
    return successive_sampling(scores, n, rng), 0


def _draw_info(n: int, filled: int) -> dict[str, Any]:
    """Diagnostics of a draw: how many rows were filled in uniformly (with a note)."""
    info: dict[str, Any] = {"uniform_fill": filled}
    if filled:
        info["note"] = (
            f"only {n - filled} rows have a positive score, fewer than n = {n}; "
            f"{filled} rows were drawn uniformly from the rest"
        )
    return info


@register
class Leverage(Selector):
    """Truncated leverage-score sampling on the top-k left singular subspace of the features.

    Options: ``k`` (subspace dimension; None: min(n, r̄), r̄ the intrinsic dimension of the
    spectrum), ``sampling`` ("random": without replacement ∝ l_i; "top": the n largest),
    ``svd`` ("auto", "exact" from the d×d Gram matrix, "randomized").
    """

    name = "leverage"

    def __init__(
        self,
        n: int,
        *,
        k: int | None = None,
        sampling: str = "random",
        svd: str = "auto",
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.k = k
        self.sampling = sampling
        self.svd = svd

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        if self.k is not None:
            check_positive_int(self.k, "k")
        check_choice(self.sampling, "sampling", SAMPLINGS)
        check_choice(self.svd, "svd", SVD_SOLVERS)
        if self.svd == "exact" and n_cols > UNSKETCHED_MAX_COLUMNS:
            gib = n_cols * n_cols * 8 / 2**30
            raise ValueError(
                f"svd='exact' with d = {n_cols} columns needs a d×d float64 Gram matrix "
                f"({gib:.1f} GiB); use svd='randomized'"
            )

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        result = leverage_scores(data, self.k, budget=n, svd=self.svd, seed=seed)
        indices, filled = draw_by_scores(
            result.scores, n, self.sampling, numpy_rng(seed, "leverage")
        )
        info = {
            "k": result.k,
            "svd": result.svd,
            "intrinsic_dimension": result.intrinsic_rank,
            "eigenvalues": (result.eigenvalues[:EIGENVALUES_REPORTED] / data.shape[0]).tolist(),
            **_draw_info(n, filled),
        }
        return MethodOutput(indices, None, info)


@register
class RidgeLeverage(Selector):
    """Ridge leverage-score sampling: l_i(λ) = x_iᵀ(XᵀX + λI)⁻¹x_i.

    Options: ``ridge`` (λ; None: tr(XᵀX)/n, so that Σ_i l_i(λ) ≤ n), ``sampling`` ("random"
    or "top"), ``sketched`` (compute the scores on XΓ, Γ a JL map to ``sketch_dim`` columns
    of kind ``sketch_kind``, when d > sketch_dim; exact otherwise).
    """

    name = "ridge_leverage"

    def __init__(
        self,
        n: int,
        *,
        ridge: float | None = None,
        sampling: str = "random",
        sketched: bool = False,
        sketch_dim: int = 512,
        sketch_kind: str = "gaussian",
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.ridge = ridge
        self.sampling = sampling
        self.sketched = sketched
        self.sketch_dim = sketch_dim
        self.sketch_kind = sketch_kind

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        if self.ridge is not None:
            check_positive_float(self.ridge, "ridge")
        check_choice(self.sampling, "sampling", SAMPLINGS)
        if not isinstance(self.sketched, (bool, np.bool_)):
            raise TypeError(f"sketched must be True or False, got {self.sketched!r}")
        check_positive_int(self.sketch_dim, "sketch_dim")
        check_choice(self.sketch_kind, "sketch_kind", SKETCH_KINDS)
        width = min(n_cols, self.sketch_dim) if self.sketched else n_cols
        if width > UNSKETCHED_MAX_COLUMNS:
            gib = width * width * 8 / 2**30
            advice = "a smaller sketch_dim" if self.sketched else "sketched=True"
            raise ValueError(
                f"ridge leverage on {width} columns needs a {width}×{width} float64 Gram "
                f"matrix ({gib:.1f} GiB); use {advice}"
            )

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        """The features, or their (N, sketch_dim) sketch when ``sketched``."""
        width = min(n_cols, self.sketch_dim) if self.sketched else n_cols
        return n_pool * width * itemsize

    def _memory_advice(self) -> str:
        if self.sketched:
            return "use a smaller sketch_dim (the sketch of the whole pool is held in memory)"
        return "use sketched=True, which streams the features through a sketch"

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if not self.sketched or features.n_cols <= self.sketch_dim:
            reason = "sketched=False" if not self.sketched else "d <= sketch_dim"
            return features.to_tensor(), {"sketch": {"kind": "none", "reason": reason}}
        sketch_seed = derive_seed(seed, "sketch")
        sketched = sketch_features(
            features, self.sketch_dim, self.sketch_kind, sketch_seed, progress=self.progress
        )
        info = {
            "sketch": {"kind": self.sketch_kind, "sketch_dim": self.sketch_dim, "seed": sketch_seed}
        }
        return sketched, info

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        trace = squared_norm_total(data)
        ridge = float(self.ridge) if self.ridge is not None else trace / n
        if trace > 0:
            scores = ridge_leverage_scores(data, ridge)
        else:
            scores = np.zeros(data.shape[0])
        indices, filled = draw_by_scores(scores, n, self.sampling, numpy_rng(seed, "leverage"))
        info = {"ridge": ridge, "effective_dimension": float(scores.sum())}
        return MethodOutput(indices, None, {**info, **_draw_info(n, filled)})
