"""Score-based baselines: entropy, margin, least_confidence, el2n, grand, forgetting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skmm
import skmm.selectors.probe as probe_module
import skmm.selectors.scores as scores
from skmm.selectors.probe import LinearProbe, head_gradients

METHODS = ("entropy", "margin", "least_confidence", "el2n", "grand", "forgetting")
FAST = {"epochs": 3, "batch_size": 8}
FAST_DIET = {"epochs": 3, "batch_size": 8, "repeats": 2}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny probes train much faster on one thread (no intra-op contention on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fast_options(method: str) -> dict[str, int]:
    return FAST_DIET if method in ("el2n", "grand") else FAST


def identity_probe(n_classes: int) -> LinearProbe:
    """logits = x: a probe on unstandardized features whose logits are the inputs."""
    return LinearProbe(
        torch.eye(n_classes, dtype=torch.float64),
        torch.zeros(n_classes, dtype=torch.float64),
        torch.zeros(n_classes, dtype=torch.float64),
        torch.ones(n_classes, dtype=torch.float64),
    )


def random_probe(n_classes: int, n_cols: int, seed: int) -> LinearProbe:
    gen = torch.Generator().manual_seed(seed)
    return LinearProbe(
        torch.randn(n_classes, n_cols, generator=gen, dtype=torch.float64),
        torch.randn(n_classes, generator=gen, dtype=torch.float64),
        torch.randn(n_cols, generator=gen, dtype=torch.float64),
        torch.rand(n_cols, generator=gen, dtype=torch.float64) + 0.5,
    )


def blobs(n_per_class: int = 12, n_classes: int = 3, n_cols: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(n_classes, n_cols))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centers[labels] + rng.normal(size=(labels.size, n_cols))
    return features.astype(np.float32), labels


# A 1-D pool symmetric about 0: rows 3 (x = -0.2) and 4 (x = 0.2) straddle the boundary.
LINE = np.array([[-3.0], [-2.0], [-1.0], [-0.2], [0.2], [1.0], [2.0], [3.0]])
LINE_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TRAINED = {"lr": 0.1, "batch_size": 2, "epochs": 20}
TRAINED_DIET = {**TRAINED, "repeats": 3}


# --- scores of a hand-built probe --------------------------------------------------------------


def test_uncertainty_scores_of_known_probabilities() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]], dtype=torch.float64)
    probe, features = identity_probe(3), probabilities.log()
    assert torch.allclose(
        scores.margin_scores(probe, features), torch.tensor([0.2, 0.85], dtype=torch.float64)
    )
    assert torch.allclose(
        scores.least_confidence_scores(probe, features),
        torch.tensor([0.5, 0.1], dtype=torch.float64),
    )
    expected_entropy = [
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
        -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05)),
    ]
    assert torch.allclose(
        scores.entropy_scores(probe, features), torch.tensor(expected_entropy, dtype=torch.float64)
    )


def test_el2n_and_grand_of_known_probabilities() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    probe, features, labels = identity_probe(3), probabilities.log(), torch.tensor([1])
    el2n = math.sqrt(0.5**2 + 0.7**2 + 0.2**2)
    assert scores.el2n_scores(probe, features, labels).item() == pytest.approx(el2n, rel=1e-12)
    squared_norm = float(probabilities.log().square().sum())
    assert scores.grand_scores(probe, features, labels).item() == pytest.approx(
        el2n * math.sqrt(squared_norm + 1.0), rel=1e-12
    )


def test_scores_use_the_standardized_features() -> None:
    probe = identity_probe(2)
    probe.mean = torch.tensor([1.0, -1.0], dtype=torch.float64)
    probe.scale = torch.tensor([2.0, 0.5], dtype=torch.float64)
    features = torch.tensor([[3.0, -1.0]], dtype=torch.float64)  # x̂ = (1, 0)
    p = 1.0 / (1.0 + math.exp(-1.0))
    assert scores.margin_scores(probe, features).item() == pytest.approx(2 * p - 1, rel=1e-12)
    grand = scores.grand_scores(probe, features, torch.tensor([0])).item()
    assert grand == pytest.approx(math.sqrt(2) * (1 - p) * math.sqrt(2.0), rel=1e-12)


def test_grand_closed_form_equals_autograd_per_example_gradient_norm() -> None:
    probe = random_probe(n_classes=4, n_cols=5, seed=1)
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (9,), generator=gen)

    def loss(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
        logits = ((x - probe.mean) / probe.scale) @ weight.T + bias
        return torch.nn.functional.cross_entropy(logits[None], y[None])

    grads = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0, 0))(
        probe.weight, probe.bias, features, labels
    )
    autograd_norms = torch.sqrt(grads[0].square().sum(dim=(1, 2)) + grads[1].square().sum(dim=1))
    closed_form = scores.grand_scores(probe, features, labels)
    assert torch.allclose(closed_form, autograd_norms, rtol=1e-12, atol=0)
    flat = head_gradients(probe, features, labels)
    assert torch.allclose(closed_form, torch.linalg.vector_norm(flat, dim=1), rtol=1e-12)


def test_scores_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = random_probe(n_classes=3, n_cols=4, seed=3)
    features = torch.randn(50, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    labels = torch.arange(50) % 3
    whole = scores.grand_scores(probe, features, labels)
    monkeypatch.setattr(scores, "SCORE_BLOCK_BYTES", 8 * (4 + 6) * 7)  # 7 rows a block
    assert scores.block_rows(4, 3) == 7
    assert torch.equal(scores.grand_scores(probe, features, labels), whole)


# --- forgetting events -------------------------------------------------------------------------


def test_forgetting_counter_on_a_hand_made_sequence() -> None:
    history = torch.tensor(
        [  # rows: forgotten twice, never learned, always right, once, once
            [1, 0, 1, 0, 0],
            [0, 0, 1, 1, 1],
            [1, 0, 1, 1, 0],
            [0, 0, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    counter = scores.ForgettingCounter(5)
    for correct in history:
        counter.update(correct)
    assert counter.scores().tolist() == [2.0, math.inf, 0.0, 1.0, 1.0]
    assert counter.presentations == 4


def test_forgetting_ranks_by_the_events_seen_during_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[torch.Tensor] = []
    real_train = probe_module.train_probe

    def spy(*args, on_epoch=None, **kwargs):
        def record(epoch, probe, correct):
            recorded.append(correct.clone())
            on_epoch(epoch, probe, correct)

        return real_train(*args, on_epoch=record, **kwargs)

    monkeypatch.setattr(probe_module, "train_probe", spy)
    features, labels = blobs(n_per_class=15, seed=5)
    labels[[0, 20, 40]] = [2, 0, 1]  # three mislabeled rows
    n = 6
    selection = skmm.select(
        features, n, method="forgetting", labels=labels, random_state=0, lr=0.3, batch_size=4
    )
    assert len(recorded) == 20
    counts = np.zeros(labels.size)
    learned = np.zeros(labels.size, dtype=bool)
    for before, after in itertools.pairwise(recorded):
        counts += (before.numpy() & ~after.numpy()).astype(float)
    for correct in recorded:
        learned |= correct.numpy()
    counts[~learned] = np.inf
    chosen = np.zeros(labels.size, dtype=bool)
    chosen[selection.indices] = True
    assert counts[chosen].min() >= counts[~chosen].max()
    assert selection.info["never_learned"] == int((~learned).sum())


# --- end-to-end golden cases -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["entropy", "margin", "least_confidence", "el2n", "grand"])
def test_the_rows_next_to_the_boundary_are_the_most_uncertain(method: str) -> None:
    options = TRAINED_DIET if method in ("el2n", "grand") else TRAINED
    for seed in range(3):
        selection = skmm.select(
            LINE, 2, method=method, labels=LINE_LABELS, random_state=seed, **options
        )
        assert sorted(selection.indices.tolist()) == [3, 4]
        assert selection.info["probe"]["accuracy"] == 1.0


@pytest.mark.parametrize("method", ["el2n", "grand"])
def test_a_mislabeled_row_has_the_largest_error(method: str) -> None:
    features = np.vstack([LINE, [[2.5]]])
    labels = np.append(LINE_LABELS, 0)
    for seed in range(3):
        selection = skmm.select(
            features, 1, method=method, labels=labels, random_state=seed, **TRAINED_DIET
        )
        assert selection.indices.tolist() == [8]


def test_margin_keeps_the_lowest_and_entropy_the_highest_scores() -> None:
    features, labels = blobs(seed=6)
    for method, summary_key in (("margin", "max"), ("entropy", "min")):
        info = skmm.select(features, 5, method=method, labels=labels, random_state=0).info
        chosen, pool = info["scores"]["chosen"], info["scores"]["pool"]
        if method == "margin":
            assert chosen["min"] == pool["min"] and chosen[summary_key] <= pool["mean"]
        else:
            assert chosen["max"] == pool["max"] and chosen[summary_key] >= pool["mean"]


def test_scores_stay_in_their_ranges() -> None:
    features, labels = blobs(n_classes=4, seed=7)
    bounds = {
        "entropy": (0.0, math.log(4)),
        "margin": (0.0, 1.0),
        "least_confidence": (0.0, 0.75),
        "el2n": (0.0, math.sqrt(2)),
    }
    for method, (low, high) in bounds.items():
        pool = skmm.select(features, 3, method=method, labels=labels, random_state=0).info[
            "scores"
        ]["pool"]
        assert low - 1e-12 <= pool["min"] <= pool["max"] <= high + 1e-12


# --- ties, determinism, stratification ---------------------------------------------------------


def test_ties_are_broken_by_a_seeded_random_key() -> None:
    flat = np.zeros(100)
    first = scores.top_by_score(flat, 10, "highest", np.random.default_rng(0))
    again = scores.top_by_score(flat, 10, "highest", np.random.default_rng(0))
    other = scores.top_by_score(flat, 10, "highest", np.random.default_rng(1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert first.max() >= 10  # not the low indices


def test_top_by_score_orders_best_first_and_ranks_infinity_first() -> None:
    values = np.array([1.0, np.inf, 3.0, 0.5, 2.0])
    rng = np.random.default_rng(0)
    assert scores.top_by_score(values, 3, "highest", rng).tolist() == [1, 2, 4]
    assert scores.top_by_score(values, 3, "lowest", rng).tolist() == [3, 0, 4]


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_selection(method: str) -> None:
    features, labels = blobs(seed=8)
    options = fast_options(method)
    first = skmm.select(features, 7, method=method, labels=labels, random_state=3, **options)
    again = skmm.select(features, 7, method=method, labels=labels, random_state=3, **options)
    assert np.array_equal(first.indices, again.indices)
    assert first.weights is None


@pytest.mark.parametrize("method", METHODS)
def test_n_equal_to_pool_and_n_one(method: str) -> None:
    features, labels = blobs(n_per_class=4, seed=9)
    options = fast_options(method)
    everything = skmm.select(features, 12, method=method, labels=labels, random_state=0, **options)
    assert sorted(everything.indices.tolist()) == list(range(12))
    one = skmm.select(features, 1, method=method, labels=labels, random_state=0, **options)
    assert one.indices.dtype == np.int64 and one.indices.shape == (1,)


def test_stratified_selection_ranks_within_each_class_by_the_pool_probe() -> None:
    features, labels = blobs(n_per_class=10, seed=10)
    ranking = skmm.select(features, 30, method="margin", labels=labels, random_state=4).indices
    per_class = skmm.select(
        features, 6, method="margin", labels=labels, random_state=4, stratify="balanced"
    )
    expected = np.concatenate([ranking[labels[ranking] == c][:2] for c in range(3)])
    assert per_class.indices.tolist() == expected.tolist()
    assert [entry["budget"] for entry in per_class.info["classes"]] == [2, 2, 2]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(METHODS),
    n_rows=st.integers(4, 30),
    n_cols=st.integers(1, 4),
    n_classes=st.integers(2, 3),
    data=st.data(),
)
def test_contract(method: str, n_rows: int, n_cols: int, n_classes: int, data) -> None:
    seed = data.draw(st.integers(0, 2**31))
    n = data.draw(st.integers(1, n_rows))
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_rows, n_cols))
    labels = np.arange(n_rows) % n_classes
    selection = skmm.select(
        features, n, method=method, labels=labels, random_state=seed, **fast_options(method)
    )
    indices = selection.indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_rows
    assert selection.info["method"] == method
    assert 0.0 <= selection.info["probe"]["accuracy"] <= 1.0


# --- options and errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 2.0}, TypeError, "epochs"),
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": "fast"}, TypeError, "lr"),
        ({"weight_decay": -1e-3}, ValueError, "weight_decay"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_bad_common_options(method: str, options: dict, error: type, match: str) -> None:
    features, labels = blobs(n_per_class=3)
    with pytest.raises(error, match=match):
        skmm.select(features, 2, method=method, labels=labels, **options)


@pytest.mark.parametrize("method", ["el2n", "grand"])
def test_bad_data_diet_options(method: str) -> None:
    features, labels = blobs(n_per_class=3)
    with pytest.raises(ValueError, match="repeats"):
        skmm.select(features, 2, method=method, labels=labels, repeats=0)
    with pytest.raises(ValueError, match="score_epoch"):
        skmm.select(features, 2, method=method, labels=labels, epochs=3, score_epoch=4)
    with pytest.raises(TypeError, match="score_epoch"):
        skmm.select(features, 2, method=method, labels=labels, score_epoch=1.5)


def test_score_epoch_stops_training_early() -> None:
    features, labels = blobs(seed=11)
    early = skmm.select(
        features, 5, method="el2n", labels=labels, random_state=0, epochs=6, score_epoch=2
    )
    short = skmm.select(features, 5, method="el2n", labels=labels, random_state=0, epochs=2)
    assert early.info["probe"]["score_epoch"] == 2
    assert np.array_equal(early.indices, short.indices)
    assert early.info["scores"] == short.info["scores"]
    assert short.info["params"]["score_epoch"] == 2  # None recorded as the epoch it means
    assert early.info["params"]["score_epoch"] == 2


def test_zero_weight_decay_is_allowed() -> None:
    features, labels = blobs(n_per_class=3)
    selection = skmm.select(
        features, 2, method="entropy", labels=labels, random_state=0, weight_decay=0.0, **FAST
    )
    assert len(selection) == 2


@pytest.mark.parametrize("method", METHODS)
def test_one_class_is_refused(method: str) -> None:
    features = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match="at least 2 classes"):
        skmm.select(features, 2, method=method, labels=np.zeros(6, dtype=int))


@pytest.mark.parametrize("method", METHODS)
def test_labels_are_required(method: str) -> None:
    features = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match="needs labels"):
        skmm.select(features, 2, method=method)


def test_data_diet_options_are_not_taken_by_uncertainty_methods() -> None:
    features, labels = blobs(n_per_class=3)
    with pytest.raises(TypeError, match="repeats"):
        skmm.select(features, 2, method="entropy", labels=labels, repeats=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_runs_on_cuda(method: str) -> None:
    features, labels = blobs(seed=12)
    selection = skmm.select(
        torch.as_tensor(features, device="cuda"),
        6,
        method=method,
        labels=labels,
        random_state=0,
        **fast_options(method),
    )
    assert selection.info["device"].startswith("cuda")
    again = skmm.select(
        torch.as_tensor(features, device="cuda"),
        6,
        method=method,
        labels=labels,
        random_state=0,
        **fast_options(method),
    )
    assert np.array_equal(selection.indices, again.indices)
