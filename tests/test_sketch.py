import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm
from skmm.sketch import SketchMap, block_rows


def _matrix(rows, cols, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 700))
def test_sketch_is_identical_for_every_batch_size(kind, batch):
    x = _matrix(600, 1500, seed=1)
    reference = skmm.sketch(x, 48, kind=kind, seed=3, batch_size=600)
    np.testing.assert_array_equal(
        skmm.sketch(x, 48, kind=kind, seed=3, batch_size=batch), reference
    )


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sketch_leaves_its_input_unchanged(kind, dtype):
    x = _matrix(50, 700, dtype=dtype)
    before = x.copy()
    skmm.sketch(x, 16, kind=kind, seed=0)
    skmm.sketch(torch.from_numpy(x), 16, kind=kind, seed=0)
    np.testing.assert_array_equal(x, before)


def test_normal_table_is_pinned():
    from skmm.sketch import NORMAL_LEVELS, normal_table, normal_table_digest, normal_table_scale

    table = normal_table()
    assert normal_table_digest() == (
        "65adb44855f8b71385141d120e46bcbbe7ab553ca422fa6c389f204db6da226b"
    )
    assert table.shape == (NORMAL_LEVELS,) and np.array_equal(table, -table[::-1])
    assert (np.diff(table) >= 0).all() and np.abs(table).max() < 2**15
    # the 2^-12-grid quantiles of N(0, 1): variance 1 to within the tails beyond 4.3σ
    assert 1 / (normal_table_scale() * 2**12) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@pytest.mark.parametrize("m", [16, 300])
def test_sketch_is_within_its_rounding_bound(kind, m):
    # Rows with entries over many binades, cut into the map's chunks: each chunk is rounded to
    # integers at 2^(e - b), an error of at most 2^(e - b - 1) per entry, so entry j of the
    # sketch is off by at most Σ_chunks 2^(e_c - b - 1) Σ_k |Γ_kj|, plus float32's own rounding.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 9000)) * np.exp2(rng.integers(-30, 10, (40, 9000)))
    x = x.astype(np.float32)
    sketch_map = SketchMap(9000, m, kind, seed=1, dtype=torch.float64)
    gamma = sketch_map.dense().numpy()
    exact = x.astype(np.float64) @ gamma
    got = skmm.sketch(x, m, kind=kind, seed=1).astype(np.float64)
    bound = np.zeros_like(exact)
    for block in range(sketch_map.n_blocks):
        start = block * sketch_map.block_rows
        stop = min(start + sketch_map.block_rows, 9000)
        for lo in range(start, stop, sketch_map.chunk_cols):
            hi = min(lo + sketch_map.chunk_cols, stop)
            exponent = np.frexp(np.abs(x[:, lo:hi]).max(axis=1))[1]
            step = np.exp2(exponent - sketch_map.bits - 1.0)
            bound += step[:, None] * np.abs(gamma[lo:hi]).sum(axis=0)[None, :]
    bound += np.abs(exact) * 2.0**-24 + 1e-300
    assert (np.abs(got - exact) <= bound).all()
    # and far tighter than a float32 GEMM's typical error on such rows
    assert np.abs(got - exact).max() <= 1e-6 * np.abs(exact).max()


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_sketch_equals_explicit_map_product(kind):
    x = _matrix(200, 3000, seed=2).astype(np.float64)
    sketch_map = SketchMap(3000, 64, kind, seed=5, dtype=torch.float64)
    assert sketch_map.n_blocks == math.ceil(3000 / block_rows(64))
    expected = x @ sketch_map.dense().numpy()
    np.testing.assert_allclose(skmm.sketch(x, 64, kind, seed=5), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_sketch_preserves_norms_on_average(kind):
    x = _matrix(400, 4000, seed=3)
    sketched = skmm.sketch(x, 512, kind=kind, seed=0)
    ratio = np.linalg.norm(sketched, axis=1) ** 2 / np.linalg.norm(x, axis=1) ** 2
    # E‖xΓ‖² = ‖x‖² and each ratio concentrates with relative spread about sqrt(2/m).
    assert abs(ratio.mean() - 1.0) < 0.02
    assert np.abs(ratio - 1.0).max() < 6 * math.sqrt(2 / 512)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_map_is_isotropic_in_expectation(kind):
    gamma = SketchMap(64, 2048, kind, seed=1).dense().double()
    gram = gamma @ gamma.T
    assert torch.allclose(torch.diagonal(gram), torch.ones(64, dtype=torch.float64), atol=0.1)
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() < 0.15


def test_sparse_sign_structure():
    sketch_map = SketchMap(1000, 64, "sparse_sign", seed=2)
    gamma = sketch_map.dense()
    nonzero = gamma != 0
    assert (nonzero.sum(dim=1) == 8).all()
    assert torch.allclose(gamma[nonzero].abs(), torch.full((8000,), 1 / math.sqrt(8)))
    # one nonzero in each of the 8 column stripes of width 8
    stripes = nonzero.view(1000, 8, 8).sum(dim=2)
    assert (stripes == 1).all()


def test_sparse_sign_with_fewer_columns_than_nonzeros():
    gamma = SketchMap(10, 3, "sparse_sign", seed=0).dense()
    assert ((gamma != 0).sum(dim=1) == 3).all()


def test_same_seed_same_map_other_seed_other_map():
    a = SketchMap(5000, 32, "gaussian", seed=1).dense()
    b = SketchMap(5000, 32, "gaussian", seed=1, cache_bytes=0).dense()
    c = SketchMap(5000, 32, "gaussian", seed=2).dense()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_torch_input_gives_tensor_and_matches_numpy():
    x = _matrix(300, 900)
    from_numpy = skmm.sketch(x, 32, seed=4)
    from_torch = skmm.sketch(torch.from_numpy(x), 32, seed=4)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert isinstance(from_torch, torch.Tensor)
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)


