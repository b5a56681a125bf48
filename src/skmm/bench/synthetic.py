"""The paper's synthetic high-dimensional regression: a well-separated Gaussian mixture.

Pool (docs/design.md §5, docs/benchmarks.md): N points in R^r from K clusters with random
sizes (proportions from a symmetric Dirichlet(1), every cluster non-empty), centers
μ_c ~ N(0, I_r) (so centers are ≈ orthogonal and ≈ √(2r) apart), points
x_i = μ_c + ``noise``·ε_i with ε_i ~ N(0, I_r), and a regression target constant per
cluster, y_c ~ N(0, 1), observed with label noise: y_i = y_c + ``label_noise``·η_i. A
coreset that misses a cluster cannot predict it, so its risk jumps by about that cluster's
share times y_c².

Each coreset trains ridge regression θ = argmin (1/n)‖X_Sθ − y_S‖² + α‖θ‖² with α chosen by
K-fold cross-validation on the coreset alone (rows shuffled with a seeded generator before
the split: a sorted coreset split in order gives folds by cluster and a wildly wrong α), and
also at a fixed small α. The risk is the mean squared error over all N pool points against
their observed targets. A run fails when its risk exceeds 10× the floor, the median risk of
uniform coresets of 80% of the pool: every cluster covered, only the label noise left.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import select
from ..io import atomic_write
from ..progress import progress_bar
from ..seeding import numpy_rng
from .report import Report

PAPER_BUDGETS = (24, 32, 48, 64, 80, 120, 200, 400, 800, 1600)
ALPHA_GRID = tuple(float(a) for a in np.logspace(-8, 1, 19))
FIXED_ALPHA = 1e-6
FAILURE_FACTOR = 10.0
FLOOR_SHARE = 0.8


@dataclass(frozen=True)
class MixturePool:
    """Features (N, r) float64, observed targets (N,), cluster of each row (N,)."""

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
    label_noise: float = 0.05,
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
    targets = values[clusters] + label_noise * rng.standard_normal(n_rows)
    return MixturePool(features, targets, clusters)


def ridge_fit(features: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    """θ = argmin (1/n)‖Xθ − y‖² + α‖θ‖², solved in the n×n dual: θ = Xᵀ(XXᵀ + nαI)⁻¹y."""
    n = features.shape[0]
    gram = features @ features.T
    dual = np.linalg.solve(gram + n * alpha * np.eye(n), targets)
    return features.T @ dual


def risk(pool: MixturePool, theta: np.ndarray) -> float:
    """Mean squared error of x ↦ xᵀθ over all N points of the pool."""
    return float(np.mean((pool.features @ theta - pool.targets) ** 2))


def _dual_solutions(gram: np.ndarray, targets: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Ridge dual coefficients (XXᵀ + nαI)⁻¹y for every α at once: (len(alphas), n)."""
    n = gram.shape[0]
    values, vectors = np.linalg.eigh(gram)
    rotated = vectors.T @ targets
    return (vectors @ (rotated[:, None] / (values[:, None] + n * alphas[None, :]))).T


def cross_validated_alpha(
    features: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    alphas: Sequence[float] = ALPHA_GRID,
    folds: int = 5,
) -> float:
    """The α of ``alphas`` with the least K-fold validation error on this coreset alone.

    Rows are shuffled by ``rng`` before the split; ties go to the larger α.
    """
    n = features.shape[0]
    folds = max(2, min(folds, n))
    grid = np.asarray(alphas, dtype=np.float64)
    if n < 2:
        return float(grid[-1])
    order = rng.permutation(n)
    errors = np.zeros(grid.size)
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        gram = features[train] @ features[train].T
        duals = _dual_solutions(gram, targets[train], grid)
        cross = features[part] @ features[train].T
        errors += ((duals @ cross.T - targets[part][None, :]) ** 2).sum(axis=1)
    best = np.flatnonzero(errors <= errors.min() * (1 + 1e-12))
    return float(grid[best[-1]])


@dataclass(frozen=True)
class Variant:
    """One method configuration in a benchmark: a label, a method name and its options."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)


PAPER_METHODS = (
    Variant("skmm", "skmm"),
    Variant("skmm-diagonal", "skmm", {"objective": "diagonal"}),
    Variant("uniform", "uniform"),
    Variant("herding", "herding"),
    Variant("kcenter", "kcenter"),
    Variant("adaptive", "adaptive"),
    Variant("leverage", "leverage"),
    Variant("ridge_leverage", "ridge_leverage"),
    Variant("facility_location", "facility_location"),
)


@dataclass
class Run:
    """One selection and its evaluation."""

    pool_seed: int
    label: str
    n: int
    seed: int
    risk: float
    risk_fixed_alpha: float
    alpha: float
    clusters_covered: int
    seconds: float


def evaluate(pool: MixturePool, indices: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(risk with cross-validated α, risk at the fixed α, the α chosen) for one coreset."""
    chosen = np.asarray(indices)
    features, targets = pool.features[chosen], pool.targets[chosen]
    alpha = cross_validated_alpha(features, targets, numpy_rng(seed, "cv"))
    gram = features @ features.T
    duals = _dual_solutions(gram, targets, np.array([alpha, FIXED_ALPHA]))
    predictions = duals @ (features @ pool.features.T)
    risks = ((predictions - pool.targets[None, :]) ** 2).mean(axis=1)
    return float(risks[0]), float(risks[1]), alpha


