"""Two gloo ranks on the CPU give exactly the single process's sketches and selections.

The ranks are launched as torchrun launches them (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` in the environment), run ``tests/distributed_scenarios.py`` and save what
they got; the same scenarios run here on one process.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import skmm
import skmm.cli

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import distributed_scenarios as scenarios  # noqa: E402


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_env(rank, size, port):
    source = str(Path(skmm.__file__).parents[1])
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_WORLD_SIZE": str(size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
    }


def launch(args, size=2, timeout=300):
    """Run ``python args...`` on ``size`` ranks; return their outputs (fails on any error)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=rank_env(rank, size, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(size)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (code, _, err) in enumerate(outputs):
        assert code == 0, f"rank {rank} failed:\n{err[-3000:]}"
    return outputs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Both scenario parts run once on two ranks (one launch: startup dominates)."""
    path = tmp_path_factory.mktemp("distributed")
    scenarios.prepare(path)
    launch([str(HERE / "distributed_scenarios.py"), str(path), *scenarios.PARTS])
    return path


def compare(part, workdir):
    """(single-process results, [rank 0 results, rank 1 results]) of one scenario part.

    The single process runs on one thread, as each rank does: a multithreaded BLAS may split
    a matrix-vector product's sum differently (docs/distributed.md, limits of the guarantee).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = scenarios.PARTS[part](workdir, "single")
    finally:
        torch.set_num_threads(threads)
    ranks = [dict(np.load(workdir / f"{part}-rank{r}.npz")) for r in range(2)]
    return single, ranks


@pytest.fixture(scope="module")
def selected(workdir):
    return compare("selections", workdir)


@pytest.fixture(scope="module")
def sketched(workdir):
    return compare("sketches", workdir)


SELECTIONS = [
    "skmm_aopt",
    "skmm_logdet",
    "skmm_diagonal",
    "skmm_diagonal_weights",
    "skmm_stratified",
    "skmm_candidates",
    "skmm_blocks_aopt",
    "skmm_blocks_diagonal",
    "skmm_store_blocks",
    "skmm_sparse_sign",
    "skmm_store",
    "skmm_memmap_diagonal",
    "lazy_aopt",
    "lazy_aopt_window",
    "tiny_aopt",
    "tiny_logdet",
    "tiny_diagonal",
    "tiny_uniform",
    "uniform",
    "uniform_stratified",
    "kcenter",
    "kcenter_error",
]


@pytest.mark.parametrize("name", SELECTIONS)
def test_two_ranks_select_exactly_what_one_process_selects(selected, name):
    single, ranks = selected
    for rank in ranks:
        np.testing.assert_array_equal(rank[name], single[name])


@pytest.mark.parametrize("name", ["grads", "grads_labels", "grads_iterable", "grads_store"])
def test_two_ranks_sketch_exactly_what_one_process_sketches(sketched, name):
    single, ranks = sketched
    for rank in ranks:
        np.testing.assert_array_equal(rank[name], single[name])


def test_a_store_written_by_two_ranks_is_byte_identical_to_one_written_by_one(sketched, workdir):
    two, one = workdir / "grads-ranks2", workdir / "grads-single"
    names = sorted(path.name for path in one.iterdir())
    assert names == sorted(path.name for path in two.iterdir())
    assert len([name for name in names if name.startswith("shard-")]) == 10  # 9 full + 1 short
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["n_rows"] == 300


@pytest.mark.parametrize("ranks", ["ranks2", "single"])
def test_a_store_resumed_from_a_partial_shard_is_byte_identical(sketched, workdir, ranks):
    resumed, reference = workdir / f"grads-resumed-{ranks}", workdir / "grads-single"
    names = sorted(path.name for path in reference.iterdir())
    assert names == sorted(path.name for path in resumed.iterdir())
    for name in names:
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name


def test_row_separable_methods_run_on_every_rank_and_the_others_on_rank_0(selected):
    single, ranks = selected
    assert single["ran_on"].tolist() == ["one process", "one process"]
    for rank in ranks:
        assert rank["ran_on"].tolist() == ["rank 0", "all ranks"]  # kcenter, uniform


def test_the_selections_are_not_trivial(selected):
    single, _ = selected
    _, labels = scenarios.pool()
    assert np.unique(labels[single["skmm_aopt"]]).size == 12  # every cluster covered
    assert not np.array_equal(single["uniform"], single["uniform_stratified"])
    np.testing.assert_array_equal(single["lazy_aopt_window"], single["lazy_aopt"])


TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(90, 6, generator=gen), torch.randint(0, 3, (90,), generator=gen)
    return model, TensorDataset(inputs, labels)
"""


def torchrun(args, size=2, timeout=300):
    """``torchrun --standalone --nproc-per-node size -m skmm -- args...``: (stdout, stderr).

    ``--`` keeps torchrun's own parser off skmm's options (it would read ``--n`` as an
    abbreviation of its ``--nnodes``/``--nproc-per-node``).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(size), "-m", "skmm", "--", *args]
    env = rank_env(0, 1, 0)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(name)
    env.pop("MASTER_PORT")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_the_same_commands_run_unchanged_under_torchrun(tmp_path, capsys):
    (tmp_path / "task.py").write_text(TASK)
    sketch = ["sketch", "--task", f"{tmp_path / 'task.py'}:make", "--sketch-dim", "8"]
    sketch += ["--shard-rows", "16", "--batch-size", "8", "--target", "loss"]
    assert skmm.cli.main([*sketch, "--out", str(tmp_path / "one"), "--quiet"]) == 0
    _, said = torchrun([*sketch, "--out", str(tmp_path / "two")])
    assert said.count("sketched 90 examples") == 1  # rank 0 alone reports
    for path in sorted((tmp_path / "one").iterdir()):
        assert (tmp_path / "two" / path.name).read_bytes() == path.read_bytes(), path.name

    select = ["select", str(tmp_path / "two"), "--n", "7", "--seed", "3", "--stratify", "balanced"]
    capsys.readouterr()
    assert skmm.cli.main([*select, "--quiet"]) == 0
    expected = capsys.readouterr().out.split()
    printed, said = torchrun(select)
    assert printed.split() == expected  # printed once, by rank 0
    assert said.count("selected 7 of 90 rows") == 1
