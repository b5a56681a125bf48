"""`skmm sketch` and `skmm select STORE`: the command-line path from a model to a coreset."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from skmm import select
from skmm.cli import main
from skmm.gradients import load_gradient_sketch
from skmm.store import SketchStore

TASK = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    class Images(Dataset):
        def __init__(self, rows, delay=0.0):
            gen = torch.Generator().manual_seed(0)
            self.images = torch.randn(rows, 1, 6, 6, generator=gen)
            self.labels = torch.randint(0, 3, (rows,), generator=gen)
            self.delay = delay

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            time.sleep(self.delay)
            return self.images[index], self.labels[index]

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))

    def make():
        return model(), Images(60)

    def slow():
        return model(), Images(60, delay=0.02)
    """
)


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "task.py"
    path.write_text(TASK)
    return path


def sketch_args(task, out, *extra):
    return ["sketch", "--task", task, "--out", str(out), "--sketch-dim", "8", "--quiet", *extra]


def test_sketch_then_select_from_the_store(task_file, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(sketch_args(f"{task_file}:make", store, "--params", "3.*", "--target", "loss")) == 0
    sketch = load_gradient_sketch(store)
    assert sketch.features.shape == (60, 8) and sketch.labels.shape == (60,)
    assert sketch.metadata["params"] == ["3.weight", "3.bias"]
    capsys.readouterr()
    assert main(["select", str(store), "--n", "6", "--seed", "0", "--quiet"]) == 0
    picked = [int(line) for line in capsys.readouterr().out.split()]
    assert len(set(picked)) == 6
    out = tmp_path / "coreset.json"
    args = ["select", str(store), "--n", "6", "--seed", "0", "--stratify", "balanced"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0


def test_a_store_of_jacobian_blocks_selects_with_its_blocks(task_file, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(sketch_args(f"{task_file}:make", store, "--target", "jacobian_blocks")) == 0
    sketch = load_gradient_sketch(store)
    assert sketch.features.shape == (60, 3 * 8) and sketch.metadata["blocks"] == 3
    capsys.readouterr()
    args = ["select", str(store), "--n", "6", "--seed", "0", "--stratify", "false"]
    assert main(args) == 0
    captured = capsys.readouterr()
    picked = [int(line) for line in captured.out.split()]
    assert "each row is 3 blocks" in captured.err
    expected = select(sketch.features, 6, blocks=3, stratify=False, random_state=0).indices
    assert picked == expected.tolist()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("nocolon", "MODULE:FUNCTION"),
        ("no_such_module_xyz:make", "not found"),
        ("{file}:missing", "no function 'missing'"),
        ("{dir}/absent.py:make", "does not exist"),
    ],
)
def test_bad_tasks_are_reported(task_file, tmp_path, capsys, task, message):
    task = task.format(file=task_file, dir=tmp_path)
    assert main(sketch_args(task, tmp_path / "store")) == 2
    assert message in capsys.readouterr().err


def test_a_store_for_another_request_is_refused(task_file, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(sketch_args(f"{task_file}:make", store)) == 0
    assert main(sketch_args(f"{task_file}:make", store, "--seed", "4")) == 2
    assert "seed: stored 0, requested 4" in capsys.readouterr().err


def test_a_store_being_written_is_refused_to_a_second_sketch(task_file, tmp_path, capsys):
    store = tmp_path / "store"
    writer = SketchStore.open_for_writing(store, {"sketch_dim": 8})  # another sketch, running
    assert main(sketch_args(f"{task_file}:make", store)) == 2
    assert "being written by another writer" in capsys.readouterr().err
    writer.close()
    assert main(sketch_args(f"{task_file}:make", store)) == 2  # a store for another request
    assert "made for a different request" in capsys.readouterr().err


def test_a_killed_sketch_resumes_to_an_identical_store(task_file, tmp_path):
    reference = tmp_path / "reference"
    assert (
        main(sketch_args(f"{task_file}:make", reference, "--shard-rows", "8", "--batch-size", "4"))
        == 0
    )
    store = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "skmm.cli",
        *sketch_args(f"{task_file}:slow", store, "--shard-rows", "8", "--batch-size", "4"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    for wanted_shards in (1, 3):
        process = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 60
        while len(list(store.glob("shard-*.npy"))) < wanted_shards:
            assert process.poll() is None, "the sketch ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with pytest.raises(ValueError, match="incomplete"):
            load_gradient_sketch(store)
    assert (
        main(sketch_args(f"{task_file}:make", store, "--shard-rows", "8", "--batch-size", "4")) == 0
    )
    for path in sorted(reference.iterdir()):
        assert (store / path.name).read_bytes() == path.read_bytes(), path.name
    np.testing.assert_array_equal(
        load_gradient_sketch(store).features, load_gradient_sketch(reference).features
    )


def test_off_a_terminal_sketch_prints_plain_progress_and_the_chosen_parameters(task_file, tmp_path):
    out = tmp_path / "store"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skmm",
            "sketch",
            "--task",
            f"{task_file}:slow",
            "--out",
            str(out),
            "--sketch-dim",
            "8",
            "--params",
            "last:1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "skmm: gradients of 2 parameter tensors: 3.* (2) (r = 99)" in done.stderr
    assert "skmm: sketch gradients: 60/60 example (100%)" in done.stderr  # 60 × 20 ms > 1 s
    assert "\r" not in done.stderr  # no bar frames in a log
