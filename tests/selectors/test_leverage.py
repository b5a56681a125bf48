import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import skmm
import skmm.selectors.leverage
from skmm.selectors.leverage import (
    draw_by_scores,
    intrinsic_rank,
    leverage_scores,
    ridge_leverage_scores,
)
from skmm.sketch import sketch


def low_rank(n_rows: int, n_cols: int, rank: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n_rows, rank)) @ rng.standard_normal((rank, n_cols))
    return signal + noise * rng.standard_normal((n_rows, n_cols))


def test_orthogonal_design_takes_its_unit_rows_then_fills_uniformly():
    # Leverage of [e1; e2; 0; 0] is (1, 1, 0, 0): the two unit rows are certain, in order.
    features = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    for seed in range(5):
        selection = skmm.select(features, 2, "leverage", random_state=seed)
        assert selection.indices.tolist() == [0, 1]
        assert selection.info["k"] == 2 and selection.info["uniform_fill"] == 0
    selection = skmm.select(features, 3, "leverage", random_state=0)
    assert selection.indices[:2].tolist() == [0, 1] and selection.indices[2] in (2, 3)
    assert selection.info["uniform_fill"] == 1 and "fewer than n = 3" in selection.info["note"]


def test_truncation_changes_the_golden_top_row():
    # X = [e1; e1; e2]: XᵀX = diag(2, 1). Full leverage (1/2, 1/2, 1) ranks row 2 first; on
    # the top direction alone (k = 1) the scores are (1/2, 1/2, 0): one of the tied rows wins.
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    rows = torch.from_numpy(features)
    np.testing.assert_allclose(leverage_scores(rows, 2).scores, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(leverage_scores(rows, 1).scores, [0.5, 0.5, 0.0])
    top = {"sampling": "top", "random_state": 0}
    assert skmm.select(features, 1, "leverage", k=2, **top).indices.tolist() == [2]
    assert skmm.select(features, 1, "leverage", k=1, **top).indices.tolist() in ([0], [1])
    # Default k = min(n, r̄): r̄ = 1 here (the tail 1 ≤ tr/N = 1), so n = 1 uses k = 1.
    assert skmm.select(features, 1, "leverage", **top).info["k"] == 1


@pytest.mark.parametrize("k", [1, 3, 6])
def test_exact_scores_match_numpy_svd(k):
    features = np.random.default_rng(0).standard_normal((40, 6))
    left = np.linalg.svd(features, full_matrices=False)[0]
    result = leverage_scores(torch.from_numpy(features), k, svd="exact")
    np.testing.assert_allclose(result.scores, (left[:, :k] ** 2).sum(axis=1), atol=1e-10)
    assert result.k == k and result.svd == "exact"


def test_randomized_scores_match_exact_on_a_low_rank_matrix():
    rows = torch.from_numpy(low_rank(300, 200, 6, 1e-4, seed=1))
    exact = leverage_scores(rows, 6, svd="exact")
    randomized = leverage_scores(rows, 6, svd="randomized", seed=3)
    np.testing.assert_allclose(randomized.scores, exact.scores, atol=1e-8)
    np.testing.assert_allclose(randomized.eigenvalues[:6], exact.eigenvalues[:6], rtol=1e-8)
    assert randomized.svd == "randomized" and randomized.intrinsic_rank == exact.intrinsic_rank == 6


def test_auto_svd_is_randomized_for_wide_features_and_a_small_subspace():
    narrow = torch.from_numpy(low_rank(30, 40, 3, 0.0, seed=4))
    wide = torch.from_numpy(low_rank(30, 1100, 3, 0.0, seed=4))
    assert leverage_scores(narrow, 3).svd == "exact"
    assert leverage_scores(wide, 3).svd == "randomized"


def test_default_k_is_the_intrinsic_dimension_capped_by_n():
    features = low_rank(200, 30, 4, 1e-3, seed=2)
    assert skmm.select(features, 10, "leverage", random_state=0).info["k"] == 4
    assert skmm.select(features, 3, "leverage", random_state=0).info["k"] == 3
    # A k beyond the numerical rank is capped at it.
    rank_two = low_rank(50, 8, 2, 0.0, seed=3)
    assert skmm.select(rank_two, 5, "leverage", k=7, random_state=0).info["k"] == 2


def test_intrinsic_rank_reads_a_truncated_spectrum():
    assert intrinsic_rank(np.array([5.0, 3.0, 1.0, 1.0]), 10.0, 10) == 3
    assert intrinsic_rank(np.array([5.0, 3.0]), 10.0, 10) == 2
    assert intrinsic_rank(np.array([0.0]), 0.0, 10) == 0


def test_sampling_frequencies_follow_the_scores():
    # Leverage (1/3, 1/3, 1/3, 1): with n = 1, row 3 is drawn half the time.
    features = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    hits = [
        skmm.select(features, 1, "leverage", k=2, random_state=s).indices[0] == 3
        for s in range(500)
    ]
    assert np.mean(hits) == pytest.approx(0.5, abs=0.07)


def test_draw_by_scores_fills_only_when_positive_rows_run_out():
    rng = np.random.default_rng(0)
    scores = np.array([0.0, 2.0, 0.0, 1.0, 1e-20])
    indices, filled = draw_by_scores(scores, 2, "random", rng)
    assert sorted(indices) == [1, 3] and filled == 0
    indices, filled = draw_by_scores(scores, 4, "top", rng)
    assert indices[:2].tolist() == [1, 3] and filled == 2 and indices.dtype == np.int64
    assert np.unique(indices).size == 4


def test_ridge_scores_golden_case():
    # XᵀX = diag(4, 2), λ = 2: l = (4/6, 1/4, 1/4).
    rows = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(ridge_leverage_scores(rows, 2.0), [2 / 3, 0.25, 0.25])
    selection = skmm.select(rows, 1, "ridge_leverage", ridge=2.0, sampling="top", random_state=0)
    assert selection.indices.tolist() == [0]
    assert selection.info["effective_dimension"] == pytest.approx(2 / 3 + 0.5)


@pytest.mark.parametrize("ridge", [1e-3, 1.0, 50.0])
def test_ridge_scores_match_the_direct_formula(ridge):
    features = np.random.default_rng(4).standard_normal((60, 7)).astype(np.float32)
    direct = features.astype(np.float64)
    inverse = np.linalg.inv(direct.T @ direct + ridge * np.eye(7))
    expected = np.einsum("ij,jk,ik->i", direct, inverse, direct)
    np.testing.assert_allclose(
        ridge_leverage_scores(torch.from_numpy(features), ridge), expected, rtol=1e-10
    )


def test_default_ridge_is_trace_over_n_and_bounds_the_effective_dimension():
    features = np.random.default_rng(5).standard_normal((80, 12))
    selection = skmm.select(features, 6, "ridge_leverage", random_state=0)
    assert selection.info["ridge"] == pytest.approx((features**2).sum() / 6)
    assert 0 < selection.info["effective_dimension"] <= 6
    assert selection.info["sketch"] == {"kind": "none", "reason": "sketched=False"}


def test_sketched_ridge_scores_approach_the_exact_ones():
    features = low_rank(300, 3000, 5, 1e-2, seed=6)
    ridge = (features**2).sum() / 20
    exact = ridge_leverage_scores(torch.from_numpy(features), ridge)
    for kind in ("gaussian", "sparse_sign"):
        sketched = sketch(features, 1024, kind, seed=1)
        approx = ridge_leverage_scores(torch.from_numpy(sketched), ridge)
        np.testing.assert_allclose(approx, exact, rtol=0.1)
    selection = skmm.select(
        features, 20, "ridge_leverage", ridge=ridge, sketched=True, sketch_dim=1024, random_state=0
    )
    assert selection.info["sketch"]["kind"] == "gaussian"
    assert selection.info["sketch"]["sketch_dim"] == 1024
    assert selection.info["effective_dimension"] == pytest.approx(exact.sum(), rel=0.05)


def test_sketched_is_exact_when_the_features_are_narrow():
    features = np.random.default_rng(7).standard_normal((50, 8))
    plain = skmm.select(features, 5, "ridge_leverage", random_state=2)
    sketched = skmm.select(features, 5, "ridge_leverage", sketched=True, random_state=2)
    assert sketched.info["sketch"] == {"kind": "none", "reason": "d <= sketch_dim"}
    np.testing.assert_array_equal(plain.indices, sketched.indices)


@pytest.mark.parametrize("method", ["leverage", "ridge_leverage"])
def test_all_zero_features_are_drawn_uniformly(method):
    selection = skmm.select(np.zeros((10, 3)), 4, method, random_state=0)
    assert selection.info["uniform_fill"] == 4
    assert selection.info.get("k", 0) == 0 and selection.info.get("effective_dimension", 0) == 0


@pytest.mark.parametrize("method", ["leverage", "ridge_leverage"])
def test_stratified_selection_scores_each_class(method):
    features = np.random.default_rng(8).standard_normal((60, 5))
    labels = np.repeat(["a", "b"], 30)
    selection = skmm.select(features, 8, method, labels=labels, stratify="balanced", random_state=0)
    assert np.unique(labels[selection.indices], return_counts=True)[1].tolist() == [4, 4]
    assert len(selection.info["classes"]) == 2


def test_large_pool_never_forms_an_n_by_n_matrix():
    features = np.random.default_rng(9).standard_normal((20_000, 16)).astype(np.float32)
    began = time.perf_counter()
    runs = [
        ("leverage", {}),
        ("leverage", {"svd": "randomized", "sampling": "top"}),
        ("ridge_leverage", {}),
        ("ridge_leverage", {"sketched": True, "sketch_dim": 8}),
    ]
    for method, options in runs:
        selection = skmm.select(features, 50, method, random_state=0, **options)
        assert np.unique(selection.indices).size == 50
    assert time.perf_counter() - began < 30


@pytest.mark.parametrize(
    ("method", "options", "error", "match"),
    [
        ("leverage", {"k": 0}, ValueError, "k must be >= 1"),
        ("leverage", {"k": 2.0}, TypeError, "k must be an integer"),
        ("leverage", {"sampling": "best"}, ValueError, "unknown sampling 'best'"),
        ("leverage", {"svd": "qr"}, ValueError, "unknown svd 'qr'"),
        ("ridge_leverage", {"ridge": -1.0}, ValueError, "ridge must be a finite number > 0"),
        ("ridge_leverage", {"ridge": "big"}, TypeError, "ridge must be a number"),
        ("ridge_leverage", {"sampling": "all"}, ValueError, "unknown sampling"),
        ("ridge_leverage", {"sketched": "yes"}, TypeError, "sketched must be True or False"),
        ("ridge_leverage", {"sketch_dim": 0}, ValueError, "sketch_dim must be >= 1"),
        ("ridge_leverage", {"sketch_kind": "srht"}, ValueError, "unknown sketch_kind"),
        ("ridge_leverage", {"svd": "exact"}, TypeError, "does not take option"),
    ],
)
def test_bad_options_are_named(method, options, error, match):
    with pytest.raises(error, match=match):
        skmm.select(np.ones((5, 2)), 2, method, **options)


def test_too_wide_for_an_exact_gram_matrix_is_refused_with_advice():
    wide = np.ones((2, 16_385), dtype=np.float32)
    with pytest.raises(ValueError, match="use svd='randomized'"):
        skmm.select(wide, 1, "leverage", svd="exact")
    with pytest.raises(ValueError, match="use sketched=True"):
        skmm.select(wide, 1, "ridge_leverage")


def test_a_ridge_too_small_for_a_singular_gram_matrix_is_refused():
    with pytest.raises(ValueError, match="ridge = 1e-300 is too small"):
        skmm.select(np.ones((4, 2)), 2, "ridge_leverage", ridge=1e-300)


@settings(max_examples=30, deadline=None)
@given(
    features=arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e-3]),
    ),
    fraction=st.floats(0.0, 1.0),
    method=st.sampled_from(["leverage", "ridge_leverage"]),
    sampling=st.sampled_from(["random", "top"]),
    seed=st.integers(0, 2**32),
)
def test_contract(features, fraction, method, sampling, seed):
    n_pool = features.shape[0]
    n = max(1, round(fraction * n_pool))
    options = {"sampling": sampling, "random_state": seed}
    selection = skmm.select(features, n, method, **options)
    indices = selection.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_pool
    assert selection.weights is None
    np.testing.assert_array_equal(indices, skmm.select(features, n, method, **options).indices)
    if n == n_pool:
        assert sorted(indices) == list(range(n_pool))


@settings(max_examples=25, deadline=None)
@given(
    features=arrays(
        np.float64,
        st.tuples(st.integers(2, 15), st.integers(1, 5)),
        # Squares of |x| < 1e-154 underflow in the float64 Gram matrix.
        elements=st.floats(-3, 3).filter(lambda value: value == 0 or abs(value) > 1e-100),
    ),
    ridge=st.floats(1e-2, 1e2),
)
def test_score_identities(features, ridge):
    rows = torch.from_numpy(features)
    full = leverage_scores(rows, features.shape[1], svd="exact")
    assert (full.scores >= -1e-9).all() and (full.scores <= 1 + 1e-9).all()
    assert full.scores.sum() == pytest.approx(full.k, abs=1e-6)
    ridge_scores = ridge_leverage_scores(rows, ridge)
    singular = np.linalg.svd(features, compute_uv=False) ** 2
    assert (ridge_scores >= 0).all() and (ridge_scores < 1).all()
    assert ridge_scores.sum() == pytest.approx((singular / (singular + ridge)).sum(), rel=1e-8)
