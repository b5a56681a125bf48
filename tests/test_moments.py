import itertools

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skmm.moments import (
    MomentProblem,
    capped_simplex_minimizer,
    duality_gap,
    project_capped_simplex,
    solve,
)
from skmm.spectrum import spectrum


def _project_oracle(y, cap, total=1.0):
    s = cp.Variable(y.size)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(s - y)), [s >= 0, s <= cap, cp.sum(s) == total])
    problem.solve(solver=cp.CLARABEL)
    return s.value


@settings(max_examples=200, deadline=None)
@given(
    y=arrays(np.float64, st.integers(1, 60), elements=st.floats(-1e3, 1e3)),
    cap_scale=st.floats(1.0, 50.0),
)
def test_projection_is_feasible(y, cap_scale):
    cap = cap_scale / y.size
    s = project_capped_simplex(torch.from_numpy(y), cap).numpy()
    assert s.min() >= 0.0
    assert s.max() <= cap
    assert abs(s.sum() - 1.0) <= 1e-12


@settings(max_examples=100, deadline=None)
@given(
    y=arrays(np.float64, st.integers(2, 40), elements=st.floats(-10, 10)),
    cap_scale=st.floats(1.0, 10.0),
)
def test_projection_satisfies_the_optimality_conditions(y, cap_scale):
    cap = cap_scale / y.size
    s = project_capped_simplex(torch.from_numpy(y), cap).numpy()
    # s = clip(y − τ, 0, cap) for one τ: free entries share y − s, capped ones have y − s ≥ τ
    # and zero ones have y ≤ τ.
    free = (s > 1e-12) & (s < cap - 1e-12)
    if free.any():
        tau = np.median((y - s)[free])
        np.testing.assert_allclose((y - s)[free], tau, atol=1e-9)
        assert np.all(y[s <= 1e-12] <= tau + 1e-9)
        assert np.all(y[s >= cap - 1e-12] - cap >= tau - 1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_projection_matches_an_independent_qp_solver(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(3, 50))
    y = rng.standard_normal(size) * rng.choice([0.01, 1.0, 100.0])
    cap = float(rng.uniform(1.0, 5.0)) / size
    ours = project_capped_simplex(torch.from_numpy(y), cap).numpy()
    oracle = _project_oracle(y, cap)
    # The interior-point oracle is accurate to its own tolerance; ours must be at least as close.
    assert np.sum((ours - y) ** 2) <= np.sum((oracle - y) ** 2) * (1 + 1e-9) + 1e-12
    np.testing.assert_allclose(ours, oracle, atol=1e-5)


def test_projection_of_a_feasible_point_is_itself():
    s = np.full(10, 0.1)
    np.testing.assert_allclose(project_capped_simplex(torch.from_numpy(s), 0.2).numpy(), s)


def test_projection_with_ties_and_warm_start_far_away():
    y = torch.tensor([1.0, 1.0, 1.0, 1.0, -5.0], dtype=torch.float64)
    s = project_capped_simplex(y, 0.5)
    np.testing.assert_allclose(s.numpy(), [0.25, 0.25, 0.25, 0.25, 0.0])


def test_projection_rejects_infeasible_caps():
    with pytest.raises(ValueError, match="infeasible"):
        project_capped_simplex(torch.zeros(3), 0.2)


def test_linear_minimizer_puts_the_cap_on_the_smallest_gradients():
    gradient = torch.tensor([3.0, -1.0, 2.0, -5.0, 0.0], dtype=torch.float64)
    vertex = capped_simplex_minimizer(gradient, cap=0.4)
    np.testing.assert_allclose(vertex.numpy(), [0.0, 0.4, 0.0, 0.4, 0.2])


def _random_problem(seed, pool=40, dim=6, n=8, c=0.7):
    rng = np.random.default_rng(seed)
    scales = rng.uniform(0.1, 3.0, size=dim)
    g = torch.from_numpy(rng.standard_normal((pool, dim)) * scales)
    spec = spectrum(g)
    moments = (g @ spec.eigenvectors).square()
    return MomentProblem(moments, spec.eigenvalues / c, 1.0 / n), n


def _oracle_objective(problem):
    moments = problem.moments.numpy()
    target = problem.target.numpy()
    s = cp.Variable(moments.shape[0])
    shortfall = cp.pos(target - moments.T @ s)
    constraints = [s >= 0, s <= problem.cap, cp.sum(s) == 1]
    value = cp.Problem(cp.Minimize(cp.sum_squares(shortfall)), constraints).solve(
        solver=cp.CLARABEL
    )
    return float(value)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("c", [0.3, 0.7, 1.5])
def test_solver_reaches_the_oracle_objective(seed, c):
    problem, n = _random_problem(seed, c=c)
    start = torch.zeros(problem.size, dtype=torch.float64)
    start[:n] = 1.0 / n
    result = solve(problem, start, max_iter=5000, tol=1e-7)
    oracle = _oracle_objective(problem)
    scale = float(problem.target.square().sum())
    assert result.objective <= oracle + 1e-6 * scale
    assert result.objective >= oracle - 1e-6 * scale
    weights = result.weights.numpy()
    assert weights.min() >= 0 and weights.max() <= problem.cap + 1e-15
    assert abs(weights.sum() - 1) < 1e-12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("c", [0.3, 0.7, 1.5])
def test_working_set_solver_reaches_the_oracle_objective(seed, c):
    problem, n = _random_problem(seed, pool=600, c=c)
    start = torch.zeros(problem.size, dtype=torch.float64)
    start[:n] = 1.0 / n
    result = solve(problem, start, max_iter=2000, tol=1e-6)
    assert result.trace["working_set"][0] < problem.size  # solved on a working set
    oracle = _oracle_objective(problem)
    scale = float(problem.target.square().sum())
    assert abs(result.objective - oracle) <= 1e-6 * scale
    weights = result.weights.numpy()
    assert weights.min() >= 0 and weights.max() <= problem.cap + 1e-15
    assert abs(weights.sum() - 1) < 1e-12
    # The certificate is the gap over the whole pool, not over the working set.
    assert result.gap == pytest.approx(
        duality_gap(problem, result.weights, problem.moments_of(result.weights))
    )
    objectives = result.trace["objective"]
    assert len(objectives) == result.iterations + 1 == len(result.trace["seconds"])
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(objectives))


