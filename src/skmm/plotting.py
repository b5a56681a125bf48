"""A picture of a selection: spectrum and matched directions, the pool and its coreset, classes.

One figure with up to three panels:

1. the sketched spectrum: SkMM's eigenvalues of Σ̃ = G̃ᵀG̃/N (``info["eigenvalues"]``) with
   the k matched directions marked, or, for other methods, the eigenvalues of the features'
   second moment computed here;
2. the pool projected on its two leading centered directions (principal components, of the
   features sketched to :data:`PLOT_SKETCH_DIM` columns when they are wider), with the coreset
   highlighted (at most :data:`MAX_POINTS` pool rows are drawn, evenly spaced);
3. when labels are known, each class's share of the pool against its share of the coreset.

matplotlib is imported only here, and through its object API (no pyplot, no global backend).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .inputs import MissingDependencyError, as_feature_matrix, check_labels, open_features
from .io import atomic_write

if TYPE_CHECKING:
    from .selection import Selection

PLOT_SKETCH_DIM = 256
MAX_POINTS = 20_000
SPECTRUM_SHOWN = 64


def _figure_class() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(
            "plotting a selection needs matplotlib: pip install matplotlib "
            "(or pip install 'skmm[bench]')"
        ) from None
    return Figure, FigureCanvasAgg


def _moments(features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows as float64 (N, d) with d <= PLOT_SKETCH_DIM, mean, centered covariance)."""
    matrix = as_feature_matrix(features, device="cpu")
    if matrix.n_cols > PLOT_SKETCH_DIM:
        from .sketch import sketch

        rows = np.asarray(sketch(features, PLOT_SKETCH_DIM, kind="gaussian", seed=0))
    else:
        rows = matrix.to_tensor().to(torch.float64).numpy()
    rows = rows.astype(np.float64, copy=False)
    mean = rows.mean(axis=0)
    centered = rows - mean
    return rows, mean, centered.T @ centered / rows.shape[0]


def plot_selection(
    selection: Selection,
    features: Any,
    labels: Any = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """The figure described in the module docstring; written as PNG to ``path`` when given.

    ``features`` is what the selection was made from (an array, a path, a store or a
    GradientSketch); ``labels`` default to those it carries. Returns the matplotlib Figure.
    """
    figure_class, canvas_class = _figure_class()
    features, carried = open_features(features)
    labels = carried if labels is None else labels
    rows, mean, covariance = _moments(features)
    n_pool = rows.shape[0]
    if selection.n_pool is not None and selection.n_pool != n_pool:
        raise ValueError(
            f"features have {n_pool} rows but the selection was made from a pool of "
            f"{selection.n_pool}: pass the features it was selected from"
        )
    if selection.indices.size and selection.indices.max() >= n_pool:
        raise ValueError(f"index {int(selection.indices.max())} is out of range for {n_pool} rows")
    classes = codes = None
    if labels is not None:
        classes, codes = check_labels(labels, n_pool)

    info = selection.info
    panels = 3 if classes is not None else 2
    figure = figure_class(figsize=(5.2 * panels, 4.4), layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(1, panels)

    spectrum_axis = axes[0]
    if info.get("eigenvalues"):
        values = np.asarray(info["eigenvalues"], dtype=np.float64)
        title = "sketched spectrum of Σ̃ (SkMM)"
    else:
        second = rows.T @ rows / n_pool
        values = np.linalg.eigvalsh(second)[::-1][:SPECTRUM_SHOWN]
        title = "spectrum of the features' second moment"
    values = values[:SPECTRUM_SHOWN]
    positions = np.arange(1, values.size + 1)
    spectrum_axis.semilogy(positions, np.maximum(values, 1e-300), "o-", ms=3, color="0.3")
    directions = info.get("directions")
    k = directions.get("k") if isinstance(directions, dict) else info.get("c_S_directions")
    if k:
        kept = positions <= k
        spectrum_axis.semilogy(
            positions[kept], np.maximum(values[kept], 1e-300), "o", ms=5, color="tab:red"
        )
        spectrum_axis.axvline(k + 0.5, color="tab:red", ls="--", lw=1)
        rule = f", rule {directions['rule']}" if isinstance(directions, dict) else ""
        spectrum_axis.set_title(f"{title}\nk = {k} matched directions{rule}", fontsize=10)
    else:
        spectrum_axis.set_title(title, fontsize=10)
    spectrum_axis.set_xlabel("eigenvalue index")
    spectrum_axis.set_ylabel("eigenvalue")

    scatter_axis = axes[1]
    _, vectors = np.linalg.eigh(covariance)
    leading = vectors[:, ::-1][:, :2]
    if leading.shape[1] < 2:
        leading = np.concatenate([leading, np.zeros_like(leading)], axis=1)
    projected = (rows - mean) @ leading
    shown = np.unique(np.linspace(0, n_pool - 1, min(n_pool, MAX_POINTS)).astype(np.int64))
    if codes is not None and classes is not None and classes.size <= 20:
        colors = np.asarray(codes[shown], dtype=np.float64)
        scatter_axis.scatter(
            projected[shown, 0],
            projected[shown, 1],
            c=colors,
            cmap="tab20" if classes.size > 10 else "tab10",
            vmin=0,
            vmax=19 if classes.size > 10 else 9,
            s=6,
            alpha=0.35,
            lw=0,
        )
    else:
        scatter_axis.scatter(projected[shown, 0], projected[shown, 1], s=6, color="0.7", lw=0)
    chosen = selection.indices
    scatter_axis.scatter(
        projected[chosen, 0],
        projected[chosen, 1],
        s=28,
        facecolors="none",
        edgecolors="black",
        lw=1.0,
        label=f"coreset (n = {chosen.size})",
    )
    scatter_axis.legend(loc="best", fontsize=8)
    method = info.get("method", "selection")
    scatter_axis.set_title(
        f"pool (N = {n_pool}) on its 2 leading centered directions\n{method} coreset circled",
        fontsize=10,
    )
    scatter_axis.set_xlabel("direction 1")
    scatter_axis.set_ylabel("direction 2")

    if codes is not None and classes is not None:
        class_axis = axes[2]
        pool_share = np.bincount(codes, minlength=classes.size) / n_pool
        core_share = np.bincount(codes[chosen], minlength=classes.size) / max(1, chosen.size)
        where = np.arange(classes.size)
        class_axis.bar(where - 0.2, pool_share, width=0.4, color="0.7", label="pool")
        class_axis.bar(where + 0.2, core_share, width=0.4, color="tab:red", label="coreset")
        class_axis.set_xticks(where, [str(label) for label in classes.tolist()], fontsize=8)
        class_axis.set_ylabel("share of rows")
        class_axis.set_xlabel("class")
        missing = int(((core_share == 0) & (pool_share > 0)).sum())
        note = f", {missing} class(es) left out" if missing else ""
        class_axis.set_title(f"class shares: coreset vs pool{note}", fontsize=10)
        class_axis.legend(fontsize=8)

    if path is not None:
        with atomic_write(path) as stream:
            figure.savefig(stream, format="png", dpi=110)
    return figure
