"""Input checking: turn what users pass into validated, chunk-readable matrices.

Every public entry point funnels its arguments through here, so a bad input gets one clear
``TypeError``/``ValueError`` naming the problem instead of a traceback from deep in numpy or
torch. Matrices are never copied whole: :class:`FeatureMatrix` reads row chunks on demand,
which keeps memory-mapped pools larger than RAM usable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .sparse import SparseRows, is_sparse, to_csr

DEFAULT_CHUNK_BYTES = 256 * 2**20
SMALLEST_SCALE = 1e-12
"""Inputs whose largest absolute value is below this (but not zero) are refused: the probe's
standardization treats such columns as constant and float32 squared distances underflow."""


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def resolve_device(device: str | torch.device | None, like: object = None) -> torch.device:
    """The compute device: ``device`` if given, else that of a torch ``like``, else the CPU."""
    if device is None:
        if isinstance(like, torch.Tensor):
            return like.device
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if resolved.type == "cuda" and resolved.index is not None:
        if resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return resolved


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools, floats and strings are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_budget(n: object, n_pool: int) -> int:
    """The selection size: an int with 1 <= n <= n_pool."""
    n = check_positive_int(n, "n")
    if n > n_pool:
        raise ValueError(f"n = {n} exceeds the pool size N = {n_pool}")
    return n


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else an error listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value


def check_positive_float(value: object, name: str) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_nonnegative_float(value: object, name: str) -> float:
    """``value`` as a finite float >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _numpy_dtype_problem(dtype: np.dtype) -> str | None:
    if dtype.kind in "fiu":
        return None
    if dtype.kind == "b":
        return "boolean"
    if dtype.kind == "c":
        return "complex"
    if dtype.kind == "O":
        return "object (Python objects)"
    return f"non-numeric ({dtype})"


