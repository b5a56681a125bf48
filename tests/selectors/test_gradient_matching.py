"""GLISTER and GRAD-MATCH: golden cases, agreement with materialized-gradient references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

import skmm
from skmm.selectors.gradient_matching import (
    ActiveSetNNLS,
    DenseGradients,
    Glister,
    GradMatch,
    HeadGradients,
    head_residuals,
    nonnegative_omp,
    sketch_head_gradients,
)
from skmm.selectors.probe import LinearProbe, head_gradients
from skmm.sketch import SketchMap

FAST = {"epochs": 3, "batch_size": 16}
METHODS = ("glister", "gradmatch")


def blobs(
    n_rows: int, n_features: int, n_classes: int, seed: int, dtype=np.float64
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes, so the probe keeps non-trivial gradients."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n_rows) % n_classes
    centers = rng.normal(size=(n_classes, n_features))
    features = centers[labels] + 1.5 * rng.normal(size=(n_rows, n_features))
    return features.astype(dtype), labels


def explicit_gradients(probe: LinearProbe, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The (N, C(d+1)) head gradients, materialized."""
    return head_gradients(probe, torch.from_numpy(features), torch.from_numpy(labels)).numpy()


def factored_gradients(
    probe: LinearProbe, features: np.ndarray, labels: np.ndarray
) -> HeadGradients:
    standardized = probe.standardize(torch.from_numpy(features))
    residuals = head_residuals(probe.weight, probe.bias, standardized, torch.from_numpy(labels))
    return HeadGradients(standardized, residuals)


def with_head(probe: LinearProbe, weight: np.ndarray, bias: np.ndarray) -> LinearProbe:
    return LinearProbe(torch.from_numpy(weight), torch.from_numpy(bias), probe.mean, probe.scale)


def glister_reference(
    probe: LinearProbe, features: np.ndarray, labels: np.ndarray, n: int, eta: float, block: int
) -> list[int]:
    """GLISTER with materialized gradients: θ_S = θ_0 − η·mean_S g(θ_0), gain = G(θ_S) ḡ(θ_S)."""
    start_weight, start_bias = probe.weight.numpy(), probe.bias.numpy()
    start_gradients = explicit_gradients(probe, features, labels)
    cut = start_weight.size
    picked: list[int] = []
    current = probe
    while len(picked) < n:
        gradients = explicit_gradients(current, features, labels)
        gains = gradients @ gradients.mean(axis=0)
        gains[picked] = -np.inf
        picked += np.argsort(-gains, kind="stable")[: min(block, n - len(picked))].tolist()
        step = start_gradients[picked].mean(axis=0)
        current = with_head(
            probe,
            start_weight - eta * step[:cut].reshape(start_weight.shape),
            start_bias - eta * step[cut:],
        )
    return picked


def fitted(cls, n: int, features: np.ndarray, labels: np.ndarray, **options):
    return cls(n, random_state=0, **FAST, **options).fit(features, labels)


# ---------------------------------------------------------------- factored gradients


