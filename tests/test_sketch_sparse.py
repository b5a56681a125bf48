"""Sparse inputs: sketched without densifying, to the same bytes as the dense path.

Every equality here is against :meth:`SketchMap.apply` / :func:`skmm.sketch` of the same
matrix dense, so a change to the dense kernel's chunking is caught by these tests.
"""

import functools

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm
from skmm.memory import MemoryLimitError
from skmm.sketch import SketchMap
from skmm.sparse import SparseRows, to_csr

MAPS = [(4096, 1600), (2048, 2600), (300, 9000), (7, 3000), (1, 40)]
"""(m, largest r) pairs: blocks of 512 and 1024 columns, a Gaussian block of two chunks
(4096 columns each), single blocks; r·m stays below a few million entries of Γ."""

FORMATS = {
    "csr": scipy.sparse.csr_array,
    "csc": scipy.sparse.csc_array,
    "coo": scipy.sparse.coo_array,
    "csr_matrix": scipy.sparse.csr_matrix,
    "lil_matrix": scipy.sparse.lil_matrix,
    "torch_coo": lambda dense: torch.from_numpy(dense).to_sparse(),
    "torch_csr": lambda dense: torch.from_numpy(dense).to_sparse_csr(),
}


def _dense(rng, n, r, density, dtype, spread=0, empty_rows=0.0):
    """An (n, r) matrix with about ``density`` nonzeros, magnitudes over 10^±spread, and a
    fraction ``empty_rows`` of all-zero rows."""
    mask = rng.random((n, r)) < density
    values = rng.standard_normal((n, r)) * 10.0 ** rng.integers(-spread, spread + 1, (n, r))
    dense = np.where(mask, values, 0.0)
    dense[rng.random(n) < empty_rows] = 0.0
    return dense.astype(dtype)


def _stored_zeros(matrix, rng):
    """``matrix`` as CSR with some stored values set to +0.0 or -0.0 (kept as entries)."""
    csr = scipy.sparse.csr_array(matrix)
    hit = rng.random(csr.nnz) < 0.2
    csr.data[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, -0.0)
    return csr


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["gaussian", "sparse_sign"]),
    double=st.booleans(),
    shape=st.sampled_from(MAPS),
    n=st.integers(1, 9),
    width=st.floats(0.0, 1.0),
    density=st.sampled_from([0.0, 0.0005, 0.01, 0.2, 1.0]),
    spread=st.sampled_from([0, 3, 30]),
    layout=st.sampled_from(sorted(FORMATS)),
    zeros=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_apply_sparse_equals_apply_bit_for_bit(
    kind, double, shape, n, width, density, spread, layout, zeros, seed
):
    m, largest = shape
    r = max(1, int(width * largest))
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    dense = _dense(rng, n, r, density, dtype, spread, empty_rows=0.3)
    if zeros:
        matrix = _stored_zeros(dense, rng)
        dense = matrix.toarray()
    else:
        matrix = FORMATS[layout](dense)
    sketch_map = SketchMap(
        r, m, kind, seed % 1000, dtype=torch.float64 if double else torch.float32
    )
    expected = sketch_map.apply(torch.from_numpy(dense))
    got = sketch_map.apply_sparse(matrix)
    assert got.dtype == torch.float64 and got.numpy().tobytes() == expected.numpy().tobytes()


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=6, deadline=None)
@given(batch=st.integers(1, 140))
def test_sketch_of_sparse_equals_dense_for_every_batch_size(kind, dtype, batch):
    dense, expected = _batch_case(kind, dtype)
    sparse = scipy.sparse.csr_array(dense)
    for m, want in expected.items():
        got = skmm.sketch(sparse, m, kind, seed=2, batch_size=batch)
        assert got.dtype == want.dtype == dtype and got.tobytes() == want.tobytes()


@functools.cache
def _batch_case(kind, dtype):
    """A 130 × 5000 matrix with empty rows and columns (from 4000: a Gaussian chunk without
    entries) and its dense sketches for m = 48 (one block) and 1500 (four blocks)."""
    dense = _dense(np.random.default_rng(7), 130, 5000, 0.01, dtype, spread=4, empty_rows=0.2)
    dense[:, 4000:] = 0.0
    return dense, {m: skmm.sketch(dense, m, kind, seed=2) for m in (48, 1500)}


