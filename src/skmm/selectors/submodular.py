"""Facility location by lazy or stochastic greedy, and CRAIG (facility location on gradients).

Facility location scores a set S by how well it represents the pool,

    f(S) = Σ_i max(0, max_{j∈S} sim(i, j)),

a monotone submodular function, so greedy gets within 1 − 1/e of the best f (Nemhauser,
Wolsey & Fisher 1978). Similarities (``similarity``):

- ``"euclidean"`` (default, CRAIG's): sim(i, j) = C − ‖x_i − x_j‖;
- ``"sqeuclidean"``: sim(i, j) = C − ‖x_i − x_j‖² (apricot's ``metric="euclidean"``);
- ``"cosine"``: sim(i, j) = cos(x_i, x_j), clipped at 0 by the max (zero rows have sim 0).

C = 2.002·max_i ‖x_i − μ‖ (squared for ``"sqeuclidean"``) bounds every pairwise distance
with room for rounding, so sim ≥ 0. Greedy's picks do not depend on C: the first pick
maximizes NC − Σ_i d(i, j) (the medoid), later gains are Σ_i (min_{S} d(i, ·) − d(i, j))_+.
So they match apricot, which uses C = the largest distance.

Optimizers (``optimizer``):

- ``"lazy"`` (Minoux 1978): gains only shrink as S grows, so a stale gain bounds the fresh
  one; re-evaluate candidates in order of their bounds until the best is fresh. The picks
  are plain greedy's (ties to the lowest row index). Cost: every row's first gain is one
  full pass, Θ(N²d), plus a few re-evaluations of O(Nd) per pick.
- ``"stochastic"`` (Mirzasoleiman et al., AAAI 2015, "Lazier than lazy greedy"): each pick
  is the best of s = ⌈(N/n)·ln(1/ε)⌉ rows drawn uniformly from those left (lazy bounds
  reused), a 1 − 1/e − ε approximation in expectation with about N·ln(1/ε) gain evaluations
  in all instead of N + re-evaluations. A gain evaluation itself sums over all N rows, so
  the total stays Θ(N²d): worth it when n is large and lazy greedy re-evaluates a lot.

Similarities are computed in tiles of about ``TILE_BYTES``. When the N×N similarities fit in
``DENSE_SIMILARITY_BYTES`` (2 GiB: N ≤ 23,170 in float32) they are computed once and kept,
so each later gain evaluation is one O(N) read instead of an O(Nd) recomputation (lazy
greedy re-evaluates each row a few times); beyond that nothing N×N is stored.

CRAIG (Mirzasoleiman, Bilmes & Leskovec, ICML 2020) runs facility location on per-sample
gradients of the last layer (here: a linear softmax probe trained on the features, see
:mod:`skmm.selectors.probe`) and weights each medoid by the share of the pool closest to it.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..inputs import (
    DEFAULT_CHUNK_BYTES,
    FeatureMatrix,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from ..progress import progress_bar
from ..seeding import derive_seed, numpy_rng
from ..sketch import SketchMap
from .base import MethodOutput, Selector, register
from .probe import ProbeSelector, head_gradients

SIMILARITIES = ("euclidean", "sqeuclidean", "cosine")
OPTIMIZERS = ("lazy", "stochastic")
TILE_BYTES = 64 * 2**20
DENSE_SIMILARITY_BYTES = 2**31
FIRST_PASS_BATCH = 1024
LAZY_BATCH = 32
BOUND_MARGIN = 1.001


@dataclass
class SimilarityTable:
    """Rows prepared for one similarity, computing sim(i, j) tile by tile.

    ``points`` are centered rows (distances) or unit rows (cosine); ``norms`` their squared
    norms; ``floor`` = −C (distances, sim stored as −d so that sim − floor = C − d) or 0.
    """

    points: torch.Tensor
    norms: torch.Tensor
    kind: str
    floor: float

    @classmethod
    def build(cls, data: torch.Tensor, kind: str) -> SimilarityTable:
        """Center (distances) or normalize (cosine) ``data``; C = 2.002·max‖x_i − μ‖ (·² if sq)."""
        if kind == "cosine":
            lengths = torch.linalg.vector_norm(data.to(torch.float64), dim=1)
            scale = torch.where(lengths > 0, 1.0 / lengths, torch.zeros_like(lengths))
            points = (data.to(torch.float64) * scale[:, None]).to(data.dtype)
            return cls(points, points.square().sum(dim=1), kind, 0.0)
        mean = data.sum(dim=0, dtype=torch.float64) / data.shape[0]
        points = (data.to(torch.float64) - mean).to(data.dtype)
        norms = points.square().sum(dim=1)
        reach = 2.0 * math.sqrt(float(norms.max())) * BOUND_MARGIN
        return cls(points, norms, kind, -(reach**2 if kind == "sqeuclidean" else reach))

    @property
    def n_rows(self) -> int:
        return int(self.points.shape[0])

    def block(self, start: int, stop: int, columns: torch.Tensor) -> torch.Tensor:
        """sim(i, j) for rows i in [start, stop) and the rows ``columns`` (−d or −d² or cos).

        d(j, j) is set to exactly 0: ‖x‖² + ‖x‖² − 2⟨x, x⟩ rounds to about ε‖x‖², whose
        square root would bias every candidate's own term by ~√ε‖x‖.
        """
        rows = self.points[start:stop]
        if self.kind == "cosine":
            return rows @ self.points[columns].T
        squared = torch.addmm(self.norms[start:stop, None], rows, self.points[columns].T, alpha=-2)
        squared = squared.add_(self.norms[columns][None, :]).clamp_min_(0.0)
        own = ((columns >= start) & (columns < stop)).nonzero().squeeze(1)
        squared[columns[own] - start, own] = 0.0
        if self.kind == "euclidean":
            squared = squared.sqrt_()
        return squared.neg_()

    def row_step(self, n_columns: int) -> int:
        """Rows per tile so that a tile of ``n_columns`` columns takes about TILE_BYTES."""
        return max(1, TILE_BYTES // max(1, n_columns * self.points.element_size()))


@dataclass
class FacilityLocationResult:
    """Picks in order, their marginal gains, each row's nearest pick, f(S), and the work done."""

    order: np.ndarray
    gains: np.ndarray
    assigned: np.ndarray
    objective: float
    evaluations: int


