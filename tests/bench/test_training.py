import numpy as np
import pytest

from skmm.bench.training import scores, train_linear


def test_scores_by_hand():
    predicted = np.array([0, 0, 1, 1, 1])
    truth = np.array([0, 1, 1, 1, 0])
    result = scores(predicted, truth, 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 2, fp 1, fn 1 -> F1 2/3
    assert result["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_linear_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    features = np.eye(3)[labels] * 4 + 10 + rng.standard_normal((90, 3)) * 0.3
    probe = train_linear(features, labels, 3, penalty=1e-3)
    assert np.mean(probe.logits(features).argmax(1).numpy() == labels) == 1.0
    np.testing.assert_allclose(probe.mean, features.mean(0))
    # a stronger penalty shrinks the weights
    assert train_linear(features, labels, 3, penalty=1.0).weight.norm() < probe.weight.norm()