def test_head_gradients_factored_form_matches_materialized():
    features, labels = blobs(40, 5, 3, seed=1)
    selector = fitted(GradMatch, 5, features, labels)
    probe = selector.probe_
    factored = factored_gradients(probe, features, labels)
    explicit = explicit_gradients(probe, features, labels)
    dense = DenseGradients(torch.from_numpy(explicit))
    rng = np.random.default_rng(0)
    vector = torch.from_numpy(rng.normal(size=explicit.shape[1]))
    rows = [3, 0, 17, 5]
    weights = torch.tensor([0.5, 2.0, 1.5, 0.25], dtype=torch.float64)
    np.testing.assert_allclose(
        factored.combine(torch.tensor(rows), weights), weights.numpy() @ explicit[rows], atol=1e-10
    )
    for gradients in (factored, dense):
        assert gradients.n_cols == explicit.shape[1]
        np.testing.assert_allclose(gradients.mean(), explicit.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(gradients.dot(vector), explicit @ vector.numpy(), atol=1e-10)
        np.testing.assert_allclose(gradients.squared_norms(), (explicit**2).sum(axis=1), rtol=1e-10)
        picked = gradients.support(capacity=1)  # grows twice
        for k, row in enumerate(rows):
            inner, target_inner = picked.add(row, vector)
            np.testing.assert_allclose(inner, explicit[rows[: k + 1]] @ explicit[row], atol=1e-10)
            assert target_inner == pytest.approx(explicit[row] @ vector.numpy(), abs=1e-10)
            np.testing.assert_allclose(
                picked.combine(weights[: k + 1]),
                weights[: k + 1].numpy() @ explicit[rows[: k + 1]],
                atol=1e-10,
            )


def test_sketched_head_gradients_are_the_gradients_times_the_jl_map():
    features, labels = blobs(300, 6, 3, seed=2)
    probe = fitted(GradMatch, 5, features, labels).probe_
    explicit = explicit_gradients(probe, features, labels)
    standardized = probe.standardize(torch.from_numpy(features))
    sketched = sketch_head_gradients(probe, standardized, torch.from_numpy(labels), 8, seed=11)
    gamma = SketchMap(explicit.shape[1], 8, "gaussian", 11, dtype=torch.float64).dense().numpy()
    np.testing.assert_allclose(sketched.numpy(), explicit @ gamma, atol=1e-10)


# ---------------------------------------------------------------- NNLS and OMP


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 14),
    lam=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_growing_nnls_agrees_with_scipy_after_every_variable(rows, cols, lam, seed):
    # Variables arrive one at a time, as in the pursuit; every solve is warm-started from the
    # last, and the Cholesky factor kept for the passive set (grown on entry, rotated on
    # exit) must still factor Q restricted to it.
    rng = np.random.default_rng(seed)
    design = rng.normal(size=(rows, cols))
    target = rng.normal(size=rows)
    quadratic = design.T @ design + lam * np.eye(cols)
    linear = design.T @ target
    solver = ActiveSetNNLS(capacity=1)
    for size in range(1, cols + 1):
        k = size - 1
        solver.append(quadratic[k, :k], quadratic[k, k], linear[k])
        found = solver.solve()
        stacked = np.vstack([design[:, :size], math.sqrt(lam) * np.eye(size)])
        expected, _ = nnls(stacked, np.concatenate([target, np.zeros(size)]))
        np.testing.assert_allclose(found, expected, atol=1e-8)
        passive = solver.passive
        assert sorted(passive) == list(np.flatnonzero(found > 0))
        restricted = quadratic[np.ix_(passive, passive)]
        np.testing.assert_allclose(solver.factor @ solver.factor.T, restricted, atol=1e-9)
    # every variable at once, solved from w = 0
    cold = ActiveSetNNLS(capacity=cols)
    for k in range(cols):
        cold.append(quadratic[k, :k], quadratic[k, k], linear[k])
    np.testing.assert_allclose(cold.solve(), found, atol=1e-8)


def test_growing_nnls_refuses_a_singular_system():
    # With c in the range of Q (c = G_S t in the pursuit) a duplicate never enters P; the
    # guard is for rounding at a tiny lam, so the entry is forced here.
    solver = ActiveSetNNLS(capacity=0)
    solver.append(np.zeros(0), 1.0, 1.0)
    solver.append(np.array([1.0]), 1.0, 1.0)  # Q = [[1, 1], [1, 1]]: a duplicate column
    solver._enter(0)
    with pytest.raises(ValueError, match="numerically singular.*larger lam"):
        solver._enter(1)


def orthogonal_case() -> tuple[DenseGradients, torch.Tensor]:
    gradients = torch.diag(torch.tensor([2.0, 1.0, 3.0, 1.0], dtype=torch.float64))
    return DenseGradients(gradients), torch.tensor([1.0, 0.0, 1.5, 0.0], dtype=torch.float64)


def test_omp_on_orthogonal_gradients_golden_lam_one():
    # corr = (2, 0, 4.5, 0): row 2, w = 4.5 / (9 + 1) = 0.45, residual (1, 0, 0.15, 0);
    # corr = (2, 0, ·, 0): row 0, w = 2 / (4 + 1) = 0.4 (orthogonal: row 2 keeps 0.45);
    # residual (0.2, 0, 0.15, 0) is orthogonal to rows 1 and 3: stop.
    gradients, target = orthogonal_case()
    result = nonnegative_omp(gradients, target, 4, lam=1.0)
    assert result.support == [2, 0]
    np.testing.assert_allclose(result.weights, [0.45, 0.4], atol=1e-12)
    assert result.stop == "no_positive_correlation"
    assert result.relative_residual == pytest.approx(0.25 / math.sqrt(3.25))


def test_omp_on_orthogonal_gradients_recovers_exact_weights_without_penalty():
    gradients, target = orthogonal_case()
    result = nonnegative_omp(gradients, target, 3, lam=1e-16)
    assert result.support == [2, 0]
    np.testing.assert_allclose(result.weights, [0.5, 0.5], atol=1e-9)
    assert result.stop == "residual"


