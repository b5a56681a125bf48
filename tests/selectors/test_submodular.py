import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import skmm
from skmm.seeding import derive_seed
from skmm.selectors.probe import head_gradients, train_probe
from skmm.selectors.submodular import facility_location


def similarity_matrix(points: np.ndarray, similarity: str) -> np.ndarray:
    """The full N×N similarity (small inputs only): max − d, max − d², or max(cos, 0)."""
    if similarity == "cosine":
        return np.clip(1.0 - cdist(points, points, "cosine"), 0.0, None)
    distances = cdist(points, points, "sqeuclidean" if similarity == "sqeuclidean" else "euclidean")
    return distances.max() - distances


def plain_greedy(similarities: np.ndarray, n: int) -> list[int]:
    """Plain greedy on f(S) = Σ_i max(0, max_{j∈S} s_ij): every gain recomputed every step."""
    cover = np.zeros(similarities.shape[0])
    picks: list[int] = []
    for _ in range(n):
        gains = np.clip(similarities - cover[:, None], 0.0, None).sum(axis=0)
        gains[picks] = -np.inf
        picks.append(int(np.argmax(gains)))
        cover = np.maximum(cover, similarities[:, picks[-1]])
    return picks


def blobs(seed: int, n_rows: int = 150, n_cols: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(6, n_cols))
    return centers[rng.integers(6, size=n_rows)] + rng.normal(size=(n_rows, n_cols))


def test_three_points_on_a_line():
    points = np.array([[10.0], [0.0], [1.0]])
    # Σ_i d(i, j): 19 for 10, 11 for 0, 10 for 1 -> row 2 first. Gains next: 10 -> 9, 0 -> 1.
    selection = skmm.select(points, 3, "facility_location")
    assert selection.indices.tolist() == [2, 0, 1]
    assert selection.info["gains"][1:] == pytest.approx([9.0, 1.0])


def test_two_tight_clusters_get_one_pick_each_first():
    rng = np.random.default_rng(0)
    cluster = np.repeat([0, 1], [12, 5])
    points = cluster[:, None] * np.array([50.0, 0.0]) + rng.normal(scale=0.1, size=(17, 2))
    for similarity in ("euclidean", "sqeuclidean"):
        picks = skmm.select(points, 2, "facility_location", similarity=similarity).indices
        assert sorted(cluster[picks].tolist()) == [0, 1]
        assert cluster[picks[0]] == 0  # the larger cluster holds the medoid


