"""Reports of the benchmarks: the report type, and the real benchmark's tables and plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write
from .journal import RealRun


@dataclass
class Report:
    """What a benchmark run produced: the markdown and the files written."""

    markdown: str
    files: list[Path]


@dataclass
class RealSummary:
    """Mean ± std over seeds of one (protocol, method, n)."""

    protocol: str
    method: str
    n: int
    accuracy_mean: float
    accuracy_std: float
    macro_f1_mean: float
    macro_f1_std: float
    select_seconds: float
    seeds: int


def summarize_real(runs: Sequence[RealRun]) -> list[RealSummary]:
    """Group runs by (protocol, method, n) in first-seen order."""
    groups: dict[tuple[str, str, int], list[RealRun]] = {}
    for run in runs:
        groups.setdefault((run.protocol, run.method, run.n), []).append(run)
    out = []
    for (protocol, method, n), group in groups.items():
        accuracy = np.array([r.accuracy for r in group])
        f1 = np.array([r.macro_f1 for r in group])
        out.append(
            RealSummary(
                protocol,
                method,
                n,
                float(accuracy.mean()),
                float(accuracy.std()),
                float(f1.mean()),
                float(f1.std()),
                float(np.mean([r.select_seconds for r in group])),
                len(group),
            )
        )
    return out


def paired_differences(
    runs: Sequence[RealRun], baseline: str = "uniform"
) -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """Accuracy of each (protocol, method, n) minus ``baseline``'s in the same seed, over the
    seeds both ran: (mean, standard error, seeds); the error is nan below two seeds."""
    accuracy = {(r.protocol, r.method, r.n, r.seed): r.accuracy for r in runs}
    differences: dict[tuple[str, str, int], list[float]] = {}
    for (protocol, method, n, seed), value in accuracy.items():
        reference = accuracy.get((protocol, baseline, n, seed))
        if method != baseline and reference is not None:
            differences.setdefault((protocol, method, n), []).append(value - reference)
    out = {}
    for key, values in differences.items():
        diff = np.array(values)
        error = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[key] = (float(diff.mean()), error, len(diff))
    return out


CEILINGS = {"full-pool": "Full pool"}
"""Reference runs shown as a line under the tables (one n each), with the line's label."""


def real_markdown(
    summaries: Sequence[RealSummary],
    runs: Sequence[RealRun] = (),
    *,
    ceilings: dict[str, str] = CEILINGS,
    baselines: Sequence[str] = ("uniform",),
) -> str:
    """Per protocol: accuracy and macro-F1 tables (mean ± std; best mean in bold), the
    ``ceilings`` lines, and, from ``runs``, each method's paired difference to each of
    ``baselines``."""
    lines: list[str] = []
    references = {(s.protocol, s.method): s for s in summaries if s.method in ceilings}
    paired = {baseline: paired_differences(runs, baseline) for baseline in baselines}
    for protocol in dict.fromkeys(s.protocol for s in summaries):
        rows = [s for s in summaries if s.protocol == protocol and s.method not in ceilings]
        budgets = sorted({s.n for s in rows})
        methods = list(dict.fromkeys(s.method for s in rows))
        cell = {(s.method, s.n): s for s in rows}
        most_seeds = max(s.seeds for s in rows) if rows else 0
        for metric in ("accuracy", "macro_f1"):
            best = {n: max(getattr(s, f"{metric}_mean") for s in rows if s.n == n) for n in budgets}
            title = f"{protocol}: {metric.replace('_', '-')} on the test split (mean ± std)"
            lines += _table_head(title, budgets)
            for method in methods:
                cells = []
                for n in budgets:
                    summary = cell.get((method, n))
                    if summary is None:  # not run (yet) in this journal
                        cells.append("—")
                        continue
                    mean = getattr(summary, f"{metric}_mean")
                    text = f"{mean:.3f} ± {getattr(summary, f'{metric}_std'):.3f}"
                    if summary.seeds < most_seeds:
                        text += f" ({summary.seeds} seeds)"
                    cells.append(f"**{text}**" if mean == best[n] else text)
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines += ["", *_ceiling_lines(protocol, metric, references, ceilings)]
        for baseline, differences in paired.items():
            lines += _paired_table(protocol, methods, budgets, differences, baseline)
    return "\n".join(lines)


