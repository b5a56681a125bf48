"""Contextual diversity: golden k-center orders, a brute-force reference, the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import rel_entr

import skmm
from skmm.selectors.diversity import ContextualDiversity, kcenter_symmetric_kl, symmetric_kl_to

FAST = {"epochs": 3, "batch_size": 16}
TRAINED = {"epochs": 40, "lr": 0.05, "batch_size": 16}


def log_probs_of(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log()


def reference_order(probabilities: np.ndarray, n: int, first: int) -> list[int]:
    """Farthest-first traversal on the full symmetric-KL matrix (scipy's rel_entr)."""
    kl = rel_entr(probabilities[:, None, :], probabilities[None, :, :]).sum(axis=2)
    distances = 0.5 * (kl + kl.T)
    picked = [first]
    while len(picked) < n:
        nearest = distances[:, picked].min(axis=1)
        nearest[picked] = -np.inf
        picked.append(int(np.argmax(nearest)))
    return picked


def test_symmetric_kl_matches_scipy():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=20)
    found = symmetric_kl_to(torch.from_numpy(np.log(probabilities)), 7).numpy()
    expected = 0.5 * (
        rel_entr(probabilities, probabilities[7]).sum(axis=1)
        + rel_entr(probabilities[7], probabilities).sum(axis=1)
    )
    np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-15)
    assert found[7] == 0.0


def test_kcenter_golden_order_and_radius():
    # Rows (0.5, 0.5), (0.95, 0.05), (0.1, 0.9), (0.6, 0.4), starting at row 3:
    # d(3,0) = 0.05 ln 1.5, d(3,1) = 0.175 ln(12.67), d(3,2) = 0.25 ln 13.5 -> row 2;
    # then nearest = (0.05 ln 1.5, min(0.175 ln 12.67, d(2,1)), ·) -> row 1;
    # the radius left is row 0's distance to row 3, 0.05 ln 1.5.
    log_probs = log_probs_of([[0.5, 0.5], [0.95, 0.05], [0.1, 0.9], [0.6, 0.4]])
    picks, radius = kcenter_symmetric_kl(log_probs, 3, first=3)
    assert picks.tolist() == [3, 2, 1]
    assert radius == pytest.approx(0.05 * math.log(1.5), rel=1e-12)
    everything, radius_all = kcenter_symmetric_kl(log_probs, 4, first=3)
    assert everything.tolist() == [3, 2, 1, 0]
    assert radius_all == 0.0


def test_kcenter_picks_one_per_cluster_of_distributions_first():
    rng = np.random.default_rng(1)
    modes = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    cluster = rng.permutation(np.repeat(np.arange(3), 10))
    probabilities = modes[cluster] + rng.uniform(0, 0.02, size=(30, 3))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    log_probs = torch.from_numpy(np.log(probabilities))
    for first in range(30):
        picks, _ = kcenter_symmetric_kl(log_probs, 3, first)
        assert sorted(cluster[picks]) == [0, 1, 2]


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(1, 25),
    n_classes=st.integers(2, 5),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**20),
)
def test_kcenter_agrees_with_brute_force(n_rows, n_classes, fraction, seed):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.full(n_classes, 0.5), size=n_rows)
    probabilities = np.clip(probabilities, 1e-12, None)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    n = max(1, round(fraction * n_rows))
    first = int(rng.integers(n_rows))
    picks, _ = kcenter_symmetric_kl(torch.from_numpy(np.log(probabilities)), n, first)
    assert picks.tolist() == reference_order(probabilities, n, first)


def three_clusters(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), [20, 12, 8])
    centers = 6.0 * np.eye(3, 4)
    return centers[labels] + 0.3 * rng.normal(size=(40, 4)), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selector_picks_one_per_predicted_cluster_first(seed):
    features, labels = three_clusters(seed)
    selection = skmm.select(
        features, 3, "contextual_diversity", labels=labels, random_state=seed, **TRAINED
    )
    assert sorted(labels[selection.indices]) == [0, 1, 2]
    assert selection.info["probe"]["train_accuracy"] == 1.0
    assert selection.indices[0] == selection.info["first"]


def test_selector_uses_the_probe_distributions():
    features, labels = three_clusters(3)
    selector = ContextualDiversity(7, random_state=5, **FAST).fit(features, labels)
    log_probs = torch.log_softmax(selector.probe_.logits(torch.from_numpy(features)), dim=1)
    probabilities = log_probs.exp().numpy()
    expected = reference_order(probabilities, 7, selector.selection_.info["first"])
    assert selector.selection_.indices.tolist() == expected


@settings(max_examples=8, deadline=None)
@given(
    n_rows=st.integers(4, 30),
    n_features=st.integers(1, 5),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**20),
)
def test_contract(n_rows, n_features, fraction, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    labels = np.arange(n_rows) % 3
    n = max(1, round(fraction * n_rows))
    first = skmm.select(
        features, n, "contextual_diversity", labels=labels, random_state=seed, **FAST
    )
    again = skmm.select(
        features, n, "contextual_diversity", labels=labels, random_state=seed, **FAST
    )
    assert first.indices.dtype == np.int64 and first.indices.shape == (n,)
    assert np.unique(first.indices).size == n
    assert first.indices.min() >= 0 and first.indices.max() < n_rows
    assert first.weights is None
    np.testing.assert_array_equal(first.indices, again.indices)


def test_n_equals_one_and_n_equals_pool():
    features, labels = three_clusters(4)
    single = skmm.select(features, 1, "contextual_diversity", labels=labels, random_state=0, **FAST)
    whole = skmm.select(features, 40, "contextual_diversity", labels=labels, random_state=0, **FAST)
    assert single.indices.tolist() == [single.info["first"]]
    np.testing.assert_array_equal(np.sort(whole.indices), np.arange(40))
    assert whole.info["covering_radius"] == 0.0


def test_stratified_budgets_are_met():
    features, labels = three_clusters(5)
    selection = skmm.select(
        features,
        8,
        "contextual_diversity",
        labels=labels,
        random_state=0,
        stratify={0: 4, 1: 2, 2: 2},
        **FAST,
    )
    np.testing.assert_array_equal(np.bincount(labels[selection.indices]), [4, 2, 2])


def test_labels_are_required_and_need_two_classes():
    features, _ = three_clusters(0)
    with pytest.raises(ValueError, match="needs labels"):
        skmm.select(features, 3, "contextual_diversity")
    with pytest.raises(ValueError, match="at least 2 classes"):
        skmm.select(features, 3, "contextual_diversity", labels=np.ones(40))


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [
        ("epochs", 0, ValueError, "epochs must be >= 1"),
        ("epochs", 2.0, TypeError, "epochs must be an integer"),
        ("lr", 0, ValueError, "lr must be a finite number > 0"),
        ("weight_decay", -1.0, ValueError, "weight_decay must be a finite number >= 0"),
        ("batch_size", -4, ValueError, "batch_size must be >= 1"),
        ("eta", 0.1, TypeError, "does not take option"),
    ],
)
def test_bad_options_raise_clear_errors(option, value, error, message):
    features, labels = three_clusters(0)
    with pytest.raises(error, match=message):
        skmm.select(features, 3, "contextual_diversity", labels=labels, **{option: value})