def cube(seed: int, n_rows: int = 150) -> np.ndarray:
    """Points filling a cube: no pair of rows is isolated, so greedy gains have no ties."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n_rows, 3)) + 0.5


def assert_greedy_steps(similarities: np.ndarray, picks: np.ndarray, tolerance: float) -> None:
    """Each pick has the largest brute-force gain given the picks before it, up to tolerance
    (two rows that only cover each other have exactly equal gains, which rounding orders)."""
    cover = np.zeros(similarities.shape[0])
    scale = similarities.sum(axis=0).max()
    for step, pick in enumerate(picks):
        gains = np.clip(similarities - cover[:, None], 0.0, None).sum(axis=0)
        gains[picks[:step]] = -np.inf
        assert gains[pick] >= gains.max() - tolerance * scale, f"step {step}"
        cover = np.maximum(cover, similarities[:, pick])


@pytest.mark.parametrize("similarity", ["euclidean", "sqeuclidean", "cosine"])
def test_lazy_greedy_gives_plain_greedy_picks(similarity):
    points = cube(0)
    selection = skmm.select(points, 25, "facility_location", similarity=similarity)
    assert selection.indices.tolist() == plain_greedy(similarity_matrix(points, similarity), 25)
    assert selection.info["evaluations_per_row"] < 25  # laziness skipped most re-evaluations


@pytest.mark.parametrize("similarity", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_pick_is_a_greedy_pick_on_clustered_data(similarity, dtype):
    points = blobs(1)
    selection = skmm.select(points.astype(dtype), 30, "facility_location", similarity=similarity)
    tolerance = 1e-12 if dtype == np.float64 else 1e-6
    assert_greedy_steps(similarity_matrix(points, similarity), selection.indices, tolerance)


@pytest.mark.parametrize(
    ("similarity", "metric"),
    [("sqeuclidean", "euclidean"), ("euclidean", "precomputed"), ("cosine", "precomputed")],
)
def test_agrees_with_apricot(similarity, metric):
    apricot = pytest.importorskip("apricot")
    points = cube(3, n_rows=100)
    # 15 picks: later on, pairs of rows that only cover each other tie exactly, and apricot
    # breaks such ties its own way (plain greedy's lowest index is checked above).
    ours = skmm.select(points, 15, "facility_location", similarity=similarity).indices
    source = points if metric == "euclidean" else similarity_matrix(points, similarity)
    reference = apricot.FacilityLocationSelection(15, metric=metric, optimizer="naive")
    assert ours.tolist() == reference.fit(source).ranking.tolist()


def test_stochastic_greedy_with_tiny_epsilon_is_plain_greedy():
    points = blobs(5)
    lazy = skmm.select(points, 15, "facility_location")
    stochastic = skmm.select(
        points, 15, "facility_location", optimizer="stochastic", epsilon=1e-12, random_state=4
    )
    assert stochastic.indices.tolist() == lazy.indices.tolist()


def test_stochastic_greedy_is_seeded_cheaper_and_nearly_as_good():
    points = blobs(6, n_rows=400)
    lazy = skmm.select(points, 40, "facility_location")
    runs = [
        skmm.select(points, 40, "facility_location", optimizer="stochastic", random_state=s)
        for s in (0, 0, 1)
    ]
    assert runs[0].indices.tolist() == runs[1].indices.tolist()
    assert runs[0].indices.tolist() != runs[2].indices.tolist()
    for run in runs:
        assert run.info["objective"] >= 0.97 * lazy.info["objective"]
        assert run.info["gain_evaluations"] < lazy.info["gain_evaluations"]


def test_cluster_weights_count_nearest_picks():
    points = blobs(7)
    result = facility_location(torch.as_tensor(points), 10)
    nearest = cdist(points, points[result.order]).argmin(axis=1)
    assert result.assigned.tolist() == nearest.tolist()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"similarity": "manhattan"}, "similarity"),
        ({"optimizer": "naive"}, "optimizer"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"epsilon": "small"}, "epsilon"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        skmm.select(np.zeros((6, 2)), 2, "facility_location", **options)


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 20),
    n_cols=st.integers(1, 4),
    data_seed=st.integers(0, 2**32 - 1),
    fraction=st.floats(0.0, 1.0),
    similarity=st.sampled_from(["euclidean", "sqeuclidean", "cosine"]),
    optimizer=st.sampled_from(["lazy", "stochastic"]),
)
def test_contract(n_rows, n_cols, data_seed, fraction, similarity, optimizer):
    points = np.random.default_rng(data_seed).integers(-2, 3, size=(n_rows, n_cols)) * 1.0
    n = max(1, round(fraction * n_rows))
    options = {"similarity": similarity, "optimizer": optimizer, "random_state": 5}
    first = skmm.select(points, n, "facility_location", **options)
    again = skmm.select(points, n, "facility_location", **options)
    indices = first.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_rows
    assert indices.tolist() == again.indices.tolist()
    if optimizer == "lazy":  # greedy gains never grow (submodularity)
        assert np.all(np.diff(first.info["gains"]) <= 1e-9 * max(1.0, first.info["gains"][0]))


def labelled(seed: int, n_rows: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(3, size=n_rows)
    points = rng.normal(size=(n_rows, 5)) + labels[:, None] * np.array([1.5, -1.0, 0, 0, 0])
    return points.astype(np.float32), labels


def test_craig_is_facility_location_on_probe_gradients_with_cluster_weights():
    points, labels = labelled(0)
    selection = skmm.select(points, 8, "craig", labels=labels, random_state=21, epochs=3)
    probe = train_probe(
        torch.as_tensor(points),
        torch.as_tensor(labels),
        3,
        seed=derive_seed(21, "probe", 0),
        epochs=3,
    )
    gradients = head_gradients(probe, torch.as_tensor(points), torch.as_tensor(labels)).numpy()
    assert selection.info["gradient_dim"] == 18 and selection.info["gradient_sketch_dim"] is None
    similarities = similarity_matrix(gradients.astype(np.float64), "euclidean")
    assert_greedy_steps(similarities, selection.indices, 1e-6)
    nearest = cdist(gradients, gradients[selection.indices]).argmin(axis=1)
    shares = np.bincount(nearest, minlength=8) / len(points)
    np.testing.assert_allclose(selection.weights, shares)
    assert selection.weights.sum() == pytest.approx(1.0)


def test_craig_sketches_long_gradients_and_is_deterministic():
    points, labels = labelled(1)
    options = {"labels": labels, "random_state": 3, "epochs": 2, "sketch_dim": 6}
    first = skmm.select(points, 10, "craig", **options)
    again = skmm.select(points, 10, "craig", **options)
    assert first.info["gradient_sketch_dim"] == 6
    assert first.indices.tolist() == again.indices.tolist()
    np.testing.assert_array_equal(first.weights, again.weights)
    assert np.all(first.weights >= 0) and first.weights.sum() == pytest.approx(1.0)


def test_craig_stratified_weights_sum_to_one():
    points, labels = labelled(2)
    selection = skmm.select(points, 9, "craig", labels=labels, stratify="balanced", epochs=2)
    assert np.bincount(labels[selection.indices], minlength=3).tolist() == [3, 3, 3]
    assert selection.weights.sum() == pytest.approx(1.0)


def test_craig_needs_labels_with_two_classes():
    points, _ = labelled(3, n_rows=20)
    with pytest.raises(ValueError, match="labels"):
        skmm.select(points, 3, "craig")
    with pytest.raises(ValueError, match="2 classes"):
        skmm.select(points, 3, "craig", labels=np.zeros(20, dtype=int))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"sketch_dim": 0}, "sketch_dim"),
        ({"similarity": "l1"}, "similarity"),
    ],
)
def test_craig_bad_options_are_named(options, match):
    points, labels = labelled(4, n_rows=20)
    with pytest.raises((ValueError, TypeError), match=match):
        skmm.select(points, 3, "craig", labels=labels, **options)


def test_craig_accepts_zero_weight_decay():
    points, labels = labelled(5, n_rows=30)
    selection = skmm.select(points, 4, "craig", labels=labels, weight_decay=0, epochs=1)
    assert selection.indices.size == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("optimizer", ["lazy", "stochastic"])
def test_cuda_picks_match_cpu(optimizer):
    points = cube(8, n_rows=300)
    options = {"optimizer": optimizer, "random_state": 2}
    cpu = skmm.select(points, 12, "facility_location", **options)
    gpu = skmm.select(points, 12, "facility_location", device="cuda", **options)
    assert gpu.indices.tolist() == cpu.indices.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_craig_runs_on_cuda():
    points, labels = labelled(6)
    selection = skmm.select(points, 6, "craig", labels=labels, epochs=2, device="cuda")
    assert selection.info["device"].startswith("cuda")
    assert selection.weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("similarity", ["euclidean", "sqeuclidean", "cosine"])
def test_kept_similarities_and_recomputed_tiles_give_the_same_picks(similarity, monkeypatch):
    from skmm.selectors import submodular

    points = blobs(7, n_rows=300)
    kept = skmm.select(points, 25, "facility_location", similarity=similarity)
    monkeypatch.setattr(submodular, "DENSE_SIMILARITY_BYTES", 0)
    tiled = skmm.select(points, 25, "facility_location", similarity=similarity)
    assert kept.indices.tolist() == tiled.indices.tolist()
    assert kept.info["objective"] == pytest.approx(tiled.info["objective"], rel=1e-6)
