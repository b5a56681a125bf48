"""The moment-matching problem of SkMM and its solver on the capped simplex.

With Σ̃ = VΛVᵀ and P_ij = (v_jᵀ g̃_i)² (so Σ_i P_ij / N = λ_j), the paper's diagonal problem

    min_{s ∈ [0, 1/n]^N, Σs = 1}  min_{γ_j ≥ 1/c}  Σ_j ((Pᵀs)_j − γ_j λ_j)²

has the inner minimum in closed form (γ_j = max(1/c, (Pᵀs)_j / λ_j)), leaving the smooth
convex f(s) = Σ_j (λ_j/c − (Pᵀs)_j)_+². :func:`solve` minimizes it by accelerated projected
gradient (FISTA with backtracking and function-value restarts) with the exact projection
onto the capped simplex; the Frank–Wolfe duality gap certifies how far from optimal it stops.
Each iteration costs two passes over P: O(N·k).

P, s and the gradient are held as this rank's rows (:mod:`skmm.rows`); what crosses ranks
is Pᵀs (a k-vector), inner products, and the projection's sums and counts, all added in
block order, so 1 and P ranks take the same steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .progress import progress_bar
from .rows import Layout

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
    y: torch.Tensor,
    cap: float,
    total: float = 1.0,
    tau: float | None = None,
    layout: Layout | None = None,
) -> tuple[torch.Tensor, float]:
    """:func:`project_capped_simplex` from a starting threshold ``tau``; returns (s, τ).

    With a ``layout``, ``y`` is this rank's part of the vector and every sum, count, min and
    max is taken over all ranks.
    """
    layout = layout or Layout.single(y.numel())
    y = y.to(torch.float64)
    size = layout.n_rows
    if cap <= 0 or total <= 0:
        raise ValueError(f"cap and total must be > 0, got cap={cap}, total={total}")
    if size * cap < total * (1 - 1e-12):
        raise ValueError(f"infeasible: {size} entries capped at {cap} cannot sum to {total}")
    lo, hi = layout.extremes(y)
    tolerance = 1e-14 * max(total, 1.0)
    within_bounds = lo >= 0.0 and hi <= cap
    fresh_tau = tau is None or not lo - cap < tau < hi
    mass = layout.total(y) if within_bounds or fresh_tau else math.nan  # Σy only when needed
    if within_bounds and abs(mass - total) <= tolerance:
        return y.clone(), 0.0  # already feasible: its own projection (and support) exactly
    lo -= cap
    if fresh_tau:
        tau = min(max((mass - total) / size, lo), hi)
    for _ in range(200):
        shifted = y - tau
        free = (shifted > 0) & (shifted < cap)
        free_sum, free_count, capped_count = layout.totals(
            torch.where(free, y, 0.0), free.to(torch.float64), (shifted >= cap).to(torch.float64)
        )
        n_free, n_capped = int(free_count), int(capped_count)
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
    mass, free_count = layout.totals(projected, free.to(torch.float64))
    residual, n_free = total - mass, int(free_count)
    if residual != 0.0 and n_free:
        projected[free] += residual / n_free
        projected.clamp_(0.0, cap)
    return projected, tau


def capped_simplex_minimizer(
    gradient: torch.Tensor, cap: float, total: float = 1.0, layout: Layout | None = None
) -> torch.Tensor:
    """argmin_v gᵀv over the capped simplex: cap on the smallest entries of g, rest on the next.

    Ties go to the lower position; with a ``layout``, over every rank's entries.
    """
    layout = layout or Layout.single(gradient.numel())
    n_full = min(math.floor(total / cap + 1e-9), layout.n_rows)
    smallest = layout.smallest(gradient, min(n_full + 1, layout.n_rows)) - layout.start
    vertex = torch.zeros_like(gradient, dtype=torch.float64)
    full = smallest[:n_full]
    full = full[(full >= 0) & (full < gradient.numel())]
    vertex[torch.as_tensor(full, device=gradient.device)] = cap
    remainder = total - n_full * cap
    if remainder > 1e-15 and n_full < layout.n_rows:
        nxt = int(smallest[n_full])
        if 0 <= nxt < gradient.numel():
            vertex[nxt] = remainder
    return vertex


class MomentProblem:
    """f(s) = Σ_j (b_j − (Pᵀs)_j)_+² over s ∈ [0, cap]^N with Σs = 1.

    ``moments`` is P (N × k; with a ``layout``, this rank's rows of it), ``target`` is
    b = λ/c (k,). P is kept in float64 when it has at most 2^22 entries in all and in
    float32 beyond (products are still accumulated into float64). It is stored by block,
    column-major, so that P·r is computed row by row and Pᵀs block by block with results
    that do not depend on how the rows are split over ranks (:mod:`skmm.rows`).
    """

    def __init__(
        self,
        moments: torch.Tensor,
        target: torch.Tensor,
        cap: float,
        layout: Layout | None = None,
    ) -> None:
        self.layout = layout or Layout.single(int(moments.shape[0]))
        entries = self.layout.n_rows * int(moments.shape[1])
        dtype = torch.float64 if entries <= FLOAT64_MOMENTS_LIMIT else torch.float32
        self._columns = [
            moments[lo:hi].to(dtype).T.contiguous() for lo, hi in self.layout.local_blocks()
        ]
        self.n_directions = int(moments.shape[1])
        self.device = moments.device
        self.dtype = dtype
        self.target = target.to(device=moments.device, dtype=torch.float64)
        self.cap = cap

    @property
    def moments(self) -> torch.Tensor:
        """P: this rank's rows, (n_local, k)."""
        if not self._columns:
            return torch.zeros(0, self.n_directions, dtype=self.dtype, device=self.device)
        return torch.cat([block.T for block in self._columns])

    @property
    def size(self) -> int:
        return self.layout.n_rows

    def moments_of(self, s: torch.Tensor) -> torch.Tensor:
        """Pᵀs: the weighted moments of s along each direction (float64)."""
        s = s.to(self.dtype)
        parts = [  # a fresh copy of each slice: the product's rounding can depend on alignment
            (block @ s[lo:hi].clone()).to(torch.float64)
            for block, (lo, hi) in zip(self._columns, self.layout.local_blocks(), strict=True)
        ]
        like = torch.zeros(self.n_directions, dtype=torch.float64, device=self.device)
        return self.layout.fold(parts, like)

    def times(self, vector: torch.Tensor) -> torch.Tensor:
        """P·v for this rank's rows (float64), each row's value independent of the others."""
        vector = vector.to(self.dtype)
        parts = [(block.T @ vector).to(torch.float64) for block in self._columns]
        if not parts:
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        return torch.cat(parts)

    def shortfall(self, moments: torch.Tensor) -> torch.Tensor:
        """(b − Pᵀs)_+ from the moments Pᵀs."""
        return (self.target - moments).clamp_min(0.0)

    def objective(self, moments: torch.Tensor) -> float:
        """f from the moments Pᵀs."""
        return float((self.shortfall(moments) ** 2).sum())

    def gradient(self, moments: torch.Tensor) -> torch.Tensor:
        """∇f(s) = −2 P (b − Pᵀs)_+ from the moments Pᵀs."""
        return self.times(self.shortfall(moments)).mul_(-2.0)

    def restricted(self, inside: torch.Tensor) -> MomentProblem:
        """The same problem over this rank's rows where ``inside`` holds (the others held at
        0); each row keeps its block, so the restricted problem is split alike on any P."""
        parts = [
            block.T[inside[lo:hi]]
            for block, (lo, hi) in zip(self._columns, self.layout.local_blocks(), strict=True)
        ]
        rows = torch.cat(parts) if parts else self.moments
        return MomentProblem(rows, self.target, self.cap, layout=self.layout.subset(inside))

    def lipschitz_estimate(self, iterations: int = 12) -> float:
        """2‖P‖₂², estimated by power iteration on PᵀP from the all-ones vector."""
        vector = torch.ones(self.n_directions, dtype=torch.float64, device=self.device)
        norm_sq = 0.0
        for _ in range(iterations):
            image = self.moments_of(self.times(vector))
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
    ``working_set`` rows are added per round (default n + k for a cap of 1/n and k
    directions, used when the pool has over four times as many rows); 0 solves on all rows.
    The stopping rule is the same, with the gap taken over the whole pool. ``start`` is this
    rank's part of the starting point.
    """
    began = time.perf_counter()
    layout = problem.layout
    add = _working_set_rows(problem) if working_set is None else working_set
    show = progress if layout.rank == 0 else False
    with progress_bar(max_iter, "moment matching", show, unit="iter") as bar:
        if add and add * 4 < problem.size:
            return _solve_on_working_sets(problem, start, max_iter, tol, check_every, add, bar)
        x = _project(start.to(problem.device), problem.cap, layout=layout)[0]
        return _fista(problem, x, max_iter, tol, check_every, bar, began)


def _working_set_rows(problem: MomentProblem) -> int:
    """Rows added per working-set round: n + k, n = ⌈1/cap⌉ rows at the cap, k directions
    (the optimum's support has about n + k rows; 2(n + k) made every round's set larger and
    FISTA slower for the same objective: docs/performance.md §2)."""
    return math.ceil(1.0 / problem.cap - 1e-9) + problem.n_directions


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
    Passes over all N rows happen once per round instead of twice per iteration. Rows are
    ranked by (gradient, position) over every rank, so W is the same on any number of ranks.
    """
    began = time.perf_counter()
    cap, layout = problem.cap, problem.layout
    device = problem.device
    x = _project(start.to(device), cap, layout=layout)[0]
    moments = problem.moments_of(x)
    objective = problem.objective(moments)
    gradient = problem.gradient(moments)
    inside = x > 0
    inside[_smallest_outside(gradient, inside, add, layout, math.inf)] = True
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
        trace["working_set"].append(layout.total(inside.to(torch.float64)))
        if objective <= feasible_level or iterations >= max_iter:
            inner = None
        else:
            restricted = problem.restricted(inside)
            inner = _fista(
                restricted,
                x[inside],
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
            x = torch.zeros(layout.n_local, dtype=torch.float64, device=device)
            x[inside] = inner.weights
            moments = restricted.moments_of(inner.weights)
            objective = inner.objective
            gradient = problem.gradient(moments)
        gap = _gap(gradient, x, cap, layout)
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
                pool = free if layout.total(free.to(torch.float64)) > 0 else held
                threshold = layout.extremes(gradient[pool])[1]
                joining = _smallest_outside(gradient, inside, add, layout, threshold)
                if layout.all_ranks([float(joining.numel())]).sum() > 0:
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


def _smallest_outside(
    gradient: torch.Tensor, inside: torch.Tensor, count: int, layout: Layout, below: float
) -> torch.Tensor:
    """This rank's local positions among the ``count`` rows outside ``inside`` of smallest
    (gradient, position) over every rank, keeping those with gradient < ``below``."""
    outside = gradient.masked_fill(inside, math.inf)
    positions = layout.smallest(outside, count) if count > 0 else np.empty(0, dtype=np.int64)
    mine = positions[(positions >= layout.start) & (positions < layout.stop)] - layout.start
    local = torch.as_tensor(mine, dtype=torch.int64, device=gradient.device)
    return local[outside[local] < below]


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
    cap, layout = problem.cap, problem.layout
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
            x_new, tau = _project(y - gradient / lipschitz, cap, tau=tau, layout=layout)
            u_new = problem.moments_of(x_new)
            f_new = problem.objective(u_new)
            step = x_new - y
            along, length = layout.totals(gradient * step, step * step)
            bound = fy + along + 0.5 * lipschitz * length
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
    return _gap(problem.gradient(moments), s, problem.cap, problem.layout)


def _gap(gradient: torch.Tensor, s: torch.Tensor, cap: float, layout: Layout) -> float:
    """gᵀ(s − v*) over every rank's rows, v* the capped-simplex vertex minimizing gᵀv."""
    vertex = capped_simplex_minimizer(gradient, cap, layout=layout)
    return max(0.0, layout.dot(gradient, s - vertex))
