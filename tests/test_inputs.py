import numpy as np
import pytest
import scipy.sparse
import torch

import skmm
from skmm.inputs import (
    LazyArray,
    as_feature_matrix,
    check_budget,
    check_choice,
    check_labels,
    check_positive_float,
    check_positive_int,
    is_streamed,
    resolve_device,
)
from skmm.rows import PoolRows
from skmm.sparse import SparseRows


def test_numpy_and_torch_inputs_agree():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = as_feature_matrix(x)
    b = as_feature_matrix(torch.from_numpy(x))
    assert a.shape == b.shape == (4, 3)
    torch.testing.assert_close(a.to_tensor(), b.to_tensor())
    assert a.compute_dtype == torch.float32


def test_float64_is_kept_and_ints_become_float32():
    assert as_feature_matrix(np.ones((2, 2))).compute_dtype == torch.float64
    assert as_feature_matrix(np.ones((2, 2), dtype=np.int16)).compute_dtype == torch.float32
    assert as_feature_matrix(torch.ones(2, 2, dtype=torch.bfloat16)).compute_dtype == torch.float32


def test_lists_and_dataframes_are_accepted():
    pd = pytest.importorskip("pandas")
    assert as_feature_matrix([[1.0, 2.0], [3.0, 4.0]]).shape == (2, 2)
    assert as_feature_matrix(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})).shape == (2, 2)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (np.ones(5), "must be 2-D"),
        (np.ones((2, 3, 4)), "must be 2-D"),
        (np.ones((0, 3)), "N = 0"),
        (np.ones((3, 0)), "length 0"),
        (np.array([[1.0, np.nan]]), "non-finite"),
        (np.array([[1.0], [np.inf]]), "row 1"),
        ([[1.0, 2.0], [3.0]], "ragged|sequence"),
    ],
)
def test_bad_shapes_and_values_are_value_errors(features, match):
    with pytest.raises(ValueError, match=match):
        as_feature_matrix(features)


@pytest.mark.parametrize(
    "features",
    [
        np.array([[True, False]]),
        np.array([[1 + 2j]]),
        np.array([["a", "b"]]),
        np.array([[object()]], dtype=object),
        torch.ones(2, 2, dtype=torch.complex64),
        torch.ones(2, 2, dtype=torch.bool),
        "features.npy",
        {"a": 1},
    ],
)
def test_bad_types_are_type_errors(features):
    with pytest.raises(TypeError):
        as_feature_matrix(features)


SPARSE_DENSE = np.array([[0.0, 2.5, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.5]])


@pytest.mark.parametrize(
    "make",
    [
        scipy.sparse.csr_array,
        scipy.sparse.csc_array,
        scipy.sparse.coo_array,
        scipy.sparse.csr_matrix,
        scipy.sparse.csc_matrix,
        scipy.sparse.coo_matrix,
        scipy.sparse.lil_matrix,
        scipy.sparse.dok_array,
        scipy.sparse.bsr_array,
        lambda dense: torch.from_numpy(dense).to_sparse(),
        lambda dense: torch.from_numpy(dense).to_sparse_csr(),
        lambda dense: torch.from_numpy(dense).to_sparse_csc(),
    ],
)
def test_sparse_matrices_read_as_their_dense_rows(make):
    matrix = as_feature_matrix(make(SPARSE_DENSE))
    assert matrix.shape == (3, 4) and matrix.compute_dtype == torch.float64
    assert isinstance(matrix.source, SparseRows) and not matrix.streamed
    assert torch.equal(matrix.to_tensor(), torch.from_numpy(SPARSE_DENSE))
    assert torch.equal(matrix.rows(1, 3), torch.from_numpy(SPARSE_DENSE[1:3]))
    assert torch.equal(matrix.take(np.array([2, 0])), torch.from_numpy(SPARSE_DENSE[[2, 0]]))


