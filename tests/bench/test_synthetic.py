import numpy as np
import pytest

from skmm.bench.synthetic import make_mixture, ridge_fit, risk


def test_mixture_shape_and_determinism():
    a = make_mixture(300, 50, n_clusters=5, seed=1)
    b = make_mixture(300, 50, n_clusters=5, seed=1)
    assert a.features.shape == (300, 50) and a.targets.shape == (300,)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.n_clusters == 5 and np.bincount(a.clusters).min() >= 1
    for cluster in range(5):
        assert np.unique(a.targets[a.clusters == cluster]).size == 1


def test_ridge_fit_matches_the_primal_solution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5))
    y = rng.standard_normal(20)
    alpha = 0.1
    primal = np.linalg.solve(x.T @ x / 20 + alpha * np.eye(5), x.T @ y / 20)
    np.testing.assert_allclose(ridge_fit(x, y, alpha), primal, atol=1e-10)


def test_covering_every_cluster_beats_missing_one():
    pool = make_mixture(400, 200, n_clusters=4, seed=3)
    one_per_cluster = [int(np.flatnonzero(pool.clusters == c)[0]) for c in range(4)]
    covered = risk(
        pool, ridge_fit(pool.features[one_per_cluster], pool.targets[one_per_cluster], 1e-6)
    )
    missing = one_per_cluster[:3]
    uncovered = risk(pool, ridge_fit(pool.features[missing], pool.targets[missing], 1e-6))
    assert covered < 1e-3 < uncovered
    # The missed cluster is predicted near 0 (centers are nearly orthogonal), so the risk is
    # about its share times its target squared.
    share_loss = np.mean(pool.clusters == 3) * pool.targets[pool.clusters == 3][0] ** 2
    assert uncovered == pytest.approx(share_loss, rel=0.25)
