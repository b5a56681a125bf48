"""Uniform sampling without replacement: the baseline every method must beat.

Row i gets the key u_i, the i-th number of one Philox stream seeded from the selection's
seed, and the n rows with the smallest keys are selected: a uniformly random n-subset. Any
range of rows can draw its keys alone (Philox jumps ahead), so under torchrun each rank
keys its own rows, keeps its n smallest, and the global n smallest are merged: the same
selection on 1 or P ranks, in O(N/P + n·P) time and O(n + chunk) memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..inputs import FeatureMatrix
from ..rows import Layout, smallest_pairs
from ..seeding import derive_seed
from .base import MethodOutput, Selector, register

KEY_CHUNK = 2**20


def uniform_keys(seed: int, start: int, stop: int) -> np.ndarray:
    """Keys u_i ~ U[0, 1) of rows [start, stop): the i-th double of ``seed``'s Philox stream."""
    generator = np.random.Philox(key=seed)
    generator.advance(start // 4)  # each Philox counter step yields four 64-bit draws
    rng = np.random.Generator(generator)
    rng.random(start % 4)
    return rng.random(stop - start)


@register
class Uniform(Selector):
    """n rows drawn uniformly without replacement; reads no feature values (O(N))."""

    name = "uniform"
    row_separable = True

    def _prepare(
        self, features: FeatureMatrix, labels: np.ndarray | None, seed: int
    ) -> tuple[Any, dict[str, Any]]:
        return Layout.of(features.n_rows), {}

    def _select(self, data: Layout, n: int, seed: int) -> MethodOutput:
        key_seed = derive_seed(seed, "uniform")
        values = np.empty(0)
        positions = np.empty(0, dtype=np.int64)
        for start in range(data.start, data.stop, KEY_CHUNK):
            stop = min(start + KEY_CHUNK, data.stop)
            values = np.concatenate([values, uniform_keys(key_seed, start, stop)])
            positions = np.concatenate([positions, np.arange(start, stop)])
            best = smallest_pairs(values, positions, n)
            keep = np.isin(positions, best)
            values, positions = values[keep], positions[keep]
        return MethodOutput(np.sort(data.merge_smallest(values, positions, n)))
