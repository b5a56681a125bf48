import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import skmm
import skmm.selectors.pivoting
from skmm.selectors.pivoting import default_bandwidth, kernel_block, rp_cholesky


def nystrom_residual_diagonal(kernel: np.ndarray, pivots: np.ndarray) -> np.ndarray:
    """diag(K − K(:,S) K(S,S)⁻¹ K(S,:)), computed directly."""
    columns = kernel[:, pivots]
    return np.diag(kernel - columns @ np.linalg.solve(kernel[np.ix_(pivots, pivots)], columns.T))


def test_rank_two_design_takes_one_row_from_each_direction_then_fills_uniformly():
    # Rows 0-4 are e1, rows 5-9 are 2·e2. Whichever row comes first zeroes the residual of
    # its whole direction, so the second pivot lies in the other direction; after that the
    # residual vanishes and the third row is a uniform fill.
    features = np.zeros((10, 2))
    features[:5, 0] = 1.0
    features[5:, 1] = 2.0
    for seed in range(20):
        selection = skmm.select(features, 3, "adaptive", random_state=seed)
        first, second = selection.indices[:2]
        assert (first < 5) != (second < 5)
        assert selection.info["pivots"] == 2
        assert selection.info["uniform_fill"] == 1
        assert "vanished" in selection.info["note"]
        assert selection.info["residual_trace_ratio"] == 0.0


@pytest.mark.parametrize("block_size", [1, 4])
def test_zero_residual_rows_are_never_pivots_while_others_remain(block_size):
    # Row 0 is zero and rows 1, 2 duplicate e1: a pivot set has exactly one of rows 1-2,
    # row 3 (e2) and row 4 (e3), never row 0 and never both duplicates.
    features = np.array([[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 3, 0], [0, 0, 0.5]], float)
    for seed in range(25):
        selection = skmm.select(features, 3, "adaptive", block_size=block_size, random_state=seed)
        assert sorted(set(selection.indices) - {1, 2}) == [3, 4]
        assert len(set(selection.indices) & {1, 2}) == 1
        assert selection.info["uniform_fill"] == 0


def test_rbf_duplicates_are_skipped():
    features = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    for seed in range(10):
        selection = skmm.select(features, 2, "adaptive", kernel="rbf", random_state=seed)
        assert 2 in selection.indices and selection.info["uniform_fill"] == 0


def test_first_pivot_is_drawn_in_proportion_to_the_diagonal():
    features = np.array([[1.0, 0.0], [0.0, np.sqrt(3.0)]])
    draws = [skmm.select(features, 1, "adaptive", random_state=s).indices[0] for s in range(600)]
    assert np.mean(draws) == pytest.approx(0.75, abs=0.06)


@pytest.mark.parametrize("block_size", [1, 3])
def test_second_pivot_follows_the_updated_residual(block_size):
    # Orthogonal rows with squared norms 1, 2, 3: P(first = a, second = b) = w_a w_b /
    # (W (W − w_a)). Accelerated RPCholesky's rejection step must reproduce it exactly.
    weights = np.array([1.0, 2.0, 3.0])
    rows = torch.diag(torch.as_tensor(np.sqrt(weights)))
    counts = np.zeros((3, 3))
    trials = 1500
    rng = np.random.default_rng(0)
    for _ in range(trials):
        first, second = rp_cholesky(rows, 2, rng, block_size=block_size).pivots
        counts[first, second] += 1
    total = weights.sum()
    expected = weights[:, None] * weights[None, :] / (total * (total - weights[:, None]))
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(counts / trials, expected, atol=0.04)


@pytest.mark.parametrize(("kernel", "block_size"), [("linear", 1), ("linear", 5), ("rbf", 2)])
def test_factor_is_the_nystrom_approximation_on_the_pivots(kernel, block_size):
    features = np.random.default_rng(1).standard_normal((40, 6))
    rows = torch.from_numpy(features)
    bandwidth = default_bandwidth(rows) if kernel == "rbf" else None
    result = rp_cholesky(
        rows, 6, np.random.default_rng(2), kernel=kernel, bandwidth=bandwidth, block_size=block_size
    )
    full = kernel_block(rows, rows, kernel, bandwidth).numpy()
    pivots = result.pivots
    assert pivots.size == 6 and np.unique(pivots).size == 6
    factor = result.factor.numpy()
    columns = full[:, pivots]
    nystrom = columns @ np.linalg.solve(full[np.ix_(pivots, pivots)], columns.T)
    np.testing.assert_allclose(factor @ factor.T, nystrom, atol=1e-9)
    np.testing.assert_allclose(
        result.residual.numpy(), nystrom_residual_diagonal(full, pivots), atol=1e-9
    )