@runtime_checkable
class LazyArray(Protocol):
    """An (N, r) matrix on disk, read only where asked (:class:`skmm.store.StoreArray` is one).

    ``array[a:b]`` (contiguous rows) and ``array[rows]`` (an int64 index array) return numpy
    rows; ``streamed`` is True. Selection validates and streams any object with these
    members, so a new on-disk backend needs no change to validation or to :mod:`skmm.rows`.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    ndim: int
    streamed: bool

    def __getitem__(self, key: Any) -> np.ndarray: ...


def is_streamed(source: object) -> bool:
    """True for a memory-mapped array or a :class:`LazyArray`: rows are read from disk on
    demand, never held whole."""
    return isinstance(source, np.memmap) or (
        isinstance(source, LazyArray) and source.streamed is True
    )


_TORCH_REAL = {
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
}


@dataclass
class FeatureMatrix:
    """A validated (N, r) matrix of features or gradients, read in row chunks.

    ``source`` stays as given (numpy array, memmap, :class:`LazyArray` or torch tensor), or
    is the :class:`~skmm.sparse.SparseRows` of a sparse input (rows densified as read);
    :meth:`rows` returns torch tensors in ``compute_dtype`` on ``device``. ``streamed``
    sources (:func:`is_streamed`) are read from disk as asked, and their finiteness is
    checked chunk by chunk as rows are read; the others were checked whole up front.
    """

    source: np.ndarray | torch.Tensor | LazyArray
    name: str
    device: torch.device
    compute_dtype: torch.dtype
    streamed: bool

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.source.shape[0]), int(self.source.shape[1])

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the full matrix in the compute dtype."""
        return self.n_rows * self.n_cols * torch.empty((), dtype=self.compute_dtype).element_size()

    def default_chunk_rows(self, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        """Rows per chunk so that one chunk takes about ``budget_bytes``."""
        row_bytes = max(1, self.n_cols * torch.empty((), dtype=self.compute_dtype).element_size())
        return max(1, min(self.n_rows, budget_bytes // row_bytes))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` in the compute dtype on the compute device.

        The tensor may share memory with the caller's array: selectors must not write to it.
        """
        block = self.source[start:stop]
        if isinstance(block, np.ndarray):
            if not block.dtype.isnative:
                block = block.astype(block.dtype.newbyteorder("="))
            elif not block.flags.writeable:
                block = np.array(block, copy=True)
            block = torch.from_numpy(block)
        block = block.to(device=self.device, dtype=self.compute_dtype)
        if self.streamed:
            _check_finite_tensor(block, self.name, offset=start)
        return block

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The rows at indices ``rows``, like :meth:`rows` (a memmap or store reads only those)."""
        if isinstance(self.source, torch.Tensor):
            block = self.source[torch.as_tensor(rows, device=self.source.device)]
        else:
            array = self.source[np.asarray(rows, dtype=np.int64)]
            if not array.dtype.isnative:
                array = array.astype(array.dtype.newbyteorder("="))
            block = torch.from_numpy(array)
        block = block.to(device=self.device, dtype=self.compute_dtype)
        if self.streamed and block.dtype.is_floating_point:
            bad = torch.nonzero(~torch.isfinite(block).all(dim=1)).flatten()
            if bad.numel():
                first = int(bad[0])
                _check_finite_tensor(block[first : first + 1], self.name, offset=int(rows[first]))
        return block

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, rows)`` over the whole matrix."""
        step = chunk_rows or self.default_chunk_rows()
        for start in range(0, self.n_rows, step):
            yield start, self.rows(start, min(start + step, self.n_rows))

    def to_tensor(self) -> torch.Tensor:
        """The whole matrix as one tensor (for matrices that fit in memory)."""
        if isinstance(self.source, torch.Tensor):
            return self.source.to(device=self.device, dtype=self.compute_dtype)
        return self.rows(0, self.n_rows)


def largest_magnitude(dtype: torch.dtype) -> float:
    """The largest |x| accepted in compute dtype ``dtype``: 10⁻⁴·√max, so that squared norms
    and distances of rows with up to 10⁸ columns stay finite (about 1.8e15 for float32)."""
    return math.sqrt(torch.finfo(dtype).max) * 1e-4


def _check_finite_tensor(tensor: torch.Tensor, name: str, offset: int = 0) -> float:
    """The largest |x| of ``tensor``; ValueError naming the count and first position of NaN/Inf
    values, or of values too large for the compute dtype (:func:`largest_magnitude`)."""
    if not tensor.dtype.is_floating_point or tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor)
    largest = max(-float(low), float(high))
    if not math.isfinite(largest):
        bad = (~torch.isfinite(tensor)).nonzero()
        first = bad[0].tolist()
        value = tensor[tuple(first)].item()
        raise ValueError(
            f"{name} contains non-finite values: {bad.shape[0]} NaN/Inf in rows "
            f"[{offset}, {offset + tensor.shape[0]}) (first: {value} at row {first[0] + offset}, "
            f"column {first[1]}); remove or impute them"
        )
    limit = largest_magnitude(tensor.dtype)
    if largest > limit:
        first = (tensor.abs() > limit).nonzero()[0].tolist()
        value = tensor[tuple(first)].item()
        raise ValueError(
            f"{name} holds values too large for {str(tensor.dtype).removeprefix('torch.')} "
            f"arithmetic (first: {value:.3g} at row {first[0] + offset}, column {first[1]}; "
            f"squared distances overflow above {limit:.2g}); rescale the features, e.g. divide "
            "them by their largest absolute value (with default options, selections do not "
            "depend on a global scale)"
        )
    return largest


def as_feature_matrix(
    features: object,
    *,
    name: str = "features",
    device: str | torch.device | None = None,
) -> FeatureMatrix:
    """Validate an (N, r) real matrix (numpy array, memmap, :class:`LazyArray`, torch tensor,
    scipy sparse matrix or array, torch sparse tensor, DataFrame, list).

    Raises ``TypeError`` for unsupported types or dtypes and ``ValueError`` for wrong shapes,
    empty input or NaN/Inf values (found up front for in-memory arrays, on read for memmaps).
    """
    if is_sparse(features):
        return _sparse_feature_matrix(features, name, device)
    if hasattr(features, "to_numpy") and not isinstance(features, (np.ndarray, torch.Tensor)):
        features = features.to_numpy()
    if isinstance(features, torch.Tensor):
        if features.dtype not in _TORCH_REAL:
            raise TypeError(
                f"{name} must hold real numbers, got torch dtype {features.dtype}; cast it first"
            )
        if features.is_sparse or features.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor, got layout {features.layout}")
        source: np.ndarray | torch.Tensor | LazyArray = features.detach()
    elif isinstance(features, np.ndarray) or is_streamed(features):
        problem = _numpy_dtype_problem(features.dtype)
        if problem:
            raise TypeError(f"{name} must hold real numbers, got {problem} dtype {features.dtype}")
        source = features
    elif isinstance(features, (list, tuple)):
        try:
            source = np.asarray(features)
        except ValueError as exc:
            raise ValueError(f"{name} is a ragged nested sequence: {exc}") from None
        problem = _numpy_dtype_problem(source.dtype)
        if problem:
            raise TypeError(f"{name} must hold real numbers, got {problem} values")
    elif type(features).__module__.split(".")[0] == "datasets":
        raise TypeError(
            f"{name} is a Hugging Face {type(features).__name__}: it holds examples, not "
            "features; sketch their gradients first, result = skmm.sketch_gradients(model, "
            "dataset), and select on the result"
        )
    else:
        raise TypeError(
            f"{name} must be a numpy array, numpy memmap, torch tensor, scipy or torch sparse "
            "matrix, lazy array (shape, "
            "dtype, row reads and streamed=True: skmm.inputs.LazyArray), a path to an array "
            "file (.npy, .npz, .safetensors) or a sketch store, a SketchStore or the "
            f"GradientSketch of sketch_gradients; got {type(features).__name__}"
        )
    if source.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (N examples x r features), got shape {tuple(source.shape)}"
        )
    n_rows, n_cols = int(source.shape[0]), int(source.shape[1])
    if n_rows == 0:
        raise ValueError(f"{name} is empty: it has N = 0 rows")
    if n_cols == 0:
        raise ValueError(f"{name} has rows of length 0 (shape {tuple(source.shape)})")
    compute_device = resolve_device(device, like=source)
    src_dtype = source.dtype
    is_double = src_dtype in (np.float64, torch.float64)
    compute_dtype = torch.float64 if is_double else torch.float32
    streamed = is_streamed(source)
    matrix = FeatureMatrix(source, name, compute_device, compute_dtype, streamed=streamed)
    if not streamed:
        largest = 0.0
        for start, rows in matrix.chunks():
            largest = max(largest, _check_finite_tensor(rows, name, offset=start))
        _check_scale(largest, name)
    return matrix


def _check_scale(largest: float, name: str) -> None:
    """ValueError when the largest |x| is nonzero but below :data:`SMALLEST_SCALE`."""
    if 0.0 < largest < SMALLEST_SCALE:
        raise ValueError(
            f"{name} is too small in scale: its largest absolute value is {largest:.3g}, "
            f"below {SMALLEST_SCALE:g}, where the probe's standardization and float32 "
            "squared distances lose it; multiply the features by a constant such as "
            f"{1 / largest:.3g} (with default options, selections do not depend on a global "
            "scale)"
        )


def _sparse_feature_matrix(
    features: object, name: str, device: str | torch.device | None
) -> FeatureMatrix:
    """A scipy or torch sparse (N, r) matrix as a :class:`FeatureMatrix` over its canonical
    CSR (:class:`~skmm.sparse.SparseRows`), checked like a dense matrix of the same dtype:
    the stored values, in the compute dtype, must be finite and not too large or small."""
    if isinstance(features, SparseRows):
        source = features
    else:
        if isinstance(features, torch.Tensor):
            if features.dtype not in _TORCH_REAL:
                raise TypeError(
                    f"{name} must hold real numbers, got torch dtype {features.dtype}; cast it "
                    "first"
                )
        else:
            problem = _numpy_dtype_problem(np.dtype(features.dtype))
            if problem:
                raise TypeError(
                    f"{name} must hold real numbers, got {problem} dtype {features.dtype}"
                )
        if features.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D (N examples x r features), got shape {tuple(features.shape)}"
            )
        try:
            source = SparseRows(to_csr(features))
        except (ValueError, IndexError, RuntimeError) as exc:
            raise ValueError(f"{name} is a malformed sparse matrix: {exc}") from None
    n_rows, n_cols = source.shape
    if n_rows == 0:
        raise ValueError(f"{name} is empty: it has N = 0 rows")
    if n_cols == 0:
        raise ValueError(f"{name} has rows of length 0 (shape {source.shape})")
    like = features if isinstance(features, torch.Tensor) else None
    compute_dtype = torch.float64 if source.dtype == np.float64 else torch.float32
    values = torch.from_numpy(source.csr.data.astype(source.dtype.newbyteorder("="), copy=False))
    _check_scale(_check_sparse_values(source, values.to(compute_dtype), name), name)
    return FeatureMatrix(source, name, resolve_device(device, like=like), compute_dtype, False)


def _check_sparse_values(source: SparseRows, values: torch.Tensor, name: str) -> float:
    """The largest |x| of the stored ``values``; ValueError naming the count and first position
    of NaN/Inf values or of values too large (:func:`largest_magnitude`), as for dense input."""
    if values.numel() == 0:
        return 0.0
    low, high = torch.aminmax(values)
    largest = max(-float(low), float(high))
    limit = largest_magnitude(values.dtype)
    if math.isfinite(largest) and largest <= limit:
        return largest
    finite = math.isfinite(largest)
    where = (values.abs() > limit if finite else ~torch.isfinite(values)).nonzero().flatten()
    first = int(where[0])
    row = int(np.searchsorted(source.csr.indptr, first, side="right")) - 1
    position = f"at row {row}, column {int(source.csr.indices[first])}"
    value = values[first].item()
    if not finite:
        raise ValueError(
            f"{name} contains non-finite values: {where.numel()} NaN/Inf among its "
            f"{values.numel()} stored values (first: {value} {position}); remove or impute them"
        )
    raise ValueError(
        f"{name} holds values too large for {str(values.dtype).removeprefix('torch.')} "
        f"arithmetic (first: {value:.3g} {position}; squared distances overflow above "
        f"{limit:.2g}); rescale the features, e.g. divide them by their largest absolute value "
        "(with default options, selections do not depend on a global scale)"
    )


def check_labels(labels: object, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels as (class values sorted, class index per row); length must equal ``n_rows``."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    elif hasattr(labels, "to_numpy"):
        labels = labels.to_numpy()
    try:
        array = np.asarray(labels)
    except ValueError as exc:
        raise ValueError(f"labels could not be read as a 1-D array: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D with one label per row, got shape {array.shape}")
    if array.shape[0] != n_rows:
        raise ValueError(f"labels has length {array.shape[0]} but features has N = {n_rows} rows")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("labels contain NaN or Inf")
    if array.dtype.kind == "O":
        try:
            array = array.astype(str)
        except (TypeError, ValueError):
            raise TypeError("labels must be numbers or strings") from None
    if array.dtype.kind not in "iufbUS":
        raise TypeError(f"labels must be numbers or strings, got dtype {array.dtype}")
    classes, codes = np.unique(array, return_inverse=True)
    return classes, codes.astype(np.int64)
