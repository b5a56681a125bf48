"""Adaptive sampling by randomly pivoted Cholesky (RPCholesky).

Each pivot is drawn with probability proportional to the diagonal of the residual kernel
K − FFᵀ, where FFᵀ = K(:,S)K(S,S)⁻¹K(S,:) is the Nyström approximation of K on the pivots S
chosen so far; the expected trace error tr(K − FFᵀ) is near the best rank-|S| error (Chen,
Epperly, Tropp & Webber 2023, "Randomly pivoted Cholesky: practical approximation of a kernel
matrix with few entry evaluations", arXiv 2207.06503). A selected row is thus a row the
previous ones explain badly: adaptive sampling in the sense of Deshpande et al. (2006).

With ``block_size`` b > 1 this is accelerated RPCholesky (Epperly, Tropp & Webber 2024,
"Embrace rejection: kernel matrix approximation by accelerated randomly pivoted Cholesky",
arXiv 2410.03969): b candidates are drawn i.i.d. ∝ the residual diagonal at the start of the
block, then visited in order; candidate j is accepted with probability (its residual after
eliminating the pivots accepted earlier in the block) / (its residual at the block start),
which makes each accepted pivot an exact RPCholesky draw.

The kernel is never formed: only the N×n factor F, the b×b residual block of the candidates,
and the kernel columns of accepted pivots, computed from the features in row blocks, in
float64; the accepted columns enter F as C·L⁻ᵀ, L the Cholesky factor of their residual
block (a small triangular inverse and one matrix product). Kernels: linear K = XXᵀ, or RBF
K_ij = exp(−‖x_i − x_j‖²/(2σ²)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inputs import DEFAULT_CHUNK_BYTES, check_choice, check_positive_float, check_positive_int
from ..seeding import numpy_rng
from .base import MethodOutput, Selector, register

KERNELS = ("linear", "rbf")
RESIDUAL_TOLERANCE = 1e-10
FLOAT64_COPY_BYTES = 2**30


def _rows_per_block(width: int) -> int:
    """Rows of a float64 block of ``width`` columns that fit the default chunk budget."""
    return max(1, DEFAULT_CHUNK_BYTES // (8 * max(1, width)))


def kernel_diagonal(rows: torch.Tensor, kernel: str) -> torch.Tensor:
    """K_ii in float64: ‖x_i‖² for the linear kernel, 1 for the RBF kernel."""
    if kernel == "rbf":
        return torch.ones(rows.shape[0], dtype=torch.float64, device=rows.device)
    step = _rows_per_block(rows.shape[1])
    return torch.cat(
        [
            rows[s : s + step].to(torch.float64).square().sum(dim=1)
            for s in range(0, rows.shape[0], step)
        ]
    )


def default_bandwidth(rows: torch.Tensor) -> float:
    """σ with σ² = (1/N)Σ_i‖x_i − x̄‖², half the mean squared distance between two rows.

    With it a typical pair of rows has kernel value ≈ e^{−1}; 1.0 when all rows coincide.
    """
    step = _rows_per_block(rows.shape[1])
    blocks = range(0, rows.shape[0], step)
    mean = sum(rows[s : s + step].to(torch.float64).sum(dim=0) for s in blocks) / rows.shape[0]
    spread = sum(
        float((rows[s : s + step].to(torch.float64) - mean).square().sum()) for s in blocks
    )
    variance = spread / rows.shape[0]
    return math.sqrt(variance) if variance > 0 else 1.0


def kernel_block(
    left: torch.Tensor, right: torch.Tensor, kernel: str, bandwidth: float | None
) -> torch.Tensor:
    """K(left, right) in float64: left·rightᵀ, or exp(−‖l − r‖²/(2σ²)) for the RBF kernel."""
    left, right = left.to(torch.float64), right.to(torch.float64)
    products = left @ right.T
    if kernel == "linear":
        return products
    distances = left.square().sum(dim=1)[:, None] + right.square().sum(dim=1)[None, :]
    distances = (distances - 2.0 * products).clamp_min(0.0)
    return torch.exp(distances / (-2.0 * bandwidth**2))


def kernel_rows(
    rows: torch.Tensor, pivots: torch.Tensor, kernel: str, bandwidth: float | None
) -> torch.Tensor:
    """The rows K(pivots, :) (p × N) in float64, computed over blocks of the pool's rows."""
    targets = rows[pivots]
    step = _rows_per_block(rows.shape[1] + targets.shape[0])
    return torch.cat(
        [
            kernel_block(targets, rows[s : s + step], kernel, bandwidth)
            for s in range(0, rows.shape[0], step)
        ],
        dim=1,
    )


