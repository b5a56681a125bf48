"""The paper's synthetic high-dimensional regression: a well-separated Gaussian mixture.

Pool (DESIGN.md §4): N points in R^r from k clusters with random sizes (proportions drawn from
a symmetric Dirichlet(1), every cluster non-empty), centers μ_c ~ N(0, I_r) (so centers are
≈ orthogonal and ≈ √r apart), points x_i = μ_c + noise·ε_i with ε_i ~ N(0, I_r), and a
regression target constant per cluster, y_c ~ N(0, 1). A coreset that misses a cluster cannot
predict it, so the risk jumps by about that cluster's share times y_c².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..seeding import numpy_rng


@dataclass(frozen=True)
class MixturePool:
    """Features (N, r) float64, targets (N,), cluster of each row (N,)."""

    features: np.ndarray
    targets: np.ndarray
    clusters: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1


def make_mixture(
    n_rows: int = 2000,
    n_features: int = 2400,
    n_clusters: int = 8,
    noise: float = 1e-3,
    seed: int = 0,
) -> MixturePool:
    """The Gaussian-mixture pool of the paper's synthetic study (seeded, see module doc)."""
    rng = numpy_rng(seed, "mixture")
    while True:
        shares = rng.dirichlet(np.ones(n_clusters))
        sizes = rng.multinomial(n_rows, shares)
        if sizes.min() > 0:
            break
    clusters = np.repeat(np.arange(n_clusters), sizes)
    clusters = clusters[rng.permutation(n_rows)]
    centers = rng.standard_normal((n_clusters, n_features))
    features = centers[clusters] + noise * rng.standard_normal((n_rows, n_features))
    values = rng.standard_normal(n_clusters)
    return MixturePool(features, values[clusters], clusters)


def ridge_fit(features: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    """θ = argmin (1/n)‖Xθ − y‖² + α‖θ‖², solved in the n×n dual: θ = Xᵀ(XXᵀ + nαI)⁻¹y."""
    n = features.shape[0]
    gram = features @ features.T
    dual = np.linalg.solve(gram + n * alpha * np.eye(n), targets)
    return features.T @ dual


def risk(pool: MixturePool, theta: np.ndarray) -> float:
    """Mean squared error of x ↦ xᵀθ over all N points of the pool."""
    return float(np.mean((pool.features @ theta - pool.targets) ** 2))
