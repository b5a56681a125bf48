"""This rank's rows of a pool, in a block layout that does not depend on the number of ranks.

The N rows (positions 0..N−1) are cut into blocks by :func:`block_bounds`: up to 64 blocks
of whole 128-row tiles, 1024 to 2^17 rows each, so the cut depends on N alone. With P ranks,
rank p owns the contiguous blocks [⌊pB/P⌋, ⌊(p+1)B/P⌋) (:class:`Layout`). Every stage of a
row-separable method computes block by block:

- a per-row result comes from a kernel whose value for a row does not depend on the other
  rows in the call (:func:`row_products`, elementwise products and row sums);
- a sum over rows is formed per chunk (at most 8192 rows, inside one block), the chunk sums
  are added in chunk order into one partial per block (scalar sums, :meth:`Layout.totals`:
  a block's rows added in order), and block partials are added in block order across ranks
  (:meth:`Layout.fold`);
- an arg-max over rows takes the largest value and, among equal values, the lowest position.

So on 1 or P ranks, in memory or streamed from disk, every number is produced by the same
operations in the same order, and selections agree bit for bit (on the same hardware and
math library; CPU and GPU agree to rounding). :class:`PoolRows` reads this rank's rows chunk
by chunk or by position, so a memory-mapped pool is never loaded whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from . import distributed
from .inputs import FeatureMatrix

TILE_ROWS = 128
CHUNK_ROWS = 8192
MIN_BLOCK_ROWS = 1024
MAX_BLOCK_ROWS = 2**17
TARGET_BLOCKS = 64
COLUMN_MULTIPLE = 8
RUN_GAP = 16
GATHERED_FOLD_LIMIT = 4096
"""Partials of at most this many entries are all-gathered and folded on every rank; larger
ones (the m×m covariance) are folded along the ranks one at a time."""


def block_bounds(n_rows: int) -> np.ndarray:
    """Start of every block and N at the end: ⌈N/64⌉ rows rounded up to whole tiles (and to
    whole 8192-row chunks past one chunk), at least 1024 and at most 2^17 rows per block."""
    rows = -(-max(n_rows, 1) // TARGET_BLOCKS)
    rows = max(MIN_BLOCK_ROWS, -(-rows // TILE_ROWS) * TILE_ROWS)
    if rows > CHUNK_ROWS:
        rows = min(MAX_BLOCK_ROWS, -(-rows // CHUNK_ROWS) * CHUNK_ROWS)
    return np.append(np.arange(0, n_rows, rows, dtype=np.int64), np.int64(n_rows))


def row_products(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``rows @ matrix`` with each row's result independent of the other rows in the call.

    A BLAS product of an (r, d) matrix may round a row differently depending on r and on the
    row's place in the call. Padding the rows to whole 128-row tiles and the columns of
    ``matrix`` to a multiple of 8 makes the library run one kernel on every row
    (checked by ``tests/test_rows.py``).
    """
    return TiledRows(rows).products(matrix)


