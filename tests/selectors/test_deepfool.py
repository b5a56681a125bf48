"""DeepFool margins of the linear probe: closed form, geometry, selection contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skmm
from skmm.selectors.deepfool import deepfool_distances
from skmm.selectors.probe import LinearProbe

FAST = {"epochs": 3, "batch_size": 8}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny probes train much faster on one thread (no intra-op contention on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def probe_of(weight, bias, mean=None, scale=None) -> LinearProbe:
    weight = torch.as_tensor(weight, dtype=torch.float64)
    n_cols = weight.shape[1]
    mean = torch.zeros(n_cols) if mean is None else mean
    scale = torch.ones(n_cols) if scale is None else scale
    return LinearProbe(
        weight,
        torch.as_tensor(bias, dtype=torch.float64),
        torch.as_tensor(mean, dtype=torch.float64),
        torch.as_tensor(scale, dtype=torch.float64),
    )


def test_distance_to_a_line_is_the_geometric_distance() -> None:
    probe = probe_of([[0.0, 0.0], [3.0, 4.0]], [0.0, -5.0])  # boundary 3x + 4y = 5
    points = torch.tensor(
        [[0.0, 0.0], [1.0, 1.0], [3.0, 4.0], [5.0 / 3.0, 0.0]], dtype=torch.float64
    )
    geometric = (points @ torch.tensor([3.0, 4.0], dtype=torch.float64) - 5.0).abs() / 5.0
    assert torch.allclose(deepfool_distances(probe, points), geometric, atol=1e-12)
    assert deepfool_distances(probe, points)[0].item() == pytest.approx(1.0, abs=1e-12)


def test_distance_is_measured_in_the_standardized_space() -> None:
    probe = probe_of([[0.0, 0.0], [1.0, 0.0]], [0.0, -1.0], mean=[1.0, 0.0], scale=[2.0, 1.0])
    point = torch.tensor([[7.0, 5.0]])  # x̂ = (3, 5): f1 − f0 = 2, boundary x̂₁ = 1
    assert deepfool_distances(probe, point).item() == pytest.approx(2.0, abs=1e-12)


def exit_distance_by_ray_casting(probe: LinearProbe, point: torch.Tensor, n_rays: int) -> float:
    """Smallest distance along n_rays directions at which the predicted class changes."""
    standardized = probe.standardize(point[None])[0]
    logits = probe.weight @ standardized + probe.bias
    predicted = int(logits.argmax())
    angles = torch.linspace(0, 2 * math.pi, n_rays + 1, dtype=torch.float64)[:-1]
    rays = torch.stack([angles.cos(), angles.sin()], dim=1)
    rates = rays @ (probe.weight - probe.weight[predicted]).T  # d(f_k − f_ŷ)/dt along a ray
    gaps = logits[predicted] - logits
    times = torch.where(rates > 0, gaps / rates.clamp_min(1e-300), math.inf)
    times[:, predicted] = math.inf
    return float(times.amin())


def test_closed_form_matches_ray_casting_for_several_classes() -> None:
    gen = torch.Generator().manual_seed(0)
    probe = probe_of(
        torch.randn(4, 2, generator=gen, dtype=torch.float64),
        torch.randn(4, generator=gen, dtype=torch.float64),
        mean=torch.tensor([0.5, -1.0], dtype=torch.float64),
        scale=torch.tensor([1.5, 0.7], dtype=torch.float64),
    )
    points = 3 * torch.randn(12, 2, generator=gen, dtype=torch.float64)
    closed_form = deepfool_distances(probe, points)
    for point, distance in zip(points, closed_form.tolist(), strict=True):
        ray_cast = exit_distance_by_ray_casting(probe, point, n_rays=20000)
        assert distance <= ray_cast + 1e-12
        assert ray_cast == pytest.approx(distance, rel=1e-6, abs=1e-12)


def test_a_step_of_the_distance_towards_the_nearest_boundary_changes_the_class() -> None:
    gen = torch.Generator().manual_seed(1)
    probe = probe_of(torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.zeros(3))
    point = torch.randn(5, generator=gen, dtype=torch.float64)
    distance = deepfool_distances(probe, point[None]).item()
    logits = probe.weight @ point
    predicted = int(logits.argmax())
    candidates = [k for k in range(3) if k != predicted]
    ratios = [
        (logits[predicted] - logits[k])
        / torch.linalg.vector_norm(probe.weight[k] - probe.weight[predicted])
        for k in candidates
    ]
    nearest = candidates[int(np.argmin(ratios))]
    direction = probe.weight[nearest] - probe.weight[predicted]
    direction = direction / torch.linalg.vector_norm(direction)
    beyond = point + (distance * (1 + 1e-9) + 1e-12) * direction
    short = point + distance * (1 - 1e-9) * direction
    assert int((probe.weight @ beyond).argmax()) != predicted
    assert int((probe.weight @ short).argmax()) == predicted


def test_equal_weights_make_a_class_unreachable_or_tied() -> None:
    unreachable = probe_of([[1.0, 0.0], [1.0, 0.0]], [1.0, 0.0])
    tied = probe_of([[1.0, 0.0], [1.0, 0.0]], [0.0, 0.0])
    three = probe_of([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [1.0, 0.0, 0.0])
    point = torch.tensor([[1.0, 2.0]])
    assert deepfool_distances(unreachable, point).item() == math.inf
    assert deepfool_distances(tied, point).item() == 0.0
    assert deepfool_distances(three, point).item() == pytest.approx(2.0, abs=1e-12)


# --- selection ----------------------------------------------------------------------------------

LINE = np.array([[-3.0], [-2.0], [-1.0], [-0.2], [0.2], [1.0], [2.0], [3.0]])
LINE_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_selects_the_rows_next_to_the_boundary() -> None:
    for seed in range(3):
        selection = skmm.select(
            LINE,
            2,
            method="deepfool",
            labels=LINE_LABELS,
            random_state=seed,
            lr=0.1,
            batch_size=2,
            epochs=20,
        )
        assert sorted(selection.indices.tolist()) == [3, 4]
        assert selection.info["probe"]["accuracy"] == 1.0
        scores = selection.info["scores"]
        assert scores["chosen"]["max"] <= scores["pool"]["mean"]
        assert scores["chosen"]["min"] == scores["pool"]["min"]


def test_deterministic_and_stratifiable() -> None:
    rng = np.random.default_rng(2)
    features = rng.normal(size=(30, 3)).astype(np.float32)
    labels = np.arange(30) % 3
    first = skmm.select(features, 6, method="deepfool", labels=labels, random_state=5, **FAST)
    again = skmm.select(features, 6, method="deepfool", labels=labels, random_state=5, **FAST)
    assert np.array_equal(first.indices, again.indices)
    per_class = skmm.select(
        features, 6, method="deepfool", labels=labels, random_state=5, stratify="balanced", **FAST
    )
    assert np.bincount(labels[per_class.indices], minlength=3).tolist() == [2, 2, 2]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_rows=st.integers(4, 25), n_cols=st.integers(1, 4), data=st.data())
def test_contract(n_rows: int, n_cols: int, data) -> None:
    seed = data.draw(st.integers(0, 2**31))
    n = data.draw(st.sampled_from([1, n_rows, data.draw(st.integers(1, n_rows))]))
    features = np.random.default_rng(seed).normal(size=(n_rows, n_cols))
    labels = np.arange(n_rows) % 2
    indices = skmm.select(
        features, n, method="deepfool", labels=labels, random_state=seed, **FAST
    ).indices
    assert indices.dtype == np.int64 and indices.shape == (n,)
    assert np.unique(indices).size == n and indices.min() >= 0 and indices.max() < n_rows


def test_errors() -> None:
    features = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(ValueError, match="at least 2 classes"):
        skmm.select(features, 2, method="deepfool", labels=np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="needs labels"):
        skmm.select(features, 2, method="deepfool")
    with pytest.raises(ValueError, match="epochs"):
        skmm.select(features, 2, method="deepfool", labels=np.arange(6) % 2, epochs=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda() -> None:
    features = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)).cuda()
    labels = np.arange(40) % 2
    selection = skmm.select(features, 5, method="deepfool", labels=labels, random_state=0, **FAST)
    assert selection.info["device"].startswith("cuda") and len(selection) == 5
    cpu_probe = probe_of(torch.randn(3, 3, dtype=torch.float64), torch.zeros(3))
    gpu_probe = LinearProbe(*(t.cuda() for t in vars(cpu_probe).values()))
    points = torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(
        deepfool_distances(gpu_probe, points.cuda()).cpu(), deepfool_distances(cpu_probe, points)
    )
