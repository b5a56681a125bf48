"""Gradient-matching baselines on the linear probe's head gradients: GLISTER and GRAD-MATCH.

Both methods look at the per-sample gradients of the cross-entropy with respect to the
probe's head (W, b), g_i = [(p_i − e_{y_i}) ⊗ x̂_i, p_i − e_{y_i}] ∈ R^{C(d+1)}, and at the
pool's mean gradient ḡ, which plays the validation gradient (as in DeepCore when no
validation set is given).

- ``glister`` (Killamsetty et al., AAAI 2021, "GLISTER"): greedy maximization of the one-step
  Taylor gain of the pool log-likelihood, gain_i(S) = ⟨ḡ(θ_S), g_i(θ_S)⟩, where
  θ_S = θ_0 − η·mean_{j∈S} g_j(θ_0) is one SGD step on the chosen examples' mean loss from
  the trained probe θ_0 (DeepCore's ``Glister.update_val_gradients``); θ_S is refreshed after
  every ``greedy_block`` picks.
- ``gradmatch`` (Killamsetty et al., ICML 2021, "GRAD-MATCH"): orthogonal matching pursuit
  for min_{w ≥ 0, |supp w| ≤ n} ‖Σ_i w_i g_i − ḡ‖² + λ‖w‖², with an exact non-negative
  least-squares refit on the support after every pick (DeepCore's
  ``GradMatch.orthogonal_matching_pursuit``, with the NNLS done at each step, not only last).

The gradients are never materialized as an N × C(d+1) matrix: :class:`HeadGradients` keeps
them in factored form (x̂_i, r_i = p_i − e_{y_i}) and computes ⟨g_i, u⟩ = r_iᵀ(U_W x̂_i + u_b)
in row blocks, which is exact and costs O(N·C·d) per pass (one read of the N × d features).
For GRAD-MATCH the gradients can instead be projected once to ``grad_dim`` columns with a
block-seeded Gaussian JL map (:class:`~skmm.sketch.SketchMap`), after which each pursuit step
costs O(N·grad_dim); this pays off only when d is much larger than ``grad_dim``.

The probe (and the options ``epochs``, ``lr``, ``weight_decay``, ``batch_size``) comes from
:class:`~skmm.selectors.probe.ProbeSelector`, shared by every probe-based method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.linalg.blas import dtrsv

from ..inputs import (
    DEFAULT_CHUNK_BYTES,
    FeatureMatrix,
    check_positive_float,
    check_positive_int,
)
from ..progress import progress_bar
from ..seeding import derive_seed, numpy_rng
from ..sketch import SketchMap
from .base import MethodOutput, register
from .probe import LinearProbe, ProbeSelector, head_gradients

GLISTER_MAX_UPDATES = 100


def block_rows(n_rows: int, row_bytes: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per block so that a block's temporaries take about ``budget_bytes``."""
    return max(1, min(n_rows, budget_bytes // max(1, row_bytes)))


def head_residuals(
    weight: torch.Tensor, bias: torch.Tensor, standardized: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """r_i = softmax(W x̂_i + b) − e_{y_i} for every (standardized) row, (N, C), in row blocks."""
    n_rows = standardized.shape[0]
    n_classes = weight.shape[0]
    out = torch.empty(n_rows, n_classes, dtype=weight.dtype, device=standardized.device)
    step = block_rows(n_rows, 3 * n_classes * out.element_size())
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        residual = torch.softmax(standardized[rows] @ weight.T + bias, dim=1)
        residual[torch.arange(residual.shape[0], device=out.device), labels[rows]] -= 1.0
        out[rows] = residual
    return out


class HeadGradients:
    """The head gradients g_i = [r_i ⊗ x̂_i, r_i] of N rows, kept in factored form (x̂_i, r_i).

    ``standardized`` holds the rows x̂_i the head acts on, ``residuals`` the r_i = p_i − e_{y_i}.
    Vectors in gradient space are flat float64 tensors of length C(d+1) laid out as the
    columns of :func:`~skmm.selectors.probe.head_gradients`: W row by row, then b.
    """

    def __init__(self, standardized: torch.Tensor, residuals: torch.Tensor):
        self.standardized = standardized
        self.residuals = residuals
        self.n_rows, self.n_features = standardized.shape
        self.n_classes = residuals.shape[1]
        self.n_cols = self.n_classes * (self.n_features + 1)
        self.block = block_rows(self.n_rows, 3 * self.n_classes * residuals.element_size())

    def _split(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cut = self.n_classes * self.n_features
        return vector[:cut].view(self.n_classes, self.n_features), vector[cut:]

    def _rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂, r) of the given rows in float64."""
        return self.standardized[rows].double(), self.residuals[rows].double()

    def mean(self) -> torch.Tensor:
        """ḡ = (1/N) Σ_i g_i."""
        weight = torch.zeros(
            self.n_classes, self.n_features, dtype=torch.float64, device=self.residuals.device
        )
        bias = torch.zeros(self.n_classes, dtype=torch.float64, device=self.residuals.device)
        for start in range(0, self.n_rows, self.block):
            rows = slice(start, start + self.block)
            weight += (self.residuals[rows].T @ self.standardized[rows]).double()
            bias += self.residuals[rows].double().sum(dim=0)
        return torch.cat([weight.flatten(), bias]) / self.n_rows

    def dot(self, vector: torch.Tensor) -> torch.Tensor:
        """⟨g_i, u⟩ = r_iᵀ(U_W x̂_i + u_b) for all rows, in the compute dtype."""
        weight, bias = self._split(vector)
        dtype = self.residuals.dtype
        weight, bias = weight.to(dtype), bias.to(dtype)
        out = torch.empty(self.n_rows, dtype=dtype, device=self.residuals.device)
        for start in range(0, self.n_rows, self.block):
            block = slice(start, start + self.block)
            projected = torch.addmm(bias, self.standardized[block], weight.T)
            out[block] = (projected * self.residuals[block]).sum(dim=1)
        return out

    def combine(self, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k g_{rows_k} = [Σ_k w_k r_k x̂_kᵀ, Σ_k w_k r_k], float64."""
        return combine_factored(*self._rows(rows), weights)

    def support(self, capacity: int) -> HeadSupport:
        """An empty :class:`HeadSupport` for the pursuit's picks."""
        return HeadSupport(self, capacity)

    def squared_norms(self) -> torch.Tensor:
        """‖g_i‖² = ‖r_i‖²(‖x̂_i‖² + 1) for all rows."""
        out = torch.empty(self.n_rows, dtype=self.residuals.dtype, device=self.residuals.device)
        step = block_rows(self.n_rows, self.n_features * self.standardized.element_size())
        for start in range(0, self.n_rows, step):
            block = slice(start, start + step)
            out[block] = self.residuals[block].square().sum(dim=1) * (
                self.standardized[block].square().sum(dim=1) + 1.0
            )
        return out


class DenseGradients:
    """N gradients stored as the rows of a matrix (e.g. head gradients projected by a JL map).

    Same interface as :class:`HeadGradients`; vectors are flat float64 tensors. The matrix is
    kept column-major (a transposed view of a contiguous n_cols × N tensor): the pursuit's
    N × n_cols matrix–vector product then streams its columns, 1.5–2.5× faster than over
    rows with one CPU thread, and a pick reads one strided row.
    """

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix.T.contiguous().T
        self.n_rows, self.n_cols = matrix.shape

    def mean(self) -> torch.Tensor:
        """ḡ = (1/N) Σ_i g_i."""
        total = torch.zeros(self.n_cols, dtype=torch.float64, device=self.matrix.device)
        step = block_rows(self.n_rows, self.n_cols * 8)
        for start in range(0, self.n_rows, step):
            total += self.matrix[start : start + step].double().sum(dim=0)
        return total / self.n_rows

    def dot(self, vector: torch.Tensor) -> torch.Tensor:
        """⟨g_i, u⟩ for all rows, in the compute dtype."""
        return self.matrix @ vector.to(self.matrix.dtype)

    def squared_norms(self) -> torch.Tensor:
        """‖g_i‖² for all rows."""
        return self.matrix.square().sum(dim=1)

    def support(self, capacity: int) -> DenseSupport:
        """An empty :class:`DenseSupport` for the pursuit's picks."""
        return DenseSupport(self, capacity)


def combine_factored(
    standardized: torch.Tensor, residuals: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Σ_k w_k g_k = [Σ_k w_k r_k x̂_kᵀ, Σ_k w_k r_k] from the rows' (x̂_k, r_k), float64."""
    weighted = residuals * weights.to(residuals)[:, None]
    return torch.cat([(weighted.T @ standardized).flatten(), weighted.sum(dim=0)])


def _appended(buffer: torch.Tensor, size: int, row: torch.Tensor) -> torch.Tensor:
    """``buffer`` (grown to twice its rows when full) with ``row`` written at ``size``."""
    if size == buffer.shape[0]:
        grown = buffer.new_empty(max(1, 2 * size), *buffer.shape[1:])
        grown[:size] = buffer[:size]
        buffer = grown
    buffer[size] = row
    return buffer


class HeadSupport:
    """The picked rows of :class:`HeadGradients` as float64 (x̂, r) buffers, so that a pick
    costs O(k(d + C)) for its Gram row and the combination Σ_k w_k g_k without gathering and
    converting all k picked rows again."""

    def __init__(self, gradients: HeadGradients, capacity: int) -> None:
        self.gradients = gradients
        self.size = 0
        dtype, device = torch.float64, gradients.residuals.device
        self.standardized = torch.empty(capacity, gradients.n_features, dtype=dtype, device=device)
        self.residuals = torch.empty(capacity, gradients.n_classes, dtype=dtype, device=device)

    def add(self, row: int, target: torch.Tensor) -> tuple[np.ndarray, float]:
        """Pick ``row``: return ⟨g_j, g_row⟩ = (r_jᵀr)(x̂_jᵀx̂ + 1) for every pick j (``row``
        last) and ⟨g_row, t⟩, float64."""
        standardized = self.gradients.standardized[row].double()
        residual = self.gradients.residuals[row].double()
        k = self.size
        self.standardized = _appended(self.standardized, k, standardized)
        self.residuals = _appended(self.residuals, k, residual)
        self.size = k + 1
        inner = (self.residuals[: k + 1] @ residual) * (
            self.standardized[: k + 1] @ standardized + 1
        )
        weight, bias = self.gradients._split(target)
        return inner.cpu().numpy(), float(residual @ (weight @ standardized + bias))

    def combine(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k g_k over the picks, float64."""
        k = self.size
        return combine_factored(self.standardized[:k], self.residuals[:k], weights)


class DenseSupport:
    """The picked rows of :class:`DenseGradients` in a float64 buffer (see :class:`HeadSupport`)."""

    def __init__(self, gradients: DenseGradients, capacity: int) -> None:
        self.gradients = gradients
        self.size = 0
        self.rows = torch.empty(
            capacity, gradients.n_cols, dtype=torch.float64, device=gradients.matrix.device
        )

    def add(self, row: int, target: torch.Tensor) -> tuple[np.ndarray, float]:
        """Pick ``row``: return ⟨g_j, g_row⟩ for every pick j (``row`` last) and ⟨g_row, t⟩."""
        gradient = self.gradients.matrix[row].double()
        k = self.size
        self.rows = _appended(self.rows, k, gradient)
        self.size = k + 1
        return (self.rows[: k + 1] @ gradient).cpu().numpy(), float(gradient @ target)

    def combine(self, weights: torch.Tensor) -> torch.Tensor:
        """Σ_k w_k g_k over the picks, float64."""
        return weights.to(torch.float64) @ self.rows[: self.size]


Gradients = HeadGradients | DenseGradients


class ActiveSetNNLS:
    """argmin_{w ≥ 0} ½wᵀQw − cᵀw for positive definite Q (Lawson–Hanson active set), over
    variables that arrive one at a time (:meth:`append`), each solve warm-started from the
    last.

    A Cholesky factor L (LLᵀ = Q_PP, a column-major |P| × |P| array) of the passive set P is
    kept between solves: a variable entering P costs a triangular solve and one leaving it
    |P| Givens rotations, O(|P|²) each, instead of refactoring Q_PP, O(|P|³). Q and c live in
    arrays that double when full.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.size = 0
        self.quadratic = np.zeros((capacity, capacity))
        self.linear = np.zeros(capacity)
        self.weights = np.zeros(capacity)
        self.factor = np.zeros((0, 0), order="F")
        self.passive: list[int] = []

    def append(self, cross: np.ndarray, diagonal: float, linear: float) -> None:
        """Add variable ``size`` with Q[size, :size] = cross, Q[size, size] = diagonal and
        c[size] = linear; its weight starts at 0 (outside P)."""
        if self.size == self.linear.shape[0]:
            self._grow(max(1, 2 * self.size))
        k = self.size
        self.quadratic[k, :k] = cross
        self.quadratic[:k, k] = cross
        self.quadratic[k, k] = diagonal
        self.linear[k] = linear
        self.weights[k] = 0.0
        self.size += 1

    def _grow(self, capacity: int) -> None:
        k = self.size
        grown = np.zeros((capacity, capacity))
        grown[:k, :k] = self.quadratic[:k, :k]
        self.quadratic = grown
        for name in ("linear", "weights"):
            grown = np.zeros(capacity)
            grown[:k] = getattr(self, name)[:k]
            setattr(self, name, grown)

    def _enter(self, index: int) -> None:
        k = len(self.passive)
        row = self._lower_solve(self.quadratic[self.passive, index]) if k else np.zeros(0)
        pivot = self.quadratic[index, index] - row @ row
        if pivot <= 0.0:
            raise ValueError(
                "gradmatch: the refit's Gram matrix G_S G_Sᵀ + λI is numerically singular "
                "(near-duplicate gradients with a tiny lam); use a larger lam"
            )
        self.passive.append(index)
        grown = np.zeros((k + 1, k + 1), order="F")
        grown[:k, :k] = self.factor
        grown[k, :k] = row
        grown[k, k] = math.sqrt(pivot)
        self.factor = grown

    def _leave(self, position: int) -> None:
        """Drop the ``position``-th variable of P: delete its row of L, then Givens rotations
        of neighbouring columns restore the lower-triangular shape (LLᵀ unchanged), O(|P|²)."""
        k = len(self.passive)
        lower = self.factor
        lower[position : k - 1, :k] = lower[position + 1 : k, :k]
        for i in range(position, k - 1):
            a, b = lower[i, i], lower[i, i + 1]
            radius = math.hypot(a, b)
            cos, sin = a / radius, b / radius
            left = lower[i : k - 1, i].copy()
            right = lower[i : k - 1, i + 1]
            lower[i : k - 1, i] = cos * left + sin * right
            lower[i : k - 1, i + 1] = cos * right - sin * left
        self.factor = np.asfortranarray(lower[: k - 1, : k - 1])
        del self.passive[position]

    def _lower_solve(self, vector: np.ndarray, transposed: bool = False) -> np.ndarray:
        """L⁻¹v (or L⁻ᵀv) by BLAS dtrsv: microseconds, where scipy's checked wrapper takes
        tens of them per call."""
        return dtrsv(self.factor, vector, lower=1, trans=int(transposed))

    def _passive_solution(self) -> np.ndarray:
        return self._lower_solve(self._lower_solve(self.linear[self.passive]), transposed=True)

    def solve(self) -> np.ndarray:
        """The minimizer over the variables so far (a copy), warm-started at the last one."""
        size = self.size
        quadratic, linear = self.quadratic[:size, :size], self.linear[:size]
        weights = self.weights[:size]
        tolerance = 1e-10 * max(float(np.abs(linear).max(initial=0.0)), np.finfo(float).tiny)
        for _ in range(3 * size + 10):
            while self.passive:
                support = np.asarray(self.passive)
                values = self._passive_solution()
                if (values > 0).all():
                    weights[:] = 0.0
                    weights[support] = values
                    break
                solution = np.zeros(size)
                solution[support] = values
                blocked = support[values <= 0]
                gap = np.maximum(weights[blocked] - solution[blocked], np.finfo(float).tiny)
                ratios = weights[blocked] / gap
                weights += ratios.min() * (solution - weights)
                weights[blocked[np.argmin(ratios)]] = 0.0
                for position in reversed(range(len(self.passive))):
                    if weights[self.passive[position]] <= 0:
                        weights[self.passive[position]] = 0.0
                        self._leave(position)
            dual = linear - quadratic @ weights
            dual[self.passive] = -np.inf
            best = int(np.argmax(dual))
            if dual[best] <= tolerance:
                break
            self._enter(best)
        return weights.copy()


@dataclass
class PursuitResult:
    """Output of :func:`nonnegative_omp`: picks in order, their weights, why it stopped."""

    support: list[int]
    weights: np.ndarray
    stop: str
    relative_residual: float


def nonnegative_omp(
    gradients: Gradients,
    target: torch.Tensor,
    n: int,
    lam: float,
    *,
    progress: bool | None = False,
) -> PursuitResult:
    """Orthogonal matching pursuit for min_{w≥0, |S|≤n} ‖Σ_{i∈S} w_i g_i − t‖² + λ‖w‖².

    Each step adds the unpicked row most correlated with the residual t − Σ w_i g_i, then
    refits w ≥ 0 on all picked rows (NNLS on (G_S G_Sᵀ + λI) w = G_S t). Stops early when
    the residual vanishes ("residual") or no unpicked row correlates positively with it
    ("no_positive_correlation"), else after n picks ("budget").
    """
    device = target.device
    squared_norms = gradients.squared_norms()
    rtol = 100 * torch.finfo(squared_norms.dtype).eps
    max_norm = float(squared_norms.max().sqrt())
    target_norm = float(target.norm())
    available = torch.ones(gradients.n_rows, dtype=torch.bool, device=device)
    support: list[int] = []
    picked = gradients.support(min(n, 256))
    refit = ActiveSetNNLS(min(n, 256))
    weights = np.zeros(0)
    residual = target.clone()
    stop = "budget"
    with progress_bar(n, "gradmatch", progress, unit="pick") as bar:
        while len(support) < n:
            residual_norm = float(residual.norm())
            if residual_norm <= rtol * target_norm or target_norm == 0.0:
                stop = "residual"
                break
            correlations = gradients.dot(residual)
            correlations[~available] = -torch.inf
            best = int(torch.argmax(correlations))
            if float(correlations[best]) <= rtol * residual_norm * max_norm:
                stop = "no_positive_correlation"
                break
            inner, target_inner = picked.add(best, target)  # ⟨g_j, g_best⟩, ⟨g_best, t⟩
            refit.append(inner[:-1], inner[-1] + lam, target_inner)
            support.append(best)
            available[best] = False
            weights = refit.solve()
            residual = target - picked.combine(torch.from_numpy(weights).to(device))
            bar.update(1)
    relative = float(residual.norm()) / target_norm if target_norm > 0 else 0.0
    return PursuitResult(support, weights, stop, relative)


def sketch_head_gradients(
    probe: LinearProbe,
    standardized: torch.Tensor,
    labels: torch.Tensor,
    grad_dim: int,
    seed: int,
) -> torch.Tensor:
    """G̃ = GΓ (N × grad_dim) for the head gradients G of standardized rows, by row blocks.

    Γ is the block-seeded Gaussian JL map of :class:`~skmm.sketch.SketchMap`.
    """
    n_rows, n_features = standardized.shape
    n_cols = probe.n_classes * (n_features + 1)
    sketch_map = SketchMap(
        n_cols, grad_dim, "gaussian", seed, device=standardized.device, dtype=standardized.dtype
    )
    head = LinearProbe(
        probe.weight,
        probe.bias,
        torch.zeros_like(probe.mean),
        torch.ones_like(probe.scale),
    )
    step = block_rows(n_rows, (n_cols + grad_dim) * 8)
    # column-major, the layout DenseGradients keeps
    out = torch.empty(grad_dim, n_rows, dtype=standardized.dtype, device=standardized.device).T
    for start in range(0, n_rows, step):
        rows = slice(start, start + step)
        block = head_gradients(head, standardized[rows], labels[rows])
        out[rows] = sketch_map.apply(block).to(out.dtype)
    return out


@register
class Glister(ProbeSelector):
    """GLISTER (Killamsetty et al. 2021): greedy one-step Taylor gain of the pool likelihood.

    Options: ``eta`` (the SGD step defining θ_S), ``greedy_block`` (picks per θ update;
    None: ⌈n/100⌉, so at most 100 updates), and the probe's ``epochs``, ``lr``,
    ``weight_decay``, ``batch_size``. Cost O(N·C·d) per θ update; memory O(N·C).
    """

    name = "glister"

    def __init__(
        self,
        n: int,
        *,
        eta: float = 0.1,
        greedy_block: int | None = None,
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
        self.eta = eta
        self.greedy_block = greedy_block
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        super()._check_params(n_pool, n_cols)
        check_positive_float(self.eta, "eta")
        if self.greedy_block is not None:
            check_positive_int(self.greedy_block, "greedy_block")

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
        assert labels is not None
        standardized, targets, info = self._fit_probe(features, labels, seed)
        return (standardized, targets), info

    def _select(self, data: tuple[torch.Tensor, torch.Tensor], n: int, seed: int) -> MethodOutput:
        standardized, labels = data
        start_weight, start_bias = self.probe_.weight, self.probe_.bias
        block = min(n, self.greedy_block or math.ceil(n / GLISTER_MAX_UPDATES))
        start_gradients = HeadGradients(
            standardized, head_residuals(start_weight, start_bias, standardized, labels)
        )
        gradients = start_gradients
        device = standardized.device
        available = torch.ones(standardized.shape[0], dtype=torch.bool, device=device)
        picks: list[torch.Tensor] = []
        n_picked = updates = 0
        step_sum = torch.zeros(start_gradients.n_cols, dtype=torch.float64, device=device)
        gradient_norms: list[float] = []
        cut = start_weight.numel()
        with progress_bar(n, "glister", self.progress, unit="pick") as bar:
            while True:
                pool_gradient = gradients.mean()
                gradient_norms.append(float(pool_gradient.norm()))
                gains = gradients.dot(pool_gradient)
                gains[~available] = -torch.inf
                chosen = torch.sort(gains, descending=True, stable=True).indices
                chosen = chosen[: min(block, n - n_picked)]
                picks.append(chosen)
                available[chosen] = False
                n_picked += chosen.numel()
                bar.update(chosen.numel())
                if n_picked == n:
                    break
                ones = torch.ones(chosen.numel(), dtype=torch.float64, device=device)
                step_sum += start_gradients.combine(chosen, ones)
                step = (self.eta / n_picked) * step_sum.to(start_weight.dtype)
                weight = start_weight - step[:cut].view_as(start_weight)
                bias = start_bias - step[cut:]
                gradients = HeadGradients(
                    standardized, head_residuals(weight, bias, standardized, labels)
                )
                updates += 1
        indices = torch.cat(picks).cpu().numpy()
        info = {
            "greedy_block": block,
            "updates": updates,
            "pool_gradient_norm": {"start": gradient_norms[0], "end": gradient_norms[-1]},
        }
        return MethodOutput(indices, None, info)


@register
class GradMatch(ProbeSelector):
    """GRAD-MATCH (Killamsetty et al. 2021): weighted rows whose gradients sum to the mean's.

    Options: ``lam`` (L2 penalty on the weights), ``grad_dim`` (None: exact gradients in
    factored form, O(N·C·d) per pick; an int: project the C(d+1)-column gradients to that
    many columns once, O(N·grad_dim) per pick, when they have more), and the
    probe's ``epochs``, ``lr``, ``weight_decay``, ``batch_size``. Weights are non-negative
    and sum to 1; rows added to fill the budget after an early stop get weight 0.
    """

    name = "gradmatch"

    def __init__(
        self,
        n: int,
        *,
        lam: float = 1.0,
        grad_dim: int | None = None,
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
        self.lam = lam
        self.grad_dim = grad_dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        super()._check_params(n_pool, n_cols)
        check_positive_float(self.lam, "lam")
        if self.grad_dim is not None:
            check_positive_int(self.grad_dim, "grad_dim")

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        assert labels is not None
        standardized, targets, info = self._fit_probe(features, labels, seed)
        probe = self.probe_
        n_cols = probe.n_classes * (standardized.shape[1] + 1)
        info["gradient_columns"] = n_cols
        if self.grad_dim is None or n_cols <= self.grad_dim:
            info["gradients"] = "exact"
            residuals = head_residuals(probe.weight, probe.bias, standardized, targets)
            return (standardized, residuals), info
        began = time.perf_counter()
        sketch_seed = derive_seed(seed, "gradmatch", "sketch")
        sketched = sketch_head_gradients(probe, standardized, targets, self.grad_dim, sketch_seed)
        info["gradients"] = {"sketch": "gaussian", "grad_dim": self.grad_dim, "seed": sketch_seed}
        info["timings"]["sketch"] = time.perf_counter() - began
        return sketched, info

    def _select(self, data: Any, n: int, seed: int) -> MethodOutput:
        if isinstance(data, tuple):
            gradients: Gradients = HeadGradients(*data)
        else:
            gradients = DenseGradients(data)
        result = nonnegative_omp(gradients, gradients.mean(), n, self.lam, progress=self.progress)
        indices = np.asarray(result.support, dtype=np.int64)
        weights = np.zeros(n)
        weights[: indices.size] = result.weights
        n_pursuit = indices.size
        if n_pursuit < n:
            rest = np.setdiff1d(np.arange(gradients.n_rows), indices)
            drawn = numpy_rng(seed, "gradmatch", "complete").choice(rest, n - n_pursuit, False)
            indices = np.concatenate([indices, np.sort(drawn)])
        total = weights.sum()
        weights = weights / total if total > 0 else np.full(n, 1.0 / n)
        info = {
            "stop": result.stop,
            "pursuit_picks": n_pursuit,
            "uniform_fill": n - n_pursuit,
            "zero_weights": int((weights == 0).sum()),
            "relative_residual": result.relative_residual,
        }
        return MethodOutput(indices, weights, info)
