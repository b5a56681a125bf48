"""Targeted baselines: the pool rows most like a target set's rows, for comparison with SkMM's
targeted selection (``fit(features, labels, target=T)``).

- ``less`` (LESS, Xia et al. 2024): the rows are gradients (typically sketched); every pool
  row g_i and target row g_t is scaled to unit length, and row i scores
  s_i = max_t cos(g_i, g_t) (``aggregate="max"``) or mean_t cos(g_i, g_t) (``"mean"``); the
  n highest scores are kept, ties to the lower index. A zero row has cosine 0.
- ``knn``: nearest neighbours of the target's embeddings: the target rows take turns, in a
  seeded random order, each taking its nearest not-yet-picked pool row in Euclidean
  distance, until n rows are picked; every target row gets ⌊n/T⌋ or ⌈n/T⌉ of them, so
  the selection covers the whole target, not only its densest part.

Both read the pool in chunks of rows and never hold more than about
:data:`SIMILARITY_CHUNK_ENTRIES` pool × target similarities (or pool values) at once. All
arithmetic is in float64, and every pool row's products with the target come from
:func:`~skmm.rows.row_products` against fixed blocks of target columns (cut by T alone), so a
row's score or distance is the same bits whatever chunk it is read in, and the selection
does not depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..inputs import FeatureMatrix, check_choice
from ..rows import COLUMN_MULTIPLE, Layout, PoolRows, TiledRows, pad_columns, row_products
from ..seeding import numpy_rng
from .base import MethodOutput, Selector, register
from .scores import score_summary

SIMILARITY_CHUNK_ENTRIES = 2**22
"""Pool × target similarities (and pool values) held at once: 32 MiB of float64."""
TARGET_BLOCK_COLUMNS = 4096
"""Target rows per product: the target is cut into blocks of this many rows, by T alone."""
KNN_SPARE = 32
"""Candidates each target row keeps beyond its ⌈n/T⌉ turns, before a refill is needed."""
LESS_AGGREGATES = ("max", "mean")


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean length, in float64; a zero row stays zero.

    Each row is first divided by its largest |x| (exact as a maximum), so its squared norm,
    a :func:`~skmm.rows.row_products` with a column of ones, neither overflows nor
    underflows; a scale 2^k of a row leaves its unit row unchanged bit for bit.
    """
    rows = rows.to(torch.float64)
    largest = rows.abs().amax(dim=1, keepdim=True)
    scaled = rows / largest.masked_fill_(largest == 0, 1.0)
    norms = squared_row_norms(scaled).sqrt_()
    return scaled / norms.masked_fill_(norms == 0, 1.0)


def squared_row_norms(rows: torch.Tensor) -> torch.Tensor:
    """‖x_i‖² of each float64 row as an (r, 1) column, independent of the other rows."""
    ones = torch.ones(rows.shape[1], 1, dtype=rows.dtype, device=rows.device)
    return row_products(rows.square(), ones)


@dataclass(frozen=True, eq=False)
class TargetBlocks:
    """A target's rows prepared for products with pool rows: (d, k) column blocks, fixed.

    ``blocks[b]`` holds target rows [``starts[b]``, ``starts[b + 1]``) as zero-padded
    columns; ``norms`` their squared norms (kNN); ``center`` what is subtracted from pool
    rows first (kNN: the target mean; None for LESS). The same for every class when
    stratifying (:meth:`restrict` returns it unchanged).
    """

    blocks: list[torch.Tensor]
    starts: list[int]
    n_rows: int
    norms: torch.Tensor | None = None
    center: torch.Tensor | None = None

    @classmethod
    def of(
        cls,
        rows: torch.Tensor,
        norms: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
    ) -> TargetBlocks:
        n_rows = int(rows.shape[0])
        starts = [*range(0, n_rows, TARGET_BLOCK_COLUMNS), n_rows]
        blocks = [pad_columns(rows[a:b].T.contiguous()) for a, b in pairwise(starts)]
        return cls(blocks, starts, n_rows, norms, center)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """[start, stop) of the target rows in each block."""
        return list(pairwise(self.starts))

    @property
    def block_columns(self) -> int:
        return min(self.n_rows, TARGET_BLOCK_COLUMNS)

    def restrict(self, rows: np.ndarray) -> TargetBlocks:
        """The target is not split by class: every class is selected for the whole target."""
        return self


