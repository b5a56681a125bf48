"""Time and peak memory of SkMM selection against the pool size N, on 1 or 2 ranks, from
memory or streamed from a memory-mapped .npy file or a sketch store; prints a markdown table.

Each configuration runs in fresh processes (one per rank, launched with the environment
torchrun sets, gloo on the CPU) so that peak memory (VmHWM of /proc/self/status) belongs
to that configuration alone. The pool is N sketched rows of m = 256 float32 values with a
power-law spectrum (row blocks of N(0, diag(1/j²)) noise, the same rows in memory and on
disk). Every rank of the "memory" source holds the whole pool, as the SPMD API asks; the
"memmap" source is a .npy file opened with ``np.load(mmap_mode="r")`` (what `skmm select`
does with a .npy); the "store" source is a `skmm sketch`-style store read shard by shard.
The selection is `skmm.select(pool, n, directions=k, random_state=0)`; the script checks
that every configuration of one N selects the same rows.

    .venv/bin/python benchmarks/bench_scale.py --quick
    .venv/bin/python benchmarks/bench_scale.py --rows 10000 100000 1000000 10000000 \\
        --memory-max-rows 1000000 --workdir /tmp/skmm-scale
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WIDTH = 256
GENERATED_ROWS = 65_536
SOURCES = ("memory", "memmap", "store")


def generated_block(index: int, rows: int) -> np.ndarray:
    """Rows [index·65536, index·65536 + rows) of the pool: N(0, diag(1/j²)), float32."""
    rng = np.random.default_rng(index)
    block = rng.standard_normal((rows, WIDTH), dtype=np.float32)
    block /= np.arange(1, WIDTH + 1, dtype=np.float32)
    return block


def blocks(n_rows: int):
    for index, start in enumerate(range(0, n_rows, GENERATED_ROWS)):
        yield generated_block(index, min(GENERATED_ROWS, n_rows - start))


def fill_pool(array: np.ndarray) -> np.ndarray:
    """``array`` (N rows of WIDTH) filled with the pool's first N rows, block by block."""
    for index, block in enumerate(blocks(len(array))):
        array[index * GENERATED_ROWS : index * GENERATED_ROWS + len(block)] = block
    return array


def write_store(path: Path, n_rows: int) -> None:
    """The pool as a complete sketch store (skipped when one is there already)."""
    from skmm.store import SketchStore, is_store

    if is_store(path) and SketchStore.open(path, verify=False).complete:
        return
    store = SketchStore.open_for_writing(path, {"sketch_dim": WIDTH}, shard_rows=GENERATED_ROWS)
    for block in blocks(n_rows):
        store.append(block)
    store.finish({"n_rows": n_rows})


