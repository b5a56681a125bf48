"""One prepared run on a CUDA machine: CPU/GPU agreement of every method and GPU timings.

Usage: python benchmarks/device_check.py --out DIR [--quick]

Writes DIR/device_check.json and prints a markdown summary:
1. for every method, the selection on the CPU (numpy input) and on the GPU (a CUDA tensor)
   with the same seed: the overlap of the two index sets and both times;
2. GPU timings: sketching (Gaussian, sparse sign) of an (N, r) float32 matrix against a plain
   dense matmul with Γ precomputed; SkMM's default selection from a million-row sketch; the
   diagonal objective's solver per iteration at N = 10⁶, m = 512.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import skmm
from skmm.moments import MomentProblem, solve
from skmm.sketch import SketchMap
from skmm.spectrum import spectrum


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function, repeats: int = 3) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls (after one warm-up) and the last result."""
    result = function()
    synchronize()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        synchronize()
        times.append(time.perf_counter() - began)
    return float(np.median(times)), result


def agreement(quick: bool, device: str) -> list[dict[str, object]]:
    rows, cols, n = (600, 64, 30) if quick else (3000, 256, 60)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows, cols)).astype(np.float32)
    labels = rng.integers(0, 5, rows)
    gpu_features = torch.from_numpy(features).to(device)
    out = []
    for method in skmm.methods():
        cls = skmm.get_method(method)
        options = {"labels": labels} if cls.requires_labels else {}
        cpu_target = features[::10] if cls.requires_target else None
        gpu_target = gpu_features[::10] if cls.requires_target else None
        began = time.perf_counter()
        cpu = skmm.select(features, n, method, target=cpu_target, random_state=0, **options)
        cpu_seconds = time.perf_counter() - began
        synchronize()
        began = time.perf_counter()
        gpu = skmm.select(gpu_features, n, method, target=gpu_target, random_state=0, **options)
        synchronize()
        gpu_seconds = time.perf_counter() - began
        overlap = len(np.intersect1d(cpu.indices, gpu.indices)) / n
        out.append(
            {
                "method": method,
                "overlap": overlap,
                "identical_order": bool(np.array_equal(cpu.indices, gpu.indices)),
                "cpu_s": cpu_seconds,
                "gpu_s": gpu_seconds,
                "gpu_device": gpu.info["device"],
            }
        )
        print(f"| {method} | {overlap:.2f} | {cpu_seconds:.3f} | {gpu_seconds:.3f} |", flush=True)
    return out


def sketch_timings(quick: bool, device: str) -> list[dict[str, object]]:
    rows, cols = (4096, 20_000) if quick else (16_384, 100_000)
    matrix = torch.randn(rows, cols, device=device)
    out = []
    for m in (128, 512):
        gamma = SketchMap(cols, m, "gaussian", seed=0, device=device).dense()
        dense_s, _ = timed(lambda gamma=gamma: matrix @ gamma)
        entry = {"rows": rows, "cols": cols, "m": m, "dense_matmul_s": dense_s}
        for kind in ("gaussian", "sparse_sign"):
            seconds, _ = timed(lambda kind=kind, m=m: skmm.sketch(matrix, m, kind=kind, seed=0))
            entry[f"{kind}_s"] = seconds
        entry["gaussian_vs_dense"] = entry["dense_matmul_s"] / entry["gaussian_s"]
        out.append(entry)
        print(f"sketch {entry}", flush=True)
    return out


def selection_timings(quick: bool, device: str) -> dict[str, object]:
    rows = 100_000 if quick else 1_000_000
    generator = torch.Generator().manual_seed(0)
    scales = torch.arange(1, 257, dtype=torch.float32) ** -0.75
    sketch = (torch.randn(rows, 256, generator=generator) * scales).to(device)
    out: dict[str, object] = {"rows": rows}
    for n in (100, 1000):
        began = time.perf_counter()
        selection = skmm.select(sketch, n, random_state=0)
        synchronize()
        out[f"aopt_n{n}_s"] = time.perf_counter() - began
        out[f"aopt_n{n}_directions"] = selection.info["directions"]
        print(f"skmm default n={n}: {out[f'aopt_n{n}_s']:.2f} s", flush=True)
    data = (
        torch.randn(rows, 512, generator=generator).to(device)
        * torch.arange(1, 513, device=device) ** -0.75
    )
    spec = spectrum(data)
    problem = MomentProblem((data.double() @ spec.eigenvectors).square(), spec.eigenvalues, 1e-4)
    start = torch.zeros(rows, dtype=torch.float64, device=device)
    start[torch.randperm(rows, generator=generator)[:10_000].to(device)] = 1e-4
    result = solve(problem, start, max_iter=100)
    out["diagonal_solver_ms_per_iter"] = 1e3 * result.seconds / result.iterations
    out["diagonal_solver_iterations"] = result.iterations
    print(f"diagonal solver: {out['diagonal_solver_ms_per_iter']:.1f} ms/iter", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda", help="cpu for a dry run of the script")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    report: dict[str, object] = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device != "cpu" else "cpu",
    }
    print(f"torch {report['torch']} on {report['device']}")
    print("| method | overlap | cpu s | gpu s |\n|---|---|---|---|")
    report["agreement"] = agreement(args.quick, args.device)
    report["sketch"] = sketch_timings(args.quick, args.device)
    report["selection"] = selection_timings(args.quick, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
