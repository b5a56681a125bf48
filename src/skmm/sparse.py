"""Sparse feature matrices: scipy sparse matrices and arrays, torch sparse tensors.

:func:`to_csr` turns any of them into one canonical CSR matrix (sorted column indices, no
duplicates; the caller's object is never modified), and :class:`SparseRows` wraps it as a
row source for :class:`~skmm.inputs.FeatureMatrix`: row ranges and row picks come back as
dense numpy rows, one chunk at a time (O(chunk·r) memory, like a memory-mapped file), while
:func:`skmm.sketch` reads the CSR rows themselves and never densifies them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import torch

TORCH_SPARSE_LAYOUTS = (
    torch.sparse_coo,
    torch.sparse_csr,
    torch.sparse_csc,
    torch.sparse_bsr,
    torch.sparse_bsc,
)


def is_sparse(value: object) -> bool:
    """True for a scipy sparse matrix or array, a torch sparse tensor or a :class:`SparseRows`."""
    if isinstance(value, SparseRows) or scipy.sparse.issparse(value):
        return True
    return isinstance(value, torch.Tensor) and value.layout in TORCH_SPARSE_LAYOUTS


def to_csr(value: Any) -> scipy.sparse.csr_array:
    """``value`` (2-D scipy sparse or torch sparse) as a canonical ``csr_array``.

    Other scipy formats are converted; duplicate entries are summed, as ``toarray`` does.
    torch half-precision values become float32 (exactly; scipy has no float16), like the
    float32 compute dtype such tensors get. The structure is checked in full (index ranges,
    row pointers), so a malformed matrix fails here with a ValueError.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.to(torch.float32)
        shape = tuple(value.shape)
        if value.layout == torch.sparse_csr:
            csr = scipy.sparse.csr_array(
                (
                    value.values().numpy(),
                    value.col_indices().numpy(),
                    value.crow_indices().numpy(),
                ),
                shape=shape,
            )
        else:
            coo = value.to_sparse_coo().coalesce()
            rows, cols = coo.indices().numpy()
            csr = scipy.sparse.coo_array((coo.values().numpy(), (rows, cols)), shape=shape).tocsr()
    else:
        csr = scipy.sparse.csr_array(value)  # shares a CSR input's arrays: never modify them
    csr.check_format(full_check=True)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


class SparseRows:
    """A canonical CSR (N, r) matrix read by rows: ``rows[a:b]`` and ``rows[index]`` give
    dense numpy rows in the stored dtype; :meth:`csr_rows` gives the CSR rows themselves."""

    streamed = False
    ndim = 2

    def __init__(self, csr: scipy.sparse.csr_array) -> None:
        self.csr = csr

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.csr.shape[0]), int(self.csr.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.csr.dtype

    @property
    def nnz(self) -> int:
        return int(self.csr.nnz)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        """Dense rows: a contiguous range (a slice) or the rows at an int64 index array."""
        return self.csr[key].toarray()

    def csr_rows(self, start: int, stop: int) -> scipy.sparse.csr_array:
        """Rows ``[start, stop)`` as CSR (O(rows + their nonzeros))."""
        return self.csr[start:stop]
