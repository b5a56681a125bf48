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
FIRST_ROUND_ITERATIONS = 50
OUTSIDE_GAP_FACTOR = 2.0


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

    def restricted(self, rows: torch.Tensor) -> MomentProblem:
        """The same problem over the given rows only (the others held at 0)."""
        return MomentProblem(self.moments[rows], self.target, self.cap)

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
    working_set: int | None = None,
    progress: bool | None = False,
) -> SolverResult:
    """Minimize f over the capped simplex by accelerated projected gradient from ``start``.

    FISTA with the adaptive step of Scheinberg, Goldfarb & Bai (2014): each iteration first
    tries a 20% smaller Lipschitz estimate (so steps grow where f is locally flat) and
    backtracks when the quadratic upper bound fails; momentum restarts when f increases.
    Every ``check_every`` iterations the Frank–Wolfe gap g(x)ᵀ(x − v*) bounds f(x) − f*; the
    solver stops when it is ≤ tol·f(x) (relative accuracy tol), when f(x) ≤ (tol·‖b‖)²
    (every moment within tol of its target), or after ``max_iter`` iterations.

    Large pools are solved on a working set of rows (see :func:`_solve_on_working_sets`):
    ``working_set`` rows are added per round (default 2·(n + k) for a cap of 1/n and k
    directions, used when the pool has over four times as many rows); 0 solves on all rows.
    The stopping rule is the same, with the gap taken over the whole pool.
    """
    began = time.perf_counter()
    add = _working_set_rows(problem) if working_set is None else working_set
    if add and add * 4 < problem.size:
        with progress_bar(max_iter, "moment matching", progress, unit="iter") as bar:
            return _solve_on_working_sets(problem, start, max_iter, tol, check_every, add, bar)
    with progress_bar(max_iter, "moment matching", progress, unit="iter") as bar:
        x = _project(start.to(problem.moments.device), problem.cap)[0]
        return _fista(problem, x, max_iter, tol, check_every, bar, began)


def _working_set_rows(problem: MomentProblem) -> int:
    """Rows added per working-set round: 2·(n + k), n = ⌈1/cap⌉ rows at the cap, k directions."""
    return 2 * (math.ceil(1.0 / problem.cap - 1e-9) + int(problem.moments.shape[1]))


def _solve_on_working_sets(
    problem: MomentProblem,
    start: torch.Tensor,
    max_iter: int,
    tol: float,
    check_every: int,
    add: int,
    bar: object,
) -> SolverResult:
    """FISTA on a working set W of rows, grown until the whole pool's optimality conditions hold.

    W starts as the start's support plus the ``add`` rows of smallest gradient. Each round
    runs FISTA on the problem restricted to W (rows outside stay at 0) for at most 50
    iterations in the first round and twice as many in each next one, then takes one pass over
    the pool for the gradient ∇f = −2P(b − Pᵀs)_+. The Frank–Wolfe gap over all rows
    certifies the stop. When it exceeds twice the gap over W (rows outside W would lower f),
    the ``add`` rows outside W of smallest gradient below the restricted solution's threshold
    (those that would take mass) join W; otherwise the next round continues on the same W.
    Passes over all N rows happen once per round instead of twice per iteration.
    """
    began = time.perf_counter()
    size, cap = problem.size, problem.cap
    device = problem.moments.device
    x = _project(start.to(device), cap)[0]
    moments = problem.moments_of(x)
    objective = problem.objective(moments)
    gradient = problem.gradient(moments)
    inside = x > 0
    inside[_smallest(gradient.masked_fill(inside, math.inf), add)] = True
    trace: dict[str, list[float]] = {
        "objective": [objective],
        "duality_gap": [],
        "seconds": [time.perf_counter() - began],
        "working_set": [],
    }
    iterations = restarts = 0
    budget = FIRST_ROUND_ITERATIONS
    lipschitz = math.nan
    feasible_level = (tol * float(problem.target.norm())) ** 2
    while True:
        rows = inside.nonzero().squeeze(1)
        trace["working_set"].append(float(rows.numel()))
        if objective <= feasible_level or iterations >= max_iter:
            inner = None
        else:
            restricted = problem.restricted(rows)
            inner = _fista(
                restricted,
                x[rows],
                min(budget, max_iter - iterations),
                tol,
                check_every,
                bar,
                began,
                offset=iterations,
            )
            iterations += inner.iterations
            budget *= 2
            restarts += inner.restarts
            lipschitz = inner.lipschitz
            for key in ("objective", "seconds"):
                trace[key].extend(inner.trace[key][1:])
            trace["duality_gap"].extend(inner.trace["duality_gap"])
            x = torch.zeros(size, dtype=torch.float64, device=device)
            x[rows] = inner.weights
            moments = restricted.moments_of(inner.weights)
            objective = inner.objective
            gradient = problem.gradient(moments)
        gap = _gap(gradient, x, cap)
        trace["duality_gap"].append(gap)
        if objective <= feasible_level:
            reason = "moments matched"
        elif gap <= tol * objective:
            reason = "duality gap"
        elif iterations >= max_iter:
            reason = "max_iter"
        else:
            if gap > OUTSIDE_GAP_FACTOR * inner.gap:
                held = x > 0
                free = held & (x < cap)
                threshold = float(gradient[free if bool(free.any()) else held].max())
                outside = gradient.masked_fill(inside, math.inf)
                joining = _smallest(outside, add)
                joining = joining[outside[joining] < threshold]
                if joining.numel() > 0:
                    inside[joining] = True
                    continue
            if inner.reason == "max_iter":
                continue
            reason = "no row to add"
        return SolverResult(
            weights=x,
            objective=objective,
            gap=gap,
            iterations=iterations,
            converged=reason != "max_iter",
            reason=reason,
            lipschitz=lipschitz,
            restarts=restarts,
            seconds=time.perf_counter() - began,
            trace=trace,
        )


def _smallest(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` smallest finite entries of ``values`` (fewer if there are not)."""
    count = min(count, int(torch.isfinite(values).sum()))
    return torch.topk(values, count, largest=False, sorted=False).indices


def _fista(
    problem: MomentProblem,
    x: torch.Tensor,
    max_iter: int,
    tol: float,
    check_every: int,
    bar: object,
    began: float,
    offset: int = 0,
) -> SolverResult:
    """The FISTA iterations of :func:`solve` from a feasible ``x`` (``offset``: iterations
    already done, for the progress bar and the gap-check schedule)."""
    cap = problem.cap
    tau = None
    ux = problem.moments_of(x)
    fx = problem.objective(ux)
    x_prev, ux_prev = x, ux
    momentum = 1.0
    lipschitz = problem.lipschitz_estimate()
    feasible_level = (tol * float(problem.target.norm())) ** 2
    trace: dict[str, list[float]] = {
        "objective": [fx],
        "duality_gap": [],
        "seconds": [time.perf_counter() - began],
    }
    restarts = 0
    gap = math.inf
    reason = "max_iter"
    iteration = 0
    if fx <= feasible_level:
        reason, max_iter = "moments matched", 0
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
        trace["seconds"].append(time.perf_counter() - began)
        bar.update(1)
        if fx <= feasible_level:
            reason = "moments matched"
            break
        if (offset + iteration) % check_every == 0 or iteration == max_iter:
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
    return _gap(problem.gradient(moments), s, problem.cap)


def _gap(gradient: torch.Tensor, s: torch.Tensor, cap: float) -> float:
    """gᵀ(s − v*) with v* the capped-simplex vertex minimizing gᵀv."""
    vertex = capped_simplex_minimizer(gradient, cap)
    return max(0.0, float(gradient @ (s - vertex)))
