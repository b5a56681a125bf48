import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm.design
from skmm.design import choose_directions, greedy_design, whiten
from skmm.spectrum import spectrum


def criterion_value(points, rows, n, criterion, ridge=1e-6):
    chosen = points[list(rows)]
    moment = chosen.T @ chosen / n + ridge * np.eye(points.shape[1])
    if criterion == "logdet":
        return np.linalg.slogdet(moment)[1]
    return -np.trace(np.linalg.inv(moment))


def reference_greedy(points, n, criterion):
    """Plain greedy by recomputing the criterion from scratch for every candidate."""
    chosen: list[int] = []
    for _ in range(n):
        scores = [
            -np.inf if i in chosen else criterion_value(points, [*chosen, i], n, criterion)
            for i in range(points.shape[0])
        ]
        chosen.append(int(np.argmax(scores)))
    return chosen


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), criterion=st.sampled_from(["logdet", "aopt"]))
def test_greedy_matches_the_from_scratch_greedy(seed, criterion):
    points = np.random.default_rng(seed).standard_normal((30, 3))
    result = greedy_design(torch.from_numpy(points), 6, criterion, lazy=False)
    assert list(result.order) == reference_greedy(points, 6, criterion)
    if criterion == "logdet":  # lazy evaluation is exact for a submodular criterion
        lazy = greedy_design(torch.from_numpy(points), 6, criterion, lazy=True)
        assert list(lazy.order) == list(result.order)


def test_greedy_is_close_to_the_best_subset_on_a_tiny_pool():
    points = np.random.default_rng(3).standard_normal((12, 2))
    n = 3
    best = max(
        criterion_value(points, rows, n, "aopt") for rows in itertools.combinations(range(12), n)
    )
    greedy = greedy_design(torch.from_numpy(points), n, "aopt").order
    assert criterion_value(points, greedy, n, "aopt") >= 1.05 * best  # values are negative


def test_lazy_aopt_reaches_the_plain_objective():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((3000, 8)) / np.arange(1, 9) ** 0.5
    plain = greedy_design(torch.from_numpy(points), 40, "aopt", lazy=False)
    lazy = greedy_design(torch.from_numpy(points), 40, "aopt", lazy=True)
    assert lazy.evaluations < plain.evaluations
    plain_value = criterion_value(points, plain.order, 40, "aopt")
    assert criterion_value(points, lazy.order, 40, "aopt") >= 1.01 * plain_value


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    k=st.integers(2, 8),
    rows=st.integers(200, 1500),
    extra=st.integers(1, 50),
)
def test_lazy_aopt_is_within_one_percent_of_the_exact_greedy(seed, k, rows, extra):
    """The lazy A-optimal greedy (a heuristic: its gains can grow) stays within 1% of the
    exact greedy's tr M⁻¹ on power-law pools, refresh sets of any size included."""
    points = np.random.default_rng(seed).standard_normal((rows, k)) / np.arange(1, k + 1) ** 0.5
    n = k + extra
    plain = greedy_design(torch.from_numpy(points), n, "aopt", lazy=False)
    lazy = greedy_design(torch.from_numpy(points), n, "aopt", lazy=True)
    exact = criterion_value(points, plain.order, n, "aopt")
    assert criterion_value(points, lazy.order, n, "aopt") >= 1.01 * exact  # values are negative


@pytest.mark.parametrize("criterion", ["aopt", "logdet"])
@pytest.mark.parametrize("window", [4, 64, 700])
def test_the_lazy_greedy_window_changes_nothing(monkeypatch, criterion, window):
    rng = np.random.default_rng(window)
    points = rng.standard_normal((2500, 6)) / np.arange(1, 7) ** 0.5
    points = np.concatenate([points, points[:400], points[:50]])  # tied bounds
    monkeypatch.setattr(skmm.design, "WINDOW_ROWS", 10**9)  # no window: every round reads all
    full = greedy_design(torch.from_numpy(points), 300, criterion, lazy=True)
    rebuilds = []
    rebuild = skmm.design._BoundWindow.rebuild
    monkeypatch.setattr(skmm.design, "WINDOW_ROWS", window)
    monkeypatch.setattr(
        skmm.design._BoundWindow, "rebuild", lambda self, b: rebuilds.append(1) or rebuild(self, b)
    )
    windowed = greedy_design(torch.from_numpy(points), 300, criterion, lazy=True)
    np.testing.assert_array_equal(windowed.order, full.order)
    np.testing.assert_array_equal(windowed.gains, full.gains)
    assert windowed.evaluations == full.evaluations
    assert len(rebuilds) > 1  # the window was outgrown and rebuilt along the way


@pytest.mark.parametrize("criterion", ["aopt", "logdet"])
def test_the_lazy_greedy_piece_size_changes_nothing(monkeypatch, criterion):
    """Gains are scored GAIN_ENTRIES at a time; 512-row pieces (the least) and whole 8192-row
    chunks give the same picks, the same gains to the bit and the same evaluation count."""
    rng = np.random.default_rng(3)
    points = torch.from_numpy(rng.standard_normal((9000, 8)) / np.arange(1, 9) ** 0.5)
    monkeypatch.setattr(skmm.design, "GAIN_ENTRIES", 10**9)
    whole = greedy_design(points, 200, criterion, lazy=True)
    monkeypatch.setattr(skmm.design, "GAIN_ENTRIES", 1)
    pieces = greedy_design(points, 200, criterion, lazy=True)
    np.testing.assert_array_equal(pieces.order, whole.order)
    np.testing.assert_array_equal(pieces.gains, whole.gains)
    assert pieces.evaluations == whole.evaluations > 9000


