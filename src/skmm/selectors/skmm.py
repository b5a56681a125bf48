"""SkMM: sketch the gradients, then match the sketched moments (the seed's objective).

1. Sketch G (N × r) to G̃ = GΓ (N × m) with a block-seeded JL map (skipped when r ≤ m).
2. Σ̃ = G̃ᵀG̃/N = VΛVᵀ in float64; P_ij = (v_jᵀ g̃_i)² over the directions with λ_j > 0.
3. Solve min_{s ∈ [0,1/n]^N, Σs=1} Σ_j (λ_j/c − (Pᵀs)_j)_+² (γ eliminated in closed form)
   by accelerated projected gradient from s = 1/n on n uniformly drawn rows.
4. Round s to exactly n rows with a fixed-size design whose inclusion probabilities are n·s_i.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..inputs import (
    FeatureMatrix,
    check_choice,
    check_positive_float,
    check_positive_int,
)
from ..moments import MomentProblem, solve
from ..rounding import ROUNDINGS, round_weights
from ..seeding import derive_seed, numpy_rng
from ..sketch import SKETCH_KINDS, sketch_features
from ..spectrum import UNSKETCHED_MAX_COLUMNS, spectrum
from .base import MethodOutput, Selector, register

SKMM_SKETCHES = (*SKETCH_KINDS, "none")


@register
class SkMM(Selector):
    """Sketchy Moment Matching (arXiv 2407.06120) with the seed's diagonal objective.

    Parameters beyond the common ones: ``sketch_dim`` (m), ``sketch`` ("gaussian",
    "sparse_sign" or "none"), ``c`` (target: coreset moments ≥ λ_j/c), ``rounding``
    (see :mod:`skmm.rounding`), ``max_iter`` and ``tol`` of the solver, ``batch_size`` (rows
    per sketching batch).
    """

    name = "skmm"

    def __init__(
        self,
        n: int,
        *,
        sketch_dim: int = 256,
        sketch: str = "gaussian",
        c: float = 1.0,
        rounding: str = "systematic",
        max_iter: int = 1000,
        tol: float = 1e-4,
        batch_size: int | None = None,
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
        self.c = c
        self.rounding = rounding
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size

    def _check_params(self, n_pool: int, n_cols: int) -> None:
        check_positive_int(self.sketch_dim, "sketch_dim")
        check_choice(self.sketch, "sketch", SKMM_SKETCHES)
        check_positive_float(self.c, "c")
        check_choice(self.rounding, "rounding", ROUNDINGS)
        check_positive_int(self.max_iter, "max_iter")
        check_positive_float(self.tol, "tol")
        if self.batch_size is not None:
            check_positive_int(self.batch_size, "batch_size")
        if (self.sketch == "none" or n_cols <= self.sketch_dim) and n_cols > UNSKETCHED_MAX_COLUMNS:
            gib = n_cols * n_cols * 8 / 2**30
            raise ValueError(
                f"sketch='none' with r = {n_cols} columns needs an r×r float64 covariance "
                f"({gib:.1f} GiB) and O(N·r) per solver pass; sketch instead "
                "(sketch='sparse_sign', sketch_dim=512)"
            )

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        began = time.perf_counter()
        if self.sketch == "none" or features.n_cols <= self.sketch_dim:
            reason = "sketch='none'" if self.sketch == "none" else "r <= sketch_dim"
            sketched = features.to_tensor()
            info: dict[str, Any] = {"sketch": {"kind": "none", "reason": reason}}
        else:
            sketch_seed = derive_seed(seed, "sketch")
            sketched = sketch_features(
                features,
                self.sketch_dim,
                self.sketch,
                sketch_seed,
                self.batch_size,
                progress=self.progress,
            )
            info = {
                "sketch": {"kind": self.sketch, "sketch_dim": self.sketch_dim, "seed": sketch_seed}
            }
        info["timings"] = {"sketch": time.perf_counter() - began}
        return sketched, info

    def _select(self, data: torch.Tensor, n: int, seed: int) -> MethodOutput:
        pool = int(data.shape[0])
        timings: dict[str, float] = {}
        began = time.perf_counter()
        spec = spectrum(data)
        rank = spec.effective_rank()
        timings["spectrum"] = time.perf_counter() - began
        diagnostics: dict[str, Any] = {
            "intrinsic_dimension": spec.intrinsic_dimension(),
            "effective_rank": rank,
            "eigenvalues": spec.eigenvalues[:64].tolist(),
        }
        if n == pool or rank == 0:
            diagnostics["note"] = (
                "n equals the pool size: every row is selected"
                if n == pool
                else "all features are zero: no direction to match, rows drawn uniformly"
            )
            rng = numpy_rng(seed, "rounding")
            indices = np.sort(rng.choice(pool, size=n, replace=False))
            return MethodOutput(indices, np.full(n, 1.0 / n), {**diagnostics, "timings": timings})
        began = time.perf_counter()
        values = spec.eigenvalues[:rank]
        projections = data.to(torch.float64) @ spec.eigenvectors[:, :rank]
        problem = MomentProblem(projections.square(), values / self.c, 1.0 / n)
        start = torch.zeros(pool, dtype=torch.float64, device=data.device)
        start_rows = numpy_rng(seed, "init").choice(pool, size=n, replace=False)
        start[torch.as_tensor(start_rows, device=data.device)] = 1.0 / n
        result = solve(problem, start, max_iter=self.max_iter, tol=self.tol, progress=self.progress)
        timings["solve"] = time.perf_counter() - began
        began = time.perf_counter()
        weights = result.weights.cpu().numpy()
        indices = round_weights(weights, n, self.rounding, numpy_rng(seed, "rounding"))
        timings["rounding"] = time.perf_counter() - began
        chosen = weights[indices]
        chosen = chosen / chosen.sum() if chosen.sum() > 0 else np.full(n, 1.0 / n)
        drawn = torch.zeros(pool, dtype=torch.float64, device=data.device)
        drawn[torch.as_tensor(indices, device=data.device)] = 1.0 / n
        diagnostics.update(
            {
                "solver": result.summary(),
                "objective": result.objective,
                "coreset_objective": problem.objective(problem.moments_of(drawn)),
                **coreset_condition(
                    projections, values, indices, diagnostics["intrinsic_dimension"]
                ),
                "timings": timings,
            }
        )
        return MethodOutput(indices, chosen, diagnostics)


def coreset_condition(
    projections: torch.Tensor, eigenvalues: torch.Tensor, indices: np.ndarray, rank: int
) -> dict[str, Any]:
    """c_S on the top directions: the least c with Σ̃ ⪯ c·Σ̃_S there (inf if Σ̃_S is singular).

    In whitened coordinates z_i = Λ_k^{-1/2} V_kᵀ g̃_i the pool's moment is I, so
    c_S = 1/λ_min(Z_SᵀZ_S/n) with k = min(r̄, n, rank).
    """
    k = max(1, min(rank, len(indices), projections.shape[1]))
    rows = projections[torch.as_tensor(indices, device=projections.device), :k]
    whitened = rows / eigenvalues[:k].sqrt()
    smallest = float(torch.linalg.eigvalsh(whitened.T @ whitened / len(indices))[0])
    return {
        "c_S": 1.0 / smallest if smallest > 1e-12 else float("inf"),
        "c_S_directions": k,
    }
