"""Johnson–Lindenstrauss sketches G̃ = GΓ, with Γ ∈ R^{r×m} regenerated block by block.

Γ is split into row blocks of ``block_rows(m)`` rows; block b is drawn on the CPU from the
seed ``(seed, kind, m, b)``, so the same seed gives the same Γ on every device, and Γ never
has to exist whole. Rows of G are multiplied in fixed tiles of ``TILE_ROWS`` rows aligned to
their global row index, and block products are summed in float64 in block order, so the
sketch of a row is bit-for-bit the same for every batch size (on a given device).

- Gaussian: Γ_ij ~ N(0, 1/m), so E[ΓΓᵀ] = I and E‖xΓ‖² = ‖x‖².
- Sparse sign: each row of Γ has ζ = min(8, m) nonzeros ±1/√ζ, one in each of ζ column
  stripes (the block construction of Kane & Nelson's sparse JL), so every row has unit norm.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .inputs import (
    DEFAULT_CHUNK_BYTES,
    FeatureMatrix,
    as_feature_matrix,
    check_choice,
    check_positive_int,
)
from .memory import check_memory
from .progress import progress_bar
from .seeding import SEED_MAX, derive_seed

SKETCH_KINDS = ("gaussian", "sparse_sign")
TILE_ROWS = 128
SPARSE_NNZ = 8
SPARSE_GROUP_ROWS = 16
DEFAULT_CACHE_BYTES = 2**31


def block_rows(sketch_dim: int) -> int:
    """Rows of Γ per regenerated block: about 2M entries (8 MB in float32), at least 512."""
    return max(512, 2**21 // sketch_dim)


def _check_seed(seed: object) -> int:
    seed = check_positive_int(seed, "seed", minimum=0)
    if seed > SEED_MAX:
        raise ValueError(f"seed must be <= 2**63 - 1, got {seed}")
    return seed


class SketchMap:
    """The map Γ ∈ R^{r×m} of one (kind, seed, m), generated block by block on demand.

    Blocks are cached on ``device`` up to ``cache_bytes`` (all of Γ when it fits), and
    regenerated from their seed otherwise, so memory stays O(block·m) at worst.
    """

    def __init__(
        self,
        n_cols: int,
        sketch_dim: int,
        kind: str = "gaussian",
        seed: int = 0,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.n_cols = check_positive_int(n_cols, "n_cols")
        self.sketch_dim = check_positive_int(sketch_dim, "sketch_dim")
        self.kind = check_choice(kind, "sketch kind", SKETCH_KINDS)
        self.seed = _check_seed(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.block_rows = block_rows(self.sketch_dim)
        self.n_blocks = math.ceil(self.n_cols / self.block_rows)
        self.nnz_per_row = min(SPARSE_NNZ, self.sketch_dim)
        self._cache: dict[object, object] = {}
        self._cache_left = cache_bytes
        self._lock = threading.Lock()

    def _generate(self, block: int) -> torch.Tensor:
        """Block ``block`` of Γ as a dense (rows, m) float32 tensor on the CPU."""
        if self.kind == "gaussian":
            start = block * self.block_rows
            rows = min(self.block_rows, self.n_cols - start)
            m = self.sketch_dim
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.kind, m, block))
            values = torch.randn(rows, m, generator=gen, dtype=torch.float32)
            return values.mul_(1.0 / math.sqrt(m))
        columns, values = self._sparse_entries(block)
        dense = torch.zeros(columns.shape[0], self.sketch_dim, dtype=torch.float32)
        return dense.scatter_(1, columns.long(), values)

    def _sparse_entries(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse-sign block ``block``: the ζ nonzero columns of each row (int32) and their values.

        Row j has one nonzero in each stripe [⌊s·m/ζ⌋, ⌊(s+1)·m/ζ⌋): the column offset is
        ⌊u·width⌋ for u ~ U[0, 1), the sign is a fair coin, both drawn from the block's seed.
        """
        start = block * self.block_rows
        rows = min(self.block_rows, self.n_cols - start)
        m = self.sketch_dim
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.kind, m, block))
        zeta = self.nnz_per_row
        bounds = torch.tensor([(s * m) // zeta for s in range(zeta + 1)], dtype=torch.int32)
        widths = bounds[1:] - bounds[:-1]
        offsets = (torch.rand(rows, zeta, generator=gen) * widths.to(torch.float32)).to(torch.int32)
        columns = torch.minimum(offsets, widths - 1).add_(bounds[:-1])
        signs = torch.randint(0, 2, (rows, zeta), generator=gen, dtype=torch.int8).bool()
        magnitude = torch.tensor(1.0, dtype=torch.float32) / math.sqrt(zeta)
        return columns, torch.where(signs, magnitude, -magnitude)

    def sparse_block(self, block: int) -> torch.Tensor:
        """Sparse-sign block ``block`` transposed, (m, rows) in CSR, cached like dense blocks.

        Built directly by a stable counting sort of the nonzeros by output column (numpy's
        radix sort on 16-bit keys), so each CSR row lists its input rows in increasing order
        and no coalescing pass is needed.
        """
        key = ("sparse", block)
        if key in self._cache:
            return self._cache[key]
        columns, values = self._sparse_entries(block)
        n_rows, zeta = columns.shape
        flat = columns.reshape(-1)
        if self.sketch_dim <= np.iinfo(np.int16).max:
            order = torch.from_numpy(np.argsort(flat.numpy().astype(np.int16), kind="stable"))
        else:
            order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.sketch_dim)
        crow = torch.zeros(self.sketch_dim + 1, dtype=torch.int32)
        crow[1:] = torch.cumsum(counts, 0)
        sources = torch.div(order, zeta, rounding_mode="floor").to(torch.int32)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            entry = torch.sparse_csr_tensor(
                crow,
                sources,
                values.reshape(-1)[order].to(self.dtype),
                (self.sketch_dim, n_rows),
                check_invariants=False,
            ).to(self.device)
        size = flat.numel() * (4 + entry.values().element_size()) + 4 * (self.sketch_dim + 1)
        self._keep(key, entry, size)
        return entry

    def _keep(self, key: object, entry: torch.Tensor, size: int) -> None:
        """Cache ``entry`` if the budget allows (blocks may be built by several threads)."""
        with self._lock:
            if size <= self._cache_left and key not in self._cache:
                self._cache[key] = entry
                self._cache_left -= size

    def _in_order(self, get: Callable[[int], torch.Tensor], sparse: bool) -> Iterator[torch.Tensor]:
        """``get(b)`` for every block in order. Blocks not cached yet are built by a pool of
        ``torch.get_num_threads()`` threads, one window of blocks at a time (each block has
        its own generator, so they are the same blocks whichever thread builds them)."""
        threads = torch.get_num_threads()
        keys = [("sparse", b) if sparse else b for b in range(self.n_blocks)]
        if threads == 1 or all(key in self._cache for key in keys):
            for b in range(self.n_blocks):
                yield get(b)
            return
        with ThreadPoolExecutor(threads) as pool:
            for first in range(0, self.n_blocks, threads):
                window = range(first, min(first + threads, self.n_blocks))
                yield from pool.map(get, window)

    def block(self, block: int) -> torch.Tensor:
        """Rows ``[block * block_rows, ...)`` of Γ on the device, in the compute dtype."""
        if block in self._cache:
            return self._cache[block]
        values = self._generate(block).to(device=self.device, dtype=self.dtype)
        self._keep(block, values, values.numel() * values.element_size())
        return values

    def dense(self) -> torch.Tensor:
        """All of Γ as one (r, m) tensor; only for small r (tests, inspection)."""
        return torch.cat([self.block(b) for b in range(self.n_blocks)])

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ Γ`` summed in float64, for rows whose first row sits on a tile boundary.

        A sparse sign map on the CPU is applied through its ζ nonzeros per row of Γ
        (O(ζ·r) per row instead of O(m·r)), each row on its own, in a fixed order.
        """
        n_rows, n_cols = rows.shape
        if n_cols != self.n_cols:
            raise ValueError(f"rows have {n_cols} columns but the map expects {self.n_cols}")
        if self.kind == "sparse_sign" and rows.device.type == "cpu":
            return self._apply_sparse(rows)
        # Whole 128-row tiles go through one GEMM as a strided view (no copy); a partial last
        # tile is zero-padded to 128 rows. MKL's result for a row is then the same for every
        # number of tiles, which a GEMM over an arbitrary number of rows does not guarantee.
        full = n_rows - n_rows % TILE_ROWS
        padded = math.ceil(n_rows / TILE_ROWS) * TILE_ROWS
        pieces = [(0, rows[:full])] if full else []
        if padded != full:
            tail = torch.cat([rows[full:], rows.new_zeros(padded - n_rows, n_cols)])
            pieces.append((full, tail))
        out = torch.zeros(padded, self.sketch_dim, dtype=torch.float64, device=rows.device)
        for b, block in enumerate(self._in_order(self.block, sparse=False)):
            start = b * self.block_rows
            for first, piece in pieces:
                part = piece[:, start : start + self.block_rows].to(self.dtype)
                out[first : first + piece.shape[0]] += torch.matmul(part, block)
        return out[:n_rows]

    def _apply_sparse(self, rows: torch.Tensor) -> torch.Tensor:
        """Σ_b (Γ_bᵀ x_bᵀ)ᵀ with Γ_bᵀ in CSR: each output entry sums its nonzeros in order.

        Rows go through in groups of ``SPARSE_GROUP_ROWS``, so that a group's transposed slice
        of a block stays in cache while the CSR product gathers from it (4-7x faster than one
        product over all rows at m = 128); a row's result does not depend on its group.
        """
        n_rows = rows.shape[0]
        group = SPARSE_GROUP_ROWS
        out = torch.zeros(n_rows, self.sketch_dim, dtype=torch.float64)
        for b, block in enumerate(self._in_order(self.sparse_block, sparse=True)):
            start = b * self.block_rows
            part = rows[:, start : start + self.block_rows]
            for first in range(0, n_rows, group):
                piece = part[first : first + group].to(self.dtype).T.contiguous()
                out[first : first + group] += torch.sparse.mm(block, piece).T
        return out


def sketch(
    matrix: np.ndarray | torch.Tensor,
    sketch_dim: int,
    kind: str = "gaussian",
    seed: int = 0,
    batch_size: int | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> np.ndarray | torch.Tensor:
    """Sketch an (N, r) matrix to (N, sketch_dim): G̃ = GΓ with a block-seeded JL map Γ.

    The result is identical for every ``batch_size`` (rounded up to a multiple of 128 rows);
    memory is O(batch_size·r + block·m). Numpy input (including memmaps) gives a numpy array,
    a torch tensor gives a tensor on the compute device; float64 input gives float64, any
    other dtype float32.
    """
    features = as_feature_matrix(matrix, name="matrix", device=device)
    sketch_dim = check_positive_int(sketch_dim, "sketch_dim")
    kind = check_choice(kind, "sketch kind", SKETCH_KINDS)
    seed = _check_seed(seed)
    result = sketch_features(features, sketch_dim, kind, seed, batch_size, progress=progress)
    if isinstance(matrix, torch.Tensor):
        return result
    return result.cpu().numpy()


def default_batch_rows(features: FeatureMatrix, sketch_dim: int) -> int:
    """Rows per sketching batch: about 256 MB of input rows, or, when the rows are views of
    an in-memory matrix already in the compute dtype (no copy per batch), as many rows as a
    256 MB float64 accumulator holds, so that each block of Γ is generated once per call."""
    rows = features.default_chunk_rows()
    source = features.source
    if isinstance(source, torch.Tensor):
        views = source.dtype == features.compute_dtype and source.device == features.device
    else:
        views = (
            isinstance(source, np.ndarray)  # not a memmap or a store's StoreArray
            and not isinstance(source, np.memmap)
            and source.flags.writeable
            and source.dtype == torch.empty((), dtype=features.compute_dtype).numpy().dtype
            and features.device.type == "cpu"
        )
    if views:
        rows = max(rows, DEFAULT_CHUNK_BYTES // (8 * sketch_dim))
    return min(rows, features.n_rows)


def sketch_features(
    features: FeatureMatrix,
    sketch_dim: int,
    kind: str,
    seed: int,
    batch_size: int | None = None,
    *,
    progress: bool | None = False,
    rows: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Sketch a validated :class:`FeatureMatrix`; see :func:`sketch`.

    ``rows``: sketch only rows [start, stop) (start on a 128-row tile boundary), e.g. one
    rank's share of the pool; their sketch equals those rows of the whole pool's.
    """
    if batch_size is None:
        batch_size = default_batch_rows(features, sketch_dim)
    batch_size = check_positive_int(batch_size, "batch_size")
    batch_size = math.ceil(batch_size / TILE_ROWS) * TILE_ROWS
    first, last = rows if rows is not None else (0, features.n_rows)
    if first % TILE_ROWS:
        raise ValueError(f"rows must start on a multiple of {TILE_ROWS}, got {first}")
    itemsize = torch.empty((), dtype=features.compute_dtype).element_size()
    check_memory(
        (last - first) * sketch_dim * itemsize,
        f"the ({last - first}, {sketch_dim}) sketch",
        "use a smaller sketch_dim, or sketch row ranges separately and write each to disk "
        "(skmm.sketch(matrix[a:b], m, seed=s) gives the same rows as the whole sketch when a "
        "is a multiple of 128)",
        features.device,
    )
    sketch_map = SketchMap(
        features.n_cols,
        sketch_dim,
        kind,
        seed,
        device=features.device,
        dtype=features.compute_dtype,
    )
    out = torch.empty(
        last - first, sketch_dim, dtype=features.compute_dtype, device=features.device
    )
    with progress_bar(last - first, "sketch", progress, unit="row") as bar:
        for start in range(first, last, batch_size):
            block = features.rows(start, min(start + batch_size, last))
            out[start - first : start - first + block.shape[0]] = sketch_map.apply(block).to(
                out.dtype
            )
            bar.update(block.shape[0])
    return out