class TiledRows:
    """Rows padded once to whole 128-row tiles, for repeated :func:`row_products`."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.n_rows = int(rows.shape[0])
        padded = -(-self.n_rows // TILE_ROWS) * TILE_ROWS
        if padded != self.n_rows:
            rows = torch.cat([rows, rows.new_zeros(padded - self.n_rows, rows.shape[1])])
        self.tiles = rows.reshape(-1, TILE_ROWS, rows.shape[1])

    def products(self, matrix: torch.Tensor) -> torch.Tensor:
        """``rows @ matrix`` (see :func:`row_products`); ``matrix`` may come padded already
        (:func:`pad_columns`), its zero columns are then part of the result."""
        width = matrix.shape[1]
        padded = pad_columns(matrix)
        product = torch.matmul(self.tiles, padded)
        return product.reshape(-1, padded.shape[1])[: self.n_rows, :width]


def pad_columns(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` (d, k) with zero columns appended up to a multiple of ``COLUMN_MULTIPLE``
    (itself when k is one), the shape :func:`row_products` multiplies by; padding a matrix
    once spares it for every later product."""
    width = matrix.shape[1]
    columns = -(-width // COLUMN_MULTIPLE) * COLUMN_MULTIPLE
    if columns == width:
        return matrix
    return torch.cat([matrix, matrix.new_zeros(matrix.shape[0], columns - width)], 1)


@dataclass(frozen=True, eq=False)
class Layout:
    """Blocks of a pool of N positions and the ones this rank owns.

    ``bounds``: block b holds positions [bounds[b], bounds[b+1]); it depends on N only
    (or, for a subset of a pool, on the subset). ``rank``/``size``: this rank among P.
    Reductions communicate only when ``size`` > 1.
    """

    bounds: np.ndarray
    rank: int = 0
    size: int = 1

    @classmethod
    def of(cls, n_rows: int) -> Layout:
        """The layout of N rows over the ranks of this run (one rank without a launcher)."""
        rank, size = distributed.world()
        return cls(block_bounds(n_rows), rank, size)

    @classmethod
    def single(cls, n_rows: int) -> Layout:
        """The layout of N rows held whole by this process, whatever the world size."""
        return cls(block_bounds(n_rows))

    @property
    def n_rows(self) -> int:
        return int(self.bounds[-1])

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    def _first_block(self, rank: int) -> int:
        return self.n_blocks * rank // self.size

    @cached_property
    def start(self) -> int:
        """First position of this rank's rows."""
        return int(self.bounds[self._first_block(self.rank)])

    @cached_property
    def stop(self) -> int:
        """One past the last position of this rank's rows."""
        return int(self.bounds[self._first_block(self.rank + 1)])

    @property
    def n_local(self) -> int:
        return self.stop - self.start

    def local_blocks(self) -> list[tuple[int, int]]:
        """[start, stop) of each of this rank's blocks, in local positions."""
        return self._local_blocks

    @cached_property
    def _local_blocks(self) -> list[tuple[int, int]]:
        first, last = self._first_block(self.rank), self._first_block(self.rank + 1)
        return [
            (int(self.bounds[b]) - self.start, int(self.bounds[b + 1]) - self.start)
            for b in range(first, last)
        ]

    def chunks(self) -> list[tuple[int, int, int]]:
        """(local block, start, stop) of every chunk: blocks cut into runs of 8192 rows."""
        return [
            (block, lo, min(lo + CHUNK_ROWS, hi))
            for block, (start, hi) in enumerate(self.local_blocks())
            for lo in range(start, hi, CHUNK_ROWS)
        ]

    def restrict(self, positions: np.ndarray) -> Layout:
        """The layout of the subset ``positions`` (sorted): each row keeps its block."""
        return Layout(
            np.searchsorted(positions, self.bounds).astype(np.int64), self.rank, self.size
        )

    def subset(self, mask: torch.Tensor) -> Layout:
        """The layout of the rows where this rank's ``mask`` (n_local,) holds, over every
        rank: each row keeps its block, so the subset's layout does not depend on P either."""
        counts = np.zeros(self.n_blocks)
        first = self._first_block(self.rank)
        for index, (lo, hi) in enumerate(self.local_blocks()):
            counts[first + index] = float(mask[lo:hi].sum())
        if self.size > 1:
            counts = self.all_ranks(counts.tolist()).sum(axis=0)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Layout(bounds, self.rank, self.size)

    # ------------------------------------------------------------------ reductions

    def fold(self, partials: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Σ of one partial per local block, added in global block order (0 + a₁) + a₂ + …."""
        if self.size == 1:
            total = torch.zeros_like(like)
            for part in partials:
                total = total + part
            return total
        if like.numel() > GATHERED_FOLD_LIMIT:
            return distributed.fold_in_rank_order(partials, like)
        counts = [self._first_block(p + 1) - self._first_block(p) for p in range(self.size)]
        local = like.new_zeros((max(counts), *like.shape)).cpu()
        for index, part in enumerate(partials):
            local[index] = part
        gathered = distributed.all_gather(local)
        total = torch.zeros_like(like)
        for rank, count in enumerate(counts):
            for part in gathered[rank, :count]:
                total = total + part.to(like.device)
        return total

    def totals(self, *values: torch.Tensor) -> list[float]:
        """Σ_i v_i over every rank's rows for each 1-D ``values`` (one exchange for all).

        Each block's sums come from one segment reduction in float64, which on the CPU adds
        a block's rows in order (tests/test_rows.py): a block's sum depends on its rows alone
        (not on the other blocks in the call, the rank or the thread count), in one call
        instead of one per block.
        """
        device = values[0].device
        like = torch.zeros(len(values), dtype=torch.float64, device=device)
        if not self._block_lengths.numel():
            return self.fold([], like).tolist()
        stacked = torch.stack([v.to(torch.float64) for v in values], dim=1)
        lengths = self._block_lengths.to(device)
        sums = torch.segment_reduce(stacked, "sum", lengths=lengths, axis=0)
        return self.fold(list(sums), like).tolist()

    @cached_property
    def _block_lengths(self) -> torch.Tensor:
        """Rows in each of this rank's blocks (int64, on the CPU)."""
        return torch.tensor([hi - lo for lo, hi in self.local_blocks()], dtype=torch.int64)

    def total(self, values: torch.Tensor) -> float:
        """Σ_i values[i] over every rank's rows."""
        return self.totals(values)[0]

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Σ_i a_i b_i over every rank's rows."""
        return self.total(a * b)

    def extremes(self, values: torch.Tensor) -> tuple[float, float]:
        """(min, max) of ``values`` over every rank's rows."""
        local = [float(values.min()), float(values.max())] if values.numel() else [np.inf, -np.inf]
        gathered = self.all_ranks(local)
        return float(gathered[:, 0].min()), float(gathered[:, 1].max())

    def argmax(
        self, values: torch.Tensor, flags: torch.Tensor | None = None
    ) -> tuple[float, int, bool]:
        """(largest value, its lowest position, ``flags`` there) over every rank's rows."""
        if values.numel():
            index = int(torch.argmax(values))
            flag = bool(flags[index]) if flags is not None else False
            local = [float(values[index]), float(self.start + index), float(flag)]
        else:
            local = [-np.inf, float(self.n_rows), 0.0]
        gathered = self.all_ranks(local)
        best = gathered[:, 0].max()
        tied = gathered[gathered[:, 0] == best]
        winner = tied[np.argmin(tied[:, 1])]
        return float(best), int(winner[1]), bool(winner[2])

    def all_ranks(self, local: list[float]) -> np.ndarray:
        """(P, len(local)) float64: every rank's ``local`` values, in rank order."""
        if self.size == 1:
            return np.array([local], dtype=np.float64)
        return distributed.all_gather(torch.tensor(local, dtype=torch.float64)).numpy()

    def smallest(self, values: torch.Tensor, count: int) -> np.ndarray:
        """Positions of the ``count`` smallest values over every rank's rows, in increasing
        (value, position) order."""
        local = values.detach().cpu().numpy()
        return self.merge_smallest(local, np.arange(local.size) + self.start, count)

    def merge_smallest(self, values: np.ndarray, positions: np.ndarray, count: int) -> np.ndarray:
        """The ``count`` smallest (value, position) pairs among every rank's candidates."""
        chosen = smallest_pairs(values, positions, count)
        if self.size == 1:
            return chosen
        keep = np.isin(positions, chosen)
        pairs = np.stack([values[keep], positions[keep].astype(np.float64)], axis=1)
        gathered = distributed.all_gather_rows(torch.from_numpy(pairs)).numpy()
        return smallest_pairs(gathered[:, 0], gathered[:, 1].astype(np.int64), count)

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``values`` in position order: the whole (N, ...) array."""
        if self.size == 1:
            return values
        return distributed.all_gather_rows(values)

    def rows_at(
        self, take: Callable[[np.ndarray], torch.Tensor], positions: np.ndarray
    ) -> torch.Tensor:
        """The rows at ``positions`` (any order), each read by the rank that owns it.

        ``take`` maps local positions to rows. Every rank gets the same fresh tensor.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if self.size == 1:
            return take(positions - self.start).clone()
        mine = positions[(positions >= self.start) & (positions < self.stop)]
        local = take(mine - self.start)
        found = distributed.all_gather_rows(torch.from_numpy(mine)).numpy()
        rows = distributed.all_gather_rows(local.cpu())
        order = np.argsort(found, kind="stable")
        where = order[np.searchsorted(found[order], positions)]
        return rows[torch.from_numpy(where)].to(local.device).contiguous()

    def best_row(
        self,
        values: torch.Tensor,
        take: Callable[[np.ndarray], torch.Tensor],
        threshold: float | None = None,
    ) -> tuple[float, int, torch.Tensor]:
        """(value, position, float64 row) of the winner over every rank's rows, in one exchange.

        The winner is the largest value (``threshold=None``) or the first value ≥
        ``threshold``, the lowest position among ties; ``take`` maps local positions to rows.
        """
        if threshold is None:
            hits = torch.argmax(values).reshape(1) if values.numel() else values.new_zeros(0)
        else:
            hits = torch.nonzero(values >= threshold).flatten()[:1]
        local = int(hits[0]) if hits.numel() else None
        if self.size == 1:
            return float(values[local]), local, take(np.asarray([local]))[0].double().clone()
        width = int(take(np.zeros(0, dtype=np.int64)).shape[1])
        mine = torch.full((width + 2,), np.nan, dtype=torch.float64)
        mine[:2] = torch.tensor([-np.inf, float(self.n_rows)], dtype=torch.float64)
        if local is not None:
            mine[0], mine[1] = float(values[local]), float(self.start + local)
            mine[2:] = take(np.asarray([local]))[0].double().cpu()
        gathered = distributed.all_gather(mine)
        if threshold is None:
            gathered = gathered[gathered[:, 0] == gathered[:, 0].max()]
        winner = gathered[int(torch.argmin(gathered[:, 1]))]
        row = winner[2:].clone().to(values.device)
        return float(winner[0]), int(winner[1]), row


def smallest_pairs(values: np.ndarray, positions: np.ndarray, count: int) -> np.ndarray:
    """The positions of the ``count`` smallest (value, position) pairs, in that order."""
    if values.size > count:
        kth = np.partition(values, count - 1)[count - 1]
        keep = np.flatnonzero(values <= kth)
        values, positions = values[keep], positions[keep]
    order = np.lexsort((positions, values))[:count]
    return positions[order]


class PoolRows:
    """This rank's rows of an (N, d) pool, read by chunk or by position.

    The rows come from a :class:`~skmm.inputs.FeatureMatrix` (read lazily, so a memory-map
    or a sketch store is never loaded whole) or from a tensor already holding this rank's
    rows. ``index`` maps local positions to rows of that source (None: consecutive rows
    from ``offset``). ``in_memory`` tells whether reading is cheap enough to keep results.
    """

    def __init__(
        self,
        layout: Layout,
        source: FeatureMatrix | torch.Tensor,
        *,
        offset: int = 0,
        index: np.ndarray | None = None,
    ) -> None:
        self.layout = layout
        self.source = source
        self.offset = offset
        self.index = index

    @classmethod
    def of(cls, features: FeatureMatrix) -> PoolRows:
        """This rank's rows of the whole pool ``features`` (a single process: all rows)."""
        layout = Layout.of(features.n_rows)
        return cls(layout, features, offset=layout.start)

    @classmethod
    def from_tensor(cls, rows: torch.Tensor) -> PoolRows:
        """All rows of an in-memory tensor, as a pool on one rank (no communication)."""
        return cls(Layout.single(int(rows.shape[0])), rows)

    @property
    def n_rows(self) -> int:
        return self.layout.n_rows

    @property
    def n_cols(self) -> int:
        return int(self.source.shape[1])

    @property
    def device(self) -> torch.device:
        return self.source.device

    @property
    def in_memory(self) -> bool:
        """False for streamed sources (memory-mapped or lazily read from disk)."""
        return isinstance(self.source, torch.Tensor) or not self.source.streamed

    def _source_rows(self, rows: np.ndarray) -> torch.Tensor:
        if isinstance(self.source, torch.Tensor):
            return self.source[torch.as_tensor(rows, device=self.source.device)]
        return self.source.take(rows)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Local rows [start, stop)."""
        if self.index is not None:
            return self._source_rows(self.index[start:stop])
        lo, hi = self.offset + start, self.offset + stop
        if isinstance(self.source, torch.Tensor):
            return self.source[lo:hi]
        return self.source.rows(lo, hi)

    def take(self, local: np.ndarray) -> torch.Tensor:
        """The rows at local positions ``local``."""
        local = np.asarray(local, dtype=np.int64)
        rows = self.index[local] if self.index is not None else local + self.offset
        return self._source_rows(rows)

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(local block, local start, rows) for every chunk of this rank's rows, in order."""
        for block, start, stop in self.layout.chunks():
            yield block, start, self.read(start, stop)

    def tensor(self) -> torch.Tensor:
        """All of this rank's rows as one tensor."""
        return self.read(0, self.layout.n_local)

    def restrict(self, positions: np.ndarray) -> PoolRows:
        """The subset of the pool at sorted ``positions`` (e.g. one class), in the same blocks."""
        positions = np.asarray(positions, dtype=np.int64)
        layout = self.layout
        mine = positions[(positions >= layout.start) & (positions < layout.stop)] - layout.start
        rows = self.index[mine] if self.index is not None else mine + self.offset
        return PoolRows(layout.restrict(positions), self.source, index=rows)


class SpilledRows:
    """float64 rows written once to an unnamed temporary file, read back by range or position.

    They take disk (in ``TMPDIR``), not memory. Reads go through ``pread``, never a
    memory-map: the kernel maps whole cached folios (up to megabytes) around each row
    touched through a map, which would bring the file into the process's resident memory.
    The file disappears with the object.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.n_rows = 0
        self._row_bytes = width * 8
        self._file = tempfile.TemporaryFile(prefix="skmm-rows-")

    def append(self, rows: torch.Tensor) -> None:
        """Add rows at the end."""
        self._file.write(rows.detach().to(torch.float64).cpu().numpy().tobytes())
        self.n_rows += int(rows.shape[0])

    def _pread(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(
            self._file.fileno(), (stop - start) * self._row_bytes, start * self._row_bytes
        )
        return np.frombuffer(data, dtype=np.float64).reshape(stop - start, self.width)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop)."""
        self._file.flush()
        if stop <= start:
            return torch.zeros(0, self.width, dtype=torch.float64)
        return torch.from_numpy(self._pread(start, stop).copy())

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The rows at positions ``rows``: one read per run of rows at most 16 apart."""
        self._file.flush()
        rows = np.asarray(rows, dtype=np.int64)
        picked = np.empty((rows.size, self.width))
        if rows.size == 0:
            return torch.from_numpy(picked)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        firsts = np.flatnonzero(np.diff(ordered, prepend=-2 * RUN_GAP) > RUN_GAP)
        lasts = np.append(firsts[1:], rows.size)
        alone = lasts - firsts == 1
        fd, size = self._file.fileno(), self._row_bytes
        singles = b"".join(
            os.pread(fd, size, row * size) for row in ordered[firsts[alone]].tolist()
        )
        picked[order[firsts[alone]]] = np.frombuffer(singles).reshape(-1, self.width)
        for first, last in zip(firsts[~alone].tolist(), lasts[~alone].tolist(), strict=True):
            lo, hi = int(ordered[first]), int(ordered[last - 1]) + 1
            picked[order[first:last]] = self._pread(lo, hi)[ordered[first:last] - lo]
        return torch.from_numpy(picked)
