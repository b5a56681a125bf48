"""SkMM's default on pools whose structure the design must see through (hypothesis).

Pools of well-separated clusters (centers 10 apart per coordinate on average, spread 0.05),
each transformed in ways that do not change which rows are alike: a constant offset of every
feature, a shift to nonnegative values, one cluster with 1% of the rows, half the rows
duplicated, one direction of huge variance unrelated to the clusters. Whatever the mix, with
n ≥ 2 × clusters the default coreset must hold every cluster, and no cluster's share may
collapse: the design covers the C − 1 directions between clusters and the intercept (the
direction every row shares once), which a coreset missing a cluster leaves singular.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm

SHARE_FLOOR = 0.25
"""No cluster's share of the coreset falls below 1/4 of its share of the pool."""
SHARE_CEILING = 2.0
"""No cluster's share exceeds twice max(its pool share, 1/clusters): a design spreads its rows
over the directions, so a small cluster may get up to about an equal share, not more."""


def clustered_pool(
    seed: int,
    clusters: int,
    width: int,
    rows: int,
    *,
    offset: bool,
    nonnegative: bool,
    imbalanced: bool,
    duplicated: bool,
    dominant: bool,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, width)) * 10
    shares = rng.dirichlet(np.full(clusters, 2.0))
    if imbalanced:
        shares[0] = 0.01
        shares[1:] *= 0.99 / shares[1:].sum()
    counts = np.maximum(1, np.round(shares * rows).astype(int))
    labels = np.repeat(np.arange(clusters), counts)
    features = centers[labels] + 0.05 * rng.standard_normal((labels.size, width))
    if dominant:
        direction = rng.standard_normal(width)
        direction /= np.linalg.norm(direction)
        features += np.outer(rng.standard_normal(labels.size) * 1000, direction)
    if duplicated:
        half = labels.size // 2
        features = np.concatenate([features, features[:half]])
        labels = np.concatenate([labels, labels[:half]])
    if nonnegative:
        features = features - features.min(axis=0)
    if offset:
        features = features + 50.0
    return features.astype(np.float32), labels


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    clusters=st.integers(2, 8),
    width=st.sampled_from([20, 60, 300]),
    rows=st.integers(200, 700),
    multiple=st.sampled_from([2, 4]),
    offset=st.booleans(),
    nonnegative=st.booleans(),
    imbalanced=st.booleans(),
    duplicated=st.booleans(),
    dominant=st.booleans(),
)
def test_the_default_covers_every_cluster_and_keeps_their_shares(
    seed, clusters, width, rows, multiple, **transforms
):
    features, labels = clustered_pool(seed, clusters, width, rows, **transforms)
    n = multiple * clusters
    selection = skmm.select(features, n, random_state=seed)
    got = np.bincount(labels[selection.indices], minlength=clusters) / n
    pool = np.bincount(labels, minlength=clusters) / labels.size
    assert (got > 0).all(), (got, pool)
    assert (got >= SHARE_FLOOR * pool).all(), (got, pool)
    assert (got <= SHARE_CEILING * np.maximum(pool, 1 / clusters)).all(), (got, pool)


def test_a_constant_offset_does_not_change_the_selection():
    features, _ = clustered_pool(
        3,
        5,
        60,
        400,
        offset=False,
        nonnegative=True,
        imbalanced=False,
        duplicated=False,
        dominant=False,
    )
    base = skmm.select(features, 20, random_state=0)
    for shift in (1.0, 100.0):
        moved = skmm.select(features + np.float32(shift), 20, random_state=0)
        assert np.array_equal(np.sort(moved.indices), np.sort(base.indices)), shift


def test_the_direction_count_grows_with_the_budget_past_a_dominant_direction():
    features, _ = clustered_pool(
        1,
        6,
        300,
        600,
        offset=True,
        nonnegative=True,
        imbalanced=False,
        duplicated=False,
        dominant=True,
    )
    for n in (12, 40, 200):
        directions = skmm.select(features, n, random_state=0).info["directions"]
        assert directions["k"] == min(n // 2, 128), directions
