"""Rounding fractional weights s (0 ≤ s_i ≤ 1/n, Σs = 1) into exactly n distinct indices.

π_i = n·s_i lies in [0, 1] and sums to n, so s defines the inclusion probabilities of a
fixed-size sampling design:

- ``systematic``: systematic sampling in a random order; P(i ∈ S) = π_i exactly, O(N).
- ``pivotal``: Deville & Tillé's ordered pivotal method in a random order; P(i ∈ S) = π_i
  exactly, and the sample is spread (negatively correlated) along the order.
- ``topn``: the n largest π_i, ties broken at random (deterministic given π).
- ``weighted``: successive sampling without replacement with probability ∝ π_i (Efraimidis &
  Spirakis keys u_i^{1/π_i}); P(i ∈ S) is close to, not exactly, π_i.
"""

from __future__ import annotations

import numpy as np

ROUNDINGS = ("systematic", "pivotal", "topn", "weighted")
_SNAP = 1e-9


def inclusion_probabilities(weights: np.ndarray, n: int) -> np.ndarray:
    """π = n·s clipped to [0, 1], values within 1e-9 of 0 or 1 snapped, rescaled to sum to n."""
    pi = np.clip(np.asarray(weights, dtype=np.float64) * n, 0.0, 1.0)
    pi[pi < _SNAP] = 0.0
    pi[pi > 1.0 - _SNAP] = 1.0
    ones = int((pi == 1.0).sum())
    if ones > n:
        raise ValueError(f"{ones} weights are at the cap 1/n but only n = {n} can be selected")
    fractional = (pi > 0.0) & (pi < 1.0)
    mass = float(pi[fractional].sum())
    needed = n - ones
    if needed > 0 and mass <= 0.0:
        raise ValueError(f"weights give {ones} certain picks and no mass for the other {needed}")
    if fractional.any():
        pi[fractional] *= needed / mass
        if pi.max() > 1.0:
            return inclusion_probabilities(pi / n, n)
    return pi


def systematic(pi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic sampling of the π-intervals laid out in a random order."""
    order = rng.permutation(pi.size)
    cumulative = np.cumsum(pi[order])
    cumulative *= n / cumulative[-1]
    points = rng.random() + np.arange(n)
    positions = np.searchsorted(cumulative, points, side="left")
    return order[np.minimum(positions, pi.size - 1)]


def pivotal(pi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Deville–Tillé ordered pivotal sampling over the fractional π in a random order."""
    selected = list(np.flatnonzero(pi == 1.0))
    fractional = np.flatnonzero((pi > 0.0) & (pi < 1.0))
    fractional = fractional[rng.permutation(fractional.size)]
    draws = rng.random(fractional.size)
    if fractional.size:
        holder, mass = int(fractional[0]), float(pi[fractional[0]])
        for position in range(1, fractional.size):
            other, other_mass = int(fractional[position]), float(pi[fractional[position]])
            total = mass + other_mass
            if total < 1.0:
                if draws[position] >= mass / total:
                    holder = other
                mass = total
            else:
                if draws[position] < (1.0 - other_mass) / (2.0 - total):
                    selected.append(holder)
                    holder = other
                else:
                    selected.append(other)
                mass = total - 1.0
        if len(selected) < n and mass > 1.0 - 1e-6:
            selected.append(holder)
    return np.asarray(selected, dtype=np.int64)


def topn(pi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The n largest π, ties broken by random keys."""
    keys = rng.random(pi.size)
    return np.lexsort((keys, -pi))[:n]


def weighted(pi: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws without replacement ∝ π (see :func:`successive_sampling`)."""
    return successive_sampling(pi, n, rng)


def successive_sampling(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n rows drawn one by one without replacement, each with P ∝ weight among those left.

    Efraimidis & Spirakis: the n largest keys log(u_i)/w_i (u_i uniform), in decreasing key
    order, are distributed as the successive draws; O(N + n log n). Needs ≥ n positive weights.
    """
    weights = np.asarray(weights, dtype=np.float64)
    positive = np.flatnonzero(weights > 0)
    if positive.size < n:
        raise ValueError(f"only {positive.size} rows have positive weight; cannot draw {n}")
    keys = np.log(rng.random(positive.size)) / weights[positive]
    top = np.argpartition(-keys, n - 1)[:n] if n < positive.size else np.arange(positive.size)
    return positive[top[np.argsort(-keys[top], kind="stable")]].astype(np.int64)


_DESIGNS = {"systematic": systematic, "pivotal": pivotal, "topn": topn, "weighted": weighted}


def round_weights(weights: np.ndarray, n: int, method: str, rng: np.random.Generator) -> np.ndarray:
    """Exactly n distinct indices drawn from the fractional weights by ``method``.

    Floating-point edge cases (a point on an interval boundary, a last pivot short of 1 by
    rounding) can leave the draw one short; it is completed with the largest unselected π.
    """
    if method not in _DESIGNS:
        raise ValueError(f"unknown rounding {method!r}; choose one of: {', '.join(ROUNDINGS)}")
    pi = inclusion_probabilities(weights, n)
    chosen = np.unique(_DESIGNS[method](pi, n, rng).astype(np.int64))
    if chosen.size < n:
        rest = np.setdiff1d(np.arange(pi.size), chosen)
        fill = rest[np.lexsort((rest, -pi[rest]))][: n - chosen.size]
        chosen = np.union1d(chosen, fill)
    if chosen.size != n:
        raise RuntimeError(f"rounding produced {chosen.size} indices instead of {n}")
    return chosen