def chunk_rows(n_cols: int, block_columns: int) -> int:
    """Pool rows per chunk: at most SIMILARITY_CHUNK_ENTRIES values of the chunk and of its
    products with one target block."""
    return max(1, SIMILARITY_CHUNK_ENTRIES // max(1, n_cols, block_columns))


def pool_chunks(rows: PoolRows, step: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(local start, float64 rows) over this rank's rows (all of them in one process) in chunks
    of ``step``."""
    stop = rows.layout.n_local
    for start in range(0, stop, step):
        yield start, rows.read(start, min(start + step, stop)).to(torch.float64)


def chunk_bytes(n_pool: int, n_cols: int, block_columns: int) -> int:
    """Bytes of one chunk's float64 copies (read, |x|, scaled or shifted, squared, padded to
    tiles twice, unit) and of its products with one target block (the padded product, its
    slice and arithmetic, and the copy moved to numpy for kNN)."""
    step = min(n_pool, chunk_rows(n_cols, block_columns))
    tiled = -(-step // 128) * 128
    width = -(-block_columns // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
    return 8 * (7 * tiled * n_cols + 4 * tiled * width)


def target_bytes(n_target: int, n_cols: int) -> int:
    """Bytes of the target's float64 copies: as read, scaled or shifted, squared and padded
    for its norms, unit rows, and the padded column blocks."""
    return 5 * 8 * n_target * n_cols


class TargetedBaseline(Selector):
    """What both baselines share: a target is required, and the pool is read in chunks."""

    targeted = True
    requires_target = True

    def _memory_advice(self) -> str:
        return (
            "sketch the pool and the target with the same map first (skmm.sketch(features, "
            "512, seed=0) and skmm.sketch(target, 512, seed=0)), or pass a smaller target"
        )

    def _target_rows(self) -> torch.Tensor:
        if self._target is None:  # fit checks this first; _prepare called directly may not
            raise ValueError(f"method {self.name!r} needs a target: pass target=...")
        return self._target.to_tensor().to(torch.float64)


@register
class LESS(TargetedBaseline):
    """LESS (Xia et al. 2024): the n pool rows whose gradients point most like the target's.

    s_i = max_t cos(g_i, g_t) (``aggregate="max"``) or mean_t cos(g_i, g_t) (``"mean"``),
    over the target's rows g_t; the n highest kept, best first, ties to the lower index.
    Needs gradient features (typically sketched, of the same model, parameters and sketch
    as the target's); deterministic (the seed is unused).
    """

    name = "less"

    def __init__(
        self,
        n: int,
        *,
        aggregate: str = "max",
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.aggregate = aggregate

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_choice(self.aggregate, "aggregate", LESS_AGGREGATES)

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        n_target = 0 if self._target is None else self._target.n_rows
        columns = 1 if self.aggregate == "mean" else min(n_target, TARGET_BLOCK_COLUMNS)
        # the target; one chunk; a score per pool row, its negation and sort order
        chunk = chunk_bytes(n_pool, n_cols, columns)
        return target_bytes(n_target, n_cols) + chunk + 3 * 8 * n_pool

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        units = unit_rows(self._target_rows())
        zero = int((units.abs().amax(dim=1) == 0).sum())
        if self.aggregate == "mean":
            # mean_t cos(g_i, g_t) = ⟨u_i, mean_t u_t⟩: one column
            target = TargetBlocks.of(units.sum(dim=0, keepdim=True) / units.shape[0])
        else:
            target = TargetBlocks.of(units)
        rows = PoolRows(Layout.single(features.n_rows), features)
        return (rows, target), {"target": {"zero_rows": zero}}

    def _select(self, data: tuple[PoolRows, TargetBlocks], n: int, seed: int) -> MethodOutput:
        rows, target = data
        scores = less_scores(rows, target)
        order = np.lexsort((np.arange(scores.size), -scores))[:n].astype(np.int64)
        info = {
            "aggregate": self.aggregate,
            "scores": score_summary(scores[order]),
            "pool_scores": score_summary(scores),
        }
        return MethodOutput(order, None, info)


def less_scores(rows: PoolRows, target: TargetBlocks) -> np.ndarray:
    """max over the target blocks' columns of ⟨u_i, column⟩ for every pool row: (N,)."""
    step = chunk_rows(rows.n_cols, target.block_columns)
    scores = np.empty(rows.n_rows)
    for start, chunk in pool_chunks(rows, step):
        units = TiledRows(unit_rows(chunk))  # padded to tiles once for every target block
        best = None
        for block, (a, b) in zip(target.blocks, target.spans, strict=True):
            products = units.products(block)[:, : b - a].amax(dim=1)
            best = products if best is None else torch.maximum(best, products)
        scores[start : start + chunk.shape[0]] = best.cpu().numpy()
    return scores


@register
class TargetNeighbors(TargetedBaseline):
    """Nearest neighbours of the target: its rows take turns taking their nearest pool row.

    Target rows take turns in a seeded random order, each taking its nearest not-yet-picked
    pool row (‖x_i − y_t‖ smallest, ties to the lower index). Every target row gets ⌊n/T⌋
    or ⌈n/T⌉ rows. Indices come in pick order. For embeddings of the same model as the
    target's; no options beyond the common ones.
    """

    name = "knn"

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        n_target = 0 if self._target is None else self._target.n_rows
        return neighbor_bytes(n_pool, n_cols, n, n_target)

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        target = neighbor_blocks(self._target_rows())
        return (PoolRows(Layout.single(features.n_rows), features), target), {}

    def _select(self, data: tuple[PoolRows, TargetBlocks], n: int, seed: int) -> MethodOutput:
        order, info = nearest_picks(*data, n, seed)
        return MethodOutput(order, None, info)


def neighbor_bytes(n_pool: int, n_cols: int, n: int, n_target: int) -> int:
    """Peak bytes of :func:`nearest_picks` taking n rows of an (n_pool, n_cols) pool."""
    columns = min(n_target, TARGET_BLOCK_COLUMNS)
    per_target = min(n_pool, -(-n // max(1, n_target)) + KNN_SPARE)
    step = min(n_pool, chunk_rows(n_cols, columns))
    # the target; candidate lists (distance and row) as kept and as refilled; one
    # block's merge of candidates and chunk distances (values, rows, sort order); one
    # chunk; the picked flags. Refills double the lists of the target rows that ran short
    # (at most to the rows left), so a pool whose rows all tie can take more.
    candidates = 2 * 2 * 8 * n_target * per_target
    merge = 3 * 8 * columns * (per_target + step)
    chunk = chunk_bytes(n_pool, n_cols, columns)
    return target_bytes(n_target, n_cols) + candidates + merge + chunk + n_pool


def neighbor_blocks(rows: torch.Tensor) -> TargetBlocks:
    """The target's rows about their mean, with their squared norms, for :func:`nearest_rows`."""
    rows = rows.to(torch.float64)
    center = rows.sum(dim=0) / rows.shape[0]
    shifted = rows - center
    return TargetBlocks.of(shifted, squared_row_norms(shifted)[:, 0], center)


def nearest_picks(
    rows: PoolRows, target: TargetBlocks, n: int, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """``knn``'s n picks in pick order: the target rows take turns, in a seeded order, each
    taking its nearest unpicked pool row; and a summary (turns per target row, distances)."""
    n_target = target.n_rows
    turns = numpy_rng(seed, "knn", "order").permutation(n_target)
    quota = -(-n // n_target)
    picked = np.zeros(rows.n_rows, dtype=bool)
    lengths = np.full(n_target, min(rows.n_rows, quota + KNN_SPARE), dtype=np.int64)
    candidates, distances = nearest_rows(rows, target, lengths, picked)
    cursor = np.zeros(n_target, dtype=np.int64)
    counts = np.zeros(n_target, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    chosen_distance = np.empty(n)
    refills = 0
    k = 0
    while k < n:
        for t in turns.tolist():
            if k == n:
                break
            while True:
                mine = candidates[t]
                while cursor[t] < mine.size and picked[mine[cursor[t]]]:
                    cursor[t] += 1
                if cursor[t] < mine.size:
                    break
                # t has no unpicked candidate left: refill it and every target row that
                # has fewer unpicked candidates than turns left, with twice as many
                refills += 1
                low = np.array(
                    [
                        (~picked[candidates[s][cursor[s] :]]).sum() < quota - counts[s]
                        for s in range(n_target)
                    ]
                )
                low[t] = True
                unpicked = int(rows.n_rows - picked.sum())
                lengths[low] = np.minimum(unpicked, 2 * lengths[low])
                asked = np.where(low, lengths, 0)
                fresh, fresh_distances = nearest_rows(rows, target, asked, picked)
                for s in np.flatnonzero(low).tolist():
                    candidates[s], distances[s], cursor[s] = fresh[s], fresh_distances[s], 0
            row = int(candidates[t][cursor[t]])
            picked[row] = True
            order[k] = row
            chosen_distance[k] = distances[t][cursor[t]]
            counts[t] += 1
            k += 1
    spread = np.sqrt(np.maximum(chosen_distance, 0.0))
    info = {
        "n_target": n_target,
        "neighbors_per_target": {"min": int(counts.min()), "max": int(counts.max())},
        "distance": score_summary(spread),
        "refills": refills,
    }
    return order, info


def nearest_rows(
    rows: PoolRows, target: TargetBlocks, lengths: np.ndarray, picked: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each target row t with ``lengths[t]`` > 0: its ``lengths[t]`` nearest unpicked pool
    rows, nearest first (ties to the lower index), and their squared distances.

    One pass over the pool, in chunks; target blocks without such a row are skipped.
    ‖x − y‖² = ‖x − c‖² + ‖y − c‖² − 2⟨x − c, y − c⟩ about the target mean c.
    """
    n_target = target.n_rows
    found: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n_target
    found_distances: list[np.ndarray] = [np.empty(0)] * n_target
    step = chunk_rows(rows.n_cols, target.block_columns)
    spans = target.spans
    wanted = [b for b, (a, z) in enumerate(spans) if lengths[a:z].any()]
    width = int(lengths.max())
    best = {b: np.full((spans[b][1] - spans[b][0], 0), np.inf) for b in wanted}
    best_rows = {b: np.empty((spans[b][1] - spans[b][0], 0), np.int64) for b in wanted}
    for start, chunk in pool_chunks(rows, step):
        shifted = chunk - target.center
        norms = squared_row_norms(shifted)
        tiles = TiledRows(shifted)  # padded to tiles once for every target block
        first = rows.layout.start + start
        taken = picked[first : first + chunk.shape[0]]
        positions = np.arange(first, first + chunk.shape[0], dtype=np.int64)
        for b in wanted:
            a, z = spans[b]
            products = tiles.products(target.blocks[b])[:, : z - a]
            squared = (norms - 2.0 * products + target.norms[a:z]).T.cpu().numpy()
            squared[:, taken] = np.inf
            values = np.concatenate([best[b], squared], axis=1)
            which = np.concatenate([best_rows[b], np.broadcast_to(positions, squared.shape)], 1)
            keep = np.argsort(values, axis=1, kind="stable")[:, :width]
            best[b] = np.take_along_axis(values, keep, 1)
            best_rows[b] = np.take_along_axis(which, keep, 1)
    for b in wanted:
        for local, t in enumerate(range(*spans[b])):
            size = int(lengths[t])
            if size:
                values = best[b][local, :size]
                real = np.isfinite(values)
                found[t] = best_rows[b][local, :size][real]
                found_distances[t] = values[real]
    if rows.layout.size > 1:
        found, found_distances = _merge_ranks(found, found_distances, lengths)
    return found, found_distances


def _merge_ranks(
    found: list[np.ndarray], distances: list[np.ndarray], lengths: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every rank's nearest rows per target row merged: the ``lengths[t]`` smallest
    (distance, position) pairs, the order one process gives (ties to the lower position)."""
    ranks = distributed.all_gather_object(list(zip(found, distances, strict=True)))
    merged_rows, merged_distances = [], []
    for t, size in enumerate(lengths.tolist()):
        rows = np.concatenate([rank[t][0] for rank in ranks])
        values = np.concatenate([rank[t][1] for rank in ranks])
        order = np.lexsort((rows, values))[:size]
        merged_rows.append(rows[order])
        merged_distances.append(values[order])
    return merged_rows, merged_distances
