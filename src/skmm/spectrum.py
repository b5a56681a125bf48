"""The sketched covariance Σ̃ = G̃ᵀG̃/N, its eigenpairs and the intrinsic dimension, in float64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .rows import PoolRows

UNSKETCHED_MAX_COLUMNS = 16384
"""Widest matrix whose r×r float64 covariance is formed without sketching (2 GiB)."""


@dataclass(frozen=True)
class Spectrum:
    """Eigenpairs of Σ̃ = G̃ᵀG̃/N, or of the centered Σ̃ − μμᵀ (μ = the mean row, ``mean``;
    None when uncentered), eigenvalues in descending order (negatives clipped to 0).

    With ``blocks`` = K, every row holds K blocks g̃_i1..g̃_iK (a K-output Jacobian, sketched
    block by block): Σ̃ = (1/N) Σ_i Σ_k g̃_ik g̃_ikᵀ, centered about each block's own mean μ_k
    (``mean`` is then (K, m)), so Σ̃ − Σ_k μ_k μ_kᵀ."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    n_rows: int
    mean: torch.Tensor | None = None
    blocks: int = 1

    @property
    def trace(self) -> float:
        return float(self.eigenvalues.sum())

    def intrinsic_dimension(self) -> int:
        """r̄ = min{t : tr(Σ − ⟨Σ⟩_t) ≤ tr(Σ)/N}, i.e. the tail beyond t holds ≤ 1/N of the trace."""
        return intrinsic_dimension(self.eigenvalues.cpu().numpy(), self.n_rows)

    def effective_rank(self, tolerance: float = 1e-10) -> int:
        """Number of eigenvalues above ``tolerance`` times the largest."""
        values = self.eigenvalues
        if float(values[0]) <= 0:
            return 0
        return int((values > tolerance * values[0]).sum())


def covariance(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ = Σ_i w_i g_i g_iᵀ in float64 (w_i = 1/N when ``weights`` is None)."""
    rows = rows.to(torch.float64)
    if weights is None:
        return rows.T @ rows / rows.shape[0]
    return rows.T @ (rows * weights.to(torch.float64)[:, None])


def pool_moments(
    rows: PoolRows, with_mean: bool = True, blocks: int = 1
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(μ, Σ̃): the mean row (None unless ``with_mean``) and G̃ᵀG̃/N in float64 over every
    rank's rows, streamed chunk by chunk in one pass; with ``blocks`` = K, the (K, m) means of
    the rows' K blocks and (1/N) Σ_i Σ_k g̃_ik g̃_ikᵀ.

    Chunk sums and products G̃_cᵀG̃_c are added in chunk order into one partial per block and
    the partials in block order (:mod:`skmm.rows`), so both are the same on 1 or P ranks.
    """
    width = rows.n_cols // blocks
    square = torch.zeros(width, width, dtype=torch.float64, device=rows.device)
    line = torch.zeros(blocks, width, dtype=torch.float64, device=rows.device)
    local_blocks = rows.layout.local_blocks()
    squares = [square.clone() for _ in local_blocks]
    sums = [line.clone() for _ in local_blocks] if with_mean else None
    for block, _, chunk in rows.chunks():
        chunk = chunk.to(torch.float64).reshape(-1, blocks, width)
        flat = chunk.reshape(-1, width)
        squares[block] = squares[block] + flat.T @ flat
        if sums is not None:
            sums[block] = sums[block] + chunk.sum(dim=0)
    second = rows.layout.fold(squares, square) / rows.n_rows
    mean = None if sums is None else rows.layout.fold(sums, line) / rows.n_rows
    return (mean[0] if mean is not None and blocks == 1 else mean), second


def spectrum(rows: torch.Tensor | PoolRows, center: bool = False, blocks: int = 1) -> Spectrum:
    """Eigen-decomposition of Σ̃ = G̃ᵀG̃/N for an (N, m) sketch, accumulated in float64;
    with ``center``, of the covariance Σ̃ − μμᵀ about the mean row μ. ``blocks`` = K: rows
    of K blocks of m (:class:`Spectrum`), each block centered about its own mean.

    A tensor is the whole pool on this process; :class:`~skmm.rows.PoolRows` are this
    rank's rows of a pool spread over ranks.
    """
    pool = rows if isinstance(rows, PoolRows) else PoolRows.from_tensor(rows)
    mean, second = pool_moments(pool, with_mean=center, blocks=blocks)
    if mean is not None:
        means = mean.reshape(blocks, -1)
        second = second - means.T @ means
    values, vectors = torch.linalg.eigh(second)
    order = torch.argsort(values, descending=True)
    return Spectrum(values[order].clamp_min(0.0), vectors[:, order], pool.n_rows, mean, blocks)


def intrinsic_dimension(eigenvalues: np.ndarray, n_rows: int) -> int:
    """r̄ = min{t : Σ_{j>t} λ_j ≤ Σ_j λ_j / N} for eigenvalues in descending order."""
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return 0
    tails = total - np.cumsum(values)
    return int(np.argmax(tails <= total / n_rows * (1 + 1e-12)) + 1)