def run_benchmark(
    variants: Sequence[Variant],
    budgets: Sequence[int],
    seeds: int,
    pool_seeds: Sequence[int] = (0,),
    pool_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> list[Run]:
    """Every variant at every budget and seed, on the pool of every pool seed."""
    runs: list[Run] = []
    total = len(pool_seeds) * len(variants) * len(budgets) * seeds
    with progress_bar(total, "synthetic benchmark", progress, unit="run") as bar:
        for pool_seed in pool_seeds:
            pool = make_mixture(seed=pool_seed, **(pool_options or {}))
            for variant in variants:
                for n in budgets:
                    for seed in range(seeds):
                        began = time.perf_counter()
                        selection = select(
                            pool.features, n, variant.method, random_state=seed, **variant.options
                        )
                        seconds = time.perf_counter() - began
                        cv_risk, fixed_risk, alpha = evaluate(pool, selection.indices, seed)
                        covered = int(np.unique(pool.clusters[selection.indices]).size)
                        runs.append(
                            Run(
                                pool_seed,
                                variant.label,
                                n,
                                seed,
                                cv_risk,
                                fixed_risk,
                                alpha,
                                covered,
                                seconds,
                            )
                        )
                        bar.update(1)
    return runs


def noise_floor(pool_seed: int, pool_options: dict[str, Any] | None, seeds: int = 8) -> float:
    """Median risk of uniform coresets of 80% of the pool (every cluster covered)."""
    pool = make_mixture(seed=pool_seed, **(pool_options or {}))
    size = int(FLOOR_SHARE * pool.features.shape[0])
    risks = []
    for seed in range(seeds):
        indices = numpy_rng(seed, "floor").choice(pool.features.shape[0], size, replace=False)
        risks.append(evaluate(pool, indices, seed)[0])
    return float(np.median(risks))


@dataclass
class Summary:
    """Aggregates of one (label, n) over seeds and pools."""

    label: str
    n: int
    mean: float
    median: float
    failure_rate: float
    mean_fixed_alpha: float
    seconds: float


def summarize(runs: Sequence[Run], floors: dict[int, float]) -> list[Summary]:
    """Mean, median and failure rate (risk > 10× the pool's floor) per (label, n)."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.label, run.n), []).append(run)
    rows = []
    for (label, n), group in groups.items():
        risks = np.array([run.risk for run in group])
        failed = [run.risk > FAILURE_FACTOR * floors[run.pool_seed] for run in group]
        rows.append(
            Summary(
                label,
                n,
                float(risks.mean()),
                float(np.median(risks)),
                float(np.mean(failed)),
                float(np.mean([run.risk_fixed_alpha for run in group])),
                float(np.mean([run.seconds for run in group])),
            )
        )
    return rows


def markdown_table(rows: Sequence[Summary], labels: Sequence[str]) -> str:
    """One table per statistic: methods as rows, budgets as columns; the best mean in bold."""
    budgets = sorted({row.n for row in rows})
    lookup = {(row.label, row.n): row for row in rows}
    sections = []
    for title, key, fmt in (
        ("Mean risk (α by 5-fold CV on the coreset)", "mean", "{:.2e}"),
        ("Median risk", "median", "{:.2e}"),
        ("Failure rate (risk > 10× floor)", "failure_rate", "{:.0%}"),
        ("Mean risk at fixed α = 1e-6", "mean_fixed_alpha", "{:.2e}"),
        ("Selection time (s, mean)", "seconds", "{:.3f}"),
    ):
        lines = [f"**{title}**", "", "| method | " + " | ".join(f"n={n}" for n in budgets) + " |"]
        lines.append("|---|" + "---|" * len(budgets))
        best = {
            n: min(getattr(lookup[(label, n)], key) for label in labels if (label, n) in lookup)
            for n in budgets
        }
        for label in labels:
            cells = []
            for n in budgets:
                row = lookup.get((label, n))
                if row is None:
                    cells.append("—")
                    continue
                value = getattr(row, key)
                text = fmt.format(value)
                cells.append(f"**{text}**" if key != "seconds" and value == best[n] else text)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def write_csv(path: Path, runs: Sequence[Run]) -> None:
    """Every run as one CSV row (written atomically)."""
    with atomic_write(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(asdict(runs[0])))
        writer.writeheader()
        for run in runs:
            writer.writerow(asdict(run))


def plot_risk(path: Path, runs: Sequence[Run], labels: Sequence[str], floor: float) -> bool:
    """Risk vs n on log axes, median with the interquartile band; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for label in labels:
        budgets = sorted({run.n for run in runs if run.label == label})
        risks = [[run.risk for run in runs if run.label == label and run.n == n] for n in budgets]
        median = [np.median(r) for r in risks]
        low = [np.percentile(r, 25) for r in risks]
        high = [np.percentile(r, 75) for r in risks]
        style = {"linewidth": 2.5} if label == "skmm" else {"linewidth": 1.2}
        (line,) = axes.plot(budgets, median, marker="o", markersize=3, label=label, **style)
        axes.fill_between(budgets, low, high, alpha=0.15, color=line.get_color())
    axes.axhline(FAILURE_FACTOR * floor, color="grey", linestyle="--", linewidth=0.8)
    axes.text(axes.get_xlim()[0], FAILURE_FACTOR * floor * 1.1, " failure threshold", color="grey")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("coreset size n")
    axes.set_ylabel("risk (MSE over the pool), median and IQR over seeds")
    axes.set_title("Synthetic Gaussian mixture: ridge regression on the coreset")
    axes.legend(fontsize=8, ncols=2)
    figure.tight_layout()
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=120)
    plt.close(figure)
    return True