class FacilityLocationGreedy:
    """Greedy maximization of f(S) = Σ_i (max_{j∈S} sim(i, j) − floor)_+ over a table."""

    def __init__(self, table: SimilarityTable) -> None:
        self.table = table
        n_rows = table.n_rows
        device = table.points.device
        self.cover = torch.full((n_rows,), table.floor, dtype=table.points.dtype, device=device)
        self.best = torch.full((n_rows,), -math.inf, dtype=table.points.dtype, device=device)
        self.assigned = torch.full((n_rows,), -1, dtype=torch.int64, device=device)
        self.bounds = np.full(n_rows, math.inf)
        self.stamps = np.full(n_rows, -1, dtype=np.int64)
        self.evaluations = 0
        self.columns = (
            self._similarity_columns()
            if n_rows * n_rows * table.points.element_size() <= DENSE_SIMILARITY_BYTES
            else None
        )

    def _similarity_columns(self) -> torch.Tensor:
        """S with S[j, i] = sim(j, i) = sim(i, j), built tile by tile (one Θ(N²d) pass), so
        that a gain evaluation reads one row of S instead of recomputing N similarities."""
        n_rows = self.table.n_rows
        device = self.table.points.device
        out = torch.empty(n_rows, n_rows, dtype=self.table.points.dtype, device=device)
        everyone = torch.arange(n_rows, device=device)
        step = self.table.row_step(n_rows)
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            out[start:stop] = self.table.block(start, stop, everyone)
        return out

    def gains(self, candidates: list[int]) -> np.ndarray:
        """Marginal gains Σ_i (sim(i, j) − cover_i)_+ of each candidate j, in float64."""
        columns = torch.as_tensor(candidates, device=self.table.points.device)
        self.evaluations += len(candidates)
        if self.columns is not None:
            step = max(1, TILE_BYTES // max(1, self.table.n_rows * self.columns.element_size()))
            parts = []
            for i in range(0, len(candidates), step):
                chosen = columns[i : i + step]
                first, last = int(chosen[0]), int(chosen[-1])
                if last - first + 1 == chosen.numel() and bool((chosen[1:] > chosen[:-1]).all()):
                    rows = self.columns[first : last + 1] - self.cover  # a run: no gather
                else:
                    rows = self.columns[chosen].sub_(self.cover)
                parts.append(rows.clamp_min_(0.0).sum(dim=1, dtype=torch.float64))
            return torch.cat(parts).cpu().numpy()
        total = torch.zeros(len(candidates), dtype=torch.float64, device=columns.device)
        step = self.table.row_step(len(candidates))
        for start in range(0, self.table.n_rows, step):
            stop = min(start + step, self.table.n_rows)
            tile = self.table.block(start, stop, columns).sub_(self.cover[start:stop, None])
            total += tile.clamp_min_(0.0).sum(dim=0, dtype=torch.float64)
        return total.cpu().numpy()

    def lazy_argmax(self, heap: list[tuple[float, int]], round_: int) -> tuple[int, float]:
        """Pop the candidate with the largest fresh gain (lowest index on ties) from ``heap``.

        Heap entries are (−bound, row); stale entries are re-evaluated, FIRST_PASS_BATCH at
        a time while unevaluated rows (bound +inf) lead, else LAZY_BATCH at first, doubling
        (up to FIRST_PASS_BATCH) each time the same round needs another batch.
        """
        lazy_batch = LAZY_BATCH
        while True:
            negative_bound, row = heap[0]
            if self.stamps[row] == round_:
                heapq.heappop(heap)
                return row, -negative_bound
            batch = FIRST_PASS_BATCH if negative_bound == -math.inf else lazy_batch
            lazy_batch = min(2 * lazy_batch, FIRST_PASS_BATCH)
            stale: list[int] = []
            while heap and len(stale) < batch and self.stamps[heap[0][1]] != round_:
                stale.append(heapq.heappop(heap)[1])
            fresh = self.gains(stale)
            self.bounds[stale] = fresh
            self.stamps[stale] = round_
            for candidate, gain in zip(stale, fresh.tolist(), strict=True):
                heapq.heappush(heap, (-gain, candidate))

    def add(self, row: int, round_: int) -> None:
        """Put ``row`` in S: cover_i = max(cover_i, sim(i, row)); nearest pick on strict gains."""
        column = torch.as_tensor([row], device=self.table.points.device)
        step = self.table.row_step(1)
        for start in range(0, self.table.n_rows, step):
            stop = min(start + step, self.table.n_rows)
            if self.columns is not None:
                similarity = self.columns[row, start:stop]  # sim(row, i) = sim(i, row)
            else:
                similarity = self.table.block(start, stop, column)[:, 0]
            closer = similarity > self.best[start:stop]
            self.best[start:stop] = torch.where(closer, similarity, self.best[start:stop])
            self.assigned[start:stop] = torch.where(closer, round_, self.assigned[start:stop])
            self.cover[start:stop] = torch.maximum(self.cover[start:stop], similarity)

    def run(
        self,
        n: int,
        optimizer: str,
        epsilon: float,
        rng: np.random.Generator,
        progress: bool | None = False,
    ) -> FacilityLocationResult:
        """n greedy picks with the ``"lazy"`` or ``"stochastic"`` optimizer."""
        n_rows = self.table.n_rows
        order = np.empty(n, dtype=np.int64)
        gains = np.empty(n)
        taken = np.zeros(n_rows, dtype=bool)
        heap = [(-math.inf, row) for row in range(n_rows)]
        sample_size = min(n_rows, math.ceil(n_rows / n * math.log(1.0 / epsilon)))
        with progress_bar(n, "facility location", progress, unit="pick") as bar:
            for round_ in range(n):
                if optimizer == "stochastic":
                    left = np.flatnonzero(~taken)
                    drawn = rng.choice(left, size=min(sample_size, left.size), replace=False)
                    heap = [(-self.bounds[row], int(row)) for row in drawn]
                    heapq.heapify(heap)
                row, gain = self.lazy_argmax(heap, round_)
                order[round_], gains[round_] = row, gain
                taken[row] = True
                self.add(row, round_)
                bar.update(1)
        objective = float((self.cover.to(torch.float64) - self.table.floor).clamp_min(0).sum())
        assigned = self.assigned.cpu().numpy()
        return FacilityLocationResult(order, gains, assigned, objective, self.evaluations)


def facility_location(
    data: torch.Tensor,
    n: int,
    *,
    similarity: str = "euclidean",
    optimizer: str = "lazy",
    epsilon: float = 0.1,
    seed: int = 0,
    progress: bool | None = False,
) -> FacilityLocationResult:
    """Greedily maximize f(S) = Σ_i max_{j∈S} sim(i, j) over n rows of ``data`` (N, d)."""
    table = SimilarityTable.build(data, similarity)
    rng = numpy_rng(seed, "facility-location", "stochastic")
    return FacilityLocationGreedy(table).run(n, optimizer, epsilon, rng, progress)


def cluster_weights(assigned: np.ndarray, n: int) -> np.ndarray:
    """w_k = |{i : pick k is row i's most similar pick}| / N (CRAIG's medoid weights)."""
    counts = np.bincount(assigned[assigned >= 0], minlength=n).astype(np.float64)
    return counts / counts.sum()


@register
class FacilityLocation(Selector):
    """Facility location, f(S) = Σ_i max_{j∈S} sim(i, j), maximized greedily.

    Options: ``similarity`` ("euclidean", "sqeuclidean", "cosine"), ``optimizer`` ("lazy":
    exactly plain greedy's picks; "stochastic": stochastic greedy with ``epsilon``).
    Indices come in pick order; info has the gains and f(S) (with C as documented above).
    """

    name = "facility_location"

    def __init__(
        self,
        n: int,
        *,
        similarity: str = "euclidean",
        optimizer: str = "lazy",
        epsilon: float = 0.1,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.similarity = similarity
        self.optimizer = optimizer
        self.epsilon = epsilon

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_choice(self.similarity, "similarity", SIMILARITIES)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        if check_positive_float(self.epsilon, "epsilon") >= 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")

    def _greedy(self, data: torch.Tensor, n: int, seed: int) -> FacilityLocationResult:
        return facility_location(
            data,
            n,
            similarity=self.similarity,
            optimizer=self.optimizer,
            epsilon=self.epsilon,
            seed=seed,
            progress=self.progress,
        )

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        result = self._greedy(data, n, seed)
        return MethodOutput(result.order, None, _greedy_info(result, data.shape[0]))


def _greedy_info(result: FacilityLocationResult, n_rows: int) -> dict[str, Any]:
    return {
        "objective": result.objective,
        "gains": result.gains.tolist(),
        "gain_evaluations": result.evaluations,
        "evaluations_per_row": result.evaluations / n_rows,
    }


@register
class Craig(ProbeSelector, FacilityLocation):
    """CRAIG: facility location on last-layer gradients, medoids weighted by cluster share.

    A linear softmax probe is trained on the features and labels (``epochs``, ``lr``,
    ``weight_decay``, ``batch_size``); per-sample gradients of its cross-entropy w.r.t.
    (W, b) have C·(d+1) entries and are projected to ``sketch_dim`` by a Gaussian JL map
    when longer. Weights: the share of the pool whose most similar pick each medoid is.
    """

    name = "craig"

    def __init__(
        self,
        n: int,
        *,
        similarity: str = "euclidean",
        optimizer: str = "lazy",
        epsilon: float = 0.1,
        epochs: int = 20,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        sketch_dim: int = 512,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n,
            similarity=similarity,
            optimizer=optimizer,
            epsilon=epsilon,
            stratify=stratify,
            random_state=random_state,
            device=device,
            progress=progress,
        )
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.sketch_dim = sketch_dim

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        super()._check_params(n_pool, n_cols)
        check_positive_int(self.sketch_dim, "sketch_dim")

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-sample head gradients g_i = ((p_i − e_{y_i}) x̂_iᵀ, p_i − e_{y_i}), maybe sketched."""
        n_classes = self._class_count(labels)
        began = time.perf_counter()
        points = features.to_tensor()
        targets = torch.as_tensor(labels, device=points.device)
        probe = self._train_probe(points, targets, n_classes, seed)
        trained = time.perf_counter()
        gradient_dim = n_classes * (features.n_cols + 1)
        sketch_map = None
        if gradient_dim > self.sketch_dim:
            sketch_map = SketchMap(
                gradient_dim,
                self.sketch_dim,
                "gaussian",
                derive_seed(seed, "craig", "sketch"),
                device=points.device,
                dtype=probe.weight.dtype,
            )
        gradients = _gradient_rows(probe, points, targets, sketch_map)
        accuracy = float((probe.logits(points).argmax(dim=1) == targets).double().mean())
        info = {
            "gradient_dim": gradient_dim,
            "gradient_sketch_dim": self.sketch_dim if sketch_map is not None else None,
            "probe_train_accuracy": accuracy,
            "timings": {
                "probe": trained - began,
                "gradients": time.perf_counter() - trained,
            },
        }
        return gradients, info

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        result = self._greedy(data, n, seed)
        weights = cluster_weights(result.assigned, n)
        return MethodOutput(result.order, weights, _greedy_info(result, data.shape[0]))


def _gradient_rows(
    probe: Any, points: torch.Tensor, targets: torch.Tensor, sketch_map: SketchMap | None
) -> torch.Tensor:
    """Head gradients of every row (sketched when a map is given), in row blocks."""
    gradient_dim = probe.n_classes * (points.shape[1] + 1)
    width = gradient_dim if sketch_map is None else sketch_map.sketch_dim
    row_bytes = 2 * gradient_dim * probe.weight.element_size()
    step = max(1, DEFAULT_CHUNK_BYTES // row_bytes)
    out = torch.empty(points.shape[0], width, dtype=probe.weight.dtype, device=points.device)
    project: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda rows: rows) if sketch_map is None else sketch_map.apply
    )
    for start in range(0, points.shape[0], step):
        stop = min(start + step, points.shape[0])
        block = head_gradients(probe, points[start:stop], targets[start:stop])
        out[start:stop] = project(block).to(out.dtype)
    return out
