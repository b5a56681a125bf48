"""Crash safety of `skmm sketch`: SIGKILL at random moments never leaves a store that loads as
complete (unless the run had finished, and then it equals an uninterrupted run), and the
resumed run ends byte-identical to an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from skmm.cli import main
from skmm.gradients import load_gradient_sketch
from skmm.store import StoreError

TASK = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    class Slow(Dataset):
        def __init__(self, delay):
            gen = torch.Generator().manual_seed(0)
            self.inputs = torch.randn(60, 5, generator=gen)
            self.labels = torch.randint(0, 3, (60,), generator=gen)
            self.delay = delay

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            time.sleep(self.delay)
            return self.inputs[index], self.labels[index]

    def model():  # a linear model: closed-form gradients, no torch.func start-up cost
        torch.manual_seed(0)
        return nn.Linear(5, 3)

    def fast():
        return model(), Slow(0.0)

    def slow():
        return model(), Slow(0.02)
    """
)
SHARDS = 8  # 60 rows in shards of 8


def _args(task, out):
    return [
        "sketch",
        "--task",
        task,
        "--out",
        str(out),
        "--sketch-dim",
        "6",
        "--shard-rows",
        "8",
        "--batch-size",
        "4",
        "--target",
        "loss",
        "--quiet",
    ]


def _snapshot(path):
    return {entry.name: entry.read_bytes() for entry in sorted(Path(path).iterdir())}


def _kill_at(command, store, trigger, rng):
    """Start `skmm sketch`, SIGKILL it at ``trigger``; True if it was killed, False if done.

    ``("time", s)``: s seconds after the start (maybe before the store exists);
    ``("shards", k)``: once k shard files exist, plus a random delay of up to one shard's
    worth of rows, so the kill can land inside a shard or manifest write.
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        began = time.monotonic()
        while process.poll() is None and time.monotonic() - began < 120:
            if trigger[0] == "time" and time.monotonic() - began >= trigger[1]:
                break
            if trigger[0] == "shards" and len(list(store.glob("shard-*.npy"))) >= trigger[1]:
                time.sleep(rng.uniform(0.0, 0.16))
                break
            time.sleep(0.002)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    finally:
        _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        return False
    assert process.returncode == -signal.SIGKILL, err.decode()
    return True


def _check_after_kill(store, reference):
    """A killed run's store refuses to load, or (the run had finished) equals the reference."""
    try:
        loaded = load_gradient_sketch(store)
    except StoreError as exc:
        assert any(
            reason in str(exc) for reason in ("incomplete store", "does not exist", "no manifest")
        ), str(exc)
        return
    assert _snapshot(store) == _snapshot(reference)
    np.testing.assert_array_equal(loaded.features, load_gradient_sketch(reference).features)


def _kill_repeatedly_then_resume(tmp_path, triggers, seed):
    (tmp_path / "task.py").write_text(TASK)
    reference = tmp_path / "reference"
    assert main(_args(f"{tmp_path / 'task.py'}:fast", reference)) == 0
    store = tmp_path / "killed"
    command = [sys.executable, "-m", "skmm.cli", *_args(f"{tmp_path / 'task.py'}:slow", store)]
    rng = np.random.default_rng(seed)
    killed = 0
    for trigger in triggers:
        killed += _kill_at(command, store, trigger, rng)
        _check_after_kill(store, reference)
    assert killed >= 1
    assert main(_args(f"{tmp_path / 'task.py'}:fast", store)) == 0
    assert _snapshot(store) == _snapshot(reference)
    resumed = load_gradient_sketch(store)
    np.testing.assert_array_equal(resumed.features, load_gradient_sketch(reference).features)
    np.testing.assert_array_equal(resumed.labels, load_gradient_sketch(reference).labels)
    return killed


def test_sigkill_at_several_moments_then_resume_is_identical(tmp_path):
    """Three kills (seeded): at a random time in the first seconds (importing, creating the
    store or writing its first shards), then early and late at a random point of a shard."""
    rng = np.random.default_rng(9)
    triggers = [
        ("time", float(rng.uniform(0.3, 2.5))),
        ("shards", int(rng.integers(1, 3))),
        ("shards", int(rng.integers(4, SHARDS - 1))),
    ]
    assert _kill_repeatedly_then_resume(tmp_path, triggers, seed=9) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_many_random_moments_then_resume_is_identical(tmp_path, seed):
    """Eight runs, each killed at a random time (maybe while importing, or after the run
    finished) or at a random point after a random number of shards."""
    rng = np.random.default_rng(seed)
    triggers = [
        ("time", float(rng.uniform(0.0, 5.0))) if rng.random() < 0.5 else ("shards", k)
        for k in sorted(rng.integers(1, SHARDS, size=8).tolist())
    ]
    _kill_repeatedly_then_resume(tmp_path, triggers, seed)
