"""What a user may hand ``skmm.select`` besides a matrix: a path, a store or a gradient sketch.

:func:`open_features` turns a path to an array file (.npy memory-mapped, .npz — dense, or
sparse as ``scipy.sparse.save_npz`` writes it — .safetensors)
or to a ``skmm sketch`` store, a :class:`~skmm.store.SketchStore`, or the
:class:`~skmm.gradients.GradientSketch` of ``sketch_gradients`` into the matrix it stands
for and the labels it carries. The library's ``select``/``fit`` and the CLI share it; the
validation in :mod:`skmm.inputs` then sees only arrays, tensors and lazy arrays.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from .inputs import is_streamed
from .io import load_features
from .sparse import is_sparse
from .store import SketchStore, is_store


def open_features(source: object, key: str | None = None) -> tuple[object, np.ndarray | None]:
    """The (N, r) matrix ``source`` stands for, and the labels it carries (or None).

    A path names a ``skmm sketch`` store (its rows read lazily, each shard's checksum checked
    on first read) or an array file (.npy memory-mapped, .npz, .safetensors; ``key`` names
    the array; an .npz of ``scipy.sparse.save_npz`` gives its sparse matrix); a
    :class:`~skmm.store.SketchStore` or the :class:`~skmm.gradients.GradientSketch` that
    ``sketch_gradients`` returns gives its features and labels; anything else is returned as
    it is, without labels.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)) or is_streamed(source) or is_sparse(source):
        return _no_key(source, key), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if is_store(path):
            _no_key(path, key)
            source = SketchStore.open(path, verify=False)
        elif path.is_dir():
            raise ValueError(
                f"{path} is a directory, not an array file or a sketch store (it holds no "
                "manifest.json); "
                "pass a store written by `skmm sketch` / sketch_gradients(store=...), or an "
                "array file (.npy, .npz, .safetensors)"
            )
        else:
            return load_features(path, key), None
    if isinstance(source, SketchStore):
        return _no_key(source.features, key), source.labels
    sketching = sys.modules.get("skmm.gradients.sketching")
    if sketching is not None and isinstance(source, sketching.GradientSketch):
        return _no_key(source.features, key), source.labels
    return _no_key(source, key), None


SKETCH_IDENTITY = (
    "model_fingerprint",
    "params",
    "n_params",
    "target",
    "sketch",
    "sketch_dim",
    "seed",
)
"""What a pool's and a target's gradient sketches must share to be comparable: the model,
its parameters, what was differentiated, and the map."""


def sketch_identity(source: object) -> dict[str, object] | None:
    """The :data:`SKETCH_IDENTITY` of a store (or its path) or a gradient sketch, else None."""
    metadata = None
    if isinstance(source, (str, os.PathLike)) and is_store(Path(source)):
        source = SketchStore.open(Path(source), verify=False)
    if isinstance(source, SketchStore):
        metadata = source.metadata
    sketching = sys.modules.get("skmm.gradients.sketching")
    if sketching is not None and isinstance(source, sketching.GradientSketch):
        metadata = source.metadata
    if not metadata:
        return None
    return {name: metadata.get(name) for name in SKETCH_IDENTITY}


def source_blocks(source: object) -> int | None:
    """K for a store (or its path) or gradient sketch of ``target="jacobian_blocks"``
    gradients (each row K sketches side by side), 1 for another one, None for anything else."""
    metadata = None
    if isinstance(source, (str, os.PathLike)) and is_store(Path(source)):
        source = SketchStore.open(Path(source), verify=False)
    if isinstance(source, SketchStore):
        return source.blocks
    sketching = sys.modules.get("skmm.gradients.sketching")
    if sketching is not None and isinstance(source, sketching.GradientSketch):
        metadata = source.metadata
    if metadata is None:
        return None
    return int(metadata.get("blocks", 1))


def check_same_sketch(pool: object, target: object) -> None:
    """Refuse a target whose gradient sketch differs from the pool's in model, parameters,
    gradient target or map (both must carry their identity: stores, gradient sketches)."""
    mine, theirs = sketch_identity(pool), sketch_identity(target)
    if mine is None or theirs is None:
        return
    differ = [name for name in SKETCH_IDENTITY if mine[name] != theirs[name]]
    if differ:
        shown = "; ".join(
            f"{name}: pool {_short(mine[name])}, target {_short(theirs[name])}" for name in differ
        )
        raise ValueError(
            "the target's gradient sketch does not match the pool's, so their rows are not "
            f"comparable ({shown}); sketch both with the same model, params, target, sketch, "
            "sketch_dim and seed"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _no_key(source: object, key: str | None) -> object:
    """``source``, or an error when a key was given for something that holds one array."""
    if key is not None:
        what = source if isinstance(source, Path) else type(source).__name__
        raise ValueError(
            f"key {key!r} names an array inside an .npz or .safetensors file; {what} holds "
            "one matrix"
        )
    return source
