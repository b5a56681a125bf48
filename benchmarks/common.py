"""Shared pieces of the side-by-side benchmarks: machine description, interleaved timing, tables.

Every benchmark times skmm and its comparators in one process, alternating between them
within each repeat, so that a load change on the machine hits all of them alike and the
ratios stay meaningful even when the absolute times do not.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """MemTotal of /proc/meminfo in GiB (None where unavailable)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine() -> str:
    """One line: CPU, cores, memory, torch and its threads, the load average now."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = memory_gib()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu_model()}, {cpus} CPU(s) usable, "
        + (f"{memory:.0f} GiB RAM, " if memory else "")
        + f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load}"
    )


def preamble(title: str) -> None:
    """Print the title, the exact command and the machine."""
    print(f"# {title}\n")
    print(f"command: `{shlex.join([os.path.basename(sys.executable), *sys.argv])}`  ")
    print(f"machine: {machine()}\n", flush=True)


_LIMITS: list[object] = []


def set_threads(threads: int | None) -> None:
    """torch CPU threads and, through threadpoolctl when installed, numpy's BLAS threads."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _LIMITS.append(threadpool_limits(limits=threads))


def interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: bool = False
) -> dict[str, list[float]]:
    """Wall seconds of each contender, ``repeats`` times, alternating contenders each round.

    The order rotates every round so no contender always runs right after a given one.
    """
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            began = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - began)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def slope(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares t = a + b·N: (b, a, R²)."""
    n = len(sizes)
    mean_x = sum(sizes) / n
    mean_y = sum(seconds) / n
    sxx = sum((x - mean_x) ** 2 for x in sizes)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, seconds, strict=True))
    b = sxy / sxx if sxx else 0.0
    a = mean_y - b * mean_x
    total = sum((y - mean_y) ** 2 for y in seconds)
    residual = sum((y - a - b * x) ** 2 for x, y in zip(sizes, seconds, strict=True))
    return b, a, 1.0 - residual / total if total else 1.0


def log_log_exponent(sizes: Sequence[float], seconds: Sequence[float]) -> float:
    """The exponent p of t ∝ N^p fitted on log-log axes (1 means linear)."""
    xs = [math.log(x) for x in sizes]
    ys = [math.log(max(y, 1e-12)) for y in seconds]
    return slope(xs, ys)[0]


def fmt_seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"
