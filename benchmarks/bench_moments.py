"""Moment matching (the diagonal objective): skmm's solver beside the paper's research solver.

Problem (the paper's diagonal objective, docs/design.md §2): with Σ̃ = VΛVᵀ of an (N, m)
sketch and P_ij = (v_jᵀg̃_i)²,

    min_{s ∈ [0,1/n]^N, Σs = 1}  min_{γ_j ≥ 1/c}  Σ_j ((Pᵀs)_j − γ_j λ_j)²,

whose value at s is f(s) = Σ_j (λ_j/c − (Pᵀs)_j)_+² (γ in closed form). Both solvers start from
the paper's start, s = 1/n on n uniformly drawn rows, and are scored by f.

- skmm: ``skmm.moments.solve`` with its defaults (max_iter 1000, tol 1e-4; working sets of
  rows for large N, FISTA inside, the Frank–Wolfe gap over all rows as the stop).
- research: a re-implementation of the published research solver (Adam on (s, γ) jointly, lr
  1e-2 as in its ``configs/selection/cov.yaml``, γ initialized at 1/c; after every step s is
  clamped to [0, 1/n] and renormalized to sum 1, and γ clamped to ≥ 1/c), 10⁴ iterations,
  without its known defects (weights enter as s_i, not s_i²; no extra sparsity term). Its
  gradient is written out (2P(Pᵀs − γ⊙λ), −2λ⊙(Pᵀs − γ⊙λ)), as autograd would give it.
  Long runs stop at --research-seconds; the table then says how many iterations ran and
  extrapolates the time of 10⁴.

Sketch: N rows of m = 512 Gaussian features, column j scaled by j^-0.75 (a decaying spectrum),
taken as G̃ directly; P is stored in float32 beyond 2^22 entries, as skmm does.

    python benchmarks/bench_moments.py            # N = 16,000, 100,000, 1,000,000
    python benchmarks/bench_moments.py --quick    # seconds (CI smoke)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from common import fmt_seconds, preamble, set_threads, table

from skmm.moments import MomentProblem, solve
from skmm.spectrum import spectrum

RESEARCH_LR = 1e-2
RESEARCH_ITERATIONS = 10_000
CHUNK_ROWS = 65_536


def make_sketch(rows: int, dim: int, seed: int) -> torch.Tensor:
    """N rows of m standard normal features, column j scaled by j^-0.75 (float32)."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1) ** -0.75).astype(np.float32)
    sketch = torch.empty(rows, dim)
    for start in range(0, rows, CHUNK_ROWS):
        count = min(CHUNK_ROWS, rows - start)
        block = rng.standard_normal((count, dim), dtype=np.float32) * scale
        sketch[start : start + count] = torch.from_numpy(block)
    return sketch


