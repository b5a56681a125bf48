import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm
import skmm.selectors.herding  # registers "herding"


def reference_herding(points: np.ndarray, n: int) -> list[int]:
    """argmin_i ‖(t+1)μ − Σ_S x_j − x_i‖ over rows not yet picked (ties to lowest index)."""
    mean = points.mean(axis=0)
    picks: list[int] = []
    chosen = np.zeros(points.shape[1])
    for t in range(n):
        error = np.linalg.norm((t + 1) * mean - chosen - points, axis=1)
        error[picks] = np.inf
        picks.append(int(np.argmin(error)))
        chosen += points[picks[-1]]
    return picks


def test_symmetric_set_starts_at_the_mean_and_pairs_opposites():
    points = np.array([[0, 2], [1, 0], [0, -2], [0, 0], [-1, 0]], dtype=np.float32)
    selection = skmm.select(points, 5, "herding")
    # origin (the mean); then (±1, 0) tie -> row 1; its mirror (-1, 0) restores the mean;
    # then (0, ±2) tie -> row 0; its mirror last.
    assert selection.indices.tolist() == [3, 1, 4, 0, 2]
    assert selection.info["mean_discrepancy"] == pytest.approx(0.0, abs=1e-6)


def test_three_picks_of_a_skewed_line():
    points = np.array([[0.0], [1.0], [2.0], [9.0]])
    # mean 3: nearest is 2; then 2·3 − 2 = 4 -> nearest unpicked is 1 (|1−4| = 3 < |9−4| = 5,
    # 0 is 4 away); then 9 − 3 = 6 -> 9 (3 away) beats 0 (6 away).
    assert skmm.select(points, 3, "herding").indices.tolist() == [2, 1, 3]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_brute_force_reference(dtype):
    rng = np.random.default_rng(7)
    points = (rng.normal(size=(250, 12)) * rng.uniform(0.5, 3.0, size=12) + 40.0).astype(dtype)
    selection = skmm.select(points, 30, "herding")
    assert selection.indices.tolist() == reference_herding(points.astype(np.float64), 30)
    coreset_mean = points[selection.indices].astype(np.float64).mean(axis=0)
    error = np.linalg.norm(coreset_mean - points.astype(np.float64).mean(axis=0))
    assert selection.info["mean_discrepancy"] == pytest.approx(error, rel=1e-3, abs=1e-6)


def test_matches_the_mean_far_better_than_uniform():
    points = np.random.default_rng(8).standard_exponential(size=(2000, 8))
    herded = skmm.select(points, 50, "herding").info["mean_discrepancy"]
    errors = [
        np.linalg.norm(
            points[skmm.select(points, 50, "uniform", random_state=s).indices].mean(axis=0)
            - points.mean(axis=0)
        )
        for s in range(20)
    ]
    assert herded < 0.2 * min(errors)


def test_stratified_herding_matches_each_class_mean():
    rng = np.random.default_rng(9)
    labels = np.repeat([0, 1], [60, 40])
    points = rng.normal(size=(100, 3)) + labels[:, None] * 10.0
    selection = skmm.select(points, 10, "herding", labels=labels, stratify=True)
    assert np.bincount(labels[selection.indices]).tolist() == [6, 4]
    ones = selection.indices[labels[selection.indices] == 1]
    assert (
        ones.tolist() == (np.flatnonzero(labels == 1)[reference_herding(points[60:], 4)]).tolist()
    )


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(1, 25),
    n_cols=st.integers(1, 4),
    data_seed=st.integers(0, 2**32 - 1),
    fraction=st.floats(0.0, 1.0),
    discrete=st.booleans(),
)
def test_contract(n_rows, n_cols, data_seed, fraction, discrete):
    rng = np.random.default_rng(data_seed)
    if discrete:
        points = rng.integers(-2, 3, size=(n_rows, n_cols)).astype(np.float32)
    else:
        points = rng.normal(size=(n_rows, n_cols))
    n = max(1, round(fraction * n_rows))
    first = skmm.select(points, n, "herding", random_state=1)
    again = skmm.select(points, n, "herding", random_state=2)
    indices = first.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_rows
    assert indices.tolist() == again.indices.tolist()  # deterministic, seed unused
    if n == n_rows:
        assert first.info["mean_discrepancy"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_picks_match_cpu():
    points = np.random.default_rng(10).normal(size=(500, 16))
    cpu = skmm.select(points, 40, "herding")
    gpu = skmm.select(points, 40, "herding", device="cuda")
    assert gpu.indices.tolist() == cpu.indices.tolist()