def test_omp_refit_sets_an_earlier_pick_to_zero_weight():
    # t = (1, 0). g0 = (1, 1) correlates most (1 > 0.9) and gets w0 = 1/2, residual (½, −½).
    # g1 = (0.9, 0.2) correlates with it (0.35 > 0), but the unconstrained fit on {g0, g1}
    # needs w0 < 0, so the NNLS refit keeps w0 = 0 and w1 = 0.9 / (0.81 + 0.04).
    gradients = DenseGradients(torch.tensor([[1.0, 1.0], [0.9, 0.2]], dtype=torch.float64))
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    result = nonnegative_omp(gradients, target, 2, lam=1e-14)
    assert result.support == [0, 1]
    np.testing.assert_allclose(result.weights, [0.0, 0.9 / 0.85], atol=1e-10)
    assert result.stop == "budget"


def test_factored_and_materialized_omp_agree():
    features, labels = blobs(60, 4, 3, seed=3)
    probe = fitted(GradMatch, 5, features, labels).probe_
    factored = factored_gradients(probe, features, labels)
    dense = DenseGradients(torch.from_numpy(explicit_gradients(probe, features, labels)))
    first = nonnegative_omp(factored, factored.mean(), 12, lam=0.5)
    second = nonnegative_omp(dense, dense.mean(), 12, lam=0.5)
    assert first.support == second.support
    np.testing.assert_allclose(first.weights, second.weights, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------- GRAD-MATCH end to end


def test_gradmatch_first_pick_is_most_aligned_with_the_mean_gradient():
    features, labels = blobs(80, 5, 3, seed=4)
    selector = fitted(GradMatch, 6, features, labels)
    explicit = explicit_gradients(selector.probe_, features, labels)
    assert selector.selection_.indices[0] == int(np.argmax(explicit @ explicit.mean(axis=0)))
    assert selector.selection_.info["gradients"] == "exact"


def test_gradmatch_weights_match_the_mean_gradient_better_than_uniform_weights():
    features, labels = blobs(200, 5, 3, seed=5)
    selector = fitted(GradMatch, 20, features, labels, lam=1e-3)
    explicit = explicit_gradients(selector.probe_, features, labels)
    chosen = explicit[selector.selection_.indices]
    target = explicit.mean(axis=0)
    weights = selector.selection_.weights
    scale = (weights @ chosen) @ target / np.sum((weights @ chosen) ** 2)
    weighted_error = np.linalg.norm(scale * (weights @ chosen) - target)
    assert weighted_error < np.linalg.norm(chosen.mean(axis=0) - target)
    assert weighted_error < 0.5 * np.linalg.norm(target)


def test_gradmatch_sketches_only_when_grad_dim_is_below_the_gradient_columns():
    features, labels = blobs(50, 4, 2, seed=6)
    exact = skmm.select(features, 5, "gradmatch", labels=labels, random_state=1, **FAST)
    wide = skmm.select(features, 5, "gradmatch", labels=labels, random_state=1, grad_dim=10, **FAST)
    sketched = skmm.select(
        features, 5, "gradmatch", labels=labels, random_state=1, grad_dim=4, **FAST
    )
    assert exact.info["gradient_columns"] == 10
    assert exact.info["gradients"] == wide.info["gradients"] == "exact"
    np.testing.assert_array_equal(exact.indices, wide.indices)
    assert sketched.info["gradients"]["grad_dim"] == 4
    assert "sketch" in sketched.info["timings"]


def test_gradmatch_fills_the_budget_uniformly_after_an_early_stop():
    features, labels = blobs(12, 3, 2, seed=7)
    selection = skmm.select(features, 12, "gradmatch", labels=labels, random_state=3, **FAST)
    info = selection.info
    np.testing.assert_array_equal(np.sort(selection.indices), np.arange(12))
    assert info["stop"] in ("residual", "no_positive_correlation")
    assert info["pursuit_picks"] + info["uniform_fill"] == 12
    assert info["uniform_fill"] > 0
    filled = selection.weights[info["pursuit_picks"] :]
    np.testing.assert_array_equal(filled, 0.0)
    assert selection.weights.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- GLISTER


def test_glister_first_pick_is_argmax_of_inner_product_with_mean_gradient():
    features, labels = blobs(80, 5, 3, seed=8)
    selector = fitted(Glister, 4, features, labels)
    explicit = explicit_gradients(selector.probe_, features, labels)
    assert selector.selection_.indices[0] == int(np.argmax(explicit @ explicit.mean(axis=0)))


@pytest.mark.parametrize("block", [1, 3])
def test_glister_matches_materialized_reference(block):
    features, labels = blobs(60, 4, 3, seed=9)
    eta = 20.0
    selector = fitted(Glister, 9, features, labels, eta=eta, greedy_block=block)
    expected = glister_reference(selector.probe_, features, labels, 9, eta, block)
    assert selector.selection_.indices.tolist() == expected
    assert selector.selection_.info["updates"] == math.ceil(9 / block) - 1
    explicit = explicit_gradients(selector.probe_, features, labels)
    static = np.argsort(-(explicit @ explicit.mean(axis=0)), kind="stable")[:9].tolist()
    assert expected != static, "the θ updates should change the picks at this step size"


def test_glister_default_block_caps_the_number_of_updates():
    features, labels = blobs(400, 3, 2, seed=10)
    selection = skmm.select(features, 250, "glister", labels=labels, random_state=0, **FAST)
    assert selection.info["greedy_block"] == 3
    assert selection.info["updates"] == math.ceil(250 / 3) - 1


# ---------------------------------------------------------------- contract


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(METHODS),
    n_rows=st.integers(4, 30),
    n_features=st.integers(1, 5),
    n_classes=st.integers(2, 3),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**20),
)
def test_contract(method, n_rows, n_features, n_classes, fraction, seed):
    features, labels = blobs(n_rows, n_features, n_classes, seed, dtype=np.float32)
    n = max(1, round(fraction * n_rows))
    first = skmm.select(features, n, method, labels=labels, random_state=seed, **FAST)
    again = skmm.select(features, n, method, labels=labels, random_state=seed, **FAST)
    indices = first.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n
    assert indices.min() >= 0 and indices.max() < n_rows
    np.testing.assert_array_equal(indices, again.indices)
    if method == "gradmatch":
        assert (first.weights >= 0).all() and first.weights.sum() == pytest.approx(1.0)
        np.testing.assert_array_equal(first.weights, again.weights)
    else:
        assert first.weights is None


