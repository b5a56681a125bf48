"""``sketch_gradients``: stream per-sample gradients of a model through the block-seeded sketch.

For each batch: per-sample gradients G_b (B × r) of the finetuned parameters, then
G̃_b = G_b Γ with the same :class:`~skmm.sketch.SketchMap` as :func:`skmm.sketch`, so the
streamed sketch of a pool equals ``skmm.sketch`` of its explicit gradient matrix. Memory is
O(B·r + block·m): the N × r matrix never exists. With ``store=``, rows go to an on-disk
:class:`~skmm.store.SketchStore` shard by shard, and a rerun resumes after the last complete
shard.

Under torchrun the shards are dealt round-robin: in round t, rank p sketches shard
s₀ + tP + p (s₀: the first shard not yet stored) and writes it to the shared store; rank 0
lists the round's shards in the manifest. The shards do not depend on P, so the store is
byte-identical to a single process's, and a rerun with another number of ranks resumes or
reads it. Without a store, every rank receives every shard.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..inputs import check_choice, check_positive_int, resolve_device
from ..memory import check_memory
from ..progress import log, progress_bar
from ..sketch import SKETCH_KINDS, TILE_ROWS, SketchMap, _check_seed
from ..store import SketchStore, StoreArray, write_shard
from .batches import Batch, as_batch_source, dataset_length, is_map_style, iterate_batches
from .params import describe_params, resolve_params
from .per_sample import ENGINES, TARGETS, GradientComputer
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
    (:mod:`skmm.gradients.per_sample`). ``store``: a directory to write (or resume) the sketch
    in; the result's features are then read back from it. ``per_sample``: "auto" (one batched
    backward with hooks when every chosen parameter belongs to a supported layer,
    :mod:`skmm.gradients.hooks`, else vmap), "hooks" (an error when unsupported) or "vmap"; both
    give the same gradients to float32 rounding. Rows are processed in micro-batches that start
    at multiples of ``batch_size`` and shards hold a multiple of it (``shard_rows`` is rounded
    up), so the same request gives bit-identical results with or without a store, interrupted or
    not, on one process or several ranks; another ``batch_size`` agrees to float32 rounding.
    ``load=False`` (with a store) returns the features as the store's lazily read
    :class:`~skmm.store.StoreArray`, for pools larger than memory. The chosen parameter names
    and their count are printed to stderr unless ``progress=False``.
    """
    distributed.world()
    sketch_dim = check_positive_int(sketch_dim, "sketch_dim")
    sketch = check_choice(sketch, "sketch", GRADIENT_SKETCH_KINDS)
    target = check_choice(target, "target", TARGETS)
    per_sample = check_choice(per_sample, "per_sample", ENGINES)
    seed = _check_seed(seed)
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_rows = -(-check_positive_int(shard_rows, "shard_rows") // batch_size) * batch_size
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = resolve_device(device, next(model.parameters(), None))
    data = as_batch_source(data, model, batch_size)
    n_rows = dataset_length(data)
    if n_rows is not None:
        check_memory(
            n_rows * sketch_dim * 4,
            f"the ({n_rows}, {sketch_dim}) float32 sketch of the gradients",
            "use a smaller sketch_dim (selecting reads the whole sketch)",
        )
    chosen = resolve_params(model, params)
    if progress is not False and distributed.is_main():
        count = sum(p.numel() for _, p in chosen)
        log(f"gradients of {describe_params(model, [n for n, _ in chosen])} (r = {count:,})")
    was_training = model.training
    try:
        computer = GradientComputer(model, chosen, target, seed, device, per_sample)
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
        plan = _Plan(data, batch_size, shard_rows, identity)
        if store is not None:
            plan.open_store(store)
        try:
            result = _stream(computer, sketch_map, plan, progress)
        finally:
            if plan.writer is not None:
                plan.writer.close()  # a failed run leaves the store free to resume at once
        if store is None:
            return result
        return load_gradient_sketch(store) if load else _lazy_gradient_sketch(store)
    finally:
        model.train(was_training)


class _Plan:
    """Which shards remain, which rank sketches each, and the store they go to (rank 0)."""

    def __init__(
        self, data: object, batch_size: int, shard_rows: int, identity: dict[str, Any]
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shard_rows = shard_rows
        self.identity = identity
        self.rank, self.size = distributed.world()
        self.writer: SketchStore | None = None
        self.store: Path | None = None
        self.first_shard = 0
        self.rows_done = 0
        self.complete = False

    def open_store(self, path: str | os.PathLike[str]) -> None:
        """Create or resume the store on rank 0 (the only rank that touches the manifest)."""

        def open_on_main() -> tuple[int, bool]:
            self.writer = SketchStore.open_for_writing(
                path, self.identity, shard_rows=self.shard_rows
            )
            return self.writer.rows_done, self.writer.complete

        self.rows_done, self.complete = distributed.run_on_main(open_on_main)
        self.store = Path(path)
        self.first_shard = self.rows_done // self.shard_rows

    def my_batches(self) -> Iterator[tuple[int, Batch]]:
        """(global row of its first row, batch) over this rank's shards, in row order.

        A map-style dataset is indexed shard by shard (other ranks' rows are never read);
        other sources are read once in full and the rows of other ranks' shards dropped.
        """
        rows = self.shard_rows
        first = self.first_shard * rows
        if is_map_style(self.data):
            length = dataset_length(self.data)
            if length is not None:
                for shard in itertools.count(self.first_shard + self.rank, self.size):
                    start = shard * rows
                    if start >= length:
                        return
                    row = start
                    for batch in iterate_batches(self.data, self.batch_size, start, start + rows):
                        yield row, batch
                        row += batch.size
                return
        row = first
        for batch in iterate_batches(self.data, self.batch_size, first):
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


def _my_shards(
    computer: GradientComputer, sketch_map: SketchMap | KroneckerSketch, plan: _Plan
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(shard index, sketched rows, integer labels or None) for each of this rank's shards."""
    rows = plan.shard_rows
    current: int | None = None
    features: list[np.ndarray] = []
    labels: list[np.ndarray | None] = []
    for row, batch in plan.my_batches():
        offset = 0
        while offset < batch.size:
            # Micro-batches end at global multiples of batch_size (shards hold a multiple
            # of it), so every run groups rows exactly as an uninterrupted single one.
            stop = min(batch.size, offset + plan.batch_size - row % plan.batch_size)
            if current is not None and row // rows != current:
                yield current, np.concatenate(features), _joined(labels)
                features, labels = [], []
            current = row // rows
            part = batch.rows(offset, stop)
            if isinstance(sketch_map, KroneckerSketch):
                sketched = computer.sketched(part, row, sketch_map).float()
            else:
                sketched = _sketch_rows(sketch_map, computer(part, row), row)
            features.append(sketched.cpu().numpy())
            labels.append(_integer_labels(part.labels))
            row += part.size
            offset = stop
    if current is not None:
        yield current, np.concatenate(features), _joined(labels)


def _joined(labels: list[np.ndarray | None]) -> np.ndarray | None:
    """The labels of a shard's parts, or None unless every part has them."""
    if not labels or any(part is None for part in labels):
        return None
    return np.concatenate(labels)


def _stream(
    computer: GradientComputer,
    sketch_map: SketchMap | KroneckerSketch,
    plan: _Plan,
    progress: bool | None,
) -> GradientSketch | None:
    """Gradients → sketch, shard by shard and round by round, into memory or the store.

    Each round every rank sketches at most one shard and all ranks exchange what they did;
    rank 0 lists the stored shards. Returns the in-memory sketch, or None with a store.
    """
    n_rows = dataset_length(plan.data)
    skip = plan.first_shard * plan.shard_rows
    kept: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    row_counts: list[int] = []
    shards = iter(()) if plan.complete else _my_shards(computer, sketch_map, plan)
    show = progress if plan.rank == 0 else False
    with progress_bar(n_rows, "sketch gradients", show, unit="example") as bar:
        bar.update(skip)
        while not plan.complete:
            item = next(shards, None)
            done: dict[str, Any] | None = None
            if item is not None:
                index, features, labels = item
                if plan.store is None:
                    kept.append(item)
                    done = {"index": index, "rows": int(features.shape[0])}
                else:
                    start = index * plan.shard_rows
                    done = write_shard(plan.store, index, start, features, labels)
            round_done = [entry for entry in distributed.all_gather_object(done) if entry]
            if plan.writer is not None:
                plan.writer.add_shards(sorted(round_done, key=lambda entry: entry["index"]))
            row_counts.extend(entry["rows"] for entry in round_done)
            bar.update(sum(entry["rows"] for entry in round_done))
            if len(round_done) < plan.size:
                break
    total = plan.rows_done if plan.complete else skip + sum(row_counts)
    if total == 0:
        raise ValueError("data yielded no rows")
    if n_rows is not None and not plan.complete and total != n_rows:
        raise ValueError(f"data yielded {total} rows but reports a length of {n_rows}")
    metadata = {**plan.identity, "n_rows": total, "per_sample": computer.engine}
    if plan.store is not None:
        if not plan.complete:
            distributed.run_on_main(lambda: plan.writer.finish(metadata))
        return None
    gathered = sorted(
        (item for part in distributed.all_gather_object(kept) for item in part),
        key=lambda item: item[0],
    )
    features = np.concatenate([item[1] for item in gathered])
    labels = _joined([item[2] for item in gathered])
    return GradientSketch(features, labels, metadata)


def load_gradient_sketch(path: str | os.PathLike[str]) -> GradientSketch:
    """Read a complete store back (checksums verified) as a :class:`GradientSketch`."""
    opened = SketchStore.open(Path(path))
    return GradientSketch(opened.load_features(), opened.labels, dict(opened.metadata))


def _lazy_gradient_sketch(path: str | os.PathLike[str]) -> GradientSketch:
    """A complete store as a :class:`GradientSketch` whose features are read on demand."""
    opened = SketchStore.open(Path(path), verify=False)
    return GradientSketch(opened.features, opened.labels, dict(opened.metadata))


def _sketch_rows(sketch_map: SketchMap, rows: torch.Tensor, start: int) -> torch.Tensor:
    """``rows @ Γ`` exactly as :func:`skmm.sketch` computes rows [start, start + B).

    The dense product is taken in tiles aligned to global row indices (pad the front with
    ``start mod TILE_ROWS`` zero rows), so each row's sketch is the same for every batching.
    """
    lead = start % TILE_ROWS
    if lead == 0 or (sketch_map.kind == "sparse_sign" and rows.device.type == "cpu"):
        return sketch_map.apply(rows).float()
    padded = torch.cat([rows.new_zeros(lead, rows.shape[1]), rows])
    return sketch_map.apply(padded)[lead:].float()


def _integer_labels(labels: torch.Tensor | None) -> np.ndarray | None:
    """Integer class labels as int64, or None for absent or float (regression) targets."""
    if labels is None or labels.is_floating_point() or labels.dim() != 1:
        return None
    return labels.detach().cpu().numpy().astype(np.int64)
