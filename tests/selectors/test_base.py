import inspect

import numpy as np
import pytest

import skmm
from skmm.selectors.base import Selector, class_budgets


def _codes(sizes):
    codes = np.repeat(np.arange(len(sizes)), sizes)
    return np.arange(len(sizes)), codes


def test_proportional_budgets_use_largest_remainders():
    classes, codes = _codes([50, 30, 20])
    np.testing.assert_array_equal(class_budgets(True, 10, classes, codes), [5, 3, 2])
    np.testing.assert_array_equal(class_budgets("proportional", 7, classes, codes), [4, 2, 1])


def test_balanced_budgets_water_fill_small_classes():
    classes, codes = _codes([2, 30, 20])
    np.testing.assert_array_equal(class_budgets("balanced", 12, classes, codes), [2, 5, 5])
    np.testing.assert_array_equal(class_budgets("balanced", 13, classes, codes), [2, 6, 5])


def test_explicit_budgets():
    classes, codes = _codes([5, 5])
    np.testing.assert_array_equal(class_budgets({0: 1, 1: 3}, 4, classes, codes), [1, 3])
    with pytest.raises(ValueError, match="sum to 4, not n = 5"):
        class_budgets({0: 1, 1: 3}, 5, classes, codes)
    with pytest.raises(ValueError, match="not in labels"):
        class_budgets({7: 4}, 4, classes, codes)


def test_a_class_smaller_than_its_budget_is_an_error():
    classes, codes = _codes([2, 10])
    with pytest.raises(ValueError, match="class 0 has 2 members, fewer than its budget 3"):
        class_budgets({0: 3, 1: 1}, 4, classes, codes)


def test_stratify_without_labels_or_unknown_mode():
    with pytest.raises(ValueError, match="needs labels"):
        class_budgets(True, 3, None, None)
    classes, codes = _codes([5, 5])
    with pytest.raises(ValueError, match="unknown stratify"):
        class_budgets("equal", 3, classes, codes)
    assert class_budgets(None, 3, classes, codes) is None


@pytest.mark.parametrize("method", ["uniform", "skmm"])
def test_stratified_selection_meets_every_class_budget(method):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 20))
    labels = np.array(["a"] * 200 + ["b"] * 70 + ["c"] * 30)
    selection = (
        skmm.select(
            features, 30, method, labels=labels, stratify=True, random_state=1, sketch_dim=8
        )
        if method == "skmm"
        else skmm.select(features, 30, method, labels=labels, stratify=True, random_state=1)
    )
    chosen = labels[selection.indices]
    assert [(chosen == c).sum() for c in "abc"] == [20, 7, 3]
    assert [entry["budget"] for entry in selection.info["classes"]] == [20, 7, 3]
    if selection.weights is not None:
        assert selection.weights.sum() == pytest.approx(1.0)


def test_labels_without_stratify_are_accepted_and_ignored_by_unsupervised_methods():
    features = np.random.default_rng(0).standard_normal((50, 4))
    a = skmm.select(features, 5, "uniform", labels=np.zeros(50), random_state=0)
    b = skmm.select(features, 5, "uniform", random_state=0)
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("method", skmm.methods())
def test_every_method_declares_the_common_options_in_its_own_constructor(method):
    cls = skmm.get_method(method)
    own = inspect.signature(cls.__init__).parameters
    common = inspect.signature(Selector.__init__).parameters
    for name, param in common.items():
        if name == "self":
            continue
        assert name in own, f"{cls.__name__}.__init__ lacks {name}"
        assert (own[name].kind, own[name].default) == (param.kind, param.default), name
    assert cls.param_names() == [name for name in own if name != "self"]
    assert list(cls(n=3).get_params()) == cls.param_names()  # every option is stored
