import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import skmm
import skmm.selectors.kcenter  # registers "kcenter"


def reference_kcenter(points: np.ndarray, n: int, first: int) -> list[int]:
    """Farthest-point traversal from the full distance matrix (float64, ties to lowest index)."""
    distances = cdist(points, points)
    picks = [first]
    nearest = distances[first].copy()
    while len(picks) < n:
        candidates = nearest.copy()
        candidates[picks] = -1.0
        picks.append(int(np.argmax(candidates)))
        nearest = np.minimum(nearest, distances[picks[-1]])
    return picks


def clustered(seed: int, n_rows: int = 2000, n_cols: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=20.0, size=(40, n_cols))
    return centers[rng.integers(40, size=n_rows)] + rng.normal(size=(n_rows, n_cols))


def test_points_on_a_line_start_from_the_middle_then_take_the_extremes():
    line = np.arange(11, dtype=np.float32)[:, None]
    selection = skmm.select(line, 4, "kcenter", init="mean")
    # 5 is the mean; 0 and 10 are both 5 away (lowest index first); then 2, 3, 7, 8 are 2
    # away, the lowest index wins, and 7 and 8 stay 2 away.
    assert selection.indices.tolist() == [5, 0, 10, 2]
    assert selection.info["radius"] == pytest.approx(2.0)
    assert selection.info["first_center"] == 5


def test_random_init_is_seeded_and_then_goes_to_the_far_end():
    line = np.arange(11, dtype=np.float32)[:, None]
    first = skmm.select(line, 2, "kcenter", random_state=3).indices
    again = skmm.select(line, 2, "kcenter", random_state=3).indices
    assert first.tolist() == again.tolist()
    assert first[1] == (10 if first[0] < 5 else 0)
    starts = {int(skmm.select(line, 1, "kcenter", random_state=s).indices[0]) for s in range(40)}
    assert len(starts) > 5


@pytest.mark.parametrize("data_seed", [0, 1])
def test_matches_brute_force_reference_on_clustered_data(data_seed):
    points = clustered(data_seed)
    selection = skmm.select(points, 80, "kcenter", init="mean")
    first = int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    assert selection.indices.tolist() == reference_kcenter(points, 80, first)
    assert selection.info["pruned_fraction"] > 0.3  # the triangle-inequality skip did work
    radius = cdist(points, points[selection.indices]).min(axis=1).max()
    assert selection.info["radius"] == pytest.approx(radius, rel=1e-9)


def test_float32_matches_reference_on_isotropic_data():
    points = np.random.default_rng(5).normal(size=(200, 16)).astype(np.float32)
    selection = skmm.select(points, 25, "kcenter", random_state=11)
    first = int(selection.indices[0])
    assert selection.indices.tolist() == reference_kcenter(points.astype(np.float64), 25, first)


def test_duplicates_never_repeat_a_center():
    points = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0]]), 4, axis=0)
    selection = skmm.select(points, 8, "kcenter", init="mean")
    assert sorted(selection.indices.tolist()) == list(range(8))
    assert selection.info["radius"] == 0.0


def test_stratified_picks_stay_inside_each_class():
    points = clustered(2, n_rows=120)[:, :2]
    labels = np.repeat([0, 1, 2], 40)
    selection = skmm.select(points, 9, "kcenter", labels=labels, stratify="balanced")
    assert np.bincount(labels[selection.indices], minlength=3).tolist() == [3, 3, 3]


def test_bad_init_is_named():
    with pytest.raises(ValueError, match="init"):
        skmm.select(np.zeros((5, 2)), 2, "kcenter", init="farthest")


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(1, 25),
    n_cols=st.integers(1, 4),
    data_seed=st.integers(0, 2**32 - 1),
    fraction=st.floats(0.0, 1.0),
    init=st.sampled_from(["random", "mean"]),
    discrete=st.booleans(),
)
def test_contract(n_rows, n_cols, data_seed, fraction, init, discrete):
    rng = np.random.default_rng(data_seed)
    if discrete:
        points = rng.integers(-2, 3, size=(n_rows, n_cols)).astype(np.float32)
    else:
        points = rng.normal(size=(n_rows, n_cols))
    n = max(1, round(fraction * n_rows))
    first = skmm.select(points, n, "kcenter", init=init, random_state=data_seed % 1000)
    again = skmm.select(points, n, "kcenter", init=init, random_state=data_seed % 1000)
    indices = first.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_rows
    assert indices.tolist() == again.indices.tolist()
    assert first.weights is None
    if n == n_rows:
        assert first.info["radius"] == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_picks_match_cpu():
    points = clustered(3)
    cpu = skmm.select(points, 60, "kcenter", random_state=0)
    gpu = skmm.select(points, 60, "kcenter", random_state=0, device="cuda")
    assert gpu.indices.tolist() == cpu.indices.tolist()
    assert gpu.info["radius"] == pytest.approx(cpu.info["radius"], rel=1e-9)