@pytest.mark.parametrize("layout", sorted(FORMATS))
@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_every_format_sketches_like_its_dense_form(layout, kind):
    rng = np.random.default_rng(3)
    dense = _dense(rng, 40, 1200, 0.05, np.float64, spread=2)
    expected = skmm.sketch(dense, 600, kind, seed=5)
    got = skmm.sketch(FORMATS[layout](dense), 600, kind, seed=5)
    if layout.startswith("torch"):
        assert isinstance(got, torch.Tensor)
        got = got.numpy()
    assert isinstance(got, np.ndarray) and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda d: scipy.sparse.csr_array(d.astype(np.int64)),
        lambda d: scipy.sparse.csc_matrix(d.astype(np.int8)),
        lambda d: scipy.sparse.coo_array(d.astype(np.uint16)),
        lambda d: torch.from_numpy(d.astype(np.int32)).to_sparse(),
        lambda d: torch.from_numpy(d).to(torch.float16).to_sparse_csr(),
        lambda d: torch.from_numpy(d).to(torch.bfloat16).to_sparse(),
    ],
)
def test_other_dtypes_sketch_in_float32_like_dense(make):
    rng = np.random.default_rng(4)
    dense = np.round(_dense(rng, 30, 900, 0.1, np.float64) * 40)
    sparse = make(dense)
    like = sparse.to_dense() if isinstance(sparse, torch.Tensor) else sparse.toarray()
    for kind in ("gaussian", "sparse_sign"):
        got = skmm.sketch(sparse, 64, kind, seed=1)
        expected = skmm.sketch(like, 64, kind, seed=1)
        assert got.dtype == expected.dtype
        assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()


def test_large_integers_round_to_float32_as_dense_ones_do():
    rng = np.random.default_rng(5)
    dense = np.where(rng.random((20, 700)) < 0.1, rng.integers(-(2**40), 2**40, (20, 700)), 0)
    for kind in ("gaussian", "sparse_sign"):
        got = skmm.sketch(scipy.sparse.csr_array(dense), 32, kind)
        assert got.tobytes() == skmm.sketch(dense, 32, kind).tobytes()


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_all_zero_single_column_and_duplicates(kind):
    zero = scipy.sparse.csr_array((6, 5000), dtype=np.float32)
    assert skmm.sketch(zero, 16, kind).tobytes() == np.zeros((6, 16), np.float32).tobytes()
    column = np.array([[0.0], [2.0], [-3.5], [0.0]])
    got = skmm.sketch(scipy.sparse.csc_array(column), 8, kind, seed=9)
    assert got.tobytes() == skmm.sketch(column, 8, kind, seed=9).tobytes()
    duplicated = scipy.sparse.coo_array(
        (np.array([1.0, 2.0, -4.0, 0.5]), (np.array([0, 0, 2, 0]), np.array([7, 7, 100, 3]))),
        shape=(3, 200),
    )
    expected = skmm.sketch(to_csr(duplicated).toarray(), 8, kind)
    assert skmm.sketch(duplicated, 8, kind).tobytes() == expected.tobytes()


def test_sketching_never_densifies(monkeypatch):
    def refuse(self, key):
        raise AssertionError("a sparse matrix was densified")

    monkeypatch.setattr(SparseRows, "__getitem__", refuse)
    wide = scipy.sparse.random(50, 400_000, density=1e-4, format="csr", random_state=0)
    for kind in ("sparse_sign", "gaussian"):
        assert skmm.sketch(wide, 16, kind, seed=1).shape == (50, 16)


SELECTIONS = [
    ("skmm", {"sketch_dim": 32}),
    ("skmm", {"sketch_dim": 32, "sketch": "sparse_sign", "objective": "diagonal"}),
    ("skmm", {"sketch": "none"}),
    ("uniform", {}),
    ("kcenter", {}),
    ("herding", {}),
    ("ridge_leverage", {"sketched": True, "sketch_dim": 32, "sketch_kind": "sparse_sign"}),
    ("leverage", {}),
    ("facility_location", {}),
]


@pytest.mark.parametrize(("method", "options"), SELECTIONS)
def test_selection_is_the_same_for_sparse_and_dense_input(method, options):
    rng = np.random.default_rng(11)
    dense = _dense(rng, 150, 120, 0.1, np.float32, spread=1, empty_rows=0.05)
    labels = rng.integers(0, 3, 150)
    for given_labels, layout in ((None, "csr"), (labels, "torch_coo")):
        expected = skmm.select(dense, 12, method, labels=given_labels, random_state=4, **options)
        got = skmm.select(
            FORMATS[layout](dense), 12, method, labels=given_labels, random_state=4, **options
        )
        np.testing.assert_array_equal(got.indices, expected.indices)
        if expected.weights is None:
            assert got.weights is None
        else:
            np.testing.assert_array_equal(got.weights, expected.weights)


def test_wide_sparse_pools_select_through_the_sketch_or_say_what_memory_they_need(monkeypatch):
    monkeypatch.setenv("SKMM_MAX_MEMORY", "256M")
    wide = scipy.sparse.random(300, 300_000, density=5e-5, format="csr", random_state=1)
    selection = skmm.select(wide, 10, "skmm", random_state=0, sketch_dim=32, sketch="sparse_sign")
    assert selection.indices.shape == (10,) and selection.info["sketch"]["kind"] == "sparse_sign"
    with pytest.raises(
        MemoryLimitError, match=r"method 'kcenter' on 300 × 300000 features needs 686\.6 MiB"
    ):
        skmm.select(wide, 10, "kcenter")
