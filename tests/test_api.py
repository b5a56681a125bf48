"""The contract every registered method meets, through the one-call API."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skmm


def _pool(rows, cols, seed):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, cols)).astype(np.float32)
    labels = rng.integers(0, 3, rows)
    labels[:3] = [0, 1, 2]
    return features, labels


def _select(method, features, n, seed, **options):
    """Every method as the contract asks: labels where it needs them, and for a method that
    selects only for a target (``requires_target``) every fourth row as the target."""
    labels = options.pop("labels", None)
    cls = skmm.get_method(method)
    if cls.requires_labels and labels is None:
        labels = _pool(len(features), 1, 0)[1]
    target = features[::4] if cls.requires_target else None
    return skmm.select(
        features, n, method, labels=labels, target=target, random_state=seed, **options
    )


def test_methods_lists_the_registry():
    names = skmm.methods()
    assert names == sorted(names)
    assert {"skmm", "uniform"} <= set(names)


@pytest.mark.parametrize("method", skmm.methods())
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(4, 60), cols=st.integers(1, 40), seed=st.integers(0, 2**32), data=st.data())
def test_contract_exact_n_distinct_in_range_and_deterministic(method, rows, cols, seed, data):
    n = data.draw(st.integers(1, rows))
    features, _ = _pool(rows, cols, seed % 1000)
    first = _select(method, features, n, seed)
    assert first.indices.dtype == np.int64
    assert first.indices.shape == (n,) and np.unique(first.indices).size == n
    assert first.indices.min() >= 0 and first.indices.max() < rows
    if first.weights is not None:
        assert first.weights.dtype == np.float64 and first.weights.shape == (n,)
        assert first.weights.sum() == pytest.approx(1.0)
    assert first.info["method"] == method and first.info["n_pool"] == rows
    assert first.info["timings"]["total"] >= 0
    second = _select(method, features, n, seed)
    np.testing.assert_array_equal(first.indices, second.indices)


@pytest.mark.parametrize("method", skmm.methods())
def test_n_equal_to_pool_and_n_equal_to_one(method):
    features, _ = _pool(12, 5, 0)
    assert sorted(_select(method, features, 12, 0).indices) == list(range(12))
    assert len(_select(method, features, 1, 0)) == 1


@pytest.mark.parametrize("method", skmm.methods())
def test_torch_and_numpy_inputs_give_the_same_selection(method):
    features, _ = _pool(40, 6, 1)
    a = _select(method, features, 7, 5)
    b = _select(method, torch.from_numpy(features), 7, 5)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("method", skmm.methods())
@pytest.mark.parametrize(
    ("n", "error", "match"),
    [
        (0, ValueError, "n must be >= 1"),
        (41, ValueError, "exceeds the pool size"),
        (2.0, TypeError, "integer"),
    ],
)
def test_bad_budgets(method, n, error, match):
    features, _ = _pool(40, 3, 0)
    with pytest.raises(error, match=match):
        _select(method, features, n, 0)


@pytest.mark.parametrize("method", skmm.methods())
def test_bad_features_are_refused_by_every_method(method):
    features, _ = _pool(20, 3, 0)
    features[4, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        _select(method, features, 3, 0)
    with pytest.raises(ValueError, match="2-D"):
        _select(method, features[:, 0], 3, 0)


@pytest.mark.parametrize("method", skmm.methods())
def test_labels_of_the_wrong_length(method):
    features, _ = _pool(20, 3, 0)
    with pytest.raises(ValueError, match="labels has length 5"):
        _select(method, features, 3, 0, labels=np.zeros(5))


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="available methods: .*skmm.*uniform"):
        skmm.select(np.ones((5, 2)), 2, "magic")


def test_unknown_option_is_an_error_not_ignored():
    with pytest.raises(TypeError, match="does not take option.*'sketchdim'.*sketch_dim"):
        skmm.select(np.ones((5, 2)), 2, "skmm", sketchdim=4)
    with pytest.raises(TypeError, match="does not take option.*'c'"):
        skmm.select(np.ones((5, 2)), 2, "uniform", c=0.5)


def test_random_state_none_records_the_seed_used():
    features, _ = _pool(30, 4, 0)
    first = skmm.select(features, 5, "uniform")
    again = skmm.select(features, 5, "uniform", random_state=first.info["random_state"])
    np.testing.assert_array_equal(first.indices, again.indices)


def test_sketch_gradients_is_exported_beside_select_and_sketch():
    import skmm.gradients

    assert skmm.sketch_gradients is skmm.gradients.sketch_gradients
    assert {"select", "sketch", "sketch_gradients", "GradientSketch"} <= set(skmm.__all__)


def test_importing_skmm_pulls_no_optional_heavy_package():
    import subprocess
    import sys

    code = (
        "import sys, skmm; "
        "print(sorted(m for m in ('transformers', 'datasets', 'matplotlib', 'peft') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
