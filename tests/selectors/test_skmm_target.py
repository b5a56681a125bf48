"""SkMM selecting for a target set: the target's moment sets the directions and whitening."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.gradients import sketch_gradients
from skmm.rows import PoolRows
from skmm.seeding import derive_seed, resolve_seed
from skmm.selection import SelectionWarning
from skmm.selectors.targeted import nearest_picks, neighbor_blocks


def two_groups(rows: int, minority: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A majority group spread over columns 0-4 and a minority spread over 5-9 (offset)."""
    rng = np.random.default_rng(seed)
    group = (rng.random(rows) < minority).astype(np.int64)
    x = np.zeros((rows, 10))
    x[group == 0, :5] = rng.standard_normal((int((group == 0).sum()), 5)) * 3.0
    x[group == 1, 5:] = rng.standard_normal((int(group.sum()), 5))
    x[group == 1] += 0.5
    return x, group


def target_condition(pool: np.ndarray, rows: np.ndarray, target: np.ndarray) -> float:
    """λ_max(Σ_T^{1/2} Σ_S⁻¹ Σ_T^{1/2}) about the target's mean: the c of Σ_T ⪯ c·Σ_S."""
    mean = target.mean(0)
    sigma_t = np.cov(target.T, bias=True)
    centered = pool[rows] - mean
    sigma_s = centered.T @ centered / len(rows) + 1e-9 * np.eye(pool.shape[1])
    values, vectors = np.linalg.eigh(sigma_t)
    root = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.linalg.eigvalsh(root @ np.linalg.inv(sigma_s) @ root)[-1])


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.sampled_from([20, 30, 40]))
def test_a_target_steers_the_design_to_its_own_directions(seed, n):
    pool, group = two_groups(600, 0.08, seed)
    target, _ = two_groups(400, 1.0, seed + 1)  # minority-like rows only
    untargeted = skmm.select(pool, n, random_state=seed)
    targeted = skmm.select(pool, n, target=target, random_state=seed)
    assert len(set(targeted.indices.tolist())) == n
    # the targeted coreset serves the target: many more minority rows than the pool's 8%,
    # and a smaller c in Σ_T ⪯ c·Σ_S than the untargeted coreset's
    assert group[targeted.indices].mean() >= 0.5 > group[untargeted.indices].mean()
    assert target_condition(pool, targeted.indices, target) < target_condition(
        pool, untargeted.indices, target
    )
    assert targeted.info["target"]["n_rows"] == 400
    assert targeted.info["directions"]["k"] <= 5  # the target varies in 5 directions


def test_the_pool_as_its_own_target_gives_the_untargeted_selection():
    pool, _ = two_groups(500, 0.3, 0)
    for options in ({}, {"objective": "diagonal"}, {"sketch_dim": 8}):
        alone = skmm.select(pool, 25, random_state=3, **options)
        targeted = skmm.select(pool, 25, target=pool, random_state=3, **options)
        np.testing.assert_array_equal(targeted.indices, alone.indices)


def test_labels_stratify_a_targeted_selection_only_when_asked():
    pool, group = two_groups(500, 0.3, 1)
    target, _ = two_groups(200, 1.0, 2)
    left_out = r"1 of 2 labeled classes got no rows.*expected if the target set has no rows"
    with pytest.warns(SelectionWarning, match=left_out):
        free = skmm.select(pool, 30, labels=group, target=target, random_state=0)
    assert free.info["params"]["stratify"] is None and "classes" not in free.info
    stratified = skmm.select(pool, 30, labels=group, target=target, stratify=True, random_state=0)
    sizes = np.bincount(group)
    expected = [
        int(b)
        for b in stratified.info["params"]["stratify"]
        and [c["budget"] for c in stratified.info["classes"]]
    ]
    assert np.bincount(group[stratified.indices]).tolist() == expected
    assert abs(expected[1] - 30 * sizes[1] / 500) < 1  # class-proportional


def test_a_sketched_target_uses_the_pools_map():
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((300, 600)).astype(np.float32)
    target = pool[:50] * 2.0
    selection = skmm.select(pool, 20, target=target, sketch_dim=64, random_state=1)
    again = skmm.select(pool, 20, target=torch.from_numpy(target), sketch_dim=64, random_state=1)
    np.testing.assert_array_equal(selection.indices, again.indices)
    assert selection.info["sketch"]["sketch_dim"] == 64


def test_bad_targets_are_refused_by_name():
    pool = np.random.default_rng(0).standard_normal((100, 6))
    with pytest.raises(ValueError, match="target has 5 columns but the pool's features have 6"):
        skmm.select(pool, 10, target=pool[:, :5])
    with pytest.raises(ValueError, match="method 'kcenter' does not select for a target; .*skmm"):
        skmm.select(pool, 10, method="kcenter", target=pool)
    with pytest.raises(ValueError, match="target contains non-finite values"):
        skmm.select(pool, 10, target=np.full((5, 6), np.nan))
    flat = skmm.select(pool, 10, target=np.ones((5, 6)), random_state=0)
    assert "target's rows have no spread" in flat.info["note"]