def write_npy(path: Path, n_rows: int) -> None:
    """The pool as a .npy file, written through a memory-map (skipped when it exists)."""
    if path.exists():
        return
    partial = path.with_suffix(".partial.npy")
    array = fill_pool(np.lib.format.open_memmap(partial, "w+", np.float32, (n_rows, WIDTH)))
    array.flush()
    del array
    partial.rename(path)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def worker(args: argparse.Namespace) -> None:
    """One rank of one configuration: load or open the pool, select, report."""
    import skmm
    from skmm.distributed import world
    from skmm.store import SketchStore

    rank, size = world()
    baseline = peak_rss_mib()
    if args.source == "memory":
        pool = fill_pool(np.empty((args.rows[0], WIDTH), dtype=np.float32))
    elif args.source == "memmap":
        pool = np.load(args.npy, mmap_mode="r")
    else:
        pool = SketchStore.open(args.store, verify=False).features
    began, cpu_began = time.perf_counter(), time.process_time()
    selection = skmm.select(pool, args.n, directions=args.directions, random_state=0)
    seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu_began
    result = {
        "rank": rank,
        "ranks": size,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mib": peak_rss_mib(),
        "baseline_mib": baseline,
        "timings": selection.info["timings"],
        "k": selection.info["directions"]["k"],
        "evaluations": selection.info["greedy"]["evaluations"],
        "indices": selection.indices.tolist(),
    }
    Path(f"{args.result}.{rank}").write_text(json.dumps(result))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_configuration(args: argparse.Namespace, rows: int, ranks: int, source: str) -> dict:
    """Launch ``ranks`` worker processes and merge what they report."""
    result = Path(args.workdir) / f"result-{rows}-{ranks}-{source}.json"
    command = [sys.executable, __file__, "--worker", "--rows", str(rows), "--source", source]
    command += ["--store", str(Path(args.workdir) / f"store-{rows}"), "--result", str(result)]
    command += ["--npy", str(Path(args.workdir) / f"pool-{rows}.npy")]
    command += ["--n", str(args.n), "--directions", str(args.directions)]
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.update({"WORLD_SIZE": str(ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    procs = [
        subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
        for rank in range(ranks)
    ]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise RuntimeError(f"N={rows} ranks={ranks} {source}: exit codes {codes}")
    reports = [json.loads(Path(f"{result}.{rank}").read_text()) for rank in range(ranks)]
    if any(report["indices"] != reports[0]["indices"] for report in reports):
        raise RuntimeError(f"N={rows} ranks={ranks} {source}: ranks disagree")
    return {
        "rows": rows,
        "ranks": ranks,
        "source": source,
        "seconds": max(report["seconds"] for report in reports),
        "cpu_seconds": max(report["cpu_seconds"] for report in reports),
        "peak_mib": max(report["peak_mib"] for report in reports),
        "baseline_mib": max(report["baseline_mib"] for report in reports),
        "spectrum": max(report["timings"]["spectrum"] for report in reports),
        "design": max(report["timings"]["design"] for report in reports),
        "k": reports[0]["k"],
        "evaluations": reports[0]["evaluations"],
        "indices": reports[0]["indices"],
    }


def slopes(points: list[tuple[int, float]]) -> str:
    """Slope of log(seconds) against log(N) between consecutive N: 1 means linear cost."""
    return ", ".join(
        f"{low:.0e}→{high:.0e}: {math.log(t_high / t_low) / math.log(high / low):.2f}"
        for (low, t_low), (high, t_high) in itertools.pairwise(points)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10^4 and 10^5, n = 100")
    parser.add_argument("--rows", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--sources", nargs="+", default=["memory", "memmap", "store"], choices=SOURCES
    )
    parser.add_argument("--memory-max-rows", type=int, default=10**6)
    parser.add_argument("--n", type=int, default=1000, help="rows to select")
    parser.add_argument("--directions", type=int, default=32, help="k, matched directions")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    parser.add_argument("--workdir", default="bench-out/scale", help="stores and results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--npy", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.rows, args.n = [10**4, 10**5], 100
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    lines = [
        f"SkMM selection, m = {WIDTH}, n = {args.n}, k = {args.directions} directions, "
        f"{args.threads} thread(s) per rank; wall and CPU time of skmm.select (slowest rank), "
        "peak RSS (largest rank; 'base': after imports, before the pool)",
        "",
        "| N | ranks | source | seconds | CPU s | spectrum s | design s | peak RSS MiB | "
        "base MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for rows in args.rows:
        if "store" in args.sources:
            write_store(Path(args.workdir) / f"store-{rows}", rows)
        if "memmap" in args.sources:
            write_npy(Path(args.workdir) / f"pool-{rows}.npy", rows)
        for source in args.sources:
            if source == "memory" and rows > args.memory_max_rows:
                continue
            for ranks in args.ranks:
                entry = run_configuration(args, rows, ranks, source)
                results.append(entry)
                lines.append(
                    f"| {rows:,} | {ranks} | {source} | {entry['seconds']:.1f} | "
                    f"{entry['cpu_seconds']:.1f} | {entry['spectrum']:.1f} | "
                    f"{entry['design']:.1f} | {entry['peak_mib']:,.0f} | "
                    f"{entry['baseline_mib']:,.0f} |"
                )
                print(lines[-1], flush=True)
    for rows in args.rows:
        same = [entry["indices"] for entry in results if entry["rows"] == rows]
        if any(indices != same[0] for indices in same):
            raise RuntimeError(f"N={rows}: configurations selected different rows")
    lines.append("")
    lines.append("Every configuration of one N selected the same rows.")
    for ranks in args.ranks:
        for source in args.sources:
            points = [
                (entry["rows"], entry["seconds"])
                for entry in results
                if entry["ranks"] == ranks and entry["source"] == source
            ]
            if len(points) >= 2:
                lines.append(
                    f"Slope of log(seconds) vs log(N), {ranks} rank(s), {source}: {slopes(points)}"
                )
    print("\n".join(lines))
    (Path(args.workdir) / "results.json").write_text(
        json.dumps([{k: v for k, v in e.items() if k != "indices"} for e in results], indent=1)
    )


if __name__ == "__main__":
    main()
