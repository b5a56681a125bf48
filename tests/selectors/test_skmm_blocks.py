"""SkMM on rows of K blocks (a K-output Jacobian per example): rank-K moments, added at once."""

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.gradients import sketch_gradients


def grouped_blocks(groups: int, blocks: int, per_group: int, seed: int) -> np.ndarray:
    """Rows of ``blocks`` blocks in D = groups·blocks dimensions: a row of group g has its
    block k along direction g·K + k (random scale), plus a little noise everywhere."""
    rng = np.random.default_rng(seed)
    dims = groups * blocks
    rows = np.zeros((groups * per_group, blocks, dims))
    for g in range(groups):
        for k in range(blocks):
            scale = rng.uniform(0.5, 1.5, per_group)
            rows[g * per_group : (g + 1) * per_group, k, g * blocks + k] = scale
    rows += 0.01 * rng.standard_normal(rows.shape)
    return rows.reshape(len(rows), -1)


@settings(max_examples=8, deadline=None)
@given(
    groups=st.integers(3, 6),
    blocks=st.integers(2, 4),
    seed=st.integers(0, 2**16),
    objective=st.sampled_from(["aopt", "logdet"]),
)
def test_one_row_per_group_covers_every_direction_when_rows_are_rank_k(
    groups, blocks, seed, objective
):
    # about each block's mean the rows vary in (groups − 1)·K directions; n = groups rows
    # cover them only as rank-K blocks (a row spans its group's K directions), so the design
    # takes exactly one row of every group
    rows = grouped_blocks(groups, blocks, 25, seed)
    chosen = skmm.select(
        rows,
        groups,
        blocks=blocks,
        sketch="none",
        directions=(groups - 1) * blocks,
        objective=objective,
        random_state=seed,
    )
    assert sorted(chosen.indices // 25) == list(range(groups))
    assert chosen.info["blocks"] == blocks
    assert chosen.info["c_S"] < 10


@pytest.mark.parametrize("objective", ["aopt", "diagonal"])
def test_the_order_of_the_blocks_does_not_matter(objective):
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((400, 3, 40)) * rng.uniform(0.1, 2.0, 40) + rng.uniform(0, 1, 40)
    picks = []
    for order in ([0, 1, 2], [2, 0, 1]):
        flat = np.ascontiguousarray(rows[:, order]).reshape(400, -1)
        picks.append(
            skmm.select(flat, 25, blocks=3, sketch_dim=16, objective=objective, random_state=1)
        )
    np.testing.assert_array_equal(np.sort(picks[0].indices), np.sort(picks[1].indices))


def test_blocks_are_sketched_one_by_one_with_the_same_map():
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((300, 4 * 90)).astype(np.float32)
    options = {"blocks": 4, "directions": 12, "random_state": 2}
    ours = skmm.select(rows, 20, sketch_dim=32, sketch="sparse_sign", **options)
    seed = ours.info["sketch"]["seed"]
    sketched = skmm.sketch(rows.reshape(-1, 90), 32, kind="sparse_sign", seed=seed)
    by_hand = skmm.select(sketched.reshape(300, -1), 20, sketch="none", **options)
    np.testing.assert_array_equal(ours.indices, by_hand.indices)
    assert ours.info["sketch"]["blocks"] == 4
    assert "each row is 4 blocks" in ours.summary()


def test_the_diagonal_objective_sums_each_rows_blocks():
    rows = grouped_blocks(4, 3, 30, 0)
    chosen = skmm.select(rows, 12, blocks=3, sketch="none", objective="diagonal", random_state=0)
    assert len(set(chosen.indices.tolist())) == 12
    assert chosen.weights.sum() == pytest.approx(1.0)
    assert np.isfinite(chosen.info["c_S"])


def classifier_and_data(rows: int = 240):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 4))
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(rows, 6, generator=gen), torch.randint(0, 4, (rows,)))
    return model, data


def test_a_gradient_sketch_or_store_of_blocks_sets_blocks_itself(tmp_path):
    model, data = classifier_and_data()
    store = tmp_path / "blocks"
    sketch = sketch_gradients(
        model, data, sketch_dim=16, target="jacobian_blocks", store=store, progress=False
    )
    assert sketch.features.shape == (240, 4 * 16) and sketch.metadata["blocks"] == 4
    given = skmm.select(sketch.features, 12, blocks=4, stratify=False, random_state=0)
    for source in (sketch, store, str(store)):
        carried = skmm.select(source, 12, stratify=False, random_state=0)
        np.testing.assert_array_equal(carried.indices, given.indices)
        assert carried.info["blocks"] == 4
    flat = skmm.select(sketch.features, 12, stratify=False, random_state=0)
    assert "blocks" not in flat.info  # a plain array is one block unless told
    # the other methods see the K·m columns as they are
    assert len(skmm.select(store, 12, method="kcenter", random_state=0).indices) == 12


def test_a_target_of_blocks_is_matched_block_by_block():
    model, data = classifier_and_data()
    pool = sketch_gradients(model, data, sketch_dim=16, target="jacobian_blocks", progress=False)
    target_rows = TensorDataset(data.tensors[0][:60] + 1.0, data.tensors[1][:60])
    target = sketch_gradients(
        model, target_rows, sketch_dim=16, target="jacobian_blocks", progress=False
    )
    chosen = skmm.select(pool, 15, target=target, random_state=0)
    assert len(set(chosen.indices.tolist())) == 15
    assert chosen.info["blocks"] == 4
    with pytest.raises(ValueError, match="does not match the pool's"):
        loss = sketch_gradients(model, target_rows, sketch_dim=16, target="loss", progress=False)
        skmm.select(pool, 15, target=loss, random_state=0)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"blocks": 0}, ValueError, "blocks"),
        ({"blocks": 2.5}, TypeError, "blocks"),
        ({"blocks": 7}, ValueError, "not a multiple of 7"),
    ],
)
def test_bad_blocks_are_refused(options, error, match):
    rows = np.random.default_rng(0).standard_normal((50, 60))
    with pytest.raises(error, match=match):
        skmm.select(rows, 5, **options)


def test_a_sparse_matrix_is_not_sketched_in_blocks():
    rows = scipy.sparse.random(60, 400, density=0.05, random_state=0, format="csr")
    with pytest.raises(ValueError, match="cannot be sketched in blocks"):
        skmm.select(rows, 5, blocks=2, sketch_dim=16)
