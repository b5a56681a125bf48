"""Johnson–Lindenstrauss sketches G̃ = GΓ, with Γ ∈ R^{r×m} regenerated block by block.

Γ is split into row blocks of ``block_rows(m)`` rows; block b is drawn on the CPU from the
seed ``(seed, kind, m, b)`` with integer draws only, so the same seed gives the same Γ on
every device and processor, and Γ never has to exist whole.

- Gaussian: Γ = Q/(σ_T √m) with Q_ij = T[u_ij], u_ij uniform on {0, …, 2^16 − 1} and T the
  table of N(0, 1) quantiles at (u + ½)/2^16 rounded to multiples of 2^-12 (a 65,536-level
  discrete normal, symmetric, truncated at ±4.3σ; σ_T² its exact variance), so E[ΓΓᵀ] = I.
- Sparse sign: each row of Γ has ζ = min(8, m) nonzeros ±1/√ζ, one in each of ζ column
  stripes (the block construction of Kane & Nelson's sparse JL), so every row has unit norm.

**Exact arithmetic, whatever the BLAS.** Every entry of Q is an integer with |Q| < 2^15
(Gaussian) or 1 (sparse sign). A row x of G is cut into chunks of at most ``CHUNK_COLS``
columns; each chunk is scaled by a power of two 2^(b−e) (2^e above the chunk's largest |x|)
and rounded to integers, so |x_int| ≤ 2^b with b chosen so that every partial sum of
x_int · Q stays below 2^53. The float64 product of a chunk is then an exact integer for any
summation order, kernel, thread count or device; the chunks are added in column order and
scaled back by powers of two. The sketch of a row therefore depends on nothing but the row,
the seed and the map: not on the batch, the other rows, the BLAS (MKL's AVX2, AVX-512 or
compatible paths, OpenBLAS, cuBLAS), the SIMD level torch dispatches, or the device.
Rounding to b bits below the chunk's top bit keeps float32 input exact wherever an entry is
within 2^(b−24) of the chunk's largest; float64 input is split into two such slices.
"""

from __future__ import annotations

import functools
import hashlib
import math
import statistics
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse
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
from .sparse import SparseRows, to_csr

SKETCH_KINDS = ("gaussian", "sparse_sign")
SPARSE_NNZ = 8
SPARSE_GROUP_ROWS = 16
DEFAULT_CACHE_BYTES = 2**31
CHUNK_COLS = 4096
"""Columns of G that share one power-of-two scale in the exact product (at most 2^12)."""
ROW_TILE = 1024
"""Rows converted to integers at a time (bounds the float64 working copy)."""
SPARSE_ROW_TILE = 64
"""Rows per tile for the sparse-sign product on the CPU: the CSR product gathers from the
tile, so a small tile keeps its integer copy near the cache (the bytes do not depend on it)."""
NORMAL_LEVELS = 2**16
NORMAL_FRACTION_BITS = 12
GAUSSIAN_VALUE_BITS = 15
"""|Q| < 2^15 for the Gaussian table (its largest entry is about 4.3 · 2^12)."""
EXACT_BITS = 53
SPARSE_ENTRY_BYTES = 512
"""Working bytes per stored entry of a sparse batch (indices, slices, ζ targets), bounding
the default batch of :func:`default_batch_rows`."""


