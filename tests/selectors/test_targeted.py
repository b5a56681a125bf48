"""The targeted baselines ``less`` and ``knn``: contract, small golden cases, chunk-size
invariance, a brute-force reference, and the errors of a fit without a target."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skmm
from skmm.inputs import as_feature_matrix
from skmm.memory import MemoryLimitError
from skmm.seeding import derive_seed, numpy_rng
from skmm.selection import SelectionWarning
from skmm.selectors import targeted

TARGETED = [("less", {}), ("less", {"aggregate": "mean"}), ("knn", {})]
FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pool(rows, cols, seed):
    return np.random.default_rng(seed).standard_normal((rows, cols))


def brute_less(pool, target, n, aggregate):
    """The top-n rows by max/mean cosine, ties to the lower index, from the full matrix."""

    def unit(x):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms == 0, 1.0, norms)

    cosines = unit(pool) @ unit(target).T
    scores = cosines.max(axis=1) if aggregate == "max" else cosines.mean(axis=1)
    return np.lexsort((np.arange(len(pool)), -scores))[:n]


def brute_knn(pool, target, n, turns):
    """Round-robin over ``turns``: each target row takes its nearest unpicked pool row."""
    distances = ((pool[:, None, :] - target[None, :, :]) ** 2).sum(axis=2)
    picked, order = np.zeros(len(pool), bool), []
    while len(order) < n:
        for t in turns:
            if len(order) == n:
                break
            column = np.where(picked, np.inf, distances[:, t])
            row = int(np.argmin(column))
            picked[row] = True
            order.append(row)
    return np.array(order)


@pytest.mark.parametrize(("method", "options"), TARGETED, ids=str)
@FAST
@given(
    rows=st.integers(2, 80),
    cols=st.integers(1, 12),
    n_target=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_contract_and_determinism(method, options, rows, cols, n_target, seed, data):
    n = data.draw(st.integers(1, rows))
    pool = _pool(rows, cols, seed).astype(np.float32)
    target = _pool(n_target, cols, seed + 1)
    first = skmm.select(pool, n, method, target=target, random_state=seed, **options)
    assert first.indices.dtype == np.int64 and first.indices.shape == (n,)
    assert np.unique(first.indices).size == n
    assert first.indices.min() >= 0 and first.indices.max() < rows
    assert first.weights is None and first.info["target"]["n_rows"] == n_target
    again = skmm.select(pool, n, method, target=target, random_state=seed, **options)
    np.testing.assert_array_equal(first.indices, again.indices)
    as_torch = skmm.select(
        torch.from_numpy(pool),
        n,
        method,
        target=torch.from_numpy(target),
        random_state=seed,
        **options,
    )
    np.testing.assert_array_equal(first.indices, as_torch.indices)


@pytest.mark.parametrize("aggregate", ["max", "mean"])
@FAST
@given(rows=st.integers(2, 60), cols=st.integers(2, 10), seed=st.integers(0, 2**16))
def test_less_matches_the_full_cosine_matrix(aggregate, rows, cols, seed):
    pool, target = _pool(rows, cols, seed), _pool(7, cols, seed + 1)
    pool[::5] = 0.0  # zero rows have cosine 0 to everything
    n = max(1, rows // 3)
    selection = skmm.select(pool, n, "less", target=target, aggregate=aggregate)
    np.testing.assert_array_equal(selection.indices, brute_less(pool, target, n, aggregate))


@FAST
@given(
    rows=st.integers(2, 60),
    cols=st.integers(1, 8),
    n_target=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_knn_matches_the_round_robin_on_the_full_distance_matrix(rows, cols, n_target, seed, data):
    pool, target = _pool(rows, cols, seed), _pool(n_target, cols, seed + 1) + 0.5
    n = data.draw(st.integers(1, rows))
    selection = skmm.select(pool, n, "knn", target=target, random_state=seed)
    # the turn order: the permutation drawn from the selection's seed
    turns = numpy_rng(derive_seed(seed, "select"), "knn", "order").permutation(n_target)
    np.testing.assert_array_equal(selection.indices, brute_knn(pool, target, n, turns))
    counts = selection.info["neighbors_per_target"]
    assert counts["max"] - counts["min"] <= 1 and counts["max"] == -(-n // n_target)


def test_less_golden_max_and_mean_differ():
    target = np.array([[1.0, 0.0], [0.0, 1.0]])
    pool = np.array(
        [
            [1.0, 0.0],  # cos 1 to the first target row, 0 to the second: max 1, mean 0.5
            [1.0, 1.0],  # cos 0.707 to both: max 0.707, mean 0.707
            [0.0, 3.0],  # cos 1 to the second: max 1, mean 0.5
            [-1.0, 0.1],  # against both: max 0.0995, mean about -0.45
            [0.0, 0.0],  # zero row: cosine 0
        ]
    )
    by_max = skmm.select(pool, 2, "less", target=target)
    assert by_max.indices.tolist() == [0, 2]  # max 1 each, tie to the lower index
    assert by_max.info["aggregate"] == "max"
    assert by_max.info["scores"]["min"] == pytest.approx(1.0)
    by_mean = skmm.select(pool, 2, "less", target=target, aggregate="mean")
    assert by_mean.indices.tolist() == [1, 0]  # 0.707 first, then 0.5 (tie to the lower index)
    assert by_mean.info["scores"]["max"] == pytest.approx(np.sqrt(0.5))
    assert by_mean.info["random_state_used"] is False
    last = skmm.select(pool, 5, "less", target=target)
    assert last.indices.tolist()[-2:] == [3, 4]  # 0.0995, then the zero row's 0


def test_knn_golden_two_clusters_each_target_point_gets_its_nearest():
    rng = np.random.default_rng(0)
    left = rng.normal(-10.0, 1.0, (60, 3))
    right = rng.normal(10.0, 1.0, (40, 3))
    pool = np.vstack([left, right])
    target = np.array([[-10.0, -10.0, -10.0], [-9.0, -11.0, -10.0], [10.0, 10.0, 10.0]])
    selection = skmm.select(pool, 6, "knn", target=target, random_state=0)
    chosen = set(selection.indices.tolist())
    assert any(i < 60 for i in chosen) and any(i >= 60 for i in chosen)
    assert sum(i >= 60 for i in chosen) == 2  # one target point of three: 2 of 6 rows
    distances = ((pool[:, None] - target[None]) ** 2).sum(axis=2)
    assert int(np.argmin(distances[:, 2])) in chosen
    # the two left target points' nearest rows, or each one's next nearest if they share one
    assert {int(np.argmin(distances[:, 0])), int(np.argmin(distances[:, 1]))} <= chosen
    assert selection.info["n_target"] == 3
    assert selection.info["neighbors_per_target"] == {"min": 2, "max": 2}


def test_knn_with_more_target_rows_than_n_takes_one_row_each_for_n_of_them():
    pool, target = _pool(50, 4, 0), _pool(20, 4, 1)
    selection = skmm.select(pool, 5, "knn", target=target, random_state=3)
    assert selection.info["neighbors_per_target"] == {"min": 0, "max": 1}
    assert selection.info["random_state_used"] is True


def test_knn_refills_when_target_rows_share_their_neighbours():
    pool = _pool(300, 5, 0)
    target = np.repeat(_pool(1, 5, 1), 10, axis=0)  # ten copies of one point
    selection = skmm.select(pool, 120, "knn", target=target, random_state=0)
    nearest = np.argsort(((pool - target[0]) ** 2).sum(axis=1), kind="stable")[:120]
    assert set(selection.indices.tolist()) == set(nearest.tolist())
    assert selection.info["refills"] > 0


@pytest.mark.parametrize(("method", "options"), TARGETED, ids=str)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), entries=st.sampled_from([1, 7, 64, 1000]))
def test_the_selection_does_not_depend_on_the_chunk_size(method, options, seed, entries):
    pool = _pool(257, 9, seed).astype(np.float32)
    target = _pool(13, 9, seed + 1)
    labels = np.random.default_rng(seed).integers(0, 3, 257)
    expected = skmm.select(pool, 40, method, target=target, random_state=seed, **options)
    per_class = skmm.select(
        pool, 40, method, target=target, labels=labels, stratify=True, random_state=seed, **options
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(targeted, "SIMILARITY_CHUNK_ENTRIES", entries)
        patch.setattr(targeted, "TARGET_BLOCK_COLUMNS", 5)  # blocks cut by T, not by chunk
        small = skmm.select(pool, 40, method, target=target, random_state=seed, **options)
        small_per_class = skmm.select(
            pool,
            40,
            method,
            target=target,
            labels=labels,
            stratify=True,
            random_state=seed,
            **options,
        )
    np.testing.assert_array_equal(small.indices, expected.indices)
    np.testing.assert_array_equal(small_per_class.indices, per_class.indices)


def test_a_chunk_holds_a_bounded_number_of_similarities():
    assert targeted.chunk_rows(10, 3) * 10 <= targeted.SIMILARITY_CHUNK_ENTRIES
    assert targeted.chunk_rows(10, 4096) * 4096 <= targeted.SIMILARITY_CHUNK_ENTRIES
    assert targeted.chunk_rows(2**23, 1) == 1


@pytest.mark.parametrize(("method", "options"), TARGETED, ids=str)
def test_per_class_budgets_select_each_class_for_the_whole_target(method, options):
    pool = _pool(90, 4, 0)
    labels = np.repeat([0, 1, 2], 30)
    target = pool[:10] + 0.01  # near class 0 only
    selection = skmm.select(
        pool, 15, method, target=target, labels=labels, stratify=True, random_state=0, **options
    )
    assert np.bincount(labels[selection.indices]).tolist() == [5, 5, 5]
    assert [entry["budget"] for entry in selection.info["classes"]] == [5, 5, 5]
    if method == "knn":  # without stratify, each target row takes its own pool row
        with pytest.warns(SelectionWarning, match="2 of 3 labeled classes got no rows"):
            free = skmm.select(pool, 10, method, target=target, labels=labels, random_state=0)
        assert sorted(free.indices.tolist()) == list(range(10))


@pytest.mark.parametrize("method", ["less", "knn"])
def test_no_target_is_a_clear_error(method):
    pool = _pool(20, 3, 0)
    with pytest.raises(
        ValueError, match=f"method '{method}' selects for a target.*target=\\.\\.\\."
    ):
        skmm.select(pool, 5, method)
    with pytest.raises(ValueError, match="pass target="):
        skmm.get_method(method)(5).fit(pool)
    assert skmm.get_method(method).requires_target and skmm.get_method(method).targeted


def test_bad_targets_and_options_are_refused_by_name():
    pool = _pool(20, 3, 0)
    with pytest.raises(ValueError, match="target has 2 columns but the pool's features have 3"):
        skmm.select(pool, 5, "less", target=pool[:, :2])
    with pytest.raises(ValueError, match="target is empty"):
        skmm.select(pool, 5, "knn", target=np.zeros((0, 3)))
    with pytest.raises(ValueError, match="unknown aggregate 'sum'; choose one of: max, mean"):
        skmm.select(pool, 5, "less", target=pool, aggregate="sum")
    with pytest.raises(ValueError, match="exceeds the pool size"):
        skmm.select(pool, 21, "knn", target=pool)


def test_untargeted_methods_do_not_require_a_target():
    needing = [m for m in skmm.methods() if skmm.get_method(m).requires_target]
    assert needing == ["knn", "less"]
    assert all(skmm.get_method(m).targeted for m in needing)
    assert len(skmm.methods()) - len(needing) == 19  # the documented untargeted methods


@pytest.mark.parametrize("method", ["less", "knn"])
def test_the_memory_estimate_grows_with_the_target_and_is_checked(method, monkeypatch):
    cls = skmm.get_method(method)
    pool = _pool(200, 16, 0)
    small, large = cls(10), cls(10)
    small._target = as_feature_matrix(pool[:5], name="target")
    large._target = as_feature_matrix(np.tile(pool, (20, 1)), name="target")
    small_bytes = small._memory_bytes(200, 16, 10, 4)
    large_bytes = large._memory_bytes(200, 16, 10, 4)
    assert large_bytes - small_bytes >= 8 * (4000 - 5) * 16  # at least the target in float64
    monkeypatch.setenv("SKMM_MAX_MEMORY", str(small_bytes + 1))
    skmm.select(pool, 10, method, target=pool[:5], random_state=0)
    with pytest.raises(MemoryLimitError, match=f"method '{method}'"):
        skmm.select(pool, 10, method, target=np.tile(pool, (20, 1)), random_state=0)