@dataclass(frozen=True)
class PivotedCholesky:
    """A partial Cholesky factorization K ≈ FFᵀ on pivots S (F is N × |S|, float64).

    ``residual``: diag(K − FFᵀ), with round-off below 1e-10·K_ii set to 0; ``trace``: tr K;
    ``proposals``: candidates drawn (at least the pivot count; more when b > 1 rejects some).
    """

    pivots: np.ndarray
    factor: torch.Tensor
    residual: torch.Tensor
    trace: float
    proposals: int


def _accept_candidates(
    block: np.ndarray,
    proposal: np.ndarray,
    diagonal: np.ndarray,
    uniforms: np.ndarray,
    candidates: np.ndarray,
    taken: set[int],
    room: int,
) -> tuple[list[int], np.ndarray, list[int]]:
    """Rejection-sample pivots from the candidates' residual block H, in order.

    Candidate j is accepted when uniforms[j]·proposal[j] ≤ H_jj, H_jj its residual after the
    pivots accepted before it in this block (a Schur complement updated in place). Returns
    the accepted positions, the lower Cholesky factor L of H on them, and the positions
    whose residual is round-off (≤ 1e-10·K_jj), which can never be pivots.
    """
    residual = block.copy()
    accepted: list[int] = []
    negligible: list[int] = []
    for j in range(residual.shape[0]):
        if len(accepted) == room:
            break
        pivot = residual[j, j]
        if pivot <= RESIDUAL_TOLERANCE * diagonal[j]:
            negligible.append(j)
            continue
        if int(candidates[j]) in taken or uniforms[j] * proposal[j] > pivot:
            continue
        accepted.append(j)
        taken.add(int(candidates[j]))
        residual[j:, j] /= math.sqrt(pivot)
        below = residual[j + 1 :, j]
        residual[j + 1 :, j + 1 :] -= np.outer(below, below)
    lower = np.tril(residual[np.ix_(accepted, accepted)])
    return accepted, lower, negligible


def rp_cholesky(
    rows: torch.Tensor,
    n_pivots: int,
    rng: np.random.Generator,
    *,
    kernel: str = "linear",
    bandwidth: float | None = None,
    block_size: int = 1,
) -> PivotedCholesky:
    """Up to ``n_pivots`` RPCholesky pivots of the kernel of ``rows``, in the order drawn.

    Stops early when the residual diagonal vanishes (rank of K below ``n_pivots``, or rows
    duplicating earlier pivots). Cost O(N·p·(d + p)) for p pivots; memory O(N·p) for F, plus
    a float64 copy of ``rows`` when that takes at most 1 GiB (else blocks are cast as read).
    """
    n_rows = rows.shape[0]
    device = rows.device
    if rows.dtype != torch.float64 and rows.numel() * 8 <= FLOAT64_COPY_BYTES:
        rows = rows.to(torch.float64)
    diagonal = kernel_diagonal(rows, kernel)
    residual = diagonal.clone()
    # Fᵀ, one contiguous row per pivot, so that appending pivots and F(S,:)-products are cheap.
    factor_rows = torch.zeros(n_pivots, n_rows, dtype=torch.float64, device=device)
    pivots: list[int] = []
    taken: set[int] = set()
    proposals = 0
    while len(pivots) < n_pivots:
        cumulative = torch.cumsum(residual, dim=0)
        total = float(cumulative[-1])
        if total <= 0.0:
            break
        count = min(block_size, n_pivots - len(pivots))
        targets = np.minimum(rng.random(count) * total, np.nextafter(total, 0.0))
        uniforms = rng.random(count)
        drawn = torch.searchsorted(cumulative, torch.as_tensor(targets, device=device), right=True)
        drawn = drawn.clamp_max(n_rows - 1)
        proposals += count
        done = len(pivots)
        drawn_factor = factor_rows[:done, drawn]
        block = kernel_block(rows[drawn], rows[drawn], kernel, bandwidth)
        block -= drawn_factor.T @ drawn_factor
        candidates = drawn.cpu().numpy()
        accepted, lower, negligible = _accept_candidates(
            block.cpu().numpy(),
            residual[drawn].cpu().numpy(),
            diagonal[drawn].cpu().numpy(),
            uniforms,
            candidates,
            taken,
            n_pivots - done,
        )
        if negligible:
            residual[torch.as_tensor(candidates[negligible], device=device)] = 0.0
        if not accepted:
            continue
        chosen = torch.as_tensor(candidates[accepted], device=device)
        residual_rows = kernel_rows(rows, chosen, kernel, bandwidth)
        residual_rows -= factor_rows[:done, chosen].T @ factor_rows[:done]
        identity = torch.eye(len(accepted), dtype=torch.float64, device=device)
        lower_inverse = torch.linalg.solve_triangular(
            torch.as_tensor(lower, device=device), identity, upper=False
        )
        fresh = lower_inverse @ residual_rows
        factor_rows[done : done + len(accepted)] = fresh
        residual -= fresh.square().sum(dim=0)
        residual[chosen] = 0.0
        residual = torch.where(residual > RESIDUAL_TOLERANCE * diagonal, residual, 0.0)
        pivots.extend(int(c) for c in candidates[accepted])
    return PivotedCholesky(
        np.asarray(pivots, dtype=np.int64),
        factor_rows[: len(pivots)].T,
        residual,
        float(diagonal.sum()),
        proposals,
    )


