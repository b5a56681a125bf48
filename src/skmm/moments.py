"""The moment-matching problem of SkMM and its solver on the capped simplex.

With Σ̃ = VΛVᵀ and P_ij = (v_jᵀ g̃_i)² (so Σ_i P_ij / N = λ_j), the seed's problem

    min_{s ∈ [0, 1/n]^N, Σs = 1}  min_{γ_j ≥ 1/c}  Σ_j ((Pᵀs)_j − γ_j λ_j)²

has the inner minimum in closed form (γ_j = max(1/c, (Pᵀs)_j / λ_j)), leaving the smooth
convex f(s) = Σ_j (λ_j/c − (Pᵀs)_j)_+². :func:`solve` minimizes it by accelerated projected
gradient (FISTA with backtracking and function-value restarts) with the exact projection
onto the capped simplex; the Frank–Wolfe duality gap certifies how far from optimal it stops.
Each iteration costs two passes over P: O(N·k).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .progress import progress_bar

FLOAT64_MOMENTS_LIMIT = 2**22


def project_capped_simplex(y: torch.Tensor, cap: float, total: float = 1.0) -> torch.Tensor:
    """Euclidean projection of y onto {s : 0 ≤ s_i ≤ cap, Σ s_i = total}.

    The projection is clip(y − τ, 0, cap) for the τ with Σ clip(y_i − τ, 0, cap) = total; τ is
    found by Newton steps on that piecewise-linear equation, safeguarded by bisection, and is
    exact once the active set stops changing.
    """
    return _project(y, cap, total)[0]


def _project(
    y: torch.Tensor, cap: float, total: float = 1.0, tau: float | None = None
) -> tuple[torch.Tensor, float]:
    """:func:`project_capped_simplex` from a starting threshold ``tau``; returns (s, τ)."""
    y = y.to(torch.float64)
    size = y.numel()
    if cap <= 0 or total <= 0:
        raise ValueError(f"cap and total must be > 0, got cap={cap}, total={total}")
    if size * cap < total * (1 - 1e-12):
        raise ValueError(f"infeasible: {size} entries capped at {cap} cannot sum to {total}")
    lo = float(y.min()) - cap
    hi = float(y.max())
    if tau is None or not lo < tau < hi:
        tau = min(max((float(y.sum()) - total) / size, lo), hi)
    tolerance = 1e-14 * max(total, 1.0)
    for _ in range(200):
        shifted = y - tau
        free = (shifted > 0) & (shifted < cap)
        n_free = int(free.sum())
        n_capped = int((shifted >= cap).sum())
        free_sum = float(y[free].sum())
        mass = free_sum - n_free * tau + n_capped * cap
        if abs(mass - total) <= tolerance:
            break
        if mass > total:
            lo = tau
        else:
            hi = tau
        step = (free_sum + n_capped * cap - total) / n_free if n_free else math.nan
        tau = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-16 * max(1.0, abs(lo), abs(hi)):
            break
    projected = (y - tau).clamp_(0.0, cap)
    free = (projected > 0) & (projected < cap)
    residual = total - float(projected.sum())
    if residual != 0.0 and bool(free.any()):
        projected[free] += residual / int(free.sum())
        projected.clamp_(0.0, cap)
    return projected, tau


def capped_simplex_minimizer(
    gradient: torch.Tensor, cap: float, total: float = 1.0
) -> torch.Tensor:
    """argmin_v gᵀv over the capped simplex: cap on the smallest entries of g, rest on the next."""
    n_full = min(math.floor(total / cap + 1e-9), gradient.numel())
    order = torch.argsort(gradient, stable=True)
    vertex = torch.zeros_like(gradient, dtype=torch.float64)
    vertex[order[:n_full]] = cap
    remainder = total - n_full * cap
    if remainder > 1e-15 and n_full < gradient.numel():
        vertex[order[n_full]] = remainder
    return vertex


@dataclass
class MomentProblem:
    """f(s) = Σ_j (b_j − (Pᵀs)_j)_+² over s ∈ [0, cap]^N with Σs = 1.

    ``moments`` is P (N × k), ``target`` is b = λ/c (k,). P is kept in float64 when it has at
    most 2^22 entries and in float32 beyond (products are still accumulated into float64).
    """

    moments: torch.Tensor
    target: torch.Tensor
    cap: float

    def __post_init__(self) -> None:
        dtype = torch.float64 if self.moments.numel() <= FLOAT64_MOMENTS_LIMIT else torch.float32
        self.moments = self.moments.to(dtype)
        self.target = self.target.to(device=self.moments.device, dtype=torch.float64)

    @property
    def size(self) -> int:
        return int(self.moments.shape[0])

    def moments_of(self, s: torch.Tensor) -> torch.Tensor:
        """Pᵀs: the weighted moments of s along each direction (float64)."""
        return (self.moments.T @ s.to(self.moments.dtype)).to(torch.float64)

    def shortfall(self, moments: torch.Tensor) -> torch.Tensor:
        """(b − Pᵀs)_+ from the moments Pᵀs."""
        return (self.target - moments).clamp_min(0.0)

    def objective(self, moments: torch.Tensor) -> float:
        """f from the moments Pᵀs."""
        return float((self.shortfall(moments) ** 2).sum())

    def gradient(self, moments: torch.Tensor) -> torch.Tensor:
        """∇f(s) = −2 P (b − Pᵀs)_+ from the moments Pᵀs."""
        residual = self.shortfall(moments).to(self.moments.dtype)
        return (self.moments @ residual).to(torch.float64).mul_(-2.0)

    def lipschitz_estimate(self, iterations: int = 12) -> float:
        """2‖P‖₂², estimated by power iteration on PᵀP from the all-ones vector."""
        vector = torch.ones(
            self.moments.shape[1], dtype=self.moments.dtype, device=self.moments.device
        )
        norm_sq = 0.0
        for _ in range(iterations):
            image = self.moments.T @ (self.moments @ vector)
            norm = float(image.norm())
            if norm == 0.0:
                return 1.0
            norm_sq = norm / float(vector.norm())
            vector = image / norm
        return 2.0 * norm_sq


@dataclass
class SolverResult:
    """The solver's answer and how it got there."""

    weights: torch.Tensor
    objective: float
    gap: float
    iterations: int
    converged: bool
    reason: str
    lipschitz: float
    restarts: int
    seconds: float
    trace: dict[str, list[float]] = field(default_factory=dict)
    """``objective``: f(x) at start and after each iteration; ``duality_gap``: every check."""

    def summary(self) -> dict[str, object]:
        """JSON-ready diagnostics (the full per-iteration trace included)."""
        return {
            "objective": self.objective,
            "duality_gap": self.gap,
            "iterations": self.iterations,
            "converged": self.converged,
            "stop_reason": self.reason,
            "lipschitz": self.lipschitz,
            "restarts": self.restarts,
            "trace": self.trace,
        }


