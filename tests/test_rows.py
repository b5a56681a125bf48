"""The block layout and row kernels behind rank-invariant, streamable selection (skmm.rows)."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm
from skmm.design import WhitenedRows, greedy_design
from skmm.inputs import as_feature_matrix
from skmm.rows import (
    CHUNK_ROWS,
    MAX_BLOCK_ROWS,
    MIN_BLOCK_ROWS,
    TILE_ROWS,
    Layout,
    PoolRows,
    SpilledRows,
    block_bounds,
    row_products,
)
from skmm.store import SketchStore


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 700),
    inner=st.integers(1, 70),
    width=st.integers(1, 40),
    start=st.integers(0, 300),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_rows_product_does_not_depend_on_the_other_rows_in_the_call(
    rows, inner, width, start, double, seed
):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    pool = torch.randn(1000, inner, generator=gen, dtype=dtype)
    matrix = torch.randn(inner, width, generator=gen, dtype=dtype)
    whole = row_products(pool, matrix)
    stop = min(1000, start + rows)
    assert torch.equal(row_products(pool[start:stop], matrix), whole[start:stop])
    picked = torch.randperm(1000, generator=gen)[:rows]
    assert torch.equal(row_products(pool[picked], matrix), whole[picked])
    torch.testing.assert_close(whole, pool @ matrix)


@pytest.mark.parametrize("n_rows", [1, 100, 1024, 1025, 5000, 70_000, 10**6, 10**7, 3 * 10**7])
def test_blocks_depend_on_n_only_and_respect_tiles_chunks_and_caps(n_rows):
    bounds = block_bounds(n_rows)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == n_rows and (sizes > 0).all()
    assert (sizes[:-1] == sizes[0]).all() and sizes[-1] <= sizes[0]  # only the last is short
    full = sizes[:-1]
    assert (full % TILE_ROWS == 0).all() and (full >= MIN_BLOCK_ROWS).all()
    assert ((full <= CHUNK_ROWS) | (full % CHUNK_ROWS == 0)).all()
    assert sizes.max() <= MAX_BLOCK_ROWS
    assert len(sizes) <= 64 or sizes[0] == MAX_BLOCK_ROWS


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_ranks_own_contiguous_runs_of_blocks_that_cover_the_pool(size):
    bounds = block_bounds(20_000)
    layouts = [Layout(bounds, rank, size) for rank in range(size)]
    assert layouts[0].start == 0 and layouts[-1].stop == 20_000
    for left, right in itertools.pairwise(layouts):
        assert left.stop == right.start
    for layout in layouts:
        chunks = layout.chunks()
        assert sum(stop - start for _, start, stop in chunks) == layout.n_local
        assert all(stop - start <= CHUNK_ROWS for _, start, stop in chunks)


def test_a_subset_keeps_each_row_in_its_block():
    bounds = block_bounds(5000)
    positions = np.arange(3, 5000, 7)
    restricted = Layout(bounds, 1, 2).restrict(positions)
    assert restricted.n_rows == positions.size
    block_of_row = np.searchsorted(bounds, positions, side="right") - 1
    assert list(np.bincount(block_of_row, minlength=len(bounds) - 1)) == list(
        np.diff(restricted.bounds)
    )
    rows = PoolRows.of(as_feature_matrix(np.arange(5000.0)[:, None])).restrict(positions)
    np.testing.assert_array_equal(rows.tensor()[:, 0].numpy(), positions)


def test_totals_add_rows_in_order_within_blocks_then_blocks_in_order():
    layout = Layout.single(5000)
    values = torch.from_numpy(np.random.default_rng(0).standard_normal(5000))
    expected = 0.0
    for lo, hi in zip(layout.bounds[:-1], layout.bounds[1:], strict=True):
        block = 0.0
        for value in values[lo:hi].tolist():
            block += value
        expected += block
    assert layout.total(values) == expected
    # a block's sum does not depend on the other blocks in the call, nor on the thread count
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = Layout(layout.bounds[:3].copy()).total(values[: int(layout.bounds[2])].clone())
        torch.set_num_threads(max(2, threads))
        assert (
            layout.restrict(np.arange(int(layout.bounds[2]))).total(values[: int(layout.bounds[2])])
            == alone
        )
    finally:
        torch.set_num_threads(threads)
    assert layout.smallest(values, 3).tolist() == np.argsort(values.numpy())[:3].tolist()
    assert layout.argmax(values)[:2] == (float(values.max()), int(values.argmax()))


@pytest.fixture(scope="module")
def sketched_pool(tmp_path_factory):
    """An in-memory pool of sketched rows, the same rows as a store and as a .npy file."""
    path = tmp_path_factory.mktemp("streamed")
    rng = np.random.default_rng(0)
    centers = 5.0 * rng.standard_normal((10, 48))
    labels = rng.integers(0, 10, size=9000)
    features = (centers[labels] + rng.standard_normal((9000, 48))).astype(np.float32)
    store = SketchStore.open_for_writing(path / "store", {"sketch_dim": 48}, shard_rows=700)
    store.append(features)
    store.finish()
    np.save(path / "pool.npy", features)
    mapped = np.load(path / "pool.npy", mmap_mode="r")
    return features, labels, SketchStore.open(path / "store", verify=False).features, mapped


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"objective": "logdet"},
        {"objective": "diagonal", "max_iter": 60},
        {"stratify": "balanced"},
    ],
)
def test_streaming_a_store_or_a_memmap_selects_what_memory_selects(sketched_pool, options):
    features, labels, store, mapped = sketched_pool
    extra = {"labels": labels} if "stratify" in options else {}
    picks = [
        skmm.select(source, 30, random_state=4, **extra, **options)
        for source in (features, store, mapped)
    ]
    for other in picks[1:]:
        np.testing.assert_array_equal(other.indices, picks[0].indices)
        if picks[0].weights is not None:
            np.testing.assert_array_equal(other.weights, picks[0].weights)


def test_the_lazy_greedy_streams_rows_and_matches_the_kept_rows(sketched_pool):
    features, _, store, _ = sketched_pool
    streamed = WhitenedRows(PoolRows.of(as_feature_matrix(store)), None, None, keep=False)
    kept = torch.from_numpy(features).to(torch.float64)
    lazy = greedy_design(streamed, 25, "aopt", lazy=True)
    np.testing.assert_array_equal(lazy.order, greedy_design(kept, 25, "aopt", lazy=True).order)
    assert lazy.evaluations < 0.5 * 25 * features.shape[0]  # plain greedy reads N rows a pick


def test_spilled_rows_read_back_by_range_and_by_scattered_positions():
    rows = torch.randn(1000, 5, dtype=torch.float64)
    spilled = SpilledRows(5)
    spilled.append(rows[:300])
    spilled.append(rows[300:])
    assert torch.equal(spilled.read(10, 20), rows[10:20]) and spilled.read(5, 5).shape == (0, 5)
    positions = np.array([5, 6, 7, 100, 3, 999, 6, 50, 51, 52, 70])  # runs, repeats, unsorted
    assert torch.equal(spilled.take(positions), rows[positions])
    scattered = np.random.default_rng(0).integers(0, 1000, 400)
    assert torch.equal(spilled.take(scattered), rows[scattered])
    assert spilled.take(np.zeros(0, dtype=np.int64)).shape == (0, 5)