@pytest.mark.parametrize(
    ("dtype", "compute"),
    [(np.float32, torch.float32), (np.int64, torch.float32), (np.int8, torch.float32)],
)
def test_sparse_dtypes_compute_as_dense_ones_do(dtype, compute):
    sparse = scipy.sparse.csr_array(SPARSE_DENSE.astype(dtype))
    assert as_feature_matrix(sparse).compute_dtype == compute
    assert as_feature_matrix(SPARSE_DENSE.astype(dtype)).compute_dtype == compute
    half = torch.from_numpy(SPARSE_DENSE).to(torch.float16).to_sparse()
    assert as_feature_matrix(half).compute_dtype == torch.float32


def test_sparse_input_is_not_modified():
    duplicated = scipy.sparse.csr_array(
        (np.array([1.0, 2.0, 4.0]), np.array([3, 1, 3]), np.array([0, 3])), shape=(1, 4)
    )
    before = (duplicated.data.copy(), duplicated.indices.copy())
    matrix = as_feature_matrix(duplicated)
    assert torch.equal(
        matrix.to_tensor(), torch.tensor([[0.0, 2.0, 0.0, 5.0]], dtype=torch.float64)
    )
    assert np.array_equal(duplicated.data, before[0])
    assert np.array_equal(duplicated.indices, before[1])


@pytest.mark.parametrize(
    ("features", "error", "message"),
    [
        (scipy.sparse.csr_array(SPARSE_DENSE.astype(bool)), TypeError, "boolean dtype"),
        (scipy.sparse.csr_array(SPARSE_DENSE.astype(complex)), TypeError, "complex dtype"),
        (torch.from_numpy(SPARSE_DENSE).to(torch.complex64).to_sparse(), TypeError, "complex"),
        (torch.from_numpy(SPARSE_DENSE > 0).to_sparse(), TypeError, "torch.bool"),
        (scipy.sparse.coo_array(np.ones(3)), ValueError, r"2-D .* shape \(3,\)"),
        (torch.ones(2, 3, 4).to_sparse(), ValueError, r"2-D .* shape \(2, 3, 4\)"),
        (scipy.sparse.csr_array((0, 4)), ValueError, "N = 0 rows"),
        (scipy.sparse.csr_array((3, 0)), ValueError, "rows of length 0"),
        (
            scipy.sparse.csr_matrix(
                (np.ones(2), np.array([0, 9]), np.array([0, 1, 2])), shape=(2, 3)
            ),
            ValueError,
            "malformed sparse matrix",
        ),
    ],
)
def test_bad_sparse_matrices_say_what_is_wrong(features, error, message):
    with pytest.raises(error, match=message):
        as_feature_matrix(features)


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (np.nan, np.float64, r"1 NaN/Inf .* \(first: nan at row 2, column 3\)"),
        (-np.inf, np.float32, r"NaN/Inf .* at row 2, column 3"),
        (1e300, np.float64, r"too large for float64 .* at row 2, column 3"),
        (1e30, np.float32, r"too large for float32 .* at row 2, column 3"),
        (2**62, np.int64, "too large for float32"),
    ],
)
def test_bad_sparse_values_are_located(value, dtype, message):
    dense = SPARSE_DENSE.astype(dtype)
    dense[2, 3] = value
    with pytest.raises(ValueError, match=message):
        as_feature_matrix(scipy.sparse.csc_array(dense))
    with pytest.raises(ValueError, match="too large" if "large" in message else "NaN/Inf"):
        as_feature_matrix(dense)


def test_sparse_scale_is_checked_like_dense():
    with pytest.raises(ValueError, match="too small in scale"):
        as_feature_matrix(scipy.sparse.csr_array(SPARSE_DENSE * 1e-14))
    assert as_feature_matrix(scipy.sparse.csr_array((3, 4))).shape == (3, 4)


def test_memmap_nan_is_found_on_read(tmp_path):
    path = tmp_path / "x.npy"
    data = np.ones((10, 3), dtype=np.float32)
    data[7, 2] = np.nan
    np.save(path, data)
    mapped = np.load(path, mmap_mode="r")
    matrix = as_feature_matrix(mapped)
    assert matrix.rows(0, 5).shape == (5, 3)
    with pytest.raises(ValueError, match="row 7"):
        matrix.rows(5, 10)


