"""The same bits under every BLAS / SIMD dispatch setting, checked on whatever CPU runs the tests.

MKL picks GEMM kernels by processor and shape, torch by ``ATEN_CPU_CAPABILITY``, oneDNN by
``ONEDNN_MAX_CPU_ISA``; forcing other paths in subprocesses makes one machine see the kernels
another machine would run (an AMD CPU sees the AVX2, AVX-512 and compatible MKL paths of an
Intel one). Sketches and selections must be byte-identical under all of them; a model's
gradients are computed by the model's own kernels, so they agree to float32 rounding.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

PAYLOAD = Path(__file__).with_name("dispatch_payload.py")
SETTINGS = [
    ({}, None),
    ({}, 1),
    ({"MKL_CBWR": "COMPATIBLE"}, None),
    ({"MKL_CBWR": "AVX2"}, None),
    ({"MKL_CBWR": "AVX512"}, None),
    ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, None),
    ({"ATEN_CPU_CAPABILITY": "default"}, None),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, None),
    ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, None),
    ({"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}, 1),
]
DISPATCH_VARIABLES = (
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def _name(setting: tuple[dict[str, str], int | None]) -> str:
    env, threads = setting
    parts = [f"{key}={value}" for key, value in env.items()]
    return " ".join(parts + ([f"threads={threads}"] if threads else [])) or "default"


def _run(setting: tuple[dict[str, str], int | None]) -> dict:
    env, threads = setting
    clean = {k: v for k, v in os.environ.items() if k not in DISPATCH_VARIABLES}
    command = [sys.executable, str(PAYLOAD), *([str(threads)] if threads else [])]
    done = subprocess.run(
        command, env={**clean, **env}, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{_name(setting)}: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def reports() -> dict[str, dict]:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_run, SETTINGS))
    return {_name(setting): result for setting, result in zip(SETTINGS, results, strict=True)}


def test_threads_setting_is_applied(reports):
    assert reports["threads=1"]["threads"] == 1


def test_sketches_are_identical_for_every_batch_size_and_dispatch(reports):
    reference = reports["default"]["sketches"]
    for digests in reference.values():
        assert len(set(digests)) == 1  # the same bytes for every batch size
    for name, report in reports.items():
        assert report["sketches"] == reference, name


def test_selections_are_identical_under_every_dispatch(reports):
    reference = reports["default"]["selections"]
    for name, report in reports.items():
        differ = [m for m in reference if report["selections"][m] != reference[m]]
        assert not differ, f"{name}: {differ}"


def test_gradient_store_bytes_depend_only_on_the_model_kernels(reports):
    """A gradient store is byte-identical wherever the model's own float32 kernels agree (same
    dispatch: here 1 or 2 threads); elsewhere its gradients agree to the rounding bound."""
    reference = reports["default"]
    assert reports["threads=1"]["store_files"] == reference["store_files"]
    expected = np.asarray(reference["gradient_features"])
    # Each gradient entry of the 12-16-4 MLP comes from dot products of length ≤ L = 32 in the
    # forward and again in the backward, so its relative error is ≤ γ = 2·L·2^-24. The sketch
    # of the error vector is ≤ γ·‖g‖·(1 + ε) with ‖g‖ ≤ (1 + ε)·‖g̃‖ for the JL distortion ε;
    # ε ≤ 1 leaves a factor 4.
    gamma = 2 * 32 * 2.0**-24
    norms = np.linalg.norm(expected, axis=1)
    for name, report in reports.items():
        got = np.asarray(report["gradient_features"])
        error = np.linalg.norm(got - expected, axis=1)
        assert (error <= 4 * gamma * norms + math.ulp(1.0)).all(), name