def make_problem(rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(P float32 (N, m), eigenvalues, seconds for spectrum + P), built in row chunks."""
    sketch = make_sketch(rows, dim, seed)
    began = time.perf_counter()
    spec = spectrum(sketch)
    moments = torch.empty(rows, dim)
    for start in range(0, rows, CHUNK_ROWS):
        part = sketch[start : start + CHUNK_ROWS].double() @ spec.eigenvectors
        moments[start : start + CHUNK_ROWS] = part.square_()
    return moments, spec.eigenvalues, time.perf_counter() - began


@dataclass
class Trajectory:
    """f after each iteration with its wall time, the iterations run and the solver's final f."""

    objective: list[float]
    seconds: list[float]
    iterations: int
    final: float
    note: str = ""

    def first_reaching(self, level: float) -> float:
        """Seconds until f ≤ level first held (inf if never)."""
        for value, seconds in zip(self.objective, self.seconds, strict=True):
            if value <= level:
                return seconds
        return math.inf


def research_solver(
    problem: MomentProblem,
    eigenvalues: torch.Tensor,
    c: float,
    start: torch.Tensor,
    iterations: int,
    lr: float,
    seconds_cap: float,
) -> Trajectory:
    """Adam on (s, γ) with clamp-and-renormalize after each step (see the module doc)."""
    lam = eigenvalues.to(torch.float64)
    cap = problem.cap
    s = start.clone().requires_grad_(True)
    gamma = torch.full_like(lam, 1.0 / c).requires_grad_(True)
    optimizer = torch.optim.Adam([s, gamma], lr=lr)
    objective, seconds = [], []
    began = time.perf_counter()
    done = 0
    for _ in range(iterations):
        moments = problem.moments_of(s.detach())
        if done:  # f of the iterate left by the previous step, from this step's Pᵀs
            objective.append(problem.objective(moments))
            seconds.append(time.perf_counter() - began)
        residual = moments - gamma.detach() * lam
        s.grad = problem.gradient_of_residual(residual)
        gamma.grad = -2.0 * residual * lam
        optimizer.step()
        with torch.no_grad():
            s.clamp_(0.0, cap)
            s.div_(s.sum())
            gamma.clamp_(min=1.0 / c)
        done += 1
        if time.perf_counter() - began > seconds_cap:
            break
    objective.append(problem.objective(problem.moments_of(s.detach())))
    seconds.append(time.perf_counter() - began)
    note = "" if done == iterations else f"stopped at {done:,} of {iterations:,} (time cap)"
    return Trajectory(objective, seconds, done, objective[-1], note)


class ResearchProblem(MomentProblem):
    """MomentProblem plus the research loss's gradient in s: 2P(Pᵀs − γ⊙λ)."""

    def gradient_of_residual(self, residual: torch.Tensor) -> torch.Tensor:
        return self.times(residual).mul_(2.0)


def skmm_solver(problem: MomentProblem, start: torch.Tensor) -> tuple[Trajectory, str]:
    result = solve(problem, start)
    trajectory = Trajectory(
        result.trace["objective"], result.trace["seconds"], result.iterations, result.objective
    )
    rounds = len(result.trace.get("working_set", []))
    detail = f"{result.reason}, gap {result.gap:.1e}" + (f", {rounds} rounds" if rounds else "")
    return trajectory, detail


def run_case(
    rows: int, n: int, c: float, problem_parts: tuple, research_seconds: float, lr: float
) -> list[object]:
    moments, eigenvalues, build_seconds = problem_parts
    problem = ResearchProblem(moments, eigenvalues / c, 1.0 / n)
    start = torch.zeros(rows, dtype=torch.float64)
    chosen = np.random.default_rng(1).choice(rows, n, replace=False)
    start[torch.from_numpy(chosen)] = 1.0 / n
    ours, detail = skmm_solver(problem, start)
    research = research_solver(
        problem, eigenvalues, c, start, RESEARCH_ITERATIONS, lr, research_seconds
    )
    level = research.final * (1 + 1e-6)
    per_iteration = research.seconds[-1] / research.iterations
    research_total = per_iteration * RESEARCH_ITERATIONS
    ours_reach = ours.first_reaching(level)
    research_reach = research.first_reaching(level)
    ours_total = ours.seconds[-1]
    return [
        f"{rows:,}",
        n,
        c,
        f"{research.final:.3e}",
        f"{ours.final:.3e}",
        fmt_seconds(research_total) + (" (extrapolated)" if research.note else ""),
        fmt_seconds(research_reach),
        fmt_seconds(ours_reach),
        f"**{research_total / ours_reach:,.0f}×**" if ours_reach > 0 else "∞",
        f"{research_reach / ours_reach:,.1f}×" if ours_reach > 0 else "∞",
        fmt_seconds(ours_total),
        detail,
        f"{1e3 * per_iteration:.1f}",
        fmt_seconds(build_seconds),
        research.note or f"{research.iterations:,} iterations",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke, seconds)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="N values")
    parser.add_argument("--dim", type=int, default=512, help="m, the sketch dimension")
    parser.add_argument("--fraction", type=float, default=0.01, help="n = fraction·N")
    parser.add_argument("--c", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--lr", type=float, default=RESEARCH_LR, help="research solver's Adam lr")
    parser.add_argument(
        "--research-seconds", type=float, default=None, help="time cap per research run"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    set_threads(args.threads)
    sizes = args.sizes or ([500, 1_500] if args.quick else [16_000, 100_000, 1_000_000])
    dim = 64 if args.quick and args.dim == 512 else args.dim
    cap_seconds = args.research_seconds or (0.3 if args.quick else 300.0)
    preamble("Moment matching: skmm's solver beside the research solver")
    rows_out = []
    for rows in sizes:
        parts = make_problem(rows, dim, seed=0)
        n = max(2, round(args.fraction * rows))
        for c in args.c:
            rows_out.append(run_case(rows, n, c, parts, cap_seconds, args.lr))
        del parts
    print(
        f"## m = {dim}, n = {args.fraction:g}·N, start s = 1/n on n uniform rows; research: "
        f"Adam lr {args.lr:g}, {RESEARCH_ITERATIONS:,} iterations\n"
    )
    print(
        table(
            [
                "N",
                "n",
                "c",
                "research final f",
                "skmm final f",
                "research time (10⁴ it.) s",
                "research first reaches its final f, s",
                "skmm reaches research's final f, s",
                "speed-up (full research run)",
                "speed-up (research's first reach)",
                "skmm total s",
                "skmm stop",
                "research ms/it",
                "spectrum + P s",
                "research run",
            ],
            rows_out,
        )
    )
    print(
        "\n- f = Σ_j (λ_j/c − (Pᵀs)_j)_+²; times are wall seconds from each solver's start "
        "(spectrum and P excluded, shown apart); one run each (the research run is long)"
    )


if __name__ == "__main__":
    main()