@pytest.mark.parametrize("method", METHODS)
def test_n_equals_one_and_n_equals_pool(method):
    features, labels = blobs(15, 3, 3, seed=12)
    single = skmm.select(features, 1, method, labels=labels, random_state=0, **FAST)
    whole = skmm.select(features, 15, method, labels=labels, random_state=0, **FAST)
    assert single.indices.shape == (1,)
    np.testing.assert_array_equal(np.sort(whole.indices), np.arange(15))


@pytest.mark.parametrize("method", METHODS)
def test_stratified_budgets_are_met(method):
    features, labels = blobs(60, 3, 3, seed=13)
    selection = skmm.select(
        features, 9, method, labels=labels, random_state=0, stratify="balanced", **FAST
    )
    np.testing.assert_array_equal(np.bincount(labels[selection.indices], minlength=3), [3, 3, 3])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("method", METHODS)
def test_labels_are_required(method):
    features, _ = blobs(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match="needs labels"):
        skmm.select(features, 3, method)


@pytest.mark.parametrize("method", METHODS)
def test_a_single_class_is_refused(method):
    features, _ = blobs(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        skmm.select(features, 3, method, labels=np.zeros(10))


@pytest.mark.parametrize(
    ("method", "option", "value", "error", "message"),
    [
        ("glister", "eta", 0.0, ValueError, "eta must be a finite number > 0"),
        ("glister", "eta", "big", TypeError, "eta must be a number"),
        ("glister", "greedy_block", 0, ValueError, "greedy_block must be >= 1"),
        ("glister", "greedy_block", 2.5, TypeError, "greedy_block must be an integer"),
        ("gradmatch", "lam", -1.0, ValueError, "lam must be a finite number > 0"),
        ("gradmatch", "lam", float("nan"), ValueError, "lam must be a finite number > 0"),
        ("gradmatch", "grad_dim", 0, ValueError, "grad_dim must be >= 1"),
        ("gradmatch", "grad_dim", "auto", TypeError, "grad_dim must be an integer"),
        ("glister", "epochs", 0, ValueError, "epochs must be >= 1"),
        ("gradmatch", "lr", -0.1, ValueError, "lr must be a finite number > 0"),
        ("glister", "weight_decay", -1e-3, ValueError, "weight_decay must be a finite number >= 0"),
        ("gradmatch", "weight_decay", True, TypeError, "weight_decay must be a number"),
        ("glister", "batch_size", 0, ValueError, "batch_size must be >= 1"),
        ("gradmatch", "unknown", 1, TypeError, "does not take option"),
    ],
)
def test_bad_options_raise_clear_errors(method, option, value, error, message):
    features, labels = blobs(10, 2, 2, seed=0)
    with pytest.raises(error, match=message):
        skmm.select(features, 3, method, labels=labels, **{option: value})


def test_weight_decay_zero_is_allowed():
    features, labels = blobs(20, 2, 2, seed=0)
    selection = skmm.select(
        features, 4, "glister", labels=labels, random_state=0, weight_decay=0.0, **FAST
    )
    assert selection.indices.shape == (4,)