class ChunkFiles:
    """A lazy backend unknown to skmm: rows kept in .npy files of 7 rows each, read on demand."""

    ndim = 2
    streamed = True

    def __init__(self, folder, data):
        self.paths = []
        for k, start in enumerate(range(0, len(data), 7)):
            self.paths.append(folder / f"part-{k}.npy")
            np.save(self.paths[-1], data[start : start + 7])
        self.shape, self.dtype = data.shape, data.dtype
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        whole = np.concatenate([np.load(path) for path in self.paths])
        return whole[key]


def test_a_new_lazy_backend_is_validated_and_streamed_without_edits(tmp_path):
    data = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    lazy = ChunkFiles(tmp_path, data)
    assert isinstance(lazy, LazyArray) and is_streamed(lazy) and not is_streamed(data)
    matrix = as_feature_matrix(lazy)
    assert matrix.streamed and lazy.reads == 0  # nothing read up front
    assert not PoolRows.of(matrix).in_memory
    assert PoolRows.of(as_feature_matrix(data)).in_memory
    torch.testing.assert_close(matrix.take(np.array([3, 30])), torch.from_numpy(data[[3, 30]]))
    for method, options in (("skmm", {"sketch_dim": 8}), ("uniform", {}), ("kcenter", {})):
        streamed = skmm.select(lazy, 5, method, random_state=0, **options)
        held = skmm.select(data, 5, method, random_state=0, **options)
        np.testing.assert_array_equal(streamed.indices, held.indices)
    data[33, 1] = np.inf
    with pytest.raises(ValueError, match="row 33"):
        as_feature_matrix(ChunkFiles(tmp_path, data)).rows(28, 40)


def test_an_object_without_the_streamed_flag_is_not_a_lazy_array():
    class Shaped:
        shape, dtype, ndim = (3, 2), np.dtype(np.float32), 2

        def __getitem__(self, key):
            return np.zeros((3, 2), np.float32)[key]

    assert not is_streamed(Shaped())
    with pytest.raises(TypeError, match="must be a numpy array"):
        as_feature_matrix(Shaped())


def test_chunks_cover_every_row_once():
    x = np.arange(30.0).reshape(10, 3)
    matrix = as_feature_matrix(x)
    rows = torch.cat([chunk for _, chunk in matrix.chunks(3)])
    np.testing.assert_array_equal(rows.numpy(), x)


@pytest.mark.parametrize(("n", "error"), [(0, ValueError), (-3, ValueError), (11, ValueError)])
def test_budget_range(n, error):
    with pytest.raises(error, match="n"):
        check_budget(n, 10)


@pytest.mark.parametrize("n", [2.0, 2.5, "3", True, None])
def test_budget_must_be_an_integer(n):
    with pytest.raises(TypeError, match="integer"):
        check_budget(n, 10)


def test_budget_accepts_numpy_ints():
    assert check_budget(np.int64(4), 10) == 4


def test_scalar_checks():
    assert check_positive_int(3, "k") == 3
    assert check_positive_float(0.5, "c") == 0.5
    with pytest.raises(ValueError, match="c must be"):
        check_positive_float(0, "c")
    with pytest.raises(ValueError, match="c must be"):
        check_positive_float(float("nan"), "c")
    with pytest.raises(ValueError, match="choose one of: a, b"):
        check_choice("z", "kind", ("a", "b"))


def test_labels():
    classes, codes = check_labels(["b", "a", "b"], 3)
    assert list(classes) == ["a", "b"]
    assert list(codes) == [1, 0, 1]
    classes, codes = check_labels(torch.tensor([3, 3, 1]), 3)
    assert list(classes) == [1, 3]
    with pytest.raises(ValueError, match="length 2"):
        check_labels([1, 2], 3)
    with pytest.raises(ValueError, match="1-D"):
        check_labels(np.ones((3, 1)), 3)
    with pytest.raises(ValueError, match="NaN"):
        check_labels([1.0, np.nan, 2.0], 3)


def test_devices():
    assert resolve_device(None).type == "cpu"
    assert resolve_device(None, like=torch.ones(1)).type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
