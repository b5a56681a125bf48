"""The one-call API: ``skmm.select(features, n, method=...)`` and the method registry."""

from __future__ import annotations

from typing import Any

import numpy as np

from .selection import Selection
from .selectors import REGISTRY, Selector


def methods() -> list[str]:
    """Names of the available selection methods."""
    return sorted(REGISTRY)


def get_method(method: str) -> type[Selector]:
    """The selector class registered as ``method``; unknown names list the known ones."""
    if not isinstance(method, str) or method not in REGISTRY:
        raise ValueError(f"unknown method {method!r}; available methods: {', '.join(methods())}")
    return REGISTRY[method]


def make_selector(method: str, n: int, **options: Any) -> Selector:
    """An unfitted selector for ``method``; an option the method does not take is an error."""
    cls = get_method(method)
    known = [name for name in cls.param_names() if name != "n"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"method {method!r} does not take option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(known)}"
        )
    return cls(n, **options)


def select(
    features: Any,
    n: int,
    method: str = "skmm",
    *,
    labels: Any = None,
    target: Any = None,
    random_state: int | np.random.Generator | None = None,
    **options: Any,
) -> Selection:
    """Select n of the N rows of ``features`` (N, r) with ``method``.

    ``features`` is a numpy array, memmap or torch tensor of per-sample gradients or
    features, a scipy sparse matrix or torch sparse tensor (sketched without densifying), a
    path to an array file (.npy, .npz dense or from scipy.sparse.save_npz, .safetensors) or
    a sketch store, a
    ``SketchStore``, or the ``GradientSketch`` that ``sketch_gradients`` returns (whose labels
    are used when ``labels`` is None); ``labels`` (length N) enable ``stratify``; ``target``
    (T, r), in any of the same forms, asks a targeted method (``"skmm"``, or the baselines
    ``"less"`` and ``"knn"``, which need one) for the rows of ``features`` that serve that
    target set best (docs/skmm.md "Selecting for a target");
    ``options`` are the method's own parameters (see ``skmm.methods()`` and each class).
    Returns a :class:`Selection`.
    """
    selector = make_selector(method, n, random_state=random_state, **options)
    return selector.fit(features, labels, target=target).selection_
