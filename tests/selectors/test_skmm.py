import numpy as np
import pytest
import torch

import skmm
from skmm.bench.synthetic import make_mixture


def test_r_at_most_m_skips_the_sketch():
    features = np.random.default_rng(0).standard_normal((100, 10))
    selection = skmm.select(features, 10, sketch_dim=16, random_state=0)
    assert selection.info["sketch"] == {"kind": "none", "reason": "r <= sketch_dim"}


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_default_selection_reports_its_stages(kind):
    features = np.random.default_rng(0).standard_normal((300, 500))
    selection = skmm.select(features, 20, sketch_dim=32, sketch=kind, random_state=0)
    info = selection.info
    assert info["sketch"]["kind"] == kind and info["sketch"]["sketch_dim"] == 32
    assert info["objective_kind"] == "aopt"
    for stage in ("sketch", "spectrum", "design", "total"):
        assert info["timings"][stage] >= 0
    assert 1 <= info["directions"]["k"] <= 32
    assert len(info["greedy"]["gains"]) == 20
    assert info["c_S"] == pytest.approx(1 / info["gamma_min"])
    assert selection.weights is None


@pytest.mark.parametrize("objective", ["aopt", "logdet"])
@pytest.mark.parametrize("pool_seed", [0, 1, 2])
def test_matrix_objectives_cover_every_cluster_of_the_mixture(objective, pool_seed):
    pool = make_mixture(1000, 600, n_clusters=8, seed=pool_seed)
    selection = skmm.select(pool.features, 12, objective=objective, random_state=0)
    assert np.unique(pool.clusters[selection.indices]).size == 8
    # centered, the 8 clusters span 7 directions (a clean gap), plus the intercept: 8 in all
    directions = selection.info["directions"]
    assert (directions["k"], directions["rule"], selection.info["c_S_directions"]) == (
        7,
        "eigengap",
        8,
    )
    assert np.isfinite(selection.info["c_S"])


def test_aopt_allocates_like_the_square_root_of_cluster_shares():
    # Σ_c p_c / n_c, the variance of a cluster-mean fit, is least at n_c ∝ √p_c (A-optimal);
    # log det spreads the budget evenly. One centered direction plus the intercept spans the
    # two cluster indicators, and both objectives are invariant to that change of basis.
    rows = np.repeat(np.eye(2), [900, 100], axis=0) + 1e-3 * np.random.default_rng(
        0
    ).standard_normal((1000, 2))
    options = {"directions": 1, "random_state": 0}
    aopt = skmm.select(rows, 40, objective="aopt", **options).indices
    logdet = skmm.select(rows, 40, objective="logdet", **options).indices
    assert np.sum(aopt < 900) == 30  # √0.9 : √0.1 = 3 : 1
    assert np.sum(logdet < 900) == 20


def test_directions_and_ridge_options():
    pool = make_mixture(500, 300, n_clusters=4, seed=3)
    given = skmm.select(pool.features, 10, directions=3, ridge=1e-3, random_state=0)
    assert given.info["directions"]["k"] == 3 and given.info["directions"]["rule"] == "given"
    gap = skmm.select(pool.features, 10, directions="gap", random_state=0)
    assert gap.info["directions"]["k"] == 3  # 4 clusters span 3 directions about their mean
    uncentered = skmm.select(pool.features, 10, directions="gap", center=False, random_state=0)
    assert uncentered.info["directions"]["k"] == 4


def test_without_a_clean_gap_k_is_half_the_budget_capped_by_the_sketch_dimension():
    # Power-law spectrum, no clean eigengap: k = n/2, capped at m/2 and at the rank.
    rows = np.random.default_rng(0).standard_normal((2000, 100)) / np.arange(1, 101)
    small = skmm.select(rows, 20, sketch_dim=128, random_state=0).info["directions"]
    assert small == {"k": 10, "rule": "budget", "gap_ratio": small["gap_ratio"]}
    assert small["gap_ratio"] < 10
    large = skmm.select(rows, 200, sketch_dim=128, random_state=0).info["directions"]
    assert large["k"] == 64 and large["rule"] == "sketch"  # r = 100 ≤ m: the m/2 cap stays
    unsketched = skmm.select(rows, 300, sketch="none", random_state=0).info["directions"]
    assert (unsketched["k"], unsketched["rule"]) == (100, "rank")