def block_rows(sketch_dim: int) -> int:
    """Rows of Γ per regenerated block: about 2M entries, at least 512."""
    return max(512, 2**21 // sketch_dim)


@functools.cache
def normal_table() -> np.ndarray:
    """T[u] = round(2^12 · Φ⁻¹((u + ½)/2^16)) for u < 2^16, int32, exactly antisymmetric.

    Built once with the standard library's scalar inverse normal CDF (Wichura's AS241,
    accurate to about 1e-16 before rounding), so no vectorized libm is involved; its sha256
    is checked by the tests.
    """
    inverse = statistics.NormalDist().inv_cdf
    half = NORMAL_LEVELS // 2
    upper = [
        round(inverse((half + u + 0.5) / NORMAL_LEVELS) * 2**NORMAL_FRACTION_BITS)
        for u in range(half)
    ]
    table = np.array([-v for v in reversed(upper)] + upper, dtype=np.int32)
    table.flags.writeable = False
    return table


@functools.cache
def normal_table_scale() -> float:
    """1/σ_T for the table in integer units: σ_T² = Σ_u T[u]²/2^16, summed exactly."""
    total = sum(int(v) * int(v) for v in normal_table())
    return 1.0 / math.sqrt(total / NORMAL_LEVELS)


def normal_table_digest() -> str:
    """sha256 of the table's little-endian int32 bytes (what the tests pin)."""
    return hashlib.sha256(normal_table().astype("<i4").tobytes()).hexdigest()


def discrete_normal(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Integer draws T[u] of the discrete normal (units of 2^-12, int32), u from ``generator``.

    Only integer random bits and a table lookup: the same draws on every processor, whatever
    SIMD level torch dispatches (``torch.randn``'s vectorized transform is not).
    """
    levels = torch.randint(0, NORMAL_LEVELS, shape, generator=generator, dtype=torch.int64)
    return _normal_tensor()[levels]


@functools.cache
def _normal_tensor() -> torch.Tensor:
    return torch.from_numpy(normal_table().copy())


def _check_seed(seed: object) -> int:
    seed = check_positive_int(seed, "seed", minimum=0)
    if seed > SEED_MAX:
        raise ValueError(f"seed must be <= 2**63 - 1, got {seed}")
    return seed


def _powers_of_two(exponents: torch.Tensor) -> torch.Tensor:
    """2^e in float64, built from its bits (exact; e must lie in [-1022, 1023])."""
    return ((exponents.to(torch.int64) + 1023) << 52).view(torch.float64)


def _integer_rows(
    rows: torch.Tensor, bits: int, slices: int, buffer: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Rows as integer-valued float64 slices and a power-of-two scale per row.

    x ≈ scale · Σ_s slice_s · 2^(−s·bits) with |slice_s| ≤ 2^bits: each row is multiplied by
    2^(bits − e), 2^e the power of two above its largest |x|, and rounded (the remainder,
    scaled by 2^bits, gives the next slice). Every step is exact or a deterministic rounding.
    float32 rows are scaled in float32 (exact: the scale is a power of two, and a product
    below float32's normal range rounds to 0 either way), written into ``buffer`` (a reused
    float64 tensor of at least the rows' shape, which spares page faults on fresh memory) and
    rounded there, unless a row is so small that 2^(bits − e) is not a normal float32.
    """
    top = torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())
    exponent = torch.frexp(top).exponent  # of the largest |x|
    if rows.dtype == torch.float32 and slices == 1 and int(exponent.min()) >= bits - 127:
        up = _powers_of_two(bits - exponent).to(torch.float32)  # a normal float32
        scaled = buffer[: rows.shape[0], : rows.shape[1]]
        torch.mul(rows, up, out=scaled)
        return [scaled.round_()], _powers_of_two(exponent - bits)
    exponent = exponent.clamp_(min=bits - 1022)
    scaled = torch.mul(rows.to(torch.float64), _powers_of_two(bits - exponent))  # a new tensor
    return _slices(scaled, bits, slices), _powers_of_two(exponent - bits)


def _slices(scaled: torch.Tensor, bits: int, slices: int) -> list[torch.Tensor]:
    """float64 values already scaled by 2^(bits − e) as ``slices`` rounded integer slices:
    the first is round(x), each next one round of the remainder times 2^bits."""
    parts = [torch.round(scaled)]
    for _ in range(1, slices):
        scaled = (scaled - parts[-1]).mul_(2.0**bits)
        parts.append(torch.round(scaled))
    return parts


class SketchMap:
    """The map Γ ∈ R^{r×m} of one (kind, seed, m), generated block by block on demand.

    Blocks are cached on ``device`` up to ``cache_bytes`` (all of Γ when it fits), and
    regenerated from their seed otherwise, so memory stays O(block·m) at worst. ``dtype`` is
    the dtype of the rows it is applied to (float64 rows are split into two exact slices).
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
        self.slices = 2 if dtype == torch.float64 else 1
        if self.kind == "gaussian":
            self.scale = normal_table_scale() / math.sqrt(self.sketch_dim)
            self.chunk_cols = min(CHUNK_COLS, self.block_rows)
            value_bits = GAUSSIAN_VALUE_BITS
        else:
            self.scale = 1.0 / math.sqrt(self.nnz_per_row)
            self.chunk_cols = self.block_rows
            value_bits = 0
        # |x_int| ≤ 2^bits and |Q| < 2^value_bits over ≤ chunk_cols terms: sums stay ≤ 2^53.
        self.bits = EXACT_BITS - value_bits - math.ceil(math.log2(self.chunk_cols))
        self._cache: dict[object, object] = {}
        self._cache_left = cache_bytes
        self._lock = threading.Lock()

    def _integers(self, block: int) -> torch.Tensor:
        """Block ``block`` of Q = Γ/scale, a dense (rows, m) integer-valued float64 CPU tensor."""
        if self.kind == "gaussian":
            start = block * self.block_rows
            rows = min(self.block_rows, self.n_cols - start)
            m = self.sketch_dim
            gen = torch.Generator().manual_seed(derive_seed(self.seed, self.kind, m, block))
            return discrete_normal(gen, (rows, m)).to(torch.float64)
        columns, signs = self._sparse_entries(block)
        dense = torch.zeros(columns.shape[0], self.sketch_dim, dtype=torch.float64)
        return dense.scatter_(1, columns.long(), signs)

    def _sparse_entries(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse-sign block ``block``: the ζ nonzero columns of each row (int32) and their signs.

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
        one = torch.tensor(1.0, dtype=torch.float64)
        return columns, torch.where(signs, one, -one)

    def sparse_block(self, block: int) -> torch.Tensor:
        """Sparse-sign block ``block`` of Q transposed, (m, rows) in CSR with ±1 float64 values.

        Built directly by a stable counting sort of the nonzeros by output column (numpy's
        radix sort on 16-bit keys), so each CSR row lists its input rows in increasing order
        and no coalescing pass is needed. Cached like dense blocks.
        """
        key = ("sparse", block)
        if key in self._cache:
            return self._cache[key]
        columns, signs = self._sparse_entries(block)
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
                signs.reshape(-1)[order],
                (self.sketch_dim, n_rows),
                check_invariants=False,
            ).to(self.device)
        size = flat.numel() * (4 + 8) + 4 * (self.sketch_dim + 1)
        self._keep(key, entry, size)
        return entry

    def _keep(self, key: object, entry: torch.Tensor, size: int) -> None:
        """Cache ``entry`` if the budget allows (blocks may be built by several threads)."""
        with self._lock:
            if size <= self._cache_left and key not in self._cache:
                self._cache[key] = entry
                self._cache_left -= size

    def sign_matrix(self, block: int) -> scipy.sparse.csr_array:
        """Sparse-sign block ``block`` of Q, (rows, m) in scipy CSR with ±1 float64 values (ζ
        per row, columns increasing: one per stripe); cached like the other blocks."""
        key = ("scipy", block)
        if key in self._cache:
            return self._cache[key]
        columns, signs = self._sparse_entries(block)
        n_rows, zeta = columns.shape
        entry = scipy.sparse.csr_array(
            (
                signs.reshape(-1).numpy(),
                columns.reshape(-1).numpy(),
                np.arange(0, n_rows * zeta + 1, zeta, dtype=np.int32),
            ),
            shape=(n_rows, self.sketch_dim),
        )
        self._keep(key, entry, columns.numel() * (4 + 8) + 4 * (n_rows + 1))
        return entry

    def apply_sparse(self, rows: Any) -> torch.Tensor:
        """``rows @ Γ`` in float64 for a scipy sparse (n, r) matrix, without densifying it:
        bit for bit :meth:`apply` of the same rows dense, in O(nnz·m) for a Gaussian map and
        O(nnz·ζ) for a sparse sign map (plus O(m) per row and chunk holding entries); only the
        blocks of Γ whose columns hold entries are generated.

        Every (row, chunk) pair with stored entries gets the scale and integer slices that
        :meth:`apply` gives it, its exact integer product with the chunk's rows of Q is formed
        from those entries alone, and the products are added in chunk order with the same
        scales; a pair without entries adds an exact 0 there and is skipped here. float32 and
        float64 values are used as they are, other dtypes in ``dtype``. CPU maps only.
        """
        if self.device.type != "cpu":
            raise ValueError(f"apply_sparse runs on the CPU; this map is on {self.device}")
        csr = to_csr(rows)
        n_rows, n_cols = csr.shape
        if n_cols != self.n_cols:
            raise ValueError(f"rows have {n_cols} columns but the map expects {self.n_cols}")
        out = torch.zeros(n_rows, self.sketch_dim, dtype=torch.float64)
        if csr.nnz == 0:
            return out.mul_(self.scale)
        pairs = _ChunkPairs(csr, self)
        needed = np.unique(pairs.chunk_ids // pairs.per_block).tolist()
        if self.kind == "gaussian":
            for b, block in zip(needed, self._in_order(self.block, needed), strict=True):
                for chunk in pairs.chunks_of_block(b):
                    self._add_gaussian_chunk(pairs, chunk, block, out)
        else:
            for b in needed:
                block = self.sign_matrix(b)
                for chunk in pairs.chunks_of_block(b):
                    self._add_sign_chunk(pairs, chunk, block, out)
        return out.mul_(self.scale)

    def _add_gaussian_chunk(
        self, pairs: _ChunkPairs, chunk: int, block: torch.Tensor, out: torch.Tensor
    ) -> None:
        """``out[rows] += (x_int @ Q_chunk) · scale`` for the pairs of chunk ``chunk``, level by
        level, the integer product a CSR tile times the chunk's dense rows of Q."""
        g0, g1, e0, e1 = pairs.span(chunk)
        offset = pairs.offset(chunk)
        width = min(self.chunk_cols, block.shape[0] - offset)
        crow = torch.from_numpy(np.append(pairs.starts[g0:g1], e1) - e0)
        columns = torch.from_numpy(pairs.columns[e0:e1] - (pairs.block_start(chunk) + offset))
        rows = torch.from_numpy(pairs.group_rows[g0:g1])
        values = block[offset : offset + width]
        for level, part in enumerate(pairs.parts):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                tile = torch.sparse_csr_tensor(
                    crow, columns, part[e0:e1], (g1 - g0, width), check_invariants=False
                )
            product = torch.sparse.mm(tile, values)
            _add_rows(out, rows, product, pairs.scale[g0:g1] * 2.0 ** (-level * self.bits))

    def _add_sign_chunk(
        self, pairs: _ChunkPairs, chunk: int, block: scipy.sparse.csr_array, out: torch.Tensor
    ) -> None:
        """``out[rows] += (x_int @ Q_chunk) · scale`` for the pairs of chunk ``chunk``, level by
        level, the integer product a scipy CSR tile times the chunk's CSR rows of Q (ζ per
        row: O(entries·ζ)); added densely per row when the product is dense enough, else entry
        by entry (its nonzeros; the product's exact zeros add nothing)."""
        g0, g1, e0, e1 = pairs.span(chunk)
        m, k = self.sketch_dim, g1 - g0
        offset = pairs.offset(chunk)
        width = min(self.chunk_cols, block.shape[0] - offset)
        crow = np.append(pairs.starts[g0:g1], e1) - e0
        columns = pairs.columns[e0:e1] - (pairs.block_start(chunk) + offset)
        values = block[offset : offset + width]
        rows = torch.from_numpy(pairs.group_rows[g0:g1])
        for level, part in enumerate(pairs.parts):
            tile = scipy.sparse.csr_array((part[e0:e1].numpy(), columns, crow), shape=(k, width))
            product = tile @ values
            scale = pairs.scale[g0:g1] * 2.0 ** (-level * self.bits)
            if 4 * product.nnz >= k * m:
                _add_rows(out, rows, torch.from_numpy(product.toarray()), scale)
            else:
                local = torch.from_numpy(np.repeat(np.arange(k), np.diff(product.indptr)))
                where = rows[local] * m + torch.from_numpy(product.indices.astype(np.int64))
                flat = out.view(-1)
                flat[where] = flat[where].addcmul_(torch.from_numpy(product.data), scale[local, 0])

    def _in_order(
        self, get: Callable[[int], torch.Tensor], blocks: list[int], sparse: bool = False
    ) -> Iterator[torch.Tensor]:
        """``get(b)`` for every block of ``blocks`` in order. Blocks not cached yet are built by
        a pool of ``torch.get_num_threads()`` threads, one window of blocks at a time (each
        block has its own generator, so they are the same blocks whichever thread builds
        them)."""
        threads = torch.get_num_threads()
        if threads == 1 or all((("sparse", b) if sparse else b) in self._cache for b in blocks):
            yield from map(get, blocks)
            return
        with ThreadPoolExecutor(threads) as pool:
            for first in range(0, len(blocks), threads):
                yield from pool.map(get, blocks[first : first + threads])

    def block(self, block: int) -> torch.Tensor:
        """Rows ``[block * block_rows, ...)`` of Q = Γ/scale on the device (integer float64)."""
        if block in self._cache:
            return self._cache[block]
        values = self._integers(block).to(device=self.device)
        self._keep(block, values, values.numel() * values.element_size())
        return values

    def dense(self) -> torch.Tensor:
        """All of Γ as one (r, m) tensor in ``dtype``; only for small r (tests, inspection)."""
        blocks = [self.block(b) for b in range(self.n_blocks)]
        return (torch.cat(blocks) * self.scale).to(self.dtype)

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ Γ`` in float64, each row exactly as it would be alone (module docstring).

        A sparse sign map on the CPU is applied through its ζ nonzeros per row of Γ
        (O(ζ·r) per row instead of O(m·r)).
        """
        n_rows, n_cols = rows.shape
        if n_cols != self.n_cols:
            raise ValueError(f"rows have {n_cols} columns but the map expects {self.n_cols}")
        sparse = self.kind == "sparse_sign" and rows.device.type == "cpu"
        out = torch.zeros(n_rows, self.sketch_dim, dtype=torch.float64, device=rows.device)
        get = self.sparse_block if sparse else self.block
        row_tile = SPARSE_ROW_TILE if sparse else ROW_TILE
        tile_rows = min(row_tile, n_rows)
        buffer = torch.empty(tile_rows, self.chunk_cols, dtype=torch.float64, device=rows.device)
        products = torch.empty(tile_rows, self.sketch_dim, dtype=torch.float64, device=rows.device)
        blocks = list(range(self.n_blocks))
        for b, block in enumerate(self._in_order(get, blocks, sparse=sparse)):
            start = b * self.block_rows
            width = min(self.block_rows, self.n_cols - start)
            for first in range(0, n_rows, row_tile):
                tile = rows[first : first + row_tile]
                target = out[first : first + row_tile]
                product = products[: tile.shape[0]]
                for chunk in range(0, width, self.chunk_cols):
                    columns = slice(start + chunk, start + min(chunk + self.chunk_cols, width))
                    parts, scale = _integer_rows(tile[:, columns], self.bits, self.slices, buffer)
                    for level, part in enumerate(parts):
                        if sparse:
                            _sparse_product(block, part, product)
                        else:
                            torch.mm(part, block[chunk : chunk + part.shape[1]], out=product)
                        target.addcmul_(product, scale * 2.0 ** (-level * self.bits))
        return out.mul_(self.scale)


def _sparse_product(block: torch.Tensor, part: torch.Tensor, out: torch.Tensor) -> None:
    """``out = part @ Qᵀ_b.T`` for the (m, rows) CSR block, in groups of ``SPARSE_GROUP_ROWS``
    rows so a group's transposed slice stays in cache while the CSR product gathers from it."""
    for first in range(0, part.shape[0], SPARSE_GROUP_ROWS):
        piece = part[first : first + SPARSE_GROUP_ROWS].T.contiguous()
        out[first : first + SPARSE_GROUP_ROWS] = torch.sparse.mm(block, piece).T


def sketch(
    matrix: np.ndarray | torch.Tensor | scipy.sparse.sparray | scipy.sparse.spmatrix,
    sketch_dim: int,
    kind: str = "gaussian",
    seed: int = 0,
    batch_size: int | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool | None = False,
) -> np.ndarray | torch.Tensor:
    """Sketch an (N, r) matrix to (N, sketch_dim): G̃ = GΓ with a block-seeded JL map Γ.

    Each row's sketch is the same bits for every ``batch_size``, processor, BLAS and device
    (exact integer products, see the module docstring); memory is O(batch_size·r + block·m).
    Numpy input (including memmaps) gives a numpy array, a torch tensor gives a tensor on
    the compute device; float64 input gives float64, any other dtype float32. A scipy sparse
    matrix or array (a numpy result) or a torch sparse tensor is sketched without densifying
    it, in O(nnz·m) (Gaussian) or O(nnz·ζ) (sparse sign), to the same bits as its dense form.
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
    256 MB float64 accumulator holds, so that each block of Γ is generated once per call.
    Sparse rows: as many as that accumulator holds, and at most about 256 MB of working
    arrays for their stored entries (``SPARSE_ENTRY_BYTES`` each)."""
    source = features.source
    if isinstance(source, SparseRows):
        per_row = max(1.0, source.nnz / features.n_rows) * SPARSE_ENTRY_BYTES
        rows = min(DEFAULT_CHUNK_BYTES // (8 * sketch_dim), int(DEFAULT_CHUNK_BYTES // per_row))
        return max(1, min(rows, features.n_rows))
    rows = features.default_chunk_rows()
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
    blocks: int = 1,
) -> torch.Tensor:
    """Sketch a validated :class:`FeatureMatrix`; see :func:`sketch`.

    Sparse sources (:class:`~skmm.sparse.SparseRows`) are sketched on the CPU by
    :meth:`SketchMap.apply_sparse`, row batch by row batch, never densified.

    ``rows``: sketch only rows [start, stop), e.g. one rank's share of the pool; their sketch
    equals those rows of the whole pool's. ``blocks`` = K: each row holds K blocks of r/K
    columns side by side (a K-output Jacobian); each block is sketched by the same map of
    r/K rows, giving (N, K·m).
    """
    if batch_size is None:
        batch_size = max(1, default_batch_rows(features, sketch_dim) // blocks)
    batch_size = check_positive_int(batch_size, "batch_size")
    first, last = rows if rows is not None else (0, features.n_rows)
    itemsize = torch.empty((), dtype=features.compute_dtype).element_size()
    sparse = isinstance(features.source, SparseRows)
    if blocks > 1 and sparse:
        raise ValueError(
            "a sparse matrix cannot be sketched in blocks; pass it dense, or sketch each "
            "block's columns separately and put the sketches side by side"
        )
    width = blocks * sketch_dim
    check_memory(
        (last - first) * width * itemsize,
        f"the ({last - first}, {width}) sketch",
        "use a smaller sketch_dim, or sketch row ranges separately and write each to disk "
        "(skmm.sketch(matrix[a:b], m, seed=s) gives the same rows as the whole sketch)",
        features.device,
    )
    sketch_map = SketchMap(
        features.n_cols // blocks,
        sketch_dim,
        kind,
        seed,
        device="cpu" if sparse else features.device,
        dtype=features.compute_dtype,
    )
    out = torch.empty(last - first, width, dtype=features.compute_dtype, device=features.device)
    with progress_bar(last - first, "sketch", progress, unit="row") as bar:
        for start in range(first, last, batch_size):
            stop = min(start + batch_size, last)
            if sparse:
                product = sketch_map.apply_sparse(features.source.csr_rows(start, stop))
            else:
                block = features.rows(start, stop)
                product = sketch_map.apply(block.reshape(-1, sketch_map.n_cols))
            out[start - first : stop - first] = product.reshape(stop - start, width).to(out.dtype)
            bar.update(stop - start)
    return out


def _add_rows(
    out: torch.Tensor, rows: torch.Tensor, product: torch.Tensor, scale: torch.Tensor
) -> None:
    """``out[rows] += product · scale`` (``addcmul_``, as :meth:`SketchMap.apply` adds), in
    place on a slice when ``rows`` (sorted, distinct) are consecutive."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == rows.numel():
        out[first : last + 1].addcmul_(product, scale)
    else:
        out.index_copy_(0, rows, out.index_select(0, rows).addcmul_(product, scale))


class _ChunkPairs:
    """The stored entries of a CSR matrix grouped by (chunk, row), chunk-major, as
    :meth:`SketchMap.apply` cuts rows: chunk ids count the chunks of ``chunk_cols`` columns of
    every block of ``block_rows`` columns in column order. Each (chunk, row) group holds the
    power-of-two scale of its largest |x| and its entries' integer slices (``_integer_rows``'s
    arithmetic, entry by entry)."""

    def __init__(self, csr: Any, sketch_map: SketchMap) -> None:
        self.block_rows = sketch_map.block_rows
        self.chunk_cols = sketch_map.chunk_cols
        self.per_block = -(-self.block_rows // self.chunk_cols)
        entry_rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        columns = csr.indices.astype(np.int64)
        if self.block_rows % self.chunk_cols == 0:  # chunks tile the columns evenly
            chunks = columns // self.chunk_cols
        else:
            blocks = columns // self.block_rows
            chunks = blocks * self.per_block + (columns % self.block_rows) // self.chunk_cols
        if sketch_map.n_blocks * self.per_block <= np.iinfo(np.int16).max:  # radix sort
            order = np.argsort(chunks.astype(np.int16), kind="stable")
        else:
            order = np.argsort(chunks, kind="stable")
        # a stable sort of the row-major CSR order keeps each chunk's rows in order
        chunks, entry_rows, self.columns = chunks[order], entry_rows[order], columns[order]
        data = torch.from_numpy(csr.data.astype(csr.data.dtype.newbyteorder("="), copy=False))
        if data.dtype not in (torch.float32, torch.float64):
            data = data.to(sketch_map.dtype)
        values = data.to(torch.float64)[torch.from_numpy(order)]
        new = np.ones(order.size, dtype=bool)
        new[1:] = (chunks[1:] != chunks[:-1]) | (entry_rows[1:] != entry_rows[:-1])
        self.starts = np.flatnonzero(new)
        self.group_of = np.cumsum(new) - 1
        self.group_rows = entry_rows[self.starts]
        group_chunks = chunks[self.starts]
        firsts = np.flatnonzero(np.diff(group_chunks, prepend=-1))
        self.chunk_ids = group_chunks[firsts]
        self._group_bounds = np.append(firsts, self.starts.size)
        self._entry_bounds = np.append(self.starts, order.size)
        top = torch.from_numpy(np.maximum.reduceat(values.abs().numpy(), self.starts))
        bits = sketch_map.bits
        exponent = torch.frexp(top).exponent.clamp_(min=bits - 1022)
        scaled = values * _powers_of_two(bits - exponent)[torch.from_numpy(self.group_of)]
        self.parts = _slices(scaled, bits, sketch_map.slices)
        self.scale = _powers_of_two(exponent - bits)[:, None]

    def chunks_of_block(self, block: int) -> range:
        """Positions (in ``chunk_ids``) of the chunks of ``block`` that hold entries."""
        first, last = np.searchsorted(
            self.chunk_ids, [block * self.per_block, (block + 1) * self.per_block]
        )
        return range(int(first), int(last))

    def span(self, chunk: int) -> tuple[int, int, int, int]:
        """Groups [g0, g1) and entries [e0, e1) of the chunk at position ``chunk``."""
        g0, g1 = int(self._group_bounds[chunk]), int(self._group_bounds[chunk + 1])
        return g0, g1, int(self._entry_bounds[g0]), int(self._entry_bounds[g1])

    def block_start(self, chunk: int) -> int:
        """First column of the block of the chunk at position ``chunk``."""
        return int(self.chunk_ids[chunk] // self.per_block) * self.block_rows

    def offset(self, chunk: int) -> int:
        """Offset of the chunk at position ``chunk`` inside its block."""
        return int(self.chunk_ids[chunk] % self.per_block) * self.chunk_cols
