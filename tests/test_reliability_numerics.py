"""Numerical robustness: rank-deficient and badly scaled pools give finite diagnostics and a
valid selection with every method; values beyond what the arithmetic holds are refused."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import skmm
from skmm.design import greedy_design

sys.path.insert(0, str(Path(__file__).parent))
from test_design import reference_greedy

ROWS, COLS = 60, 8
SCALES = np.logspace(-8, 8, COLS)


def _pools():
    rng = np.random.default_rng(0)
    gaussian = rng.standard_normal((ROWS, COLS))
    return {
        "columns 1e-8..1e8, float32": (gaussian * SCALES).astype(np.float32),
        "columns 1e-8..1e8, float64": gaussian * SCALES,
        "rank 2 of 8": rng.standard_normal((ROWS, 2)) @ rng.standard_normal((2, COLS)),
        "rank 1, columns 1e-8..1e8": np.outer(rng.standard_normal(ROWS), SCALES),
        "rows 1e-8..1e8": gaussian * np.logspace(-8, 8, ROWS)[:, None],
        "rank 3, wider than tall": rng.standard_normal((ROWS, 3)) @ rng.standard_normal((3, 300)),
    }


POOLS = _pools()


def non_finite(value, path="info"):
    """Paths of the NaN/Inf floats anywhere in a diagnostics dict."""
    if isinstance(value, dict):
        return [bad for key, item in value.items() for bad in non_finite(item, f"{path}.{key}")]
    if isinstance(value, (list, tuple)):
        return [bad for i, item in enumerate(value) for bad in non_finite(item, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    return []


def _labels():
    labels = np.random.default_rng(1).integers(0, 3, ROWS)
    labels[:3] = [0, 1, 2]
    return labels


@pytest.mark.parametrize("pool", list(POOLS))
@pytest.mark.parametrize("method", skmm.methods())
def test_hard_pools_give_a_valid_selection_and_finite_diagnostics(method, pool):
    features = POOLS[pool]
    labels = _labels() if skmm.get_method(method).requires_labels else None
    target = features[::4] if skmm.get_method(method).requires_target else None
    for n in (5, 30):
        selection = skmm.select(features, n, method, labels=labels, target=target, random_state=0)
        assert np.unique(selection.indices).size == n
        assert selection.indices.min() >= 0 and selection.indices.max() < ROWS
        if selection.weights is not None:
            assert np.isfinite(selection.weights).all()
        bad = non_finite(selection.info)
        if method == "skmm" and n < selection.info["directions"]["k"]:
            # n rows cannot span k > n directions: the coreset moment is singular there, and
            # c_S = inf is the true value (docs/reliability.md)
            assert bad == ["info.c_S"] and selection.info["gamma_min"] < 1e-12
        else:
            assert bad == []


@pytest.mark.parametrize(
    "pool", ["rank 2 of 8", "rank 1, columns 1e-8..1e8", "rank 3, wider than tall"]
)
def test_skmm_matches_only_the_directions_the_pool_has(pool):
    rank = {"rank 2 of 8": 2, "rank 1, columns 1e-8..1e8": 1, "rank 3, wider than tall": 3}[pool]
    selection = skmm.select(POOLS[pool], 20, "skmm", random_state=0)
    assert selection.info["effective_rank"] == rank
    assert selection.info["directions"]["k"] <= rank
    assert 0 < selection.info["c_S"] < 100
    diagonal = skmm.select(POOLS[pool], 20, "skmm", objective="diagonal", random_state=0)
    assert math.isfinite(diagonal.info["c_S"])
    assert diagonal.weights.sum() == pytest.approx(1.0)


def test_skmm_weighs_columns_by_their_share_of_the_covariance():
    """SkMM matches Σ̃, so a column on a scale 10⁵ below the largest carries < 10⁻¹⁰ of it and
    is not a direction to match (effective rank counts eigenvalues above 10⁻¹⁰·λ₁)."""
    rng = np.random.default_rng(2)
    scales = np.logspace(-8, 8, 6)  # 1e-8, 1.6e-5, 0.025, 40, 6.3e4, 1e8
    selection = skmm.select(rng.standard_normal((200, 6)) * scales, 12, "skmm", random_state=0)
    assert selection.info["effective_rank"] == 2
    assert math.isfinite(selection.info["c_S"])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.float32(1e30), "too large for float32 arithmetic"),
        (np.float64(1e200), "too large for float64 arithmetic"),
        (np.int64(2**62), "too large for float32 arithmetic"),
        (np.float32(1e-20), "too small in scale"),
    ],
)
def test_values_beyond_the_arithmetic_are_refused(values, match):
    features = np.random.default_rng(0).standard_normal((30, 4)).astype(values.dtype)
    features = features * values if values.dtype.kind == "f" else np.full((30, 4), values)
    with pytest.raises(ValueError, match=match):
        skmm.select(features, 5, "kcenter", random_state=0)


def test_values_beyond_the_arithmetic_are_found_on_read_in_a_memmap(tmp_path):
    data = np.ones((40, 3), dtype=np.float32)
    data[33, 1] = 3e20
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(ValueError, match="first: 3e\\+20 at row 33, column 1"):
        skmm.select(np.load(tmp_path / "x.npy", mmap_mode="r"), 5, "herding")


def test_the_largest_accepted_values_still_select_correctly():
    """Just under the float32 limit (1.8e15) the squared distances stay finite."""
    features = np.random.default_rng(3).standard_normal((40, 5)).astype(np.float32)
    reference = skmm.select(features, 6, "kcenter", init="mean", random_state=0)
    large = skmm.select(features * np.float32(2.0**47), 6, "kcenter", init="mean", random_state=0)
    np.testing.assert_array_equal(reference.indices, large.indices)


@pytest.mark.parametrize("seed", [44, 232, 269, 270])
def test_aopt_greedy_follows_the_exact_greedy_when_the_ridge_is_tiny(seed):
    """With ε = 1e-6 the running sums start near 1/ε² and used to keep ~1e-4 absolute error,
    which reordered close gains on these pools (found by comparing 300 random pools)."""
    rng = np.random.default_rng(seed)
    rows, k = int(rng.integers(20, 60)), int(rng.integers(1, 5))
    n = int(rng.integers(k + 1, min(rows, 20)))
    points = rng.standard_normal((rows, k))
    points /= np.sqrt((points**2).mean(axis=0))
    result = greedy_design(torch.from_numpy(points), n, "aopt", lazy=False)
    assert list(result.order) == reference_greedy(points, n, "aopt")