ABLATION_VARIANTS = (
    Variant("aopt m=256 (default)", "skmm"),
    Variant("logdet m=256", "skmm", {"objective": "logdet"}),
    Variant("diagonal c=1 systematic", "skmm", {"objective": "diagonal"}),
    Variant("diagonal c=0.5", "skmm", {"objective": "diagonal", "c": 0.5}),
    Variant("diagonal c=1 pivotal", "skmm", {"objective": "diagonal", "rounding": "pivotal"}),
    Variant("diagonal c=1 topn", "skmm", {"objective": "diagonal", "rounding": "topn"}),
    Variant("diagonal c=1 weighted", "skmm", {"objective": "diagonal", "rounding": "weighted"}),
    Variant("aopt m=16", "skmm", {"sketch_dim": 16}),
    Variant("aopt m=32", "skmm", {"sketch_dim": 32}),
    Variant("aopt m=64", "skmm", {"sketch_dim": 64}),
    Variant("aopt m=1024", "skmm", {"sketch_dim": 1024}),
    Variant("aopt sparse_sign", "skmm", {"sketch": "sparse_sign"}),
    Variant("aopt unsketched", "skmm", {"sketch": "none"}),
    Variant("aopt k=gap", "skmm", {"directions": "gap"}),
    Variant("aopt k=4", "skmm", {"directions": 4}),
    Variant("aopt k=16", "skmm", {"directions": 16}),
    Variant("aopt ridge=1e-2", "skmm", {"ridge": 1e-2}),
    Variant("uniform", "uniform"),
)

QUICK_POOL = {"n_rows": 400, "n_features": 480, "n_clusters": 6}


def synthetic_report(
    out_dir: Path,
    *,
    quick: bool = False,
    ablation: bool = False,
    seeds: int | None = None,
    budgets: Sequence[int] | None = None,
    pool_seeds: Sequence[int] = (0,),
    pool_options: dict[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    progress: bool | None = None,
) -> Report:
    """Run the synthetic benchmark (or its SkMM ablation); write table.md, runs.csv, risk.png.

    ``quick`` shrinks the pool (N = 400, r = 480, 6 clusters), the budgets and the seeds so
    that the whole run takes seconds (for tests and the demo).
    """
    pool_options = dict(pool_options or {})
    if quick:
        pool_options = {**QUICK_POOL, **pool_options}
    variants = ABLATION_VARIANTS if ablation else PAPER_METHODS
    if labels:
        known = {variant.label: variant for variant in variants}
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(
                f"unknown benchmark method(s) {', '.join(unknown)}; choose from: {', '.join(known)}"
            )
        variants = tuple(known[label] for label in labels)
    if budgets is None:
        budgets = (12, 24, 48) if quick else (24, 48, 100, 200) if ablation else PAPER_BUDGETS
    seeds = seeds or (2 if quick else 16)
    n_rows = pool_options.get("n_rows", 2000)
    too_big = [n for n in budgets if n > n_rows]
    if too_big:
        raise ValueError(f"budgets {too_big} exceed the pool size N = {n_rows}")
    began = time.perf_counter()
    runs = run_benchmark(variants, budgets, seeds, pool_seeds, pool_options, progress)
    floors = {pool_seed: noise_floor(pool_seed, pool_options) for pool_seed in pool_seeds}
    order = [variant.label for variant in variants]
    table = markdown_table(summarize(runs, floors), order)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "runs.csv", out_dir / "table.md"]
    write_csv(files[0], runs)
    pool_text = ", ".join(f"{k}={v}" for k, v in sorted(pool_options.items())) or "defaults"
    header = (
        f"Synthetic benchmark{' (SkMM ablation)' if ablation else ''}: pool {pool_text}, "
        f"pool seeds {list(pool_seeds)}, {seeds} selection seeds per pool; noise floors "
        + ", ".join(f"{floors[p]:.2e}" for p in pool_seeds)
        + f"; {time.perf_counter() - began:.0f} s.\n\n"
    )
    markdown = header + table
    with atomic_write(files[1], "w") as stream:
        stream.write(markdown)
    plot = out_dir / "risk.png"
    if plot_risk(plot, runs, order, float(np.median(list(floors.values())))):
        files.append(plot)
    return Report(markdown, files)