def test_diagonal_objective_reports_its_solver():
    features = np.random.default_rng(0).standard_normal((300, 500))
    selection = skmm.select(features, 20, sketch_dim=32, objective="diagonal", random_state=0)
    info = selection.info
    for stage in ("sketch", "spectrum", "solve", "rounding", "total"):
        assert info["timings"][stage] >= 0
    solver = info["solver"]
    assert solver["iterations"] >= 1
    assert len(solver["trace"]["objective"]) == solver["iterations"] + 1
    assert 1 <= info["intrinsic_dimension"] <= 32
    assert info["c_S"] > 0 and info["c_S_directions"] >= 1
    assert selection.weights.sum() == pytest.approx(1.0)
    assert (selection.weights >= 0).all()


def test_identical_results_for_numpy_torch_and_batch_sizes():
    features = np.random.default_rng(1).standard_normal((400, 300)).astype(np.float32)
    base = skmm.select(features, 25, sketch_dim=64, random_state=3)
    again = skmm.select(torch.from_numpy(features), 25, sketch_dim=64, random_state=3)
    batched = skmm.select(features, 25, sketch_dim=64, random_state=3, batch_size=7)
    np.testing.assert_array_equal(base.indices, again.indices)
    np.testing.assert_array_equal(base.indices, batched.indices)


def test_diagonal_objective_gives_each_axis_cluster_its_share_on_average():
    # Clusters on distinct coordinate axes make Σ diagonal with λ_j = cluster j's share, so
    # the constraints (Ps)_j ≥ λ_j/c with c = 1 force mass share_j on cluster j, and the
    # rounding's inclusion probabilities n·s_i give each cluster n·share_j rows in
    # expectation. (On sketched mixtures the eigen-directions mix clusters and the diagonal
    # objective can miss one: docs/skmm.md.)
    counts = np.array([300, 150, 90, 60])
    rows = np.repeat(np.eye(4), counts, axis=0)
    clusters = np.repeat(np.arange(4), counts)
    drawn = [
        np.bincount(
            clusters[skmm.select(rows, 40, objective="diagonal", c=1.0, random_state=seed).indices],
            minlength=4,
        )
        for seed in range(12)
    ]
    assert np.mean(drawn, axis=0) == pytest.approx(40 * counts / counts.sum(), abs=1.0)


@pytest.mark.parametrize("objective", ["aopt", "logdet", "diagonal"])
def test_n_equal_to_the_pool_selects_everything(objective):
    features = np.random.default_rng(0).standard_normal((12, 3))
    selection = skmm.select(features, 12, objective=objective, random_state=0)
    assert sorted(selection.indices) == list(range(12))


def test_all_zero_features_fall_back_to_a_uniform_draw():
    selection = skmm.select(np.zeros((20, 5)), 4, random_state=0)
    assert len(selection) == 4
    assert "all features are zero" in selection.info["note"]


def test_duplicate_rows_are_never_picked_twice_and_all_directions_are_covered():
    rows = np.repeat(np.eye(3), [10, 10, 3], axis=0)
    selection = skmm.select(rows, 6, random_state=0)
    assert len(np.unique(selection.indices)) == 6
    # three distinct rows span 2 directions about their mean, plus the intercept
    assert (selection.info["directions"]["k"], selection.info["c_S_directions"]) == (2, 3)
    assert np.bincount(selection.indices // 10, minlength=3).min() >= 1


def test_diagonal_objective_starves_a_low_energy_direction():
    # Rows e1 ×10, e2 ×10, e3 ×1: λ = (10, 10, 1)/21 and with c = 0.5 the targets are 2λ.
    # Σ_j (2λ_j − x_j)_+² with x1 + x2 + x3 = 1 is minimized at x = (1/2, 1/2, 0): the
    # λ²-weighted diagonal objective gives the single e3 row no mass (docs/design.md §3).
    rows = np.repeat(np.eye(3), [10, 10, 1], axis=0)
    selection = skmm.select(rows, 6, objective="diagonal", c=0.5, random_state=0, tol=1e-8)
    assert 20 not in selection.indices
    assert np.sum(selection.indices < 10) == 3
    assert selection.info["objective"] == pytest.approx(2 * (20 / 21 - 0.5) ** 2 + (2 / 21) ** 2)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"sketch_dim": 0}, ValueError, "sketch_dim"),
        ({"sketch": "fjlt"}, ValueError, "gaussian, sparse_sign, none"),
        ({"objective": "eopt"}, ValueError, "diagonal, logdet, aopt"),
        ({"directions": "elbow"}, ValueError, "auto, gap"),
        ({"directions": 0}, ValueError, "directions"),
        ({"ridge": -1.0}, ValueError, "ridge"),
        ({"c": 0.5}, ValueError, "do not apply to objective='aopt'"),
        (
            {"objective": "diagonal", "ridge": 1e-3},
            ValueError,
            "do not apply to objective='diagonal'",
        ),
        ({"objective": "diagonal", "c": -1.0}, ValueError, "c must be"),
        ({"objective": "diagonal", "c": "big"}, TypeError, "c must be a number"),
        ({"objective": "diagonal", "rounding": "round"}, ValueError, "systematic, pivotal"),
        ({"objective": "diagonal", "max_iter": 0}, ValueError, "max_iter"),
        ({"objective": "diagonal", "tol": 0.0}, ValueError, "tol"),
        ({"batch_size": -5}, ValueError, "batch_size"),
        ({"progress": "yes"}, TypeError, "progress"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        skmm.select(np.ones((10, 3)), 2, **options)


def test_unsketched_huge_r_is_refused_up_front():
    features = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(4, 20_000), strides=(0, 0))
    with pytest.raises(ValueError, match="sketch instead"):
        skmm.select(features, 2, sketch="none")


