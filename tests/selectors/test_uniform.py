import numpy as np

import skmm


def test_uniform_frequencies_are_flat():
    counts = np.zeros(10)
    features = np.zeros((10, 1))
    for seed in range(2000):
        counts[skmm.select(features, 3, "uniform", random_state=seed).indices] += 1
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.04)


def test_uniform_does_not_need_feature_values_beyond_validation():
    selection = skmm.select(np.ones((7, 3)), 7, "uniform", random_state=0)
    assert sorted(selection.indices) == list(range(7))
    assert selection.weights is None
