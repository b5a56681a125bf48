import csv

import numpy as np
import pytest

from skmm.bench.synthetic import (
    PAPER_METHODS,
    Run,
    cross_validated_alpha,
    evaluate,
    make_mixture,
    markdown_table,
    ridge_fit,
    risk,
    summarize,
    synthetic_report,
)


def test_mixture_shape_and_determinism():
    a = make_mixture(300, 50, n_clusters=5, seed=1)
    b = make_mixture(300, 50, n_clusters=5, seed=1)
    assert a.features.shape == (300, 50) and a.targets.shape == (300,)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.n_clusters == 5 and np.bincount(a.clusters).min() >= 1
    clean = make_mixture(300, 50, n_clusters=5, label_noise=0.0, seed=1)
    for cluster in range(5):
        assert np.unique(clean.targets[clean.clusters == cluster]).size == 1


def test_ridge_fit_matches_the_primal_solution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 5))
    y = rng.standard_normal(20)
    alpha = 0.1
    primal = np.linalg.solve(x.T @ x / 20 + alpha * np.eye(5), x.T @ y / 20)
    np.testing.assert_allclose(ridge_fit(x, y, alpha), primal, atol=1e-10)


def test_covering_every_cluster_beats_missing_one():
    pool = make_mixture(400, 200, n_clusters=4, label_noise=0.0, seed=3)
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


def test_cross_validation_shuffles_a_sorted_coreset():
    # A coreset sorted by cluster, split in order, gives folds that each miss whole clusters:
    # validation then prefers a huge α. Shuffled folds see every cluster and keep α small.
    pool = make_mixture(600, 300, n_clusters=3, seed=4)
    sorted_rows = np.concatenate([np.flatnonzero(pool.clusters == c)[:10] for c in range(3)])
    alpha = cross_validated_alpha(
        pool.features[sorted_rows], pool.targets[sorted_rows], np.random.default_rng(0)
    )
    assert alpha <= 1e-2


def test_evaluate_reports_cv_and_fixed_alpha_risks():
    pool = make_mixture(300, 200, n_clusters=3, seed=5)
    chosen = np.arange(60)
    cv_risk, fixed_risk, alpha = evaluate(pool, chosen, seed=0)
    theta = ridge_fit(pool.features[chosen], pool.targets[chosen], 1e-6)
    assert fixed_risk == pytest.approx(risk(pool, theta), rel=1e-6)
    theta = ridge_fit(pool.features[chosen], pool.targets[chosen], alpha)
    assert cv_risk == pytest.approx(risk(pool, theta), rel=1e-6)


def test_summary_failure_rate_and_table():
    runs = [
        Run(0, "a", 10, seed, risk, risk, 1e-6, 3, 0.1)
        for seed, risk in enumerate([1e-3, 2e-3, 1.0, 1e-3])
    ]
    (row,) = summarize(runs, {0: 1e-3})
    assert row.failure_rate == 0.25
    assert row.median == pytest.approx(1.5e-3)
    table = markdown_table([row], ["a"])
    assert "| a | **25%** |" in table


def test_quick_report_writes_table_csv_and_plot(tmp_path):
    report = synthetic_report(
        tmp_path, quick=True, seeds=1, budgets=(12,), labels=["skmm", "uniform", "kcenter"]
    )
    names = sorted(path.name for path in report.files)
    assert names == ["risk.png", "runs.csv", "table.md"]
    with open(tmp_path / "runs.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["label"] for row in rows} == {"skmm", "uniform", "kcenter"}
    assert "| skmm |" in report.markdown


def test_report_rejects_unknown_labels_and_oversized_budgets(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark method"):
        synthetic_report(tmp_path, quick=True, labels=["nope"])
    with pytest.raises(ValueError, match="exceed the pool size"):
        synthetic_report(tmp_path, quick=True, budgets=(5000,))


def test_paper_methods_are_all_registered():
    import skmm

    assert {variant.method for variant in PAPER_METHODS} <= set(skmm.methods())
