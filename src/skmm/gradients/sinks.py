"""Where :func:`~skmm.gradients.sketch_gradients` puts its rows: memory or a store, on P ranks.

The gradient stream gives each rank its sketched rows in pieces (one micro-batch each), in row
order, shard by shard: shard s goes to rank (s − s₀) mod P, s₀ the first shard not yet stored.
A sink puts the pieces of this rank's current shard together and stores the shard once it is
whole; once per round (every rank finishing at most one shard) the ranks exchange the entries
of what they finished (:meth:`Sink.exchange`). The stream stops after a round in which some
rank had nothing left.

- :class:`MemorySink` keeps its shards; at the end every rank receives all of them.
- :class:`StoreSink` is the sharded-store protocol, all of it: every rank writes its whole
  shards itself (:func:`~skmm.store.write_shard`); rank 0 alone holds the writer and touches
  the manifest: after each round it lists the round's shards in order
  (:meth:`~skmm.store.SketchStore.add_shards`) and at the end the short last one, marking the
  store complete (:meth:`~skmm.store.SketchStore.finish`). Rank 0 also saves by time: once
  ``flush_seconds`` have passed since it last wrote, the rows of its current shard so far go
  to the store as its partial shard (:meth:`~skmm.store.SketchStore.set_partial`), which the
  whole shard replaces when it is done. Rank 0's current shard is always the first shard not
  yet listed, so a partial shard is never needed on another rank, and no extra collective
  is taken. A rerun resumes after the listed shards and the partial one; the partial rows
  are read back into rank 0's first shard, so that shard is written whole as before.

Shard boundaries are fixed by ``shard_rows`` and pieces are whole micro-batches, so the files
written never depend on when a run was interrupted, on how often it saved, or on P.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import distributed
from ..store import SketchStore, write_shard

Piece = tuple[int, np.ndarray, np.ndarray | None]
"""(index of the piece, its sketched rows, their integer labels or None): rows from
index × piece_rows on."""


class Sink:
    """Puts pieces together into this rank's shards and exchanges them between ranks."""

    def __init__(self, shard_rows: int, piece_rows: int) -> None:
        if shard_rows % piece_rows:
            raise ValueError(f"shard_rows {shard_rows} is not a multiple of {piece_rows}")
        self.shard_rows = shard_rows
        self.piece_rows = piece_rows
        self.complete = False
        self.first_shard = 0  # the first shard not stored before this run
        self.stored_rows = 0  # rows stored before this run (whole shards and a partial one)
        self._shard: int | None = None
        self._features: list[np.ndarray] = []
        self._labels: list[np.ndarray | None] = []
        self._rows = 0

    def next_shard(self, pieces: Iterator[Piece]) -> dict[str, Any] | None:
        """Take pieces until this rank's current shard is whole, or the pieces end (the short
        last shard); store the shard and return its entry (None: this rank has no rows left)."""
        for index, features, labels in pieces:
            shard = index * self.piece_rows // self.shard_rows
            if self._shard is None:
                self._shard = shard
            elif shard != self._shard:
                raise RuntimeError(f"piece {index} skips the rest of shard {self._shard}")
            self._features.append(features)
            self._labels.append(labels)
            self._rows += int(features.shape[0])
            if self._rows == self.shard_rows:
                return self._close_shard()
            self._piece_added()
        return self._close_shard() if self._rows else None

    def exchange(self, done: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Every rank's entry of this round, in shard order (ranks with none left out)."""
        entries = [entry for entry in distributed.all_gather_object(done) if entry]
        entries.sort(key=lambda entry: entry["index"])
        self._listed(entries)
        return entries

    def _close_shard(self) -> dict[str, Any]:
        index, features, labels = self._shard, *self._joined()
        assert index is not None
        self._shard, self._features, self._labels, self._rows = None, [], [], 0
        return self._store(index, features, labels)

    def _joined(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The current shard's rows so far and their labels (None unless every piece has them)."""
        features = self._features[0] if len(self._features) == 1 else np.concatenate(self._features)
        labels = None
        if all(part is not None for part in self._labels):
            labels = np.concatenate(self._labels)  # type: ignore[arg-type]
        return features, labels

    def _store(self, index: int, features: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        raise NotImplementedError

    def _piece_added(self) -> None:
        """Called after each piece that leaves the current shard unfinished."""

    def _listed(self, entries: list[dict[str, Any]]) -> None:
        """Called with every round's entries, on every rank."""

    def finish(self, metadata: dict[str, Any]) -> None:
        """Called once the stream has ended, on every rank."""

    def close(self) -> None:
        """Let go of what the sink holds (a store's writer lock); safe to call twice."""


class MemorySink(Sink):
    """Keeps the shards in memory; :meth:`gather` gives every rank the whole sketch."""

    def __init__(self, shard_rows: int, piece_rows: int) -> None:
        super().__init__(shard_rows, piece_rows)
        self._kept: list[tuple[int, np.ndarray, np.ndarray | None]] = []

    def _store(self, index: int, features: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        self._kept.append((index, features, labels))
        return {"index": index, "rows": int(features.shape[0])}

    def gather(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every rank's shards in order: the (N, m) rows and their labels (or None)."""
        shards = sorted(
            (shard for part in distributed.all_gather_object(self._kept) for shard in part),
            key=lambda shard: shard[0],
        )
        features = np.concatenate([shard[1] for shard in shards])
        labels = None
        if all(shard[2] is not None for shard in shards):
            labels = np.concatenate([shard[2] for shard in shards])  # type: ignore[misc]
        return features, labels


class StoreSink(Sink):
    """The sharded-store protocol (see the module docstring): shards, manifest, partial rows.

    Opening creates the store or resumes it (on rank 0, which keeps the writer; every rank
    learns ``complete``, ``first_shard`` and ``stored_rows``).
    """

    def __init__(
        self,
        path: str | Path,
        identity: dict[str, Any],
        shard_rows: int,
        piece_rows: int,
        flush_seconds: float,
    ) -> None:
        super().__init__(shard_rows, piece_rows)
        self.path = Path(path)
        self.flush_seconds = flush_seconds
        self._writer: SketchStore | None = None

        def open_on_main() -> tuple[int, int, bool]:
            self._writer = SketchStore.open_for_writing(path, identity, shard_rows=shard_rows)
            return self._writer.rows_done, self._writer.partial_rows, self._writer.complete

        whole, partial, self.complete = distributed.run_on_main(open_on_main)
        self.first_shard = whole // shard_rows
        self.stored_rows = whole + partial
        if self._writer is not None and partial:  # rank 0 continues the partial shard
            features, labels = self._writer.read_partial()
            self._shard, self._features, self._labels = self.first_shard, [features], [labels]
            self._rows = partial
        self._saved_at = time.monotonic()

    def _store(self, index: int, features: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
        entry = write_shard(self.path, index, index * self.shard_rows, features, labels)
        self._saved_at = time.monotonic()
        return entry

    def _piece_added(self) -> None:
        if self._writer is None or time.monotonic() - self._saved_at < self.flush_seconds:
            return
        features, labels = self._joined()
        self._features, self._labels = [features], [labels]
        assert self._shard is not None
        start = self._shard * self.shard_rows
        self._writer.set_partial(write_shard(self.path, self._shard, start, features, labels))
        self._saved_at = time.monotonic()

    def _listed(self, entries: list[dict[str, Any]]) -> None:
        if self._writer is not None:
            self._writer.add_shards(entries)

    def finish(self, metadata: dict[str, Any]) -> None:
        """Rank 0 lists the short last shard and marks the store complete (every rank waits)."""
        if not self.complete:
            distributed.run_on_main(lambda: self._writer.finish(metadata))  # type: ignore[union-attr]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