def _table_head(title: str, budgets: Sequence[int]) -> list[str]:
    """A bold title, a blank line and the header of a method × n table."""
    return [
        f"**{title}**",
        "",
        "| method | " + " | ".join(f"n={n}" for n in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]


def _ceiling_lines(
    protocol: str,
    metric: str,
    references: dict[tuple[str, str], RealSummary],
    ceilings: dict[str, str],
) -> list[str]:
    """Each ceiling's score under ``protocol`` and, for finetuning, the full pool's under the
    linear probe."""
    lines = []
    shown = [(protocol, method) for method in ceilings]
    if protocol != "linear":
        shown.append(("linear", "full-pool"))
    for source, method in shown:
        reference = references.get((source, method))
        if reference is None:
            continue
        what = "the ceiling" if source == protocol else "the linear probe on the same pool"
        if not reference.n:
            what = "the floor"  # nothing trained: the model before finetuning
        lines.append(
            f"{ceilings.get(method, 'Full pool')} ({reference.n:,} rows, {what}): "
            f"{getattr(reference, f'{metric}_mean'):.3f} ± "
            f"{getattr(reference, f'{metric}_std'):.3f} over {reference.seeds} seed(s)."
        )
    return [*lines, ""] if lines else []


def _paired_table(
    protocol: str,
    methods: Sequence[str],
    budgets: Sequence[int],
    paired: dict[tuple[str, str, int], tuple[float, float, int]],
    baseline: str = "uniform",
) -> list[str]:
    shown = [m for m in methods if any((protocol, m, n) in paired for n in budgets)]
    if not shown:
        return []
    lines = _table_head(
        f"{protocol}: accuracy − {baseline}'s, paired over seeds (mean ± SE; bold where the "
        "difference is at least 2 SE)",
        budgets,
    )
    for method in shown:
        cells = []
        for n in budgets:
            value = paired.get((protocol, method, n))
            if value is None:
                cells.append("—")
                continue
            mean, error, seeds = value
            if seeds < 2:  # no spread to judge it by
                cells.append(f"{mean:+.3f} (1 seed)")
                continue
            text = f"{mean:+.3f} ± {error:.3f}"
            cells.append(f"**{text}**" if abs(mean) >= 2 * error else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_real(
    summaries: Sequence[RealSummary],
    path: Path,
    title: str,
    ceilings: dict[str, str] = CEILINGS,
    highlight: str = "skmm",
) -> None:
    """Accuracy against n (log scale) per protocol, ±1 std shaded, ``ceilings`` as horizontal
    lines, the ``highlight`` method drawn thick and black; PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(s.protocol for s in summaries))
    methods = list(dict.fromkeys(s.method for s in summaries))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}
    styles = {
        m: ("-", "--", ":")[i // 10 % 3] if len(methods) > 10 else "-"
        for i, m in enumerate(methods)
    }
    figure, axes = plt.subplots(
        1, len(protocols), figsize=(6 * len(protocols) + 2.5, 4.5), squeeze=False
    )
    for axis, protocol in zip(axes[0], protocols, strict=True):
        rows = [s for s in summaries if s.protocol == protocol and s.method not in ceilings]
        for ceiling in (s for s in summaries if s.protocol == protocol and s.method in ceilings):
            axis.axhline(
                ceiling.accuracy_mean,
                color=colors[ceiling.method],
                linestyle="--",
                label=ceilings[ceiling.method].lower(),
            )
        for method in dict.fromkeys(s.method for s in rows):
            points = sorted(
                (s.n, s.accuracy_mean, s.accuracy_std) for s in rows if s.method == method
            )
            n, mean, std = (np.array(column) for column in zip(*points, strict=True))
            width = 2.8 if method == highlight else 1.2
            axis.plot(
                n,
                mean,
                marker="o",
                linewidth=width,
                linestyle=styles[method],
                color="black" if method == highlight else colors[method],
                label=method,
            )
            axis.fill_between(n, mean - std, mean + std, alpha=0.1, color=colors[method])
        axis.set_xscale("log")
        axis.set_xlabel("coreset size n")
        axis.set_ylabel("test accuracy")
        axis.set_title(f"{title}: {protocol}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.tight_layout(rect=(0, 0, 1 - 2.3 / figure.get_figwidth(), 1))
    with atomic_write(path) as stream:
        figure.savefig(stream, format="png", dpi=110)
    plt.close(figure)


def targeted_report(
    out: Path,
    header: str,
    runs: Sequence[RealRun],
    title: str,
    ceilings: dict[str, str],
) -> Report:
    """A targeted grid's table.md (``header``, then the tables with paired differences to
    each of uniform, less and knn that ran) and accuracy.png (skmm-targeted highlighted)."""
    summaries = summarize_real(runs)
    baselines = [b for b in ("uniform", "less", "knn") if any(r.method == b for r in runs)]
    markdown = header + real_markdown(summaries, runs, ceilings=ceilings, baselines=baselines)
    with atomic_write(out / "table.md", "w") as stream:
        stream.write(markdown)
    plot_real(summaries, out / "accuracy.png", title, ceilings=ceilings, highlight="skmm-targeted")
    return Report(markdown, [out / "table.md", out / "runs.csv", out / "accuracy.png"])


def training_line(settings: dict[str, Any]) -> str:
    """How the models were trained, from the journal's settings."""
    penalties = settings.get("penalties")
    line = ""
    if settings.get("validation_rows"):
        line = (
            f" {settings['validation_rows']:,} pool rows set aside for validation (stratified; "
            "no selector sees them)."
        )
    if penalties:
        chosen = ", ".join(f"n = {n}: {penalty:g}" for n, penalty in penalties.items())
        line += f" Linear probe L2 penalty, tuned on the pool: {chosen}."
    return line + _hyper_line(settings.get("finetune"), settings.get("tuning"))


def _hyper_line(hyper: dict[str, Any] | None, tuning: dict[str, Any] | None) -> str:
    if hyper is None:
        return ""
    if hyper["min_steps"] == hyper["max_steps"]:
        length = f"{hyper['max_steps']} steps"
    else:
        length = (
            f"{hyper['epochs']} epochs within {hyper['min_steps']}–{hyper['max_steps']} steps, "
            f"early stopping on the validation part (every {hyper['eval_every']} steps, "
            f"patience {hyper['patience']})"
        )
    line = (
        f" Finetuning: AdamW, {length}, batches of {hyper['batch_size']}, lr "
        f"{hyper['lr_body']:.1e} (layers) / {hyper['lr_head']:.1e} (head)"
    )
    if tuning is None:
        return line + ", the task's defaults (not tuned)."
    scored = ", ".join(f"×{s}: {a:.3f}" for s, a in tuning["validation_accuracy"].items())
    return (
        line + f", tuned on the pool (uniform n = {tuning['budget']}, validation accuracy "
        f"{scored})."
    )