@pytest.mark.parametrize("criterion", ["aopt", "logdet"])
def test_block_gains_do_not_depend_on_the_piece_they_are_scored_in(monkeypatch, criterion):
    """Rows of K blocks are scored one 128-row tile at a time at the least; whole chunks give
    the same picks and the same gains to the bit."""
    rng = np.random.default_rng(4)
    points = torch.from_numpy(rng.standard_normal((3000, 3 * 6)) / np.arange(1, 19) ** 0.5)
    whitened = skmm.design.WhitenedRows.from_tensor(points)
    whitened.blocks, whitened.dim = 3, 6
    monkeypatch.setattr(skmm.design, "GAIN_ENTRIES", 10**9)
    whole = greedy_design(whitened, 40, criterion)
    monkeypatch.setattr(skmm.design, "GAIN_ENTRIES", 1)
    pieces = greedy_design(whitened, 40, criterion)
    np.testing.assert_array_equal(pieces.order, whole.order)
    np.testing.assert_array_equal(pieces.gains, whole.gains)


def test_whitening_makes_the_pool_moment_the_identity():
    rows = torch.randn(500, 6, dtype=torch.float64) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1])
    spec = spectrum(rows)
    z = whiten(rows, spec, 4)
    np.testing.assert_allclose((z.T @ z / 500).numpy(), np.eye(4), atol=1e-10)


@pytest.mark.parametrize(
    ("scales", "requested", "sketch_dim", "budget", "expected"),
    [
        # a clean gap at 3 raises k above n/2 = 2 when the budget can cover it (n > 3) ...
        ([10, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.1], "auto", None, 4, (3, "eigengap")),
        # ... not when it cannot, and never lowers k below n/2
        ([10, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.1], "auto", None, 3, (1, "budget")),
        ([10, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.1], "auto", None, 40, (8, "rank")),
        ([10, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.1], "gap", None, 40, (3, "eigengap")),
        ([10, 10, 10, 0.1, 0.1, 0.1, 0.1, 0.1], 5, None, None, (5, "given")),
        ([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7, 1 / 8], "auto", None, 6, (3, "budget")),
        ([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7, 1 / 8], "auto", 8, 40, (4, "sketch")),
    ],
)
def test_choose_directions(scales, requested, sketch_dim, budget, expected):
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.standard_normal((4000, len(scales))) * scales)
    choice = choose_directions(spectrum(rows), requested, sketch_dim, budget)
    assert (choice.k, choice.rule) == expected


def block_value(blocks, rows, n, criterion, ridge=1e-6):
    """The criterion on M = (1/n) Σ_S Z_iᵀZ_i + εI for rows of K × d blocks."""
    moment = sum(blocks[i].T @ blocks[i] for i in rows) / n + ridge * np.eye(blocks.shape[2])
    if criterion == "logdet":
        return np.linalg.slogdet(moment)[1]
    return -np.trace(np.linalg.inv(moment))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    criterion=st.sampled_from(["logdet", "aopt"]),
    blocks=st.integers(2, 4),
)
def test_block_greedy_adds_each_rows_rank_k_moment_as_the_from_scratch_greedy(
    seed, criterion, blocks
):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((40, blocks, 5)) * rng.uniform(0.2, 2.0, 5)
    flat = torch.from_numpy(points.reshape(40, -1))
    whitened = skmm.design.WhitenedRows.from_tensor(flat)
    whitened.blocks, whitened.dim = blocks, 5  # rows already whitened, K blocks of d = 5
    result = greedy_design(whitened, 6, criterion)
    chosen: list[int] = []
    for _ in range(6):
        scores = [
            -np.inf if i in chosen else block_value(points, [*chosen, i], 6, criterion)
            for i in range(40)
        ]
        chosen.append(int(np.argmax(scores)))
    if criterion == "logdet":  # submodular: the lazy greedy is exact
        assert list(result.order) == chosen
    else:  # A-optimal gains may grow, so lazy evaluation is a heuristic: its objective
        ours = block_value(points, result.order, 6, criterion)
        assert ours >= 1.01 * block_value(points, chosen, 6, criterion)
    assert len(set(result.order.tolist())) == 6
    assert result.points.shape == (6, blocks * 5)


def test_block_rows_are_whitened_block_by_block_with_an_intercept_per_block():
    rng = np.random.default_rng(2)
    rows = torch.from_numpy(rng.standard_normal((500, 3 * 7)) + rng.uniform(0, 5, 21))
    spec = spectrum(rows, center=True, blocks=3)
    whitened = skmm.design.WhitenedRows(
        skmm.rows.PoolRows.from_tensor(rows), spec, 4, keep=True, intercept=True
    )
    assert (whitened.blocks, whitened.dim, whitened.k) == (3, 4 + 3, 3 * 7)
    z = whitened.tensor().reshape(500, 3, 7)
    moment = torch.einsum("nki,nkj->ij", z, z) / 500
    torch.testing.assert_close(moment, torch.eye(7, dtype=torch.float64), atol=1e-10, rtol=0)
    # block k's intercept coordinate is e_k
    torch.testing.assert_close(z[:, :, 4:], torch.eye(3, dtype=torch.float64).expand(500, 3, 3))