def test_memmap_input_matches_in_memory(tmp_path):
    x = _matrix(389, 700)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(
        skmm.sketch(mapped, 16, seed=0, batch_size=100), skmm.sketch(x, 16, seed=0)
    )


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@settings(max_examples=10, deadline=None)
@given(start=st.integers(0, 299), length=st.integers(1, 300))
def test_row_sketch_does_not_depend_on_other_rows(kind, start, length):
    x = _matrix(300, 5000)
    full = skmm.sketch(x, 16, kind=kind, seed=0)
    stop = min(300, start + length)
    np.testing.assert_array_equal(
        skmm.sketch(x[start:stop], 16, kind=kind, seed=0), full[start:stop]
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sketch_dim": 0}, ValueError, "sketch_dim"),
        ({"sketch_dim": 2.5}, TypeError, "sketch_dim"),
        ({"sketch_dim": 8, "kind": "fjlt"}, ValueError, "gaussian, sparse_sign"),
        ({"sketch_dim": 8, "seed": -1}, ValueError, "seed"),
        ({"sketch_dim": 8, "batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        skmm.sketch(_matrix(10, 20), **kwargs)


def test_nan_input_is_refused():
    x = _matrix(10, 20)
    x[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        skmm.sketch(x, 8)


def _reference_sparse_block(sketch_map, block):
    """Γ's block from its documented recipe, times √ζ: per row, one ±1 in each of ζ stripes."""
    from skmm.seeding import derive_seed

    start = block * sketch_map.block_rows
    rows = min(sketch_map.block_rows, sketch_map.n_cols - start)
    m, zeta = sketch_map.sketch_dim, sketch_map.nnz_per_row
    gen = torch.Generator().manual_seed(derive_seed(sketch_map.seed, "sparse_sign", m, block))
    uniforms = torch.rand(rows, zeta, generator=gen).double()
    signs = torch.randint(0, 2, (rows, zeta), generator=gen)
    dense = torch.zeros(rows, m, dtype=torch.float64)
    for s in range(zeta):
        lo, hi = (s * m) // zeta, ((s + 1) * m) // zeta
        columns = lo + torch.clamp((uniforms[:, s].float() * (hi - lo)).long(), max=hi - lo - 1)
        dense[torch.arange(rows), columns] = (2.0 * signs[:, s] - 1).double()
    return dense


@pytest.mark.parametrize(("n_cols", "m"), [(1000, 64), (9000, 48), (700, 3), (5000, 513)])
def test_sparse_sign_map_follows_its_recipe(n_cols, m):
    sketch_map = SketchMap(n_cols, m, "sparse_sign", seed=7)
    for block in range(sketch_map.n_blocks):
        csr = sketch_map.sparse_block(block)
        expected = _reference_sparse_block(sketch_map, block)
        assert torch.equal(csr.to_dense().T, expected)
        assert torch.equal(
            sketch_map.dense()[block * sketch_map.block_rows :][: expected.shape[0]],
            (expected / math.sqrt(sketch_map.nnz_per_row)).float(),
        )
        # CSR rows list their input rows in increasing order (the product sums in that order)
        crow, cols = csr.crow_indices(), csr.col_indices()
        for row in range(m):
            segment = cols[crow[row] : crow[row + 1]]
            assert bool((segment[1:] > segment[:-1]).all())


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_map_built_by_several_threads_is_the_same(kind):
    x = torch.from_numpy(_matrix(20, 20_000, seed=4))
    threads = torch.get_num_threads()
    serial = SketchMap(20_000, 512, kind, seed=1)
    parallel = SketchMap(20_000, 512, kind, seed=1)
    try:
        torch.set_num_threads(4)
        parallel.apply(x)  # builds the blocks in a thread pool and caches them
    finally:
        torch.set_num_threads(threads)
    assert len(parallel._cache) == parallel.n_blocks > 1
    if kind == "gaussian":
        assert torch.equal(parallel.dense(), serial.dense())
    else:
        for block in range(serial.n_blocks):
            a, b = parallel.sparse_block(block), serial.sparse_block(block)
            assert torch.equal(a.to_dense(), b.to_dense())


def test_in_memory_matrices_are_sketched_in_one_batch_with_the_same_result():
    from skmm.inputs import as_feature_matrix
    from skmm.sketch import default_batch_rows

    x = _matrix(3000, 400)
    assert default_batch_rows(as_feature_matrix(x), 64) == 3000
    np.testing.assert_array_equal(
        skmm.sketch(x, 64, kind="gaussian", seed=2),
        skmm.sketch(x, 64, kind="gaussian", seed=2, batch_size=128),
    )
