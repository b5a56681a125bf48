"""``sketch_gradients``: stream per-sample gradients of a model through the block-seeded sketch.

For each batch: per-sample gradients G_b (B × r) of the finetuned parameters, then
G̃_b = G_b Γ with the same :class:`~skmm.sketch.SketchMap` as :func:`skmm.sketch`, so the
streamed sketch of a pool equals ``skmm.sketch`` of its explicit gradient matrix. Memory is
O(B·r + block·m): the N × r matrix never exists. The sketched rows go to a sink
(:mod:`skmm.gradients.sinks`): memory, or with ``store=`` an on-disk
:class:`~skmm.store.SketchStore`, shard by shard, saved also every minute inside a shard, so
that a rerun resumes where the last run stopped.

Under torchrun the shards are dealt round-robin: in round t, rank p sketches shard
s₀ + tP + p (s₀: the first shard not yet stored); the sink stores it (the protocol is in
:mod:`skmm.gradients.sinks`). The shards do not depend on P, so the store is byte-identical
to a single process's, and a rerun with another number of ranks resumes or reads it.
Without a store, every rank receives every shard.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..inputs import check_choice, check_nonnegative_float, check_positive_int, resolve_device
from ..memory import check_memory
from ..progress import log, progress_bar
from ..sketch import SKETCH_KINDS, SketchMap, _check_seed
from ..store import SketchStore, StoreArray
from .batches import (
    Batch,
    as_batch_source,
    dataset_length,
    is_map_style,
    iterate_batches,
    join_batches,
)
from .params import describe_params, resolve_params
from .per_sample import ENGINES, TARGETS, GradientComputer
from .sinks import MemorySink, Piece, StoreSink
from .structured import KroneckerSketch

GRADIENT_SKETCH_KINDS = (*SKETCH_KINDS, "kronecker")


@dataclass
class GradientSketch:
    """Sketched per-sample gradients: ``features`` (N, m) float32, ``labels`` (N,) or None.

    ``features`` is a :class:`~skmm.store.StoreArray` (read shard by shard) when the sketch
    was written to a store with ``load=False``.
    """

    features: np.ndarray | StoreArray
    labels: np.ndarray | None
    metadata: dict[str, Any] = field(default_factory=dict)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's class, parameter and buffer names, shapes, dtypes and values."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def sketch_gradients(
    model: nn.Module,
    data: object,
    *,
    params: str | Sequence[str] | None = "trainable",
    sketch_dim: int = 256,
    sketch: str = "sparse_sign",
    seed: int = 0,
    target: str = "jacobian",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    store: str | os.PathLike[str] | None = None,
    shard_rows: int = 4096,
    flush_seconds: float = 60.0,
    per_sample: str = "auto",
    progress: bool | None = None,
    load: bool = True,
) -> GradientSketch:
    """Sketched per-sample gradients G̃ = GΓ (N × m) of ``params`` of ``model`` over ``data``.

    ``data``: a torch Dataset, a Hugging Face ``datasets.Dataset`` (its label column the labels,
    the numeric columns the model takes its inputs), a DataLoader (not shuffling) or an iterable
    of batches (:mod:`skmm.gradients.batches`). ``sketch``: "sparse_sign" or "gaussian" (the
    maps of :func:`skmm.sketch`), or "kronecker" (:mod:`skmm.gradients.structured`: per-layer
    Kronecker maps that sketch Linear and Conv2d weight gradients without forming them; other
    features for the same gradients). ``target``: "jacobian", "loss" or "loss_random"
    (:mod:`skmm.gradients.per_sample`). ``store``: a directory to write (or resume) the
    sketch in; the result's features are then read back from it. Whole shards of
    ``shard_rows`` rows are saved as they are done, and the rows of an unfinished shard every
    ``flush_seconds`` (a partial shard that the whole one replaces: the files stay the same),
    so an interrupted run loses at most that long of work; a rerun says on stderr (unless
    ``progress=False``) how many rows were stored and where it resumes, or that the store is
    already complete. ``per_sample``: "auto"
    (one batched backward with hooks when every chosen parameter belongs to a supported
    layer, :mod:`skmm.gradients.hooks`, else vmap), "hooks" (an error when unsupported) or
    "vmap"; both give the same gradients to float32 rounding. Rows are processed in
    micro-batches that start at multiples of ``batch_size`` and shards hold a multiple of it
    (``shard_rows`` is rounded up), so the same request gives bit-identical results with or
    without a store, interrupted or not, on one process or several ranks; another
    ``batch_size`` agrees to float32 rounding. ``load=False`` (with a store) returns the
    features as the store's lazily read :class:`~skmm.store.StoreArray`, for pools larger
    than memory. The chosen parameter names and their count are printed to stderr unless
    ``progress=False``.
    """
    distributed.world()
    sketch_dim = check_positive_int(sketch_dim, "sketch_dim")
    sketch = check_choice(sketch, "sketch", GRADIENT_SKETCH_KINDS)
    target = check_choice(target, "target", TARGETS)
    per_sample = check_choice(per_sample, "per_sample", ENGINES)
    seed = _check_seed(seed)
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_rows = -(-check_positive_int(shard_rows, "shard_rows") // batch_size) * batch_size
    flush_seconds = check_nonnegative_float(flush_seconds, "flush_seconds")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = resolve_device(device, next(model.parameters(), None))
    data = as_batch_source(data, model, batch_size)
    n_rows = dataset_length(data)
    chosen = resolve_params(model, params)
    if progress is not False and distributed.is_main():
        count = sum(p.numel() for _, p in chosen)
        log(f"gradients of {describe_params(model, [n for n, _ in chosen])} (r = {count:,})")
    was_training = model.training
    try:
        computer = GradientComputer(model, chosen, target, seed, device, per_sample)
        blocks = computer.n_blocks(_first_row(data)) if computer.blocked else 1
        if n_rows is not None:
            check_memory(
                n_rows * sketch_dim * blocks * 4,
                f"the ({n_rows}, {sketch_dim * blocks}) float32 sketch of the gradients",
                "use a smaller sketch_dim (selecting reads the whole sketch)",
            )
        if sketch == "kronecker":
            shapes = {name: computer.params[name].shape for name in computer.names}
            sketch_map: SketchMap | KroneckerSketch = KroneckerSketch(
                shapes, sketch_dim, seed, device
            )
        else:
            sketch_map = SketchMap(computer.n_params, sketch_dim, sketch, seed, device=device)
        identity = {
            "model_fingerprint": model_fingerprint(model),
            "model_class": type(model).__qualname__,
            "params": computer.names,
            "n_params": computer.n_params,
            "seed": seed,
            "sketch": sketch,
            "sketch_dim": sketch_dim,
            "target": target,
            "dtype": "float32",
        }
        if computer.blocked:
            identity["blocks"] = blocks
        sink: MemorySink | StoreSink = (
            MemorySink(shard_rows, batch_size)
            if store is None
            else StoreSink(store, identity, shard_rows, batch_size, flush_seconds)
        )
        try:
            if store is not None and progress is not False and distributed.is_main():
                _say_where_it_resumes(Path(store), sink)
            plan = _Plan(data, batch_size, shard_rows, sink.first_shard, sink.stored_rows)
            metadata = _stream(computer, sketch_map, plan, sink, identity, progress)
        finally:
            sink.close()  # a failed run leaves the store free to resume at once
        if isinstance(sink, MemorySink):
            return GradientSketch(*sink.gather(), metadata)
        return load_gradient_sketch(store) if load else _lazy_gradient_sketch(store)
    finally:
        model.train(was_training)


def _first_row(data: object) -> Batch:
    """The first example of ``data``, read without using up a source that is read again."""
    if not is_map_style(data) and iter(data) is data:  # type: ignore[call-overload]
        raise TypeError(
            "target='jacobian_blocks' reads the first example to count the model's outputs, "
            "and data is a one-shot iterator; pass a dataset, a DataLoader or a list of batches"
        )
    for batch in iterate_batches(data, 1, 0, 1):
        return batch.rows(0, 1)
    raise ValueError("data yielded no rows")


class _Plan:
    """Which rows remain and which rank sketches each shard.

    :func:`_my_pieces` yields one aligned micro-batch (``batch_size`` rows) at a time, so that
    a sink can save an unfinished shard as it grows; ``rows_per_shard`` is the store's shard,
    the unit dealt to the ranks.
    """

    def __init__(
        self, data: object, batch_size: int, rows_per_shard: int, first_shard: int, resume: int
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.rows_per_shard = rows_per_shard
        self.rank, self.size = distributed.world()
        self.first_shard = first_shard
        self.resume = resume  # the first row not stored yet (in shard first_shard)

    def my_batches(self) -> Iterator[tuple[int, Batch]]:
        """(global row of its first row, batch) over this rank's shards, in row order.

        A map-style dataset is indexed shard by shard (other ranks' rows are never read);
        other sources are read once in full and the rows of other ranks' shards dropped.
        """
        rows = self.rows_per_shard
        if is_map_style(self.data):
            length = dataset_length(self.data)
            if length is not None:
                for shard in itertools.count(self.first_shard + self.rank, self.size):
                    start = max(shard * rows, self.resume)
                    if start >= length:
                        return
                    row = start
                    stop = shard * rows + rows
                    for batch in iterate_batches(self.data, self.batch_size, start, stop):
                        yield row, batch
                        row += batch.size
                return
        row = self.resume
        for batch in iterate_batches(self.data, self.batch_size, row):
            offset = 0
            while offset < batch.size:
                shard_end = (row // rows + 1) * rows
                stop = min(batch.size, offset + shard_end - row)
                if (row // rows - self.first_shard) % self.size == self.rank:
                    yield (
                        row,
                        batch if (offset, stop) == (0, batch.size) else batch.rows(offset, stop),
                    )
                row += stop - offset
                offset = stop


def _my_pieces(
    computer: GradientComputer, sketch_map: SketchMap | KroneckerSketch, plan: _Plan
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(piece index, sketched rows, integer labels or None) for each aligned micro-batch of
    this rank's shards; piece k holds rows [k·batch_size, (k+1)·batch_size)."""
    for row, part in _micro_batches(plan.my_batches(), plan.batch_size):
        if isinstance(sketch_map, KroneckerSketch):
            sketched = computer.sketched(part, row, sketch_map).float()
        else:  # K gradient rows per example (jacobian_blocks): each sketched, then side by side
            sketched = sketch_map.apply(computer(part, row)).float().reshape(part.size, -1)
        yield row // plan.batch_size, sketched.cpu().numpy(), _integer_labels(part.labels)


def _micro_batches(pieces: Iterator[tuple[int, Batch]], size: int) -> Iterator[tuple[int, Batch]]:
    """(first row, batch) for the rows [k·size, (k+1)·size) of ``pieces``, regrouped.

    Pieces (global row of their first row, batch) come in row order, however the data was
    batched; rows are cut and joined so that every micro-batch is a whole aligned group of
    ``size`` rows (the last one of the data may be shorter). The model then sees the same
    groups on every run, interrupted or not, which is what makes its per-sample gradients
    bit-identical: a batched kernel may round a row differently with another batch around it.
    """
    pending: list[Batch] = []
    first = end = 0
    for row, batch in pieces:
        offset = 0
        while offset < batch.size:
            at = row + offset
            if pending and at != end:  # a gap (the next shard of this rank): flush
                yield first, join_batches(pending)
                pending = []
            if not pending:
                first = end = at
            stop = min(batch.size, offset + (at // size + 1) * size - at)
            pending.append(batch if (offset, stop) == (0, batch.size) else batch.rows(offset, stop))
            end += stop - offset
            offset = stop
            if end % size == 0:
                yield first, join_batches(pending)
                pending = []
    if pending:
        yield first, join_batches(pending)


def _stream(
    computer: GradientComputer,
    sketch_map: SketchMap | KroneckerSketch,
    plan: _Plan,
    sink: MemorySink | StoreSink,
    identity: dict[str, Any],
    progress: bool | None,
) -> dict[str, Any]:
    """Gradients → sketch, piece by piece and round by round, into ``sink``; the metadata.

    Each round every rank finishes at most one shard and all ranks exchange what they did.
    """
    n_rows = dataset_length(plan.data)
    pieces = iter(()) if sink.complete else _my_pieces(computer, sketch_map, plan)
    total = sink.stored_rows if sink.complete else plan.first_shard * plan.rows_per_shard
    show = progress if plan.rank == 0 else False
    with progress_bar(n_rows, "sketch gradients", show, unit="example") as bar:
        bar.update(total)
        counted = _counted(pieces, bar)
        while not sink.complete:
            mine = sink.next_shard(counted)
            round_done = sink.exchange(mine)
            rows = sum(entry["rows"] for entry in round_done)
            total += rows
            bar.update(rows - (mine["rows"] if mine else 0))  # the other ranks' rows
            if len(round_done) < plan.size:
                break
    if total == 0:
        raise ValueError("data yielded no rows")
    if n_rows is not None and not sink.complete and total != n_rows:
        raise ValueError(f"data yielded {total} rows but reports a length of {n_rows}")
    metadata = {**identity, "n_rows": total, "per_sample": computer.engine}
    sink.finish(metadata)
    return metadata


def _counted(pieces: Iterator[Piece], bar: Any) -> Iterator[Piece]:
    """The pieces, each counted on the bar as it is sketched (not a shard at a time, which
    can be minutes apart)."""
    for piece in pieces:
        bar.update(int(piece[1].shape[0]))
        yield piece


def _say_where_it_resumes(path: Path, sink: StoreSink) -> None:
    """One line on stderr when a store already holds rows: how many, and what happens now."""
    if sink.complete:
        sys.stderr.write(
            f"skmm: store {path} is already complete ({sink.stored_rows} rows): "
            "nothing to sketch, reading it\n"
        )
    elif sink.stored_rows:
        partial = sink.stored_rows - sink.first_shard * sink.shard_rows
        sys.stderr.write(
            f"skmm: store {path} already holds {sink.stored_rows} rows ({sink.first_shard} "
            f"whole shard(s) of {sink.shard_rows}{f', {partial} of the next' if partial else ''}"
            f"); resuming at row {sink.stored_rows}\n"
        )


def load_gradient_sketch(path: str | os.PathLike[str]) -> GradientSketch:
    """Read a complete store back (checksums verified) as a :class:`GradientSketch`."""
    opened = SketchStore.open(Path(path))
    return GradientSketch(opened.load_features(), opened.labels, dict(opened.metadata))


def _lazy_gradient_sketch(path: str | os.PathLike[str]) -> GradientSketch:
    """A complete store as a :class:`GradientSketch` whose features are read on demand."""
    opened = SketchStore.open(Path(path), verify=False)
    return GradientSketch(opened.features, opened.labels, dict(opened.metadata))


def _integer_labels(labels: torch.Tensor | None) -> np.ndarray | None:
    """Integer class labels as int64, or None for absent or float (regression) targets."""
    if labels is None or labels.is_floating_point() or labels.dim() != 1:
        return None
    return labels.detach().cpu().numpy().astype(np.int64)
