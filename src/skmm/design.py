"""Matrix moment matching: greedy optimal design on the top sketched directions, whitened.

With Σ̃ = VΛVᵀ and its top-k directions V_k, whitened coordinates z_i = Λ_k^{-1/2} V_kᵀ g̃_i
make the pool's second moment the identity, (1/N) Σ_i z_i z_iᵀ = I. Centered (SkMM's
default), Σ̃ is the covariance about the mean row μ and z_i = Λ_k^{-1/2} V_kᵀ (g̃_i − μ): a
model with a bias learns a shift of every row for free, so the design covers the spread
around the mean, not the mean itself (which would otherwise be the top direction of any
nonnegative features). A coreset S weighted
uniformly has moment M_S = (1/n) Σ_{i∈S} z_i z_iᵀ, whose eigenvalues γ_1..γ_k are the
generalized eigenvalues of (Σ̃_S, Σ̃) on that subspace: the matrix form of the paper's γ_j, with
c_S = 1/γ_min. Matching the full matrix (not only its diagonal in V) means a coreset that
misses a group of rows spanning a direction has a singular M_S there, however the sketch mixes
groups into eigenvectors. Greedy selection, one row at a time, maximizes with M = M_S + εI:

- ``"logdet"``: Σ_j log γ_j = log det M (D-optimal design). The gain of row i is
  log(1 + z_iᵀ M⁻¹ z_i / n); log det is submodular, so gains only shrink and lazy evaluation
  (Minoux) returns exactly the plain greedy's picks at a fraction of the cost.
- ``"aopt"``: −Σ_j 1/γ_j = −tr M⁻¹ = −tr(Σ̃ Σ̃_S⁻¹) (A-optimal design, the variance term of
  the paper's bound). The gain of row i is z_iᵀ M⁻² z_i / (n + z_iᵀ M⁻¹ z_i). Plain greedy
  updates all N gains, O(N·k) per pick; past N·n·k = 2·10⁸ the lazy variant is used.

ε (``ridge``) keeps the empty coreset's value finite; a small ε makes every direction worth
far more before it is covered than after, so the first picks cover the directions.

Both greedies run on this rank's rows (:mod:`skmm.rows`): each pick is the global best
(ties to the lowest position) and the picked row is broadcast from its owner, so the picks
are the same on 1 or P ranks. A pool streamed from disk is whitened chunk by chunk and the
lazy greedy reads back only the rows it refreshes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .progress import progress_bar
from .rows import TILE_ROWS, Layout, PoolRows, SpilledRows, TiledRows, row_products
from .spectrum import Spectrum

CRITERIA = ("logdet", "aopt")
MIN_CLEAN_GAP = 10.0
PLAIN_GREEDY_LIMIT = 2 * 10**8
REFRESH_DROP = 1e-4
GAIN_ENTRIES = 32_768
"""The lazy greedy gathers and scores rows in pieces of about this many entries (512 rows at
k = 64, at least 512; at least one 128-row tile for rows of K blocks, whose rows are K times
wider): the rows, their images and the products stay in the core's cache (1.3–2× the rate of
8192-row pieces on the reference CPU for k = 16 … 128), and a row's gain is the same whatever
the piece (:func:`~skmm.rows.row_products`)."""
WINDOW_ROWS = 32_768
"""The lazy greedy keeps about this many of a rank's largest bounds in view (ranks of at least
four times as many rows), so that a refresh round reads them instead of all of the rank's rows."""


@dataclass(frozen=True)
class DirectionChoice:
    """How many top directions are matched, by which rule, and the eigengap ratio λ_k/λ_{k+1}
    the rule saw (None when k was given or the rank is 1)."""

    k: int
    rule: str
    gap: float | None


