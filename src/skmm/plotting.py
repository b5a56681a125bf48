"""A picture of a selection: spectrum and matched directions, the pool and its coreset, classes.

One figure with up to three panels:

1. the sketched spectrum: SkMM's eigenvalues of Σ̃ = G̃ᵀG̃/N (``info["eigenvalues"]``) with
   the k matched directions marked, or, for other methods, the eigenvalues of the features'
   second moment computed here;
2. the pool projected on its two leading centered directions (principal components, of the
   features sketched to :data:`PLOT_SKETCH_DIM` columns when they are wider), with the coreset
   highlighted (at most :data:`MAX_POINTS` pool rows, evenly spaced, are read and drawn, so a
   pool larger than memory can be pictured);
3. when labels are known (given, carried by a store, or counted in ``info["class_counts"]``),
   each class's share of the pool against its share of the coreset.

matplotlib is imported only here, and through its object API (no pyplot, no global backend).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .inputs import MissingDependencyError, as_feature_matrix, check_labels
from .io import atomic_write
from .sources import open_features

if TYPE_CHECKING:
    from .selection import Selection

PLOT_SKETCH_DIM = 256
MAX_POINTS = 20_000
READ_ROWS = 2048
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


def _rows(features: Any, wanted: np.ndarray) -> np.ndarray:
    """The rows ``wanted`` (sorted) as float64, sketched to PLOT_SKETCH_DIM columns when wider
    (chunk by chunk with one map, so memory stays bounded by the rows drawn)."""
    from .sketch import sketch

    matrix = as_feature_matrix(features, device="cpu")
    parts = []
    for start in range(0, wanted.size, READ_ROWS):
        block = matrix.take(wanted[start : start + READ_ROWS]).to(torch.float64).numpy()
        if matrix.n_cols > PLOT_SKETCH_DIM:
            block = np.asarray(sketch(block, PLOT_SKETCH_DIM, kind="gaussian", seed=0))
        parts.append(block.astype(np.float64, copy=False))
    return np.concatenate(parts)


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
    n_pool = as_feature_matrix(features, device="cpu").n_rows
    if selection.n_pool is not None and selection.n_pool != n_pool:
        raise ValueError(
            f"features have {n_pool} rows but the selection was made from a pool of "
            f"{selection.n_pool}: pass the features it was selected from"
        )
    chosen = selection.indices
    if chosen.size and chosen.max() >= n_pool:
        raise ValueError(f"index {int(chosen.max())} is out of range for {n_pool} rows")
    sample = np.unique(np.linspace(0, n_pool - 1, min(n_pool, MAX_POINTS)).astype(np.int64))
    wanted = np.union1d(sample, chosen)
    rows = _rows(features, wanted)
    pool_rows = rows[np.searchsorted(wanted, sample)]
    core_rows = rows[np.searchsorted(wanted, chosen)]
    shares = None  # (class names, pool counts, coreset counts)
    sample_codes = None
    if labels is not None:
        classes, codes = check_labels(labels, n_pool)
        shares = (
            classes.tolist(),
            np.bincount(codes, minlength=classes.size),
            np.bincount(codes[chosen], minlength=classes.size),
        )
        sample_codes = codes[sample] if classes.size <= 20 else None
    elif selection.info.get("class_counts"):
        counts = selection.info["class_counts"]
        shares = (counts["labels"], np.asarray(counts["pool"]), np.asarray(counts["coreset"]))

    info = selection.info
    panels = 3 if shares is not None else 2
    figure = figure_class(figsize=(5.2 * panels, 4.4), layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(1, panels)
    _spectrum_panel(axes[0], info, pool_rows)
    _pool_panel(axes[1], info, pool_rows, core_rows, sample_codes, n_pool)
    if shares is not None:
        _class_panel(axes[2], *shares)
    if path is not None:
        with atomic_write(path) as stream:
            figure.savefig(stream, format="png", dpi=110)
    return figure


def _spectrum_panel(axis: Any, info: dict[str, Any], pool_rows: np.ndarray) -> None:
    """SkMM's sketched eigenvalues with the k matched marked, else the features' spectrum."""
    if info.get("eigenvalues"):
        values = np.asarray(info["eigenvalues"], dtype=np.float64)
        title = "sketched spectrum of Σ̃ (SkMM)"
    else:
        second = pool_rows.T @ pool_rows / pool_rows.shape[0]
        values = np.linalg.eigvalsh(second)[::-1]
        title = "spectrum of the features' second moment"
    values = np.maximum(values[:SPECTRUM_SHOWN], 1e-300)
    positions = np.arange(1, values.size + 1)
    axis.semilogy(positions, values, "o-", ms=3, color="0.3")
    directions = info.get("directions")
    k = directions.get("k") if isinstance(directions, dict) else info.get("c_S_directions")
    if k:
        kept = positions <= k
        axis.semilogy(positions[kept], values[kept], "o", ms=5, color="tab:red")
        axis.axvline(k + 0.5, color="tab:red", ls="--", lw=1)
        rule = f", rule {directions['rule']}" if isinstance(directions, dict) else ""
        title += f"\nk = {k} matched directions{rule}"
    per_class = [e["directions"]["k"] for e in info.get("classes") or [] if "directions" in e]
    if per_class and not k:
        span = f"{min(per_class)}–{max(per_class)}" if min(per_class) < max(per_class) else ""
        title += f"\none design per class, k = {span or per_class[0]} directions each"
    axis.set_title(title, fontsize=10)
    axis.set_xlabel("eigenvalue index")
    axis.set_ylabel("eigenvalue")


def _pool_panel(
    axis: Any,
    info: dict[str, Any],
    pool_rows: np.ndarray,
    core_rows: np.ndarray,
    codes: np.ndarray | None,
    n_pool: int,
) -> None:
    """The pool's rows on their two leading centered directions, the coreset circled."""
    mean = pool_rows.mean(axis=0)
    centered = pool_rows - mean
    _, vectors = np.linalg.eigh(centered.T @ centered / pool_rows.shape[0])
    leading = vectors[:, ::-1][:, :2]
    if leading.shape[1] < 2:
        leading = np.concatenate([leading, np.zeros_like(leading)], axis=1)
    pool_xy, core_xy = centered @ leading, (core_rows - mean) @ leading
    if codes is not None:
        palette = "tab10" if codes.max(initial=0) < 10 else "tab20"
        axis.scatter(
            pool_xy[:, 0],
            pool_xy[:, 1],
            c=codes,
            cmap=palette,
            vmin=0,
            vmax=9 if palette == "tab10" else 19,
            s=6,
            alpha=0.35,
            lw=0,
        )
    else:
        axis.scatter(pool_xy[:, 0], pool_xy[:, 1], s=6, color="0.7", lw=0)
    axis.scatter(
        core_xy[:, 0],
        core_xy[:, 1],
        s=28,
        facecolors="none",
        edgecolors="black",
        lw=1.0,
        label=f"coreset (n = {core_rows.shape[0]})",
    )
    axis.legend(loc="best", fontsize=8)
    drawn = "" if pool_rows.shape[0] == n_pool else f", {pool_rows.shape[0]} drawn"
    axis.set_title(
        f"pool (N = {n_pool}{drawn}) on its 2 leading centered directions\n"
        f"{info.get('method', 'selection')} coreset circled",
        fontsize=10,
    )
    axis.set_xlabel("direction 1")
    axis.set_ylabel("direction 2")


def _class_panel(axis: Any, names: list[Any], pool: np.ndarray, coreset: np.ndarray) -> None:
    """Each class's share of the pool beside its share of the coreset."""
    pool_share = pool / max(1, int(pool.sum()))
    core_share = coreset / max(1, int(coreset.sum()))
    where = np.arange(len(names))
    axis.bar(where - 0.2, pool_share, width=0.4, color="0.7", label="pool")
    axis.bar(where + 0.2, core_share, width=0.4, color="tab:red", label="coreset")
    axis.set_xticks(where, [str(name) for name in names], fontsize=8)
    axis.set_ylim(0, 1.25 * max(float(pool_share.max()), float(core_share.max()), 1e-9))
    axis.set_ylabel("share of rows")
    axis.set_xlabel("class")
    missing = int(((coreset == 0) & (pool > 0)).sum())
    note = f", {missing} class(es) left out" if missing else ""
    axis.set_title(f"class shares: coreset vs pool{note}", fontsize=10)
    axis.legend(fontsize=8, loc="upper right", ncols=2)
