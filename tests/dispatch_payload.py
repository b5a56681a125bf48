"""Run by tests/test_reliability_dispatch.py in a subprocess under one BLAS/SIMD setting.

Prints one JSON object: sha256 digests of sketches, selections and a gradient store, and the
gradient sketch itself (compared with a tolerance, since a model's own kernels round
differently under other dispatch settings).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import skmm
from skmm.gradients import sketch_gradients

SELECTIONS = [
    ("skmm", {}),
    ("skmm", {"sketch": "sparse_sign"}),
    ("skmm", {"objective": "diagonal"}),
    ("skmm", {"blocks": 3}),
    ("uniform", {}),
    ("kcenter", {}),
    ("herding", {}),
    ("facility_location", {}),
    ("adaptive", {}),
    ("leverage", {}),
    ("ridge_leverage", {}),
]
TARGETED = [  # selected for a target: every ninth row of the pool, shifted
    ("skmm", {}),
    ("skmm", {"candidates": 4}),
    ("less", {}),
    ("less", {"aggregate": "mean"}),
    ("knn", {}),
]


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def pool(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Eight clusters of nonnegative 600-dimensional rows with a shared offset."""
    centers = rng.uniform(0, 1, (8, 600))
    labels = rng.integers(0, 8, 400)
    rows = 1.0 + centers[labels] + 0.05 * rng.standard_normal((400, 600))
    return rows.astype(np.float32), labels


def sketches(rows: np.ndarray) -> dict[str, list[str]]:
    """Digests of each sketch for two batch sizes, and of a slice of rows sketched alone."""
    out = {}
    for kind in ("gaussian", "sparse_sign"):
        for dtype in (np.float32, np.float64):
            x = rows.astype(dtype)
            name = f"{kind}-{np.dtype(dtype).name}"
            out[name] = [
                digest(skmm.sketch(x, 48, kind=kind, seed=3, batch_size=batch))
                for batch in (37, len(x))
            ]
            out[name + "-rows-101-260"] = [digest(skmm.sketch(x[101:260], 48, kind=kind, seed=3))]
    return out


def selections(rows: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Digests of the indices each method selects, without and with per-class budgets, and
    those of the targeted methods for one target."""
    out = {}
    for method, options in SELECTIONS:
        name = method + "".join(f"-{k}={v}" for k, v in options.items())
        chosen = skmm.select(rows, 24, method=method, random_state=0, **options)
        out[name] = digest(chosen.indices)
        stratified = skmm.select(
            rows, 24, method=method, random_state=0, labels=labels, stratify=True, **options
        )
        out[name + "-stratified"] = digest(stratified.indices)
    target = rows[::9] + 0.25
    for method, options in TARGETED:
        name = "target-" + method + "".join(f"-{k}={v}" for k, v in options.items())
        chosen = skmm.select(rows, 24, method=method, target=target, random_state=0, **options)
        out[name] = digest(chosen.indices)
        stratified = skmm.select(
            rows, 24, method, target=target, random_state=0, labels=labels, stratify=True, **options
        )
        out[name + "-stratified"] = digest(stratified.indices)
    return out


def gradient_store(rng: np.random.Generator) -> tuple[dict[str, str], list[list[float]]]:
    """Digests of a small MLP's gradient store's files, and its sketched gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4))
    inputs = torch.from_numpy(rng.standard_normal((50, 12)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, 50))
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        result = sketch_gradients(
            model, TensorDataset(inputs, labels), sketch_dim=16, batch_size=8, store=store
        )
        files = {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(store.iterdir())
        }
    return files, np.asarray(result.features, dtype=np.float64).tolist()


def main() -> None:
    threads = sys.argv[1:]
    if threads:
        torch.set_num_threads(int(threads[0]))
    rng = np.random.default_rng(0)
    rows, labels = pool(rng)
    store_files, gradient_features = gradient_store(rng)
    report = {
        "threads": torch.get_num_threads(),
        "sketches": sketches(rows),
        "selections": selections(rows, labels),
        "store_files": store_files,
        "gradient_features": gradient_features,
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