def tiny_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def test_a_target_sketch_from_another_model_or_map_is_refused(tmp_path):
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,)))
    options = {"sketch_dim": 8, "batch_size": 8}
    pool = sketch_gradients(tiny_mlp(0), data, store=tmp_path / "pool", **options)
    same = sketch_gradients(tiny_mlp(0), data, **options)
    selection = skmm.select(tmp_path / "pool", 10, target=same, random_state=0)
    assert selection.info["target"]["n_rows"] == 40
    other_seed = sketch_gradients(tiny_mlp(0), data, seed=1, **options)
    with pytest.raises(ValueError, match="does not match the pool's.*seed: pool 0, target 1"):
        skmm.select(pool, 10, target=other_seed)
    other_model = sketch_gradients(tiny_mlp(1), data, **options)
    with pytest.raises(ValueError, match="model_fingerprint"):
        skmm.select(tmp_path / "pool", 10, target=other_model)


def test_the_readme_example_runs_and_says_what_it_claims(capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Selecting for a target task", 1)[1]
    first, second = (block.split("```", 1)[0] for block in section.split("```python\n")[1:3])
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    share = float(capsys.readouterr().out.split()[0])
    assert share > 0.5  # "far above 0.1"
    exec(compile(second, "README.md", "exec"), scope)
    rows, near_share = capsys.readouterr().out.split()
    assert int(rows) == 800 and float(near_share) < 0.3  # "wrong for this target" (0.155)


def two_domains(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pool of a target-like domain (offset along column 0) and a wider other domain, which
    spreads further along every direction the target varies in; and a target set."""
    rng = np.random.default_rng(seed)
    near = rng.standard_normal((300, 12))
    near[:, 0] += 15.0
    far = rng.standard_normal((900, 12)) * 2.5
    target = rng.standard_normal((80, 12))
    target[:, 0] += 15.0
    return np.vstack([near, far]), np.r_[np.ones(300, bool), np.zeros(900, bool)], target


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.sampled_from([10, 24, 40]), factor=st.sampled_from([2, 4]))
def test_candidates_keep_the_design_in_the_targets_neighbourhood(seed, n, factor):
    pool, near, target = two_domains(seed)
    plain = skmm.select(pool, n, target=target, random_state=seed)
    chosen = skmm.select(pool, n, target=target, random_state=seed, candidates=factor)
    # the plain targeted design takes half or more of its rows from the wider domain (whose
    # spread serves tr(Σ_T Σ_S⁻¹)); with candidates every row comes from the target's domain
    assert near[plain.indices].mean() <= 0.5
    assert near[chosen.indices].all()
    assert len(set(chosen.indices.tolist())) == n
    assert chosen.info["candidates"]["rows"] == max(factor * n, len(target))
    again = skmm.select(pool, n, target=target, random_state=seed, candidates=factor)
    np.testing.assert_array_equal(chosen.indices, again.indices)


def test_candidates_are_knns_picks_and_all_rows_give_the_plain_selection():
    pool, _, target = two_domains(0)  # 80 target rows
    rows = PoolRows.from_tensor(torch.as_tensor(pool))
    blocks = neighbor_blocks(torch.as_tensor(target))
    seed = derive_seed(derive_seed(resolve_seed(1), "select"), "candidates")
    # pool and target have 12 ≤ sketch_dim columns, so the neighbours are found on the rows
    # themselves. c = 1 with n ≥ T: the design has no choice left, the rows are knn's picks
    one = skmm.select(pool, 100, target=target, random_state=1, candidates=1)
    picks, _ = nearest_picks(rows, blocks, 100, seed)
    np.testing.assert_array_equal(np.sort(one.indices), np.sort(picks))
    # n < T: every target row still gets a turn, so the design chooses among T candidates
    few = skmm.select(pool, 30, target=target, random_state=1, candidates=1)
    assert few.info["candidates"]["rows"] == 80
    assert few.info["candidates"]["neighbors_per_target"] == {"min": 1, "max": 1}
    assert set(few.indices.tolist()) <= set(nearest_picks(rows, blocks, 80, seed)[0].tolist())
    everything = skmm.select(pool, 30, target=target, random_state=1, candidates=len(pool))
    plain = skmm.select(pool, 30, target=target, random_state=1)
    np.testing.assert_array_equal(everything.indices, plain.indices)
    assert everything.info["candidates"]["note"] == "every pool row"


def test_candidates_are_refused_without_a_target_or_below_one():
    pool, _, target = two_domains(0)
    with pytest.raises(ValueError, match="pass target="):
        skmm.select(pool, 10, candidates=4)
    with pytest.raises(ValueError, match="at least 1"):
        skmm.select(pool, 10, target=target, candidates=0.5)
    with pytest.raises(TypeError, match="candidates must be a number"):
        skmm.select(pool, 10, target=target, candidates="many")