def test_working_set_and_full_solver_agree():
    problem, n = _random_problem(5, pool=600, c=0.5)
    start = torch.zeros(problem.size, dtype=torch.float64)
    start[:n] = 1.0 / n
    windowed = solve(problem, start, max_iter=5000, tol=1e-8)
    full = solve(problem, start, max_iter=5000, tol=1e-8, working_set=0)
    assert "working_set" in windowed.trace and "working_set" not in full.trace
    assert windowed.objective == pytest.approx(full.objective, rel=1e-6, abs=1e-12)


def test_solver_trace_and_certificate():
    problem, n = _random_problem(0, c=0.3)
    start = torch.zeros(problem.size, dtype=torch.float64)
    start[:n] = 1.0 / n
    result = solve(problem, start, max_iter=3000, tol=1e-6)
    assert result.converged and result.reason == "duality gap"
    objectives = result.trace["objective"]
    assert len(objectives) == result.iterations + 1
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(objectives))
    assert result.gap <= 1e-6 * result.objective
    assert result.gap == pytest.approx(
        duality_gap(problem, result.weights, problem.moments_of(result.weights))
    )


def test_solver_stops_at_matched_moments_when_the_target_is_reachable():
    problem, n = _random_problem(1, c=2.0)
    start = torch.zeros(problem.size, dtype=torch.float64)
    start[:n] = 1.0 / n
    result = solve(problem, start, max_iter=2000)
    assert result.reason == "moments matched"
    assert result.objective <= (1e-4 * float(problem.target.norm())) ** 2


def test_objective_and_gradient_match_autograd():
    problem, _ = _random_problem(2)
    s = torch.rand(problem.size, dtype=torch.float64)
    s /= s.sum()
    s.requires_grad_(True)
    value = ((problem.target - problem.moments.T @ s).clamp_min(0) ** 2).sum()
    value.backward()
    moments = problem.moments_of(s.detach())
    assert problem.objective(moments) == pytest.approx(float(value.detach()))
    torch.testing.assert_close(problem.gradient(moments), s.grad)


def test_lipschitz_estimate_bounds_the_curvature():
    problem, _ = _random_problem(3)
    exact = 2 * float(torch.linalg.matrix_norm(problem.moments, ord=2)) ** 2
    assert problem.lipschitz_estimate(iterations=50) == pytest.approx(exact, rel=1e-6)