def choose_directions(
    spectrum: Spectrum, requested: int | str, sketch_dim: int | None, budget: int | None = None
) -> DirectionChoice:
    """The number k of top directions to match.

    An int is used as given (capped at the effective rank). ``"gap"``: the k with the largest
    ratio λ_k/λ_{k+1} among k ≤ m/4 for a sketch of dimension m (a sketch separates k
    directions reliably when m ≥ 4k; ``sketch_dim=None`` for unsketched features).

    ``"auto"``: k = min(max(⌊n/2⌋, k_gap), ⌊m/2⌋, rank), reported under the limit that binds:
    ``"budget"`` (two coreset rows per direction, so every matched direction can be covered
    with rows to spare), ``"eigengap"`` (a clean gap, λ_k/λ_{k+1} ≥ 10, at k_gap < n: the
    signal lives in those k_gap directions, and covering them all takes only k_gap + 1 rows),
    ``"sketch"`` (a sketch of dimension m resolves about m/2 directions) or ``"rank"``. A gap
    can raise k above the budget's, never lower it: one dominant direction (the mean of
    nonnegative features, a binary head's shared gradient direction) makes the largest gap
    sit at k = 1, and stopping there would leave every other direction uncovered although
    n ≫ 1 rows could cover them. ``gap`` in the result is λ_k/λ_{k+1} at the chosen k.
    """
    values = spectrum.eigenvalues.cpu().numpy()
    rank = max(1, spectrum.effective_rank())
    if not isinstance(requested, str):
        return DirectionChoice(min(int(requested), rank), "given", None)
    if rank == 1:
        return DirectionChoice(1, "rank", None)
    floor = values[0] * 1e-15
    logs = np.log(np.maximum(values[: rank + 1], floor))
    limit = max(1, min(rank - 1, rank if sketch_dim is None else sketch_dim // 4))
    gaps = logs[:limit] - logs[1 : limit + 1]
    k_gap = int(np.argmax(gaps)) + 1
    if requested == "gap":
        return DirectionChoice(k_gap, "eigengap", float(np.exp(gaps[k_gap - 1])))
    wanted, rule = (rank, "rank") if budget is None else (max(1, budget // 2), "budget")
    if np.exp(gaps[k_gap - 1]) >= MIN_CLEAN_GAP and k_gap > wanted and (budget or 0) > k_gap:
        wanted, rule = k_gap, "eigengap"
    limits = {rule: wanted, "rank": rank}
    if sketch_dim is not None:
        limits["sketch"] = max(1, sketch_dim // 2)
    rule = min(limits, key=lambda name: limits[name])
    k = limits[rule]
    ratio = float(np.exp(logs[k - 1] - logs[k])) if k < len(logs) else None
    return DirectionChoice(k, rule, ratio)


def whiten(rows: torch.Tensor, spectrum: Spectrum, k: int) -> torch.Tensor:
    """z_i = Λ_k^{-1/2} V_kᵀ (g̃_i − μ) for every row, float64: (N, k) (μ = 0 uncentered)."""
    basis = spectrum.eigenvectors[:, :k].to(rows.device)
    scale = spectrum.eigenvalues[:k].to(rows.device).rsqrt()
    return row_products(rows.to(torch.float64), basis) * scale - _offset(spectrum, basis, scale)


def _offset(spectrum: Spectrum, basis: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | float:
    """Λ_k^{-1/2} V_kᵀ μ, what centering subtracts from every whitened row (0 uncentered);
    (K, k), one per block, for a spectrum of K blocks."""
    if spectrum.mean is None:
        return 0.0
    return (spectrum.mean.to(basis.device) @ basis) * scale


class WhitenedRows:
    """z_i = Λ_k^{-1/2} V_kᵀ (g̃_i − μ) (float64) for this rank's rows of a pool (μ the mean row
    of a centered spectrum, else 0); with ``intercept``, (z_i, 1), whose pool moment is still I.

    For a spectrum of K blocks (rows of K blocks g̃_ik, :class:`~skmm.spectrum.Spectrum`),
    row i is the K × d block Z_i, stored flat (K·d): z_ik = Λ_k^{-1/2} V_kᵀ (g̃_ik − μ_k), with
    the intercept e_k (each output's own bias), so (1/N) Σ_i Z_iᵀZ_i = I still. ``dim`` is d,
    ``blocks`` K and ``k`` the stored width K·d.

    z is computed once, chunk by chunk. ``keep``: held in memory (in-memory pools);
    otherwise spilled to a temporary file (:class:`~skmm.rows.SpilledRows`) and read back by
    chunk or by row, so a memory-mapped pool is streamed and neither it nor z is ever held
    whole. Both give the same bits. ``spectrum=None``: the rows are z already.
    """

    def __init__(
        self,
        rows: PoolRows,
        spectrum: Spectrum | None,
        k: int | None,
        *,
        keep: bool,
        intercept: bool = False,
    ) -> None:
        self.rows = rows
        self.layout = rows.layout
        self.blocks = 1 if spectrum is None else spectrum.blocks
        self.dim = rows.n_cols if spectrum is None or k is None else k
        self.intercept = intercept and spectrum is not None
        self._basis = self._scale = None
        self._offset: torch.Tensor | float = 0.0
        if spectrum is not None:
            self._basis = spectrum.eigenvectors[:, : self.dim].to(rows.device)
            self._scale = spectrum.eigenvalues[: self.dim].to(rows.device).rsqrt()
            self._offset = _offset(spectrum, self._basis, self._scale)
        if self.intercept:
            self.dim += self.blocks
        self.k = self.blocks * self.dim
        self._kept: torch.Tensor | None = None
        self._spilled: SpilledRows | None = None
        if keep:
            self._kept = torch.empty(
                self.layout.n_local, self.k, dtype=torch.float64, device=rows.device
            )
        else:
            self._spilled = SpilledRows(self.k)
        for _, start, block in rows.chunks():
            if self._kept is not None:
                self._kept[start : start + block.shape[0]] = self._whiten(block)
            else:
                self._spilled.append(self._whiten(block))

    @classmethod
    def from_tensor(cls, points: torch.Tensor) -> WhitenedRows:
        """Whitened rows held whole by this process (no communication)."""
        return cls(PoolRows.from_tensor(points), None, None, keep=True)

    def _whiten(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(torch.float64)
        if self._basis is None:
            return rows
        count, blocks = rows.shape[0], self.blocks
        flat = rows.reshape(count * blocks, rows.shape[1] // blocks)
        z = (row_products(flat, self._basis) * self._scale).reshape(
            count, blocks, self._basis.shape[1]
        )
        z = z - self._offset
        if self.intercept:
            units = torch.eye(blocks, dtype=z.dtype, device=z.device).expand(count, -1, -1)
            z = torch.cat([z, units], dim=2)
        return z.reshape(count, self.k)

    def chunks(self) -> Iterator[torch.Tensor]:
        """z of this rank's rows, chunk by chunk in order."""
        for _, start, stop in self.layout.chunks():
            if self._kept is not None:
                yield self._kept[start:stop]
            else:
                yield self._spilled.read(start, stop).to(self.rows.device)

    def take(self, local: np.ndarray | torch.Tensor) -> torch.Tensor:
        """z at the local positions ``local`` (int64)."""
        if self._kept is not None:
            positions = torch.as_tensor(local, device=self._kept.device)
            return torch.index_select(self._kept, 0, positions)  # 5× advanced indexing's rate
        if isinstance(local, torch.Tensor):
            local = local.cpu().numpy()
        return self._spilled.take(local).to(self.rows.device)

    def tensor(self) -> torch.Tensor:
        """z of all of this rank's rows, (n_local, k)."""
        if self._kept is not None:
            return self._kept
        return self._spilled.read(0, self.layout.n_local).to(self.rows.device)


@dataclass
class GreedyResult:
    """Picks in order, the gain of each, how many gains were evaluated, and the picked z."""

    order: np.ndarray
    gains: np.ndarray
    evaluations: int
    points: torch.Tensor


def greedy_design(
    whitened: torch.Tensor | WhitenedRows,
    n: int,
    criterion: str = "aopt",
    ridge: float = 1e-6,
    *,
    lazy: bool | None = None,
    progress: bool | None = False,
) -> GreedyResult:
    """n distinct rows chosen greedily for ``criterion`` on M = (1/n)Σ_S z zᵀ + εI.

    ``whitened``: all rows z as a tensor, or this rank's :class:`WhitenedRows` of a pool on
    several ranks. ``lazy=None`` picks lazy evaluation for "logdet" (exact: its gains only
    shrink) and, for "aopt", plain greedy while N·n·k ≤ 2·10⁸ and lazy beyond (then a
    heuristic: A-optimal gains can grow, rarely, so a pick may differ from plain greedy's).
    Ties go to the lowest row index, so the result is deterministic.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of: {', '.join(CRITERIA)}")
    if isinstance(whitened, torch.Tensor):
        whitened = WhitenedRows.from_tensor(whitened)
    blocks = whitened.blocks
    if lazy is None:
        lazy = (
            criterion == "logdet"
            or blocks > 1
            or whitened.layout.n_rows * n * whitened.k > PLAIN_GREEDY_LIMIT
        )
    if whitened.layout.rank > 0:
        progress = False
    if not lazy and criterion == "aopt":
        if blocks > 1:
            raise ValueError("rows of K blocks are selected by the lazy greedy only (lazy=True)")
        return _greedy_aopt(whitened, n, ridge, progress)
    if blocks == 1:
        gain = _logdet_gain if criterion == "logdet" else _aopt_gain
        add = _add_to_inverse
    else:
        gain = functools.partial(_block_gain, blocks=blocks, logdet=criterion == "logdet")
        add = functools.partial(_add_block_to_inverse, blocks=blocks)
    return _lazy_greedy(whitened, n, ridge, gain, add, criterion, progress)


def _logdet_gain(block: torch.Tensor, inverse: torch.Tensor, n: int) -> torch.Tensor:
    """log det(M + zzᵀ/n) − log det M = log(1 + zᵀM⁻¹z/n) for each row z of ``block``."""
    return torch.log1p((row_products(block, inverse) * block).sum(dim=1) / n)


def _aopt_gain(block: torch.Tensor, inverse: torch.Tensor, n: int) -> torch.Tensor:
    """tr M⁻¹ − tr (M + zzᵀ/n)⁻¹ = ‖M⁻¹z‖²/(n + zᵀM⁻¹z) for each row z of ``block``."""
    image = row_products(block, inverse)
    return (image * image).sum(dim=1) / (n + (image * block).sum(dim=1))


def _add_to_inverse(inverse: torch.Tensor, point: torch.Tensor, n: int) -> torch.Tensor:
    """M⁻¹ − M⁻¹zzᵀM⁻¹/(n + zᵀM⁻¹z), the inverse after adding zzᵀ/n (Sherman–Morrison)."""
    image = inverse @ point
    return inverse - torch.outer(image, image) / (n + float((point * image).sum()))


def _block_gain(
    block: torch.Tensor, inverse: torch.Tensor, n: int, *, blocks: int, logdet: bool
) -> torch.Tensor:
    """The gain of adding Z_iᵀZ_i/n (Z_i the K × d block of each row of ``block``), by
    Woodbury with A_i = Z_i M⁻¹ Z_iᵀ and U_i = Z_i M⁻¹: log det(I + A_i/n) ("logdet"), or
    tr M⁻¹ − tr (M + Z_iᵀZ_i/n)⁻¹ = tr((nI + A_i)⁻¹ U_i U_iᵀ) ("aopt"). Each row's value comes
    from its own elementwise products and K × K Cholesky factor, whatever the other rows."""
    count, dim = block.shape[0], inverse.shape[0]
    z = block.reshape(count, blocks, dim)
    image = row_products(z.reshape(count * blocks, dim), inverse).reshape(z.shape)
    inner = torch.empty(count, blocks, blocks, dtype=image.dtype, device=image.device)
    for row in range(blocks):  # A_i one row at a time: O(count·K·d) memory, not O(count·K²·d)
        inner[:, row] = (image[:, row, None, :] * z).sum(dim=2)
    inner = (inner + inner.transpose(1, 2)) / 2
    eye = torch.eye(blocks, dtype=inner.dtype, device=inner.device)
    if logdet:
        factor = torch.linalg.cholesky(eye + inner / n)
        return 2 * torch.log(torch.diagonal(factor, dim1=1, dim2=2)).sum(dim=1)
    factor = torch.linalg.cholesky(n * eye + inner)
    solved = torch.cholesky_solve(image, factor)  # (nI + A_i)⁻¹ U_i
    return (solved * image).sum(dim=(1, 2))


def _add_block_to_inverse(
    inverse: torch.Tensor, point: torch.Tensor, n: int, *, blocks: int
) -> torch.Tensor:
    """M⁻¹ − U ᵀ(nI + Z M⁻¹ Zᵀ)⁻¹ U with U = Z M⁻¹, the inverse after adding ZᵀZ/n for the
    K × d block Z of ``point`` (Woodbury)."""
    z = point.reshape(blocks, -1)
    image = z @ inverse
    inner = image @ z.T
    inner = (inner + inner.T) / 2
    eye = torch.eye(blocks, dtype=inner.dtype, device=inner.device)
    factor = torch.linalg.cholesky(n * eye + inner)
    return inverse - image.T @ torch.cholesky_solve(image, factor)


def _lazy_greedy(
    points: WhitenedRows,
    n: int,
    ridge: float,
    gain: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    add: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    criterion: str,
    progress: bool | None,
) -> GreedyResult:
    """Lazy greedy with vectorized refreshes (Minoux), over every rank's rows.

    Stale gains serve as upper bounds. Each step refreshes the best bound, then every stale
    row whose bound reaches the best fresh gain, until none is left on any rank; the winner
    is the lowest-position row with the best gain, as in plain greedy. Ranks exchange once
    per refresh round: the last exchange of a step also settles its winner (with its row)
    and the next step's best bound, so a step typically costs two exchanges.
    """
    layout, k = points.layout, points.k
    device = points.rows.device
    inverse = torch.eye(points.dim, dtype=torch.float64, device=device) / ridge
    piece_rows = max(512 if points.blocks == 1 else TILE_ROWS, GAIN_ENTRIES // k)
    tile = TILE_ROWS if points.blocks == 1 else 1  # K·count flat rows are tiled by the gain
    parts = [
        gain(part, inverse, n) for block in points.chunks() for part in block.split(piece_rows)
    ]
    bounds = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)
    fresh_at = torch.zeros(layout.n_local, dtype=torch.int32, device=device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    picked = torch.empty(n, k, dtype=torch.float64, device=device)
    evaluations = layout.n_rows
    value, best, fresh = layout.argmax(bounds, flags=fresh_at == 0)
    window = _BoundWindow(bounds) if layout.n_local >= 4 * WINDOW_ROWS else None
    with progress_bar(n, f"greedy {criterion}", progress, unit="pick") as bar:
        for step in range(n):
            threshold = value if fresh else -math.inf
            while True:
                view = window.view(bounds, threshold) if window is not None else None
                if view is not None:
                    stale = view.rows[view.bounds >= threshold]
                    stale = stale[fresh_at[stale] != step]
                elif threshold > -math.inf:
                    stale = torch.nonzero(bounds >= threshold).flatten()
                    stale = stale[fresh_at[stale] != step]
                elif layout.start <= best < layout.stop:
                    stale = torch.tensor([best - layout.start], device=device)
                else:
                    stale = torch.zeros(0, dtype=torch.int64, device=device)
                refreshed = -math.inf
                if stale.numel():
                    gains_now = torch.empty(stale.numel(), dtype=torch.float64, device=device)
                    for start in range(0, stale.numel(), piece_rows):  # O(piece·k) memory
                        piece = _whole_tiles(stale[start : start + piece_rows], tile)
                        count = min(piece_rows, stale.numel() - start)
                        scored = gain(points.take(piece), inverse, n)
                        gains_now[start : start + count] = scored[:count]
                    bounds[stale] = gains_now
                    fresh_at[stale] = step
                    refreshed = float(gains_now.max())
                    if window is not None:
                        window.refreshed(bounds, stale, gains_now)
                # a rank that refreshed rows knows the round is not the step's last
                settled = (
                    _if_settled(bounds, threshold, layout, points.take, k, view)
                    if stale.numel() == 0
                    else [math.nan] * (5 + k)
                )
                exchanged = layout.all_ranks([float(stale.numel()), refreshed, *settled])
                if exchanged[:, 0].sum() == 0:
                    break
                evaluations += int(exchanged[:, 0].sum())
                threshold = max(threshold, float(exchanged[:, 1].max()))
            row, point, value, best = _settle(exchanged[:, 2:], layout.n_rows)
            fresh = False  # bounds refreshed in this step are stale in the next
            order[step], gains[step], picked[step] = row, threshold, point.to(device)
            if layout.start <= row < layout.stop:
                bounds[row - layout.start] = -math.inf
                if window is not None:
                    picked_row = torch.tensor([row - layout.start], device=device)
                    window.refreshed(bounds, picked_row, bounds[picked_row])
            inverse = add(inverse, picked[step], n)
            bar.update(1)
    return GreedyResult(order, gains, evaluations, picked)


def _whole_tiles(positions: torch.Tensor, tile: int) -> torch.Tensor:
    """``positions`` followed by copies of its first to a whole number of ``tile``-row tiles
    (128, so that the gathered rows need no padding; 1 for rows of K blocks, whose K·count
    flat rows :func:`_block_gain` tiles itself). A row's gain does not depend on the others."""
    short = -positions.numel() % tile
    return torch.cat([positions, positions[:1].expand(short)]) if short else positions


@dataclass
class _WindowView:
    """The window's rows (ascending local positions; None: all of the rank's rows) and their
    bounds now, for one round, with the largest bound outside it and its lowest position."""

    rows: torch.Tensor | None
    bounds: torch.Tensor
    outside: tuple[float, int] = (-math.inf, 0)

    def position(self, place: int) -> int:
        """The local position of the window's row at ``place``."""
        return place if self.rows is None else int(self.rows[place])


class _BoundWindow:
    """About :data:`WINDOW_ROWS` of a rank's largest lazy-greedy bounds, and the largest bound
    of its other rows (with its lowest position), as they were when the window was last built.

    A refresh round only refreshes, and a step only picks, rows whose bound reaches the
    round's threshold; while the largest bound outside is below it, every such row is in the
    window, and a round reads WINDOW_ROWS bounds instead of all of them. The window keeps its
    rows' bounds beside them, updated with each refresh and pick inside it. Rows outside keep
    their bounds until one is refreshed or picked, which rebuilds the window (O(N)).
    """

    def __init__(self, bounds: torch.Tensor) -> None:
        self.rows = torch.zeros(0, dtype=torch.int64, device=bounds.device)
        self.inside = torch.zeros(bounds.numel(), dtype=torch.bool, device=bounds.device)
        self.rebuild(bounds)

    def rebuild(self, bounds: torch.Tensor) -> None:
        """Keep the rows whose bound reaches a level that about WINDOW_ROWS bounds reach (read
        off every 16th bound: any window gives the same picks, only the speed depends on it)."""
        sample = bounds[::16]
        keep = max(1, min(sample.numel(), WINDOW_ROWS // 16))
        level = float(torch.kthvalue(sample, sample.numel() - keep + 1).values)
        self.inside[self.rows] = False
        self.rows = torch.nonzero(bounds >= level).flatten()
        self.values = bounds[self.rows]
        self.inside[self.rows] = True
        rest = bounds.masked_fill(self.inside, -math.inf)
        first = int(torch.argmax(rest))
        self.outside = (float(rest[first]), first)

    def view(self, bounds: torch.Tensor, threshold: float) -> _WindowView | None:
        """The window for a round at ``threshold`` (rebuilt first when a row outside reaches
        it), or None when more than WINDOW_ROWS rows reach it."""
        if threshold == -math.inf:
            return None
        if threshold <= self.outside[0]:
            self.rebuild(bounds)
            if threshold <= self.outside[0]:
                return None
        return _WindowView(self.rows, self.values, self.outside)

    def refreshed(self, bounds: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Take the new bounds ``values`` of ``rows`` (just refreshed or picked; ``bounds``
        holds them already); rebuild when any of the rows lies outside."""
        if bool(self.inside[rows].all()):
            self.values[torch.searchsorted(self.rows, rows)] = values
        else:
            self.rebuild(bounds)


def _if_settled(
    bounds: torch.Tensor,
    threshold: float,
    layout: Layout,
    take: Callable[[np.ndarray], torch.Tensor],
    width: int,
    view: _WindowView | None = None,
) -> list[float]:
    """What this rank reports in case no rank refreshed a bound this round.

    [candidate position, best bound and its position, best bound and position without the
    candidate, the candidate's row]: the candidate is this rank's first row whose bound
    reaches ``threshold`` (the step's winner is the lowest candidate over ranks); the best
    bounds give the next step's best once the winner is known. With a ``view`` of the
    window (every row reaching ``threshold`` is in it) the same report reads only its rows.
    """
    if threshold == -math.inf:  # a round in which the best row is refreshed: never the last
        return [math.nan] * (5 + width)
    if view is None:
        view = _WindowView(None, bounds)
    candidate, row = float(layout.n_rows), [math.nan] * width
    best = others = [-math.inf, float(layout.n_rows)]
    values = view.bounds
    if values.numel():
        place = int(torch.argmax(values))  # the first largest: the first row reaching it
        best = others = _best_of(values, place, view, layout.start)
        if float(values[place]) >= threshold:
            local = view.position(place)
            candidate = float(layout.start + local)
            row = take(np.asarray([local]))[0].double().cpu().tolist()
            kept, values[place] = float(values[place]), -math.inf
            others = _best_of(values, int(torch.argmax(values)), view, layout.start)
            values[place] = kept
    return [candidate, *best, *others, *row]


def _best_of(values: torch.Tensor, place: int, view: _WindowView, start: int) -> list[float]:
    """[largest bound, its lowest position] over the window's ``values`` (the first largest at
    ``place``) and the rows outside it, as ``torch.argmax`` over all of the rank's bounds
    would give."""
    inside = (float(values[place]), view.position(place))
    outside = view.outside
    if outside[0] > inside[0] or (outside[0] == inside[0] and outside[1] < inside[1]):
        inside = outside
    return [inside[0], float(start + inside[1])]


def _settle(reports: np.ndarray, n_rows: int) -> tuple[int, torch.Tensor, float, int]:
    """(winner's position, its row, next step's best bound, its position) from every rank's
    :func:`_if_settled` report."""
    owner = int(np.argmin(reports[:, 0]))
    row = int(reports[owner, 0])
    point = torch.from_numpy(reports[owner, 5:].copy())
    nexts = reports[:, 1:3].copy()
    nexts[owner] = reports[owner, 3:5]
    value = nexts[:, 0].max()
    best = int(nexts[nexts[:, 0] == value, 1].min()) if value > -math.inf else n_rows
    return row, point, float(value), best


def _greedy_aopt(points: WhitenedRows, n: int, ridge: float, progress: bool | None) -> GreedyResult:
    """Plain greedy for −tr M⁻¹, keeping q_i = zᵢᵀM⁻¹zᵢ and w_i = ‖M⁻¹zᵢ‖² for this rank's rows.

    After adding z with u = M⁻¹z and d = n + zᵀu: q_i −= (zᵢᵀu)²/d and
    w_i += ((zᵢᵀu)²‖u‖²/d − 2(zᵢᵀu)(zᵢᵀM⁻¹u))/d, so each pick costs O(N·k).

    The updates start from M⁻¹ = I/ε, so w_i starts near ‖zᵢ‖²/ε² and shrinks by many orders
    of magnitude as the directions get covered; updating it in place would leave an absolute
    error of about ε_mach/ε² (1e-4 for ε = 1e-6), enough to reorder close gains. So q and w
    are recomputed from M⁻¹ whenever max w over all ranks has fallen by REFRESH_DROP since the
    last recomputation (about once per selection).
    """
    layout, k = points.layout, points.k
    z = points.tensor()
    device = z.device
    tiles = TiledRows(z)
    inverse = torch.eye(k, dtype=torch.float64, device=device) / ridge
    norms = (z * z).sum(dim=1)
    quadratic = norms / ridge
    squared = norms / ridge**2
    refreshed_at = layout.extremes(squared)[1]
    available = torch.ones(layout.n_local, dtype=torch.bool, device=device)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    picked = torch.empty(n, k, dtype=torch.float64, device=device)
    with progress_bar(n, "greedy A-optimal", progress, unit="pick") as bar:
        for step in range(n):
            gain = torch.where(available, squared / (n + quadratic), -torch.inf)
            value, row, point = layout.best_row(gain, lambda local: z[local])
            order[step], gains[step], picked[step] = row, value, point
            if layout.start <= row < layout.stop:
                available[row - layout.start] = False
            image = inverse @ point
            second = inverse @ image
            denominator = n + float((point * image).sum())
            inverse = inverse - torch.outer(image, image) / denominator
            products = tiles.products(torch.stack([image, second], dim=1))
            along, shift = products[:, 0], products[:, 1]
            quadratic -= along.square() / denominator
            squared += (
                along.square() * float((image * image).sum()) / denominator - 2 * along * shift
            ) / denominator
            if layout.extremes(squared)[1] < REFRESH_DROP * refreshed_at:
                images = tiles.products(inverse)
                quadratic = (z * images).sum(dim=1)
                squared = (images * images).sum(dim=1)
                refreshed_at = layout.extremes(squared)[1]
            bar.update(1)
    return GreedyResult(order, gains, n * layout.n_rows, picked)