def test_rbf_kernel_and_default_bandwidth_match_direct_formulas():
    features = np.random.default_rng(3).standard_normal((7, 3))
    rows = torch.from_numpy(features)
    sigma = default_bandwidth(rows)
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    assert sigma**2 == pytest.approx(squared.mean() / 2)
    np.testing.assert_allclose(
        kernel_block(rows, rows, "rbf", sigma).numpy(), np.exp(-squared / (2 * sigma**2))
    )


def test_coincident_rows_get_bandwidth_one_and_a_uniform_fill():
    selection = skmm.select(np.ones((6, 2)), 3, "adaptive", kernel="rbf", random_state=0)
    assert selection.info["bandwidth"] == 1.0
    assert selection.info["pivots"] == 1 and selection.info["uniform_fill"] == 2


def test_all_zero_features_are_drawn_uniformly():
    selection = skmm.select(np.zeros((9, 3)), 4, "adaptive", random_state=0)
    assert selection.info["pivots"] == 0 and selection.info["uniform_fill"] == 4
    assert selection.info["residual_trace_ratio"] == 0.0


def test_explicit_bandwidth_is_used_and_reported():
    features = np.random.default_rng(0).standard_normal((30, 4))
    selection = skmm.select(features, 5, "adaptive", kernel="rbf", bandwidth=0.5, random_state=0)
    assert selection.info["bandwidth"] == 0.5 and selection.info["kernel"] == "rbf"


def test_blocks_draw_extra_proposals_and_still_cover_a_mixture():
    from skmm.bench.synthetic import make_mixture

    pool = make_mixture(400, 60, n_clusters=5, noise=1e-3, seed=0)
    selection = skmm.select(pool.features, 5, "adaptive", block_size=8, random_state=0)
    assert np.unique(pool.clusters[selection.indices]).size == 5
    assert selection.info["proposals"] >= 5
    assert selection.info["residual_trace_ratio"] < 1e-4


def test_numpy_array_and_torch_tensor_agree():
    features = np.random.default_rng(4).standard_normal((50, 5))
    base = skmm.select(features, 8, "adaptive", random_state=1)
    as_tensor = skmm.select(torch.from_numpy(features), 8, "adaptive", random_state=1)
    np.testing.assert_array_equal(base.indices, as_tensor.indices)


def test_stratified_selection_picks_within_each_class():
    features = np.random.default_rng(5).standard_normal((60, 4))
    labels = np.repeat([0, 1, 2], 20)
    selection = skmm.select(
        features, 9, "adaptive", labels=labels, stratify="balanced", random_state=0
    )
    assert np.bincount(labels[selection.indices]).tolist() == [3, 3, 3]


def test_large_pool_never_forms_the_kernel():
    # K would be 20,000 × 20,000 (3.2 GB in float64); the factor is 20,000 × 40.
    features = np.random.default_rng(6).standard_normal((20_000, 16)).astype(np.float32)
    began = time.perf_counter()
    for options in ({}, {"kernel": "rbf", "block_size": 8}):
        selection = skmm.select(features, 40, "adaptive", random_state=0, **options)
        assert np.unique(selection.indices).size == 40
    assert time.perf_counter() - began < 30


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"kernel": "cosine"}, ValueError, "unknown kernel"),
        ({"bandwidth": 1.0}, ValueError, "bandwidth applies only to kernel='rbf'"),
        ({"kernel": "rbf", "bandwidth": 0.0}, ValueError, "bandwidth must be"),
        ({"kernel": "rbf", "bandwidth": "wide"}, TypeError, "bandwidth must be a number"),
        ({"block_size": 0}, ValueError, "block_size must be >= 1"),
        ({"block_size": 2.5}, TypeError, "block_size must be an integer"),
        ({"pivots": 3}, TypeError, "does not take option"),
    ],
)
def test_bad_options_are_named(options, error, match):
    with pytest.raises(error, match=match):
        skmm.select(np.ones((5, 2)), 2, "adaptive", **options)


@settings(max_examples=30, deadline=None)
@given(
    features=arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e-3]),
    ),
    fraction=st.floats(0.0, 1.0),
    kernel=st.sampled_from(["linear", "rbf"]),
    block_size=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_contract(features, fraction, kernel, block_size, seed):
    n_pool = features.shape[0]
    n = max(1, round(fraction * n_pool))
    options = {"kernel": kernel, "block_size": block_size, "random_state": seed}
    selection = skmm.select(features, n, "adaptive", **options)
    indices = selection.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_pool
    assert selection.info["pivots"] + selection.info["uniform_fill"] == n
    np.testing.assert_array_equal(indices, skmm.select(features, n, "adaptive", **options).indices)
    if n == n_pool:
        assert sorted(indices) == list(range(n_pool))
