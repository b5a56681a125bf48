"""``sketch_gradients``: stream per-sample gradients of a model through the block-seeded sketch.

For each batch: per-sample gradients G_b (B × r) of the finetuned parameters, then
G̃_b = G_b Γ with the same :class:`~skmm.sketch.SketchMap` as :func:`skmm.sketch`, so the
streamed sketch of a pool equals ``skmm.sketch`` of its explicit gradient matrix. Memory is
O(B·r + block·m): the N × r matrix never exists. With ``store=``, rows go to an on-disk
:class:`~skmm.store.SketchStore` shard by shard, and a rerun resumes after the last complete
shard.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..inputs import check_choice, check_memory, check_positive_int, resolve_device
from ..progress import progress_bar
from ..sketch import SKETCH_KINDS, TILE_ROWS, SketchMap, _check_seed
from ..store import SketchStore
from .batches import dataset_length, iterate_batches
from .params import resolve_params
from .per_sample import ENGINES, TARGETS, GradientComputer
from .structured import KroneckerSketch

GRADIENT_SKETCH_KINDS = (*SKETCH_KINDS, "kronecker")


@dataclass
class GradientSketch:
    """Sketched per-sample gradients: ``features`` (N, m) float32, ``labels`` (N,) or None."""

    features: np.ndarray
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
) -> GradientSketch:
    """Sketched per-sample gradients G̃ = GΓ (N × m) of ``params`` of ``model`` over ``data``.

    ``data``: a torch Dataset, a DataLoader (not shuffling) or an iterable of batches
    (:mod:`skmm.gradients.batches`). ``sketch``: "sparse_sign" or "gaussian" (the maps of
    :func:`skmm.sketch`), or "kronecker" (:mod:`skmm.gradients.structured`: per-layer
    Kronecker maps that sketch Linear and Conv2d weight gradients without forming them; other
    features for the same gradients). ``target``: "jacobian", "loss" or "loss_random"
    (:mod:`skmm.gradients.per_sample`). ``store``: a directory to write (or resume) the
    sketch in; the result's features are then read back from it. ``per_sample``: "auto"
    (one batched backward with hooks when every chosen parameter belongs to a supported
    layer, :mod:`skmm.gradients.hooks`, else vmap), "hooks" (an error when unsupported) or
    "vmap"; both give the same gradients to float32 rounding. Rows are processed in
    micro-batches that start at multiples of ``batch_size`` and shards hold a multiple of it
    (``shard_rows`` is rounded up), so the same request gives bit-identical results with or
    without a store, interrupted or not; another ``batch_size`` agrees to float32 rounding.
    """
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
    n_rows = dataset_length(data)
    if n_rows is not None:
        check_memory(
            n_rows * sketch_dim * 4,
            f"the ({n_rows}, {sketch_dim}) float32 sketch of the gradients",
            "use a smaller sketch_dim (selecting reads the whole sketch)",
        )
    chosen = resolve_params(model, params)
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
        writer = (
            None
            if store is None
            else SketchStore.open_for_writing(store, identity, shard_rows=shard_rows)
        )
        return _stream(computer, sketch_map, data, batch_size, identity, writer, progress)
    finally:
        model.train(was_training)


def _stream(
    computer: GradientComputer,
    sketch_map: SketchMap | KroneckerSketch,
    data: object,
    batch_size: int,
    identity: dict[str, Any],
    writer: SketchStore | None,
    progress: bool | None,
) -> GradientSketch:
    """Gradients → sketch, micro-batch by micro-batch, into memory or the store."""
    n_rows = dataset_length(data)
    features: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    skip = 0 if writer is None else writer.rows_done
    done = writer is not None and writer.complete
    row = skip
    with progress_bar(n_rows, "sketch gradients", progress, unit="example") as bar:
        bar.update(skip)
        for batch in [] if done else iterate_batches(data, batch_size, skip):
            offset = 0
            while offset < batch.size:
                # Micro-batches end at global multiples of batch_size (shards hold a multiple
                # of it), so a resumed run groups rows exactly as an uninterrupted one.
                stop = min(batch.size, offset + batch_size - row % batch_size)
                part = batch.rows(offset, stop)
                if isinstance(sketch_map, KroneckerSketch):
                    sketched = computer.sketched(part, row, sketch_map).float().cpu().numpy()
                else:
                    gradients = computer(part, row)
                    sketched = _sketch_rows(sketch_map, gradients, row).cpu().numpy()
                part_labels = _integer_labels(part.labels)
                if writer is None:
                    features.append(sketched)
                    if part_labels is not None:
                        labels.append(part_labels)
                else:
                    writer.append(sketched, part_labels)
                row += part.size
                offset = stop
                bar.update(part.size)
    if row == 0:
        raise ValueError("data yielded no rows")
    if n_rows is not None and not done and row != n_rows:
        raise ValueError(f"data yielded {row} rows but reports a length of {n_rows}")
    metadata = {**identity, "n_rows": row, "per_sample": computer.engine}
    if writer is None:
        stacked = np.concatenate(features)
        all_labels = np.concatenate(labels) if labels and len(labels) == len(features) else None
        return GradientSketch(stacked, all_labels, metadata)
    if not done:
        writer.finish(metadata)
    return load_gradient_sketch(writer.path)


def load_gradient_sketch(path: str | os.PathLike[str]) -> GradientSketch:
    """Read a complete store back (checksums verified) as a :class:`GradientSketch`."""
    opened = SketchStore.open(Path(path))
    return GradientSketch(opened.features(), opened.labels(), dict(opened.metadata))


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
