"""The result of a selection: indices, optional weights and diagnostics, with safe file I/O."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import load_array, read_json, sniff_format, write_json, write_npy, write_npz

FORMAT = "skmm.selection"
FORMAT_VERSION = 1


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch values to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    return repr(value)


@dataclass(frozen=True, eq=False)
class Selection:
    """Selected rows of a pool.

    ``indices``: int64, n distinct pool rows (in the method's order: greedy methods list them
    in the order picked). ``weights``: float64, one per index, summing to 1, for methods that
    produce a weighting (SkMM: its moment-matching weights on the chosen rows), else None.
    ``info``: diagnostics and stage timings in seconds (JSON-ready).
    """

    indices: np.ndarray
    weights: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices)
        if indices.ndim != 1 or indices.dtype.kind not in "iu":
            raise ValueError(
                f"indices must be a 1-D integer array, got {indices.dtype} {indices.shape}"
            )
        indices = indices.astype(np.int64)
        if indices.size and indices.min() < 0:
            raise ValueError("indices must be non-negative")
        if np.unique(indices).size != indices.size:
            raise ValueError("indices must be distinct")
        object.__setattr__(self, "indices", indices)
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float64)
            if weights.shape != indices.shape:
                raise ValueError(f"{weights.size} weights for {indices.size} indices")
            object.__setattr__(self, "weights", weights)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __repr__(self) -> str:
        method = self.info.get("method", "?")
        pool = self.info.get("n_pool", "?")
        weighted = "weighted" if self.weights is not None else "unweighted"
        return f"Selection(method={method!r}, n={len(self)}, n_pool={pool}, {weighted})"

    @property
    def n_pool(self) -> int | None:
        """Size of the pool the selection was made from, when known."""
        value = self.info.get("n_pool")
        return int(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the format written by :meth:`save` to .json)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "indices": self.indices.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
            "info": to_jsonable(self.info),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: .json (everything), .npy (indices only) or .npz (all, no pickle)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".json":
            write_json(path, self.to_dict())
        elif suffix == ".npy":
            write_npy(path, self.indices)
        elif suffix == ".npz":
            arrays = {
                "indices": self.indices,
                "info": np.asarray(json.dumps(to_jsonable(self.info))),
            }
            if self.weights is not None:
                arrays["weights"] = self.weights
            write_npz(path, **arrays)
        else:
            raise ValueError(
                f"unsupported output type {suffix!r} for {path}; use .json, .npy or .npz"
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Selection:
        """Read a selection written by :meth:`save` (never unpickles)."""
        path = Path(path)
        kind = sniff_format(path)
        if kind == "npy":
            return cls(np.asarray(load_array(path, mmap=False)))
        if kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                if "indices" not in archive:
                    raise ValueError(f"{path} is not a saved selection: it has no 'indices' array")
                weights = archive["weights"] if "weights" in archive else None
                info = json.loads(str(archive["info"])) if "info" in archive else {}
                return cls(archive["indices"], weights, info)
        payload = read_json(path)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a saved skmm selection (no format {FORMAT!r})")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has selection format version {payload.get('version')}")
        return cls(
            np.asarray(payload["indices"], dtype=np.int64),
            payload.get("weights"),
            payload.get("info") or {},
        )

    def subset(self, data: Any) -> Any:
        """The selected part of ``data`` (in ``indices`` order).

        Hugging Face datasets give ``data.select(indices)``, torch datasets a
        ``torch.utils.data.Subset``, DataFrames ``data.iloc[indices]``, numpy arrays and
        tensors their rows, and other sequences a list.
        """
        try:
            size = len(data)
        except TypeError:
            raise TypeError(
                f"cannot take a subset of {type(data).__name__}: it has no length"
            ) from None
        if self.n_pool is not None and size != self.n_pool:
            raise ValueError(
                f"data has {size} rows but the selection was made from a pool of {self.n_pool}"
            )
        if self.indices.size and self.indices.max() >= size:
            raise ValueError(
                f"index {int(self.indices.max())} is out of range for data of length {size}"
            )
        indices = self.indices
        if hasattr(data, "iloc"):
            return data.iloc[indices]
        if type(data).__module__.split(".")[0] == "datasets" and callable(
            getattr(data, "select", None)
        ):
            return data.select(indices.tolist())
        if isinstance(data, torch.utils.data.Dataset):
            return torch.utils.data.Subset(data, indices.tolist())
        if isinstance(data, np.ndarray):
            return data[indices]
        if isinstance(data, torch.Tensor):
            return data[torch.as_tensor(indices, device=data.device)]
        if hasattr(data, "__getitem__"):
            return [data[int(i)] for i in indices]
        raise TypeError(f"cannot take a subset of {type(data).__name__}")