def solve(
    problem: MomentProblem,
    start: torch.Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    check_every: int = 5,
    progress: bool | None = False,
) -> SolverResult:
    """Minimize f over the capped simplex by accelerated projected gradient from ``start``.

    FISTA with the adaptive step of Scheinberg, Goldfarb & Bai (2014): each iteration first
    tries a 20% smaller Lipschitz estimate (so steps grow where f is locally flat) and
    backtracks when the quadratic upper bound fails; momentum restarts when f increases.
    Every ``check_every`` iterations the Frank–Wolfe gap g(x)ᵀ(x − v*) bounds f(x) − f*; the
    solver stops when it is ≤ tol·f(x) (relative accuracy tol), when f(x) ≤ (tol·‖b‖)²
    (every moment within tol of its target), or after ``max_iter`` iterations.
    """
    began = time.perf_counter()
    cap = problem.cap
    x, tau = _project(start.to(problem.moments.device), cap)
    ux = problem.moments_of(x)
    fx = problem.objective(ux)
    x_prev, ux_prev = x, ux
    momentum = 1.0
    lipschitz = problem.lipschitz_estimate()
    feasible_level = (tol * float(problem.target.norm())) ** 2
    trace: dict[str, list[float]] = {"objective": [fx], "duality_gap": []}
    restarts = 0
    gap = math.inf
    reason = "max_iter"
    iteration = 0
    if fx <= feasible_level:
        reason, max_iter = "moments matched", 0
    with progress_bar(max_iter, "moment matching", progress, unit="iter") as bar:
        for iteration in range(1, max_iter + 1):
            previous_lipschitz = lipschitz
            lipschitz *= 0.8
            while True:
                ratio = lipschitz / previous_lipschitz
                next_momentum = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * ratio * momentum**2))
                beta = (momentum - 1.0) / next_momentum
                y = x + beta * (x - x_prev) if beta else x
                uy = ux + beta * (ux - ux_prev) if beta else ux
                fy = problem.objective(uy)
                gradient = problem.gradient(uy)
                x_new, tau = _project(y - gradient / lipschitz, cap, tau=tau)
                u_new = problem.moments_of(x_new)
                f_new = problem.objective(u_new)
                step = x_new - y
                bound = fy + float(gradient @ step) + 0.5 * lipschitz * float(step @ step)
                if f_new <= bound + 1e-12 * abs(fy):
                    break
                lipschitz *= 2.0
            if f_new > fx:
                restarts += 1
                momentum = 1.0
                x_prev, ux_prev = x, ux
            else:
                x_prev, ux_prev = x, ux
                x, ux, fx, momentum = x_new, u_new, f_new, next_momentum
            trace["objective"].append(fx)
            bar.update(1)
            if fx <= feasible_level:
                reason = "moments matched"
                break
            if iteration % check_every == 0 or iteration == max_iter:
                gap = duality_gap(problem, x, ux)
                trace["duality_gap"].append(gap)
                bar.set_postfix(objective=f"{fx:.3e}", gap=f"{gap:.1e}")
                if gap <= tol * fx:
                    reason = "duality gap"
                    break
    if reason != "duality gap":
        gap = duality_gap(problem, x, ux)
    return SolverResult(
        weights=x,
        objective=fx,
        gap=gap,
        iterations=iteration,
        converged=reason != "max_iter",
        reason=reason,
        lipschitz=lipschitz,
        restarts=restarts,
        seconds=time.perf_counter() - began,
        trace=trace,
    )


def duality_gap(problem: MomentProblem, s: torch.Tensor, moments: torch.Tensor) -> float:
    """Frank–Wolfe gap max_v ∇f(s)ᵀ(s − v) over the capped simplex: an upper bound on f(s) − f*."""
    gradient = problem.gradient(moments)
    vertex = capped_simplex_minimizer(gradient, problem.cap)
    return max(0.0, float(gradient @ (s - vertex)))