def test_estimator_style():
    features = np.random.default_rng(0).standard_normal((50, 8))
    estimator = skmm.SkMM(n=5, objective="diagonal", c=0.8, random_state=0)
    assert estimator.fit(features) is estimator
    assert len(estimator.selection_) == 5
    assert estimator.get_params()["c"] == 0.8
    assert "SkMM(n=5" in repr(estimator)


def test_the_former_objective_name_seed_warns_and_runs_the_diagonal_objective():
    features = np.random.default_rng(0).standard_normal((60, 8))
    diagonal = skmm.select(features, 6, objective="diagonal", random_state=0)
    with pytest.warns(FutureWarning, match="objective='seed' is renamed 'diagonal'"):
        former = skmm.select(features, 6, objective="seed", random_state=0)
    np.testing.assert_array_equal(former.indices, diagonal.indices)
    np.testing.assert_array_equal(former.weights, diagonal.weights)
    assert former.info["params"]["objective"] == "diagonal"
    assert former.info["objective_kind"] == "diagonal"
    assert skmm.SkMM(n=6, objective="seed").get_params()["objective"] == "seed"  # as set


@pytest.mark.parametrize(
    ("options", "recorded", "unset"),
    [
        ({}, {"objective": "aopt", "directions": "auto", "ridge": 1e-6}, ("c", "tol")),
        ({"objective": "logdet", "ridge": 1e-3}, {"ridge": 1e-3, "directions": "auto"}, ("c",)),
        (
            {"objective": "diagonal", "c": 0.5},
            {"c": 0.5, "rounding": "systematic", "max_iter": 1000, "tol": 1e-4},
            ("ridge", "directions"),
        ),
    ],
)
def test_recorded_options_are_the_options_used(options, recorded, unset):
    features = np.random.default_rng(0).standard_normal((60, 8))
    params = skmm.select(features, 6, random_state=0, **options).info["params"]
    assert {name: params[name] for name in recorded} == recorded
    assert all(params[name] is None for name in unset)  # the other objective's: unused


def test_labels_give_class_proportional_budgets_unless_stratify_is_false():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 20))
    labels = np.repeat([0, 1, 2], [200, 60, 40])
    given = skmm.select(features, 30, labels=labels, random_state=0)
    assert np.bincount(labels[given.indices]).tolist() == [20, 6, 4]
    assert given.info["params"]["stratify"] == "proportional"
    assert [entry["budget"] for entry in given.info["classes"]] == [20, 6, 4]
    pooled = skmm.select(features, 30, labels=labels, random_state=0, stratify=False)
    assert pooled.info["params"]["stratify"] is False and "classes" not in pooled.info
    # other methods keep selecting over the whole pool when only labels are given
    assert (
        skmm.select(features, 30, "uniform", labels=labels, random_state=0).info["params"][
            "stratify"
        ]
        is None
    )


def test_center_must_be_a_boolean():
    with pytest.raises(TypeError, match="center must be True or False"):
        skmm.select(np.eye(5), 2, center="yes")
    with pytest.raises(ValueError, match="do not apply to objective='diagonal'"):
        skmm.select(np.eye(5), 2, objective="diagonal", center=False)