@register
class Adaptive(Selector):
    """Adaptive sampling: the pivots of randomly pivoted Cholesky on a kernel of the features.

    Options: ``kernel`` ("linear": K = XXᵀ; "rbf": exp(−‖x_i − x_j‖²/(2σ²))), ``bandwidth``
    (σ of the RBF kernel; None: σ² = (1/N)Σ‖x_i − x̄‖²), ``block_size`` (candidates drawn per
    round of accelerated RPCholesky; 1 is the sequential algorithm). When the residual
    vanishes before n pivots, the remaining rows are drawn uniformly (``info["uniform_fill"]``).
    """

    name = "adaptive"

    def __init__(
        self,
        n: int,
        *,
        kernel: str = "linear",
        bandwidth: float | None = None,
        block_size: int = 1,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.block_size = block_size

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_choice(self.kernel, "kernel", KERNELS)
        if self.bandwidth is not None:
            check_positive_float(self.bandwidth, "bandwidth")
            if self.kernel != "rbf":
                raise ValueError(
                    f"bandwidth applies only to kernel='rbf', got kernel={self.kernel!r}"
                )
        check_positive_int(self.block_size, "block_size")

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        """The features as a tensor and the float64 Cholesky factor F (n × N)."""
        return n_pool * n_cols * itemsize + n * n_pool * 8

    def _memory_advice(self) -> str:
        return (
            "its Cholesky factor holds n × N float64 values: select fewer rows, run it on a "
            "random part of the pool, or use a method with O(N) extra memory such as "
            "'kcenter' or 'skmm'"
        )

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        rng = numpy_rng(seed, "adaptive")
        bandwidth = None
        if self.kernel == "rbf":
            bandwidth = (
                float(self.bandwidth) if self.bandwidth is not None else default_bandwidth(data)
            )
        result = rp_cholesky(
            data, n, rng, kernel=self.kernel, bandwidth=bandwidth, block_size=self.block_size
        )
        filled = n - result.pivots.size
        rest = np.setdiff1d(np.arange(data.shape[0]), result.pivots, assume_unique=True)
        indices = np.concatenate([result.pivots, rng.choice(rest, size=filled, replace=False)])
        residual = float(result.residual.sum())
        info: dict[str, Any] = {
            "kernel": self.kernel,
            "pivots": int(result.pivots.size),
            "proposals": result.proposals,
            "residual_trace_ratio": residual / result.trace if result.trace > 0 else 0.0,
            "uniform_fill": filled,
        }
        if bandwidth is not None:
            info["bandwidth"] = bandwidth
        if filled:
            info["note"] = (
                f"the residual kernel vanished after {result.pivots.size} pivots (rank of the "
                f"kernel below n, or duplicate rows); {filled} rows were drawn uniformly"
            )
        return MethodOutput(indices.astype(np.int64), None, info)
