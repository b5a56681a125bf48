import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skmm.seeding import SEED_MAX, derive_seed, numpy_rng, resolve_seed


def test_resolve_seed_accepts_ints_and_generators():
    assert resolve_seed(7) == 7
    assert resolve_seed(np.int64(7)) == 7
    drawn = resolve_seed(np.random.default_rng(0))
    assert drawn == resolve_seed(np.random.default_rng(0))
    assert 0 <= resolve_seed(None) <= SEED_MAX


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, "3"])
def test_resolve_seed_rejects_bad_values(bad):
    with pytest.raises((TypeError, ValueError), match="random_state"):
        resolve_seed(bad)


@given(st.integers(0, SEED_MAX), st.text(min_size=1, max_size=8))
def test_derived_seeds_are_stable_and_named(seed, name):
    assert derive_seed(seed, name) == derive_seed(seed, name)
    assert 0 <= derive_seed(seed, name) <= SEED_MAX
    assert derive_seed(seed, name, 1) != derive_seed(seed, name, 2)


def test_named_streams_are_independent():
    a = numpy_rng(0, "sketch").random(5)
    b = numpy_rng(0, "rounding").random(5)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, numpy_rng(0, "sketch").random(5))


def test_derived_seed_golden_value():
    # Pinned so that a change of derivation (which would change every selection) is noticed.
    assert derive_seed(0, "sketch") == 6549887992533467681
