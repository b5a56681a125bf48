"""SkMM: sketch the gradients, then match the sketched moments.

1. Sketch G (N × r) to G̃ = GΓ (N × m) with a block-seeded JL map (skipped when r ≤ m).
2. Σ̃ = VΛVᵀ in float64: the covariance G̃ᵀG̃/N − μμᵀ about the mean row μ for the matrix
   objectives (``center=True``), the uncentered G̃ᵀG̃/N for the diagonal one.
3. Match moments, by one of two objectives:
   - matrix moment matching (``objective="logdet"`` or ``"aopt"``, :mod:`skmm.design`): on the
     top-k directions, whitened so the pool's moment is I and joined by the intercept
     coordinate, pick rows greedily to maximize log det of the coreset's moment (or minimize
     tr of its inverse); with labels, class by class (per-class budgets);
   - the paper's diagonal objective (``objective="diagonal"``, :mod:`skmm.moments`):
     min_{s ∈ [0,1/n]^N, Σs=1} Σ_j (λ_j/c − (Pᵀs)_j)_+² with P_ij = (v_jᵀ g̃_i)², solved by
     accelerated projected gradient from s = 1/n on n uniform rows, then rounded to exactly
     n rows by a fixed-size design with inclusion probabilities n·s_i (:mod:`skmm.rounding`).

Every stage is row-separable (docs/distributed.md): under torchrun each rank sketches, whitens and
scores its own rows (:mod:`skmm.rows`), and the covariance, the greedy's picks and the
solver's sums are reduced across ranks, giving the single process's selection. A
memory-mapped pool or sketch store is streamed chunk by chunk and never loaded whole; the
diagonal objective's rounding gathers the N weights s (N floats) and draws on every rank.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from ..design import CRITERIA, WhitenedRows, choose_directions, greedy_design
from ..inputs import (
    FeatureMatrix,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from ..moments import MomentProblem, solve
from ..rounding import ROUNDINGS, round_weights
from ..rows import PoolRows, row_products
from ..seeding import derive_seed, numpy_rng
from ..sketch import SKETCH_KINDS, sketch_features
from ..sources import source_blocks
from ..spectrum import UNSKETCHED_MAX_COLUMNS, Spectrum, spectrum
from .base import MethodOutput, Selector, register
from .targeted import nearest_picks, neighbor_blocks, neighbor_bytes

SKMM_SKETCHES = (*SKETCH_KINDS, "none")
OBJECTIVES = ("diagonal", *CRITERIA)
OBJECTIVE_ALIASES = {"seed": "diagonal"}  # the diagonal objective's former name
DIRECTION_RULES = ("auto", "gap")
DIAGONAL_DEFAULTS = {"c": 1.0, "rounding": "systematic", "max_iter": 1000, "tol": 1e-4}
MATRIX_DEFAULTS = {"directions": "auto", "ridge": 1e-6, "center": True}


@register
class SkMM(Selector):
    """Sketchy Moment Matching (arXiv 2407.06120): sketch, then match the sketched moments.

    Options beyond the common ones: ``sketch_dim`` (m), ``sketch`` ("gaussian",
    "sparse_sign" or "none"), ``batch_size`` (rows per sketching batch) and ``objective``:
    "aopt" (default) or "logdet" (matrix moment matching on the top ``directions`` whitened
    directions of the covariance about the mean row, with the intercept, or with
    ``center=False`` of the uncentered second moment; ``ridge`` ε), or "diagonal" (the
    paper's diagonal objective, with ``c``, ``rounding``, ``max_iter`` and ``tol``; "seed" is
    its deprecated former name).
    Options of the other objective are refused. SkMM uses labels only for per-class
    budgets, so with ``labels`` and ``stratify`` left at None it selects each class's
    proportional share of rows by its own design (``stratify=False``: over the whole pool).

    With a ``target`` (``fit(features, labels, target=T)``), the target's rows are sketched by
    the same map, and the directions, the whitening and the mean come from the target's
    sketched moment Σ̃_T: the design then seeks Σ̃_T ⪯ c·Σ̃_S (the greedy's A-optimal criterion
    becomes tr(Σ̃_T Σ̃_S⁻¹) on the target's top directions) and picks rows of the pool. Labels
    then give per-class budgets only when ``stratify`` asks for them. ``candidates`` = c (with
    a target only) restricts the design to the max(⌈c·n⌉, T) pool rows that ``knn`` would pick
    for the target (its T rows taking turns, each its nearest unpicked sketched pool row), so
    the coreset covers the target's directions with rows from the target's neighbourhood.

    ``blocks`` = K: every row holds K blocks of r/K columns, the K rows of a K-output
    Jacobian side by side (``sketch_gradients(target="jacobian_blocks")`` writes them, and a
    store or gradient sketch of that target sets ``blocks`` itself). Each block is sketched
    by the same map; the moment is (1/N) Σ_i J̃_iᵀJ̃_i, each block centered about its own mean
    with its own intercept, and the design adds each row's rank-K moment J̃_iᵀJ̃_i at once
    (Woodbury updates, :mod:`skmm.design`). The other methods see the K·m columns as they are.
    """

    name = "skmm"
    row_separable = True
    stratify_with_labels = True
    targeted = True

    def __init__(
        self,
        n: int,
        *,
        sketch_dim: int = 256,
        sketch: str = "gaussian",
        objective: str = "aopt",
        directions: int | str | None = None,
        ridge: float | None = None,
        center: bool | None = None,
        c: float | None = None,
        rounding: str | None = None,
        max_iter: int | None = None,
        tol: float | None = None,
        batch_size: int | None = None,
        candidates: float | None = None,
        blocks: int | None = None,
        stratify: Any = None,
        random_state: int | np.random.Generator | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = False,
    ) -> None:
        super().__init__(
            n, stratify=stratify, random_state=random_state, device=device, progress=progress
        )
        self.sketch_dim = sketch_dim
        self.sketch = sketch
        self.objective = objective
        self.directions = directions
        self.ridge = ridge
        self.center = center
        self.c = c
        self.rounding = rounding
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.candidates = candidates
        self.blocks = blocks
        self._carried_blocks: int | None = None

    def fit(self, features: object, labels: object = None, target: object = None) -> SkMM:
        """As :meth:`Selector.fit`; a store or gradient sketch of ``target="jacobian_blocks"``
        gradients sets ``blocks`` (unless it is given)."""
        self._carried_blocks = source_blocks(features)
        super().fit(features, labels, target)
        return self

    def _blocks(self) -> int:
        """K, the blocks per row: the option, else what the features carry, else 1."""
        if self.blocks is not None:
            return self.blocks
        return self._carried_blocks or 1

    def _objective(self) -> str:
        """The objective's name, an alias resolved."""
        if isinstance(self.objective, str):
            return OBJECTIVE_ALIASES.get(self.objective, self.objective)
        return self.objective

    def _centered(self) -> bool:
        """Whether the moments are taken about the mean (the matrix objectives' ``center``)."""
        return self._objective() != "diagonal" and bool(self._option("center"))

    def _defaults(self) -> dict[str, Any]:
        """The chosen objective's options and their defaults."""
        return DIAGONAL_DEFAULTS if self._objective() == "diagonal" else MATRIX_DEFAULTS

    def _option(self, name: str) -> Any:
        """The option's value, or its default for the chosen objective."""
        value = getattr(self, name)
        return self._defaults()[name] if value is None else value

    def _resolved_options(self) -> dict[str, Any]:
        """The objective's canonical name and its options' defaults where left at None."""
        unset = {
            name: value for name, value in self._defaults().items() if getattr(self, name) is None
        }
        return {"objective": self._objective(), **unset}

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_positive_int(self.sketch_dim, "sketch_dim")
        check_choice(self.sketch, "sketch", SKMM_SKETCHES)
        if self._objective() != self.objective:
            warnings.warn(
                f"objective={self.objective!r} is renamed {self._objective()!r}; "
                f"use objective={self._objective()!r} (the old name will be removed)",
                FutureWarning,
                stacklevel=4,
            )
        else:
            check_choice(self.objective, "objective", OBJECTIVES)
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if self.blocks is not None:
            check_positive_int(self.blocks, "blocks")
        if n_cols % self._blocks():
            raise ValueError(
                f"blocks={self._blocks()} splits each row into equal blocks, but the rows have "
                f"{n_cols} columns, not a multiple of {self._blocks()}"
            )
        if self.candidates is not None:
            check_positive_float(self.candidates, "candidates")
            if self.candidates < 1:
                raise ValueError(
                    f"candidates must be at least 1 (the design chooses n rows among "
                    f"candidates·n), got {self.candidates!r}"
                )
            if self._target is None:
                raise ValueError(
                    "candidates= restricts a targeted selection to the pool rows nearest the "
                    "target: pass target=... as well, or leave candidates unset"
                )
        own = self._defaults()
        other = MATRIX_DEFAULTS if own is DIAGONAL_DEFAULTS else DIAGONAL_DEFAULTS
        misplaced = [name for name in other if getattr(self, name) is not None]
        if misplaced:
            raise ValueError(
                f"option(s) {', '.join(misplaced)} do not apply to objective="
                f"{self._objective()!r}; its options are: {', '.join(own)}"
            )
        if self._objective() == "diagonal":
            check_positive_float(self._option("c"), "c")
            check_choice(self._option("rounding"), "rounding", ROUNDINGS)
            check_positive_int(self._option("max_iter"), "max_iter")
            check_positive_float(self._option("tol"), "tol")
        else:
            directions = self._option("directions")
            if isinstance(directions, str):
                check_choice(directions, "directions", DIRECTION_RULES)
            else:
                check_positive_int(directions, "directions")
            check_positive_float(self._option("ridge"), "ridge")
            if not isinstance(self._option("center"), (bool, np.bool_)):
                raise TypeError(f"center must be True or False, got {self.center!r}")
        width = n_cols // self._blocks()
        if (self.sketch == "none" or width <= self.sketch_dim) and width > UNSKETCHED_MAX_COLUMNS:
            gib = width * width * 8 / 2**30
            raise ValueError(
                f"sketch='none' with r = {width} columns needs an r×r float64 covariance "
                f"({gib:.1f} GiB) and O(N·r) per solver pass; sketch instead "
                "(sketch='sparse_sign', sketch_dim=512)"
            )

    def _memory_bytes(self, n_pool: int, n_cols: int, n: int, itemsize: int) -> int:
        """The (N, K·m) sketch, or the (N, r) features when they are not sketched."""
        blocks = self._blocks()
        unsketched = self.sketch == "none" or n_cols // blocks <= self.sketch_dim
        width = n_cols if unsketched else blocks * self.sketch_dim
        held = n_pool * width * itemsize
        if self.candidates is None or self._target is None:
            return held
        count = candidate_count(self.candidates, n, self._target.n_rows, n_pool)
        return held + neighbor_bytes(n_pool, width, count, self._target.n_rows)

    def _memory_advice(self) -> str:
        if self.sketch == "none":
            return "sketch the features instead (sketch='gaussian', sketch_dim=256)"
        return "use a smaller sketch_dim (the sketch of the whole pool is held in memory)"

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[PoolRows, dict[str, Any]]:
        began = time.perf_counter()
        self._sketched_dim = None if self.sketch == "none" else self.sketch_dim
        rows = PoolRows.of(features)
        blocks = self._blocks()
        if self.sketch == "none" or features.n_cols // blocks <= self.sketch_dim:
            reason = "sketch='none'" if self.sketch == "none" else "r <= sketch_dim"
            info: dict[str, Any] = {"sketch": {"kind": "none", "reason": reason}}
        else:
            sketch_seed = derive_seed(seed, "sketch")
            layout = rows.layout
            sketched = sketch_features(
                features,
                self.sketch_dim,
                self.sketch,
                sketch_seed,
                self.batch_size,
                progress=self.progress if layout.rank == 0 else False,
                rows=(layout.start, layout.stop),
                blocks=blocks,
            )
            rows = PoolRows(layout, sketched)
            info = {
                "sketch": {"kind": self.sketch, "sketch_dim": self.sketch_dim, "seed": sketch_seed}
            }
        if blocks > 1:
            info["sketch"]["blocks"] = blocks
        self._target_spectrum = self._target_blocks = None
        if self._target is not None:
            info["target"] = self._prepare_target(info["sketch"])
        info["timings"] = {"sketch": time.perf_counter() - began}
        return rows, info

    def _prepare_target(self, sketch: dict[str, Any]) -> dict[str, Any]:
        """Sketch the target's rows with the pool's map and keep the spectrum of their moment."""
        target = self._target
        if sketch["kind"] == "none":
            rows = target.to_tensor()
        else:
            rows = sketch_features(
                target, self.sketch_dim, self.sketch, sketch["seed"], None, blocks=self._blocks()
            )
        if self.candidates is not None:  # built once, for every class's candidates
            self._target_blocks = neighbor_blocks(rows)
        self._target_spectrum = spectrum(rows, center=self._centered(), blocks=self._blocks())
        return {
            "effective_rank": self._target_spectrum.effective_rank(),
            "intrinsic_dimension": self._target_spectrum.intrinsic_dimension(),
        }

    def _select(self, data: PoolRows, n: int, seed: int) -> MethodOutput:
        if self._target_blocks is None:
            return self._select_rows(data, n, seed)
        count = candidate_count(self.candidates, n, self._target_blocks.n_rows, data.n_rows)
        began = time.perf_counter()
        if count == data.n_rows:
            near, found = np.arange(count, dtype=np.int64), {"note": "every pool row"}
        else:
            picks, found = nearest_picks(
                data, self._target_blocks, count, derive_seed(seed, "candidates")
            )
            near = np.sort(picks)
        seconds = time.perf_counter() - began
        output = self._select_rows(data.restrict(near), n, seed)
        output.indices = near[np.asarray(output.indices, dtype=np.int64)]
        output.info["candidates"] = {"factor": self.candidates, "rows": count, **found}
        output.timings = {"candidates": seconds, **output.timings}
        return output

    def _select_rows(self, data: PoolRows, n: int, seed: int) -> MethodOutput:
        pool = data.n_rows
        began = time.perf_counter()
        centered = self._centered()
        spec = self._target_spectrum
        if spec is None:
            spec = spectrum(data, center=centered, blocks=self._blocks())
        rank = spec.effective_rank()
        timings = {"spectrum": time.perf_counter() - began}
        diagnostics: dict[str, Any] = {
            "objective_kind": self._objective(),
            "intrinsic_dimension": spec.intrinsic_dimension(),
            "effective_rank": rank,
            "eigenvalues": spec.eigenvalues[:64].tolist(),
        }
        if n == pool or rank == 0:
            if n == pool:
                note = "n equals the pool size: every row is selected"
            elif self._target_spectrum is not None:
                note = (
                    "the target's rows have no spread (all equal, or all zero): no direction "
                    "to match, rows drawn uniformly"
                )
            elif centered and bool(spec.mean.abs().max() > 0):
                note = (
                    "all rows are equal: no direction to match about their mean, rows drawn "
                    "uniformly"
                )
            else:
                note = "all features are zero: no direction to match, rows drawn uniformly"
            diagnostics["note"] = note
            indices = np.sort(numpy_rng(seed, "rounding").choice(pool, size=n, replace=False))
            weights = np.full(n, 1.0 / n) if self._objective() == "diagonal" else None
            return MethodOutput(indices, weights, diagnostics, timings)
        if self._objective() == "diagonal":
            output = self._match_diagonal(data, spec, rank, n, seed)
        else:
            output = self._match_matrix(data, spec, n)
        output.info = {**diagnostics, **output.info}
        output.timings = {**timings, **output.timings}
        return output

    def _match_matrix(self, data: PoolRows, spec: Spectrum, n: int) -> MethodOutput:
        """Greedy D-/A-optimal design on the top whitened directions (:mod:`skmm.design`).

        In-memory pools keep the whitened rows in memory; streamed ones spill them to disk.
        """
        began = time.perf_counter()
        choice = choose_directions(
            spec, self._option("directions"), self._sketched_dim, n * self._blocks()
        )
        whitened = WhitenedRows(
            data, spec, choice.k, keep=data.in_memory, intercept=spec.mean is not None
        )
        result = greedy_design(
            whitened, n, self._objective(), self._option("ridge"), progress=self.progress
        )
        points = result.points.reshape(n * whitened.blocks, whitened.dim)
        gammas = torch.linalg.eigvalsh(points.T @ points / n).cpu().numpy()
        smallest = float(gammas[0])
        info = {
            "directions": {"k": choice.k, "rule": choice.rule, "gap_ratio": choice.gap},
            "centered": spec.mean is not None,
            "gamma_min": smallest,
            "gamma_max": float(gammas[-1]),
            "c_S": 1.0 / smallest if smallest > 1e-12 else float("inf"),
            "c_S_directions": whitened.dim,
            "greedy": {"gains": result.gains.tolist(), "evaluations": result.evaluations},
        }
        if whitened.blocks > 1:
            info["blocks"] = whitened.blocks
        return MethodOutput(result.order, None, info, {"design": time.perf_counter() - began})

    def _match_diagonal(
        self, data: PoolRows, spec: Spectrum, rank: int, n: int, seed: int
    ) -> MethodOutput:
        """The diagonal objective, solved on the capped simplex and rounded (:mod:`skmm.moments`).

        The solver runs on this rank's rows of P; the weights are gathered for the rounding.
        """
        pool, layout = data.n_rows, data.layout
        began = time.perf_counter()
        values = spec.eigenvalues[:rank]
        vectors = spec.eigenvectors[:, :rank].to(data.device)
        blocks = spec.blocks

        def project(rows: torch.Tensor) -> torch.Tensor:
            """(v_jᵀ g̃_ik): each row's K blocks' projections side by side, (rows, K·rank)."""
            flat = rows.to(torch.float64).reshape(rows.shape[0] * blocks, rows.shape[1] // blocks)
            return row_products(flat, vectors).reshape(rows.shape[0], blocks * rank)

        def squares_of(rows: torch.Tensor) -> torch.Tensor:
            """P_ij = Σ_k (v_jᵀ g̃_ik)², (rows, rank)."""
            return project(rows).square_().reshape(rows.shape[0], blocks, rank).sum(dim=1)

        parts = [squares_of(rows) for _, _, rows in data.chunks()]
        squares = (
            torch.cat(parts)
            if parts
            else torch.zeros(0, rank, dtype=torch.float64, device=data.device)
        )
        problem = MomentProblem(squares, values / self._option("c"), 1.0 / n, layout=layout)
        del parts, squares
        start_rows = numpy_rng(seed, "init").choice(pool, size=n, replace=False)
        start = _local_indicator(start_rows, layout.start, layout.n_local, 1.0 / n, data.device)
        result = solve(
            problem,
            start,
            max_iter=self._option("max_iter"),
            tol=self._option("tol"),
            progress=self.progress,
        )
        timings = {"solve": time.perf_counter() - began}
        began = time.perf_counter()
        weights = layout.gather(result.weights).cpu().numpy()
        indices = round_weights(weights, n, self._option("rounding"), numpy_rng(seed, "rounding"))
        timings["rounding"] = time.perf_counter() - began
        chosen = weights[indices]
        chosen = chosen / chosen.sum() if chosen.sum() > 0 else np.full(n, 1.0 / n)
        drawn = _local_indicator(indices, layout.start, layout.n_local, 1.0 / n, data.device)
        picked = layout.rows_at(lambda local: project(data.take(local)), indices)
        picked = picked.reshape(n * blocks, rank)
        info = {
            "solver": result.summary(),
            "objective": result.objective,
            "coreset_objective": problem.objective(problem.moments_of(drawn)),
            **coreset_condition(picked, values, spec.intrinsic_dimension(), blocks),
        }
        return MethodOutput(indices, chosen, info, timings)


def candidate_count(factor: float, n: int, n_target: int, n_pool: int) -> int:
    """Pool rows the targeted design may choose from: ⌈c·n⌉, and at least one per target row
    (so every target row has had a turn), at most the pool."""
    return min(n_pool, max(math.ceil(factor * n), n_target))


def _local_indicator(
    positions: np.ndarray, start: int, n_local: int, value: float, device: torch.device
) -> torch.Tensor:
    """This rank's part of the N-vector holding ``value`` at ``positions`` and 0 elsewhere."""
    out = torch.zeros(n_local, dtype=torch.float64, device=device)
    local = np.asarray(positions, dtype=np.int64) - start
    local = local[(local >= 0) & (local < n_local)]
    out[torch.as_tensor(local, device=device)] = value
    return out


def coreset_condition(
    picked: torch.Tensor, eigenvalues: torch.Tensor, rank: int, blocks: int = 1
) -> dict[str, Any]:
    """c_S on the top directions: the least c with Σ̃ ⪯ c·Σ̃_S there (inf if Σ̃_S is singular).

    ``picked`` holds the coreset's projections v_jᵀ g̃_i (n × directions; n·K rows, each
    row's K blocks in turn, for rows of ``blocks`` = K). In whitened coordinates
    z_i = Λ_k^{-1/2} V_kᵀ g̃_i the pool's moment is I, so c_S = 1/λ_min(Z_SᵀZ_S/n) with
    k = min(r̄, n·K, rank).
    """
    n = int(picked.shape[0]) // blocks
    k = max(1, min(rank, n * blocks, picked.shape[1]))
    whitened = picked[:, :k] / eigenvalues[:k].to(picked.device).sqrt()
    smallest = float(torch.linalg.eigvalsh(whitened.T @ whitened / n)[0])
    return {
        "c_S": 1.0 / smallest if smallest > 1e-12 else float("inf"),
        "c_S_directions": k,
    }
