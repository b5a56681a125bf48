import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skmm.moments import project_capped_simplex
from skmm.rounding import ROUNDINGS, inclusion_probabilities, round_weights


def _weights(seed, size, n, sparsity=0.5):
    import torch

    rng = np.random.default_rng(seed)
    raw = rng.exponential(size=size) * (rng.random(size) > sparsity)
    return project_capped_simplex(torch.from_numpy(raw * 10.0 / n), 1.0 / n).numpy()


@pytest.mark.parametrize("method", ROUNDINGS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.integers(1, 200), data=st.data())
def test_exactly_n_distinct_in_range(method, seed, size, data):
    n = data.draw(st.integers(1, size))
    weights = _weights(seed, size, n)
    chosen = round_weights(weights, n, method, np.random.default_rng(seed))
    assert chosen.dtype == np.int64
    assert chosen.size == n == np.unique(chosen).size
    assert chosen.min() >= 0 and chosen.max() < size


@pytest.mark.parametrize("method", ["systematic", "pivotal"])
def test_inclusion_probabilities_are_exact(method):
    n = 4
    pi = np.array([1.0, 0.9, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2, 0.0, 0.0])
    assert pi.sum() == n
    draws = 20_000
    counts = np.zeros(pi.size)
    rng = np.random.default_rng(0)
    for _ in range(draws):
        counts[round_weights(pi / n, n, method, rng)] += 1
    frequency = counts / draws
    # binomial standard error ≤ 0.0036; 5 standard errors
    np.testing.assert_allclose(frequency, pi, atol=0.018)
    assert frequency[0] == 1.0 and frequency[-1] == 0.0


def test_weighted_sampling_favours_large_weights_but_is_not_exact():
    n = 2
    pi = np.array([0.9, 0.9, 0.1, 0.1])
    counts = np.zeros(4)
    rng = np.random.default_rng(1)
    for _ in range(5000):
        counts[round_weights(pi / n, n, "weighted", rng)] += 1
    assert counts[0] > counts[2] * 3


def test_topn_takes_the_largest_and_breaks_ties_at_random():
    weights = np.array([0.1, 0.4, 0.1, 0.4]) / 1.0
    assert sorted(round_weights(weights, 2, "topn", np.random.default_rng(0))) == [1, 3]
    tied = np.full(6, 1 / 6)
    picks = {tuple(round_weights(tied, 3, "topn", np.random.default_rng(s))) for s in range(20)}
    assert len(picks) > 1


def test_certain_picks_are_always_taken():
    weights = np.array([0.5, 0.5, 0.0, 0.0])
    for method in ROUNDINGS:
        assert list(round_weights(weights, 2, method, np.random.default_rng(0))) == [0, 1]


def test_inclusion_probabilities_repair_rounding_noise():
    pi = inclusion_probabilities(np.array([0.5 - 1e-13, 0.25, 0.25 + 1e-13]), 2)
    assert pi.sum() == pytest.approx(2.0, abs=1e-12)
    assert pi[0] == 1.0


def test_unknown_rounding_lists_the_choices():
    with pytest.raises(ValueError, match="systematic, pivotal, topn, weighted"):
        round_weights(np.full(4, 0.25), 2, "magic", np.random.default_rng(0))


def test_same_seed_same_draw():
    weights = _weights(3, 100, 10)
    for method in ROUNDINGS:
        a = round_weights(weights, 10, method, np.random.default_rng(5))
        b = round_weights(weights, 10, method, np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)
