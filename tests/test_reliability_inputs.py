"""Hostile input through the Python API and the command line: each case ends with a clear,
typed error naming the problem, or a documented correct result (docs/reliability.md).

Cases already covered elsewhere (tests/test_inputs.py, test_io.py, test_api.py, test_cli.py,
test_store.py, test_cli_sketch.py) are not repeated here; docs/reliability.md points to them.
"""

import hashlib
import json
import os
import pickle
import textwrap

import numpy as np
import pytest
import torch

import skmm
from skmm.cli import main
from skmm.memory import MemoryLimitError, memory_limit
from skmm.store import MANIFEST, SketchStore, StoreError

# ---------------------------------------------------------------------------- Python API


def _pool(rows=50, cols=8, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(dtype)


def _labels(rows=50):
    labels = np.random.default_rng(1).integers(0, 3, rows)
    labels[:3] = [0, 1, 2]
    return labels


def _select(method, features, n, **options):
    cls = skmm.get_method(method)
    labels = _labels(len(features)) if cls.requires_labels else None
    target = features[::4] if cls.requires_target else None  # every fourth row
    return skmm.select(features, n, method, labels=labels, target=target, random_state=0, **options)


def test_nan_values_are_counted_and_located():
    features = _pool()
    features[21, 2] = np.nan
    features[30, 5] = -np.inf
    with pytest.raises(
        ValueError, match=r"2 NaN/Inf in rows \[0, 50\) \(first: nan at row 21, column 2\)"
    ):
        skmm.select(features, 5, "uniform")


@pytest.mark.parametrize(
    "layout",
    ["big-endian", "fortran", "strided view", "float16", "int16"],
)
@pytest.mark.parametrize("method", ["skmm", "kcenter", "entropy"])
def test_unusual_layouts_and_dtypes_select_as_plain_float32(method, layout):
    base = _pool()
    if layout == "float16":
        base = base.astype(np.float16).astype(np.float32)
    if layout == "int16":
        base = np.round(base * 100).astype(np.float32)
    features = {
        "big-endian": base.astype(">f4"),
        "fortran": np.asfortranarray(base),
        "strided view": np.repeat(base, 2, axis=1)[:, ::2],
        "float16": base.astype(np.float16),
        "int16": base.astype(np.int16),
    }[layout]
    expected = _select(method, base, 6)
    np.testing.assert_array_equal(_select(method, features, 6).indices, expected.indices)


@pytest.mark.parametrize("pool", ["all zero", "constant rows", "one column"])
@pytest.mark.parametrize("method", skmm.methods())
def test_degenerate_pools_give_n_distinct_rows(method, pool):
    features = {
        "all zero": np.zeros((30, 4), np.float32),
        "constant rows": np.ones((30, 4), np.float32),
        "one column": _pool(30, 1),
    }[pool]
    for n in (1, 7, 30):
        selection = _select(method, features, n)
        assert sorted(set(selection.indices.tolist())) == sorted(selection.indices.tolist())
        assert len(selection) == n and selection.indices.max() < 30


def test_all_zero_features_are_reported_in_the_diagnostics():
    selection = skmm.select(np.zeros((30, 4)), 5, "skmm", random_state=0)
    assert "all features are zero" in selection.info["note"]
    selection = skmm.select(np.zeros((30, 4)), 5, "leverage", random_state=0)
    assert "only 0 rows have a positive score" in selection.info["note"]


def test_a_sketch_at_least_as_wide_as_the_features_is_an_embedding():
    """sketch_dim >= r: SkMM uses the features as they are; skmm.sketch still embeds them."""
    features = _pool(40, 6, np.float64)
    selection = skmm.select(features, 5, "skmm", sketch_dim=6, random_state=0)
    assert selection.info["sketch"] == {"kind": "none", "reason": "r <= sketch_dim"}
    sketched = skmm.sketch(features, 16, seed=0)
    assert sketched.shape == (40, 16)
    assert np.linalg.matrix_rank(sketched) == 6
    gram = features @ np.linalg.pinv(features)  # the projection on the row space is kept
    np.testing.assert_allclose(gram @ sketched, sketched, atol=1e-8)


def test_sketch_rows_computed_in_parts_equal_the_whole_sketch():
    """The advice of the memory refusal: sketch row ranges separately, cut anywhere."""
    features = _pool(300, 20, np.float64)
    whole = skmm.sketch(features, 8, seed=3)
    parts = [skmm.sketch(features[a:b], 8, seed=3) for a, b in ((0, 101), (101, 128), (128, 300))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# ---------------------------------------------------------------------------- memory


@pytest.fixture
def memmap_pool(tmp_path):
    path = tmp_path / "pool.npy"
    mapped = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(2000, 200))
    mapped[:] = _pool(2000, 200)
    mapped.flush()
    return np.load(path, mmap_mode="r")


def test_a_method_needing_more_than_the_limit_is_refused_up_front(memmap_pool, monkeypatch):
    monkeypatch.setenv("SKMM_MAX_MEMORY", "1M")
    with pytest.raises(MemoryLimitError) as excinfo:
        skmm.select(memmap_pool, 10, "kcenter", random_state=0)
    message = str(excinfo.value)
    assert "method 'kcenter' on 2000 × 200 features needs 1.5 MiB of memory" in message
    assert "more than the limit of 1.0 MiB (SKMM_MAX_MEMORY=1M)" in message
    assert "skmm.sketch(features, 512)" in message and "method='skmm'" in message
    streamed = skmm.select(memmap_pool, 10, "skmm", sketch_dim=16, random_state=0)
    assert len(streamed) == 10


def test_refusals_name_the_way_out(memmap_pool, monkeypatch):
    monkeypatch.setenv("SKMM_MAX_MEMORY", "1M")
    with pytest.raises(MemoryLimitError, match="the \\(2000, 512\\) sketch needs 3.9 MiB.*smaller"):
        skmm.sketch(memmap_pool, 512)
    with pytest.raises(MemoryLimitError, match="use a smaller sketch_dim"):
        skmm.select(memmap_pool, 10, "skmm", sketch_dim=150, random_state=0)
    with pytest.raises(MemoryLimitError, match="sketch the features instead"):
        skmm.select(memmap_pool, 10, "skmm", sketch="none", random_state=0)
    with pytest.raises(MemoryLimitError, match="use sketched=True"):
        skmm.select(memmap_pool, 10, "ridge_leverage", random_state=0)


def test_adaptive_sampling_counts_its_n_by_N_factor(monkeypatch):
    monkeypatch.setenv("SKMM_MAX_MEMORY", "100M")
    features = _pool(20000, 2)
    with pytest.raises(MemoryLimitError, match="needs 1.2 GiB.*n × N float64"):
        skmm.select(features, 8000, "adaptive", random_state=0)
    assert len(skmm.select(features, 50, "adaptive", random_state=0)) == 50


def test_reading_a_store_whole_is_refused_beyond_the_limit(tmp_path, monkeypatch):
    store = SketchStore.open_for_writing(tmp_path / "s", {"sketch_dim": 64}, shard_rows=100)
    store.append(np.ones((500, 64), np.float32))
    store.finish()
    monkeypatch.setenv("SKMM_MAX_MEMORY", "64K")
    with pytest.raises(MemoryLimitError, match="reading the \\(500, 64\\) sketch.*125.0 KiB"):
        SketchStore.open(tmp_path / "s").load_features()


def test_sketching_gradients_checks_the_sketch_size_before_starting(tmp_path, monkeypatch):
    from torch.utils.data import TensorDataset

    from skmm.gradients import sketch_gradients

    monkeypatch.setenv("SKMM_MAX_MEMORY", "1M")
    data = TensorDataset(torch.randn(1000, 4), torch.zeros(1000, dtype=torch.int64))
    with pytest.raises(MemoryLimitError, match="the \\(1000, 512\\) float32 sketch.*2.0 MiB"):
        sketch_gradients(torch.nn.Linear(4, 3), data, sketch_dim=512, store=tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("text", ["lots", "-5", "1.5X"])
def test_a_malformed_memory_limit_is_an_error(monkeypatch, text):
    monkeypatch.setenv("SKMM_MAX_MEMORY", text)
    with pytest.raises(ValueError, match="SKMM_MAX_MEMORY=.* is not a size"):
        skmm.select(_pool(), 5, "uniform")


def test_a_pool_larger_than_this_machine_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.delenv("SKMM_MAX_MEMORY", raising=False)
    physical = memory_limit()
    if physical is None:
        pytest.skip("the physical memory size is unknown here")
    rows = 4 * physical // (4 * 4096) + 1
    try:  # a sparse file: nothing is written but the header
        np.lib.format.open_memmap(tmp_path / "huge.npy", "w+", np.float32, (rows, 4096))
    except OSError as exc:
        pytest.skip(f"cannot create a sparse file of {4 * rows * 4096} bytes here: {exc}")
    try:
        huge = np.load(tmp_path / "huge.npy", mmap_mode="r")
        with pytest.raises(MemoryLimitError, match="this machine's memory; set SKMM_MAX_MEMORY"):
            skmm.select(huge, 10, "herding", random_state=0)
    finally:
        (tmp_path / "huge.npy").unlink()


# ---------------------------------------------------------------------------- command line


TASK = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def model(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 3))

    def data(width=4, nan=False):
        gen = torch.Generator().manual_seed(0)
        inputs = torch.randn(20, width, generator=gen)
        if nan:
            inputs[7, 1] = float("nan")
        return TensorDataset(inputs, torch.randint(0, 3, (20,), generator=gen))

    def make():
        return model(0), data()

    def other_model():
        return model(1), data()

    def boom():
        raise RuntimeError("the task failed")

    def not_a_model():
        return "model", data()

    def wrong_width():
        return model(0), data(width=5)

    def nan_inputs():
        return model(0), data(nan=True)
    """
)


class Boom:
    """Unpickling this runs a shell command: skmm must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_store(path, rows=12):
    store = SketchStore.open_for_writing(path, {"sketch_dim": 4, "seed": 0}, shard_rows=4)
    store.append(_pool(rows, 4), np.arange(rows) % 2)
    store.finish()
    return path


def _edit_manifest(path, change):
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _setup(case, tmp):
    """Files for one CLI case; returns the arguments after ``skmm``."""
    features = tmp / "features.npy"
    np.save(features, _pool())
    select = ["select", str(features), "--n", "5", "--seed", "0", "--quiet"]
    if case == "nan":
        data = _pool()
        data[21, 2] = data[40, 0] = np.nan
        np.save(features, data)
    elif case == "3-D":
        np.save(features, _pool().reshape(5, 10, 8))
    elif case == "boolean":
        np.save(features, _pool() > 0)
    elif case == "too large":
        np.save(features, _pool() * np.float32(1e30))
    elif case == "empty file":
        features.write_bytes(b"")
    elif case == "truncated npy":
        features.write_bytes(features.read_bytes()[:700])
    elif case == "truncated npz":
        np.savez(tmp / "f.npz", x=_pool())
        (tmp / "f.npz").write_bytes((tmp / "f.npz").read_bytes()[:900])
        select[1] = str(tmp / "f.npz")
    elif case == "corrupt safetensors":
        (tmp / "f.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
        select[1] = str(tmp / "f.safetensors")
    elif case == "pickle named .npy":
        features.write_bytes(pickle.dumps(Boom(tmp / "pwned")))
    elif case == "torch file named .npy":
        torch.save(torch.ones(5, 5), features)
    elif case == "binary junk named .npy":
        features.write_bytes(b"\x00\x01junk" * 50)
    elif case == "npz without --key":
        np.savez(tmp / "f.npz", a=_pool(), b=_pool())
        select[1] = str(tmp / "f.npz")
    elif case == "labels of the wrong length":
        np.save(tmp / "labels.npy", np.zeros(10, np.int64))
        select += ["--labels", str(tmp / "labels.npy"), "--stratify", "balanced"]
    elif case == "labels in a pickle":
        (tmp / "labels.npy").write_bytes(pickle.dumps(Boom(tmp / "pwned")))
        select += ["--labels", str(tmp / "labels.npy"), "--stratify", "balanced"]
    elif case == "class too small for its budget":
        (tmp / "labels.txt").write_text("\n".join(["cat"] * 45 + ["dog"] * 5))
        select += ["--labels", str(tmp / "labels.txt"), "-o", 'stratify={"cat": 15, "dog": 10}']
        select[3] = "25"
    elif case == "unknown method option":
        select += ["-o", "sketchdim=8"]
    elif case == "unwritable --out":
        select += ["--out", str(features / "x.json")]
    elif case == "unknown device":
        select += ["--device", "tpu"]
    elif case == "incomplete store":
        store = SketchStore.open_for_writing(tmp / "s", {"sketch_dim": 4}, shard_rows=4)
        store.append(_pool(8, 4))
        select[1] = str(tmp / "s")
    elif case == "store with a corrupted shard":
        shard = _write_store(tmp / "s") / "shard-00001.npy"
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0xFF
        shard.write_bytes(bytes(data))
        select[1] = str(tmp / "s")
    elif case == "store naming a file outside it":
        _edit_manifest(_write_store(tmp / "s"), lambda m: m["shards"][0].update(file="../x.npy"))
        select[1] = str(tmp / "s")
    elif case == "store with a symlinked shard":
        store = _write_store(tmp / "s")
        outside = tmp / "outside.npy"
        outside.write_bytes((store / "shard-00000.npy").read_bytes())
        (store / "shard-00000.npy").unlink()
        (store / "shard-00000.npy").symlink_to(outside)
        select[1] = str(store)
    elif case == "directory that is not a store":
        (tmp / "d").mkdir()
        select[1] = str(tmp / "d")
    else:
        (tmp / "task.py").write_text(TASK)
        function = {
            "store from another model": "other_model",
            "task raises": "boom",
            "task returns no model": "not_a_model",
            "model fails on the data": "wrong_width",
            "NaN gradients": "nan_inputs",
            "--out is a file": "make",
        }[case]
        out = tmp / "task.py" if case == "--out is a file" else tmp / "store"
        if case == "store from another model":
            assert main(_sketch(f"{tmp / 'task.py'}:make", out)) == 0
        return _sketch(f"{tmp / 'task.py'}:{function}", out)
    return select


def _sketch(task, out):
    return ["sketch", "--task", task, "--out", str(out), "--sketch-dim", "4", "--quiet"]


CLI_CASES = [
    ("nan", "2 NaN/Inf in rows [0, 50) (first: nan at row 21, column 2)"),
    ("3-D", "must be 2-D (N examples x r features), got shape (5, 10, 8)"),
    ("boolean", "must hold real numbers, got boolean dtype"),
    ("too large", "too large for float32 arithmetic"),
    ("empty file", "features.npy is empty"),
    ("truncated npy", "is truncated or corrupt"),
    ("truncated npz", "could not be read (truncated or corrupt?)"),
    ("corrupt safetensors", "is not a valid safetensors file"),
    ("pickle named .npy", "is a Python pickle; skmm never loads pickles"),
    ("torch file named .npy", "zip archive holding pickled data"),
    ("binary junk named .npy", "is named .npy but is not a .npy file"),
    ("npz without --key", "holds 2 arrays (a, b); name one with a key"),
    ("labels of the wrong length", "labels has length 10 but features has N = 50 rows"),
    ("labels in a pickle", "labels.npy is a Python pickle"),
    ("class too small for its budget", "class 'dog' has 5 members, fewer than its budget 10"),
    ("unknown method option", "does not take option(s) 'sketchdim'"),
    ("unwritable --out", "cannot write --out"),
    ("unknown device", "unknown device 'tpu'"),
    ("incomplete store", "incomplete store"),
    ("store with a corrupted shard", "shard-00001.npy fails its checksum"),
    ("store naming a file outside it", "lists '../x.npy', which is not a plain shard file name"),
    ("store with a symlinked shard", "shard-00000.npy is a symbolic link"),
    ("directory that is not a store", "is a directory, not an array file"),
    ("store from another model", "model_fingerprint: stored"),
    ("task raises", "raised RuntimeError: the task failed"),
    ("task returns no model", "model must be a torch.nn.Module, got str"),
    ("model fails on the data", "raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("NaN gradients", "non-finite per-sample gradients for example(s) [7]"),
    ("--out is a file", "exists and is not a directory"),
]


@pytest.mark.parametrize(("case", "message"), CLI_CASES, ids=[case for case, _ in CLI_CASES])
def test_cli_refuses_with_one_error_line(case, message, tmp_path, capsys):
    args = _setup(case, tmp_path)
    capsys.readouterr()
    status = main(args)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.err.startswith("skmm: error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "pwned").exists()


def test_cli_memory_refusal(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "f.npy", _pool(2000, 200))
    monkeypatch.setenv("SKMM_MAX_MEMORY", "1M")
    status = main(["select", str(tmp_path / "f.npy"), "--n", "5", "--method", "herding"])
    err = capsys.readouterr().err
    assert status == 2 and "needs 1.5 MiB of memory, more than the limit of 1.0 MiB" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["--n", "five"], "argument --n: invalid int value: 'five'"),
        (["--seed", "1.5"], "argument --seed: invalid int value: '1.5'"),
    ],
)
def test_cli_unknown_flags_and_malformed_numbers_are_usage_errors(tmp_path, capsys, args, message):
    np.save(tmp_path / "f.npy", _pool())
    with pytest.raises(SystemExit) as excinfo:
        main(["select", str(tmp_path / "f.npy"), "--n", "3", *args])
    err = capsys.readouterr().err
    assert excinfo.value.code == 2 and message in err and "Traceback" not in err


def test_cli_sketch_dim_at_least_r_is_the_unsketched_selection(tmp_path):
    np.save(tmp_path / "f.npy", _pool())
    out = tmp_path / "sel.json"
    args = ["select", str(tmp_path / "f.npy"), "--n", "5", "--seed", "0", "--quiet"]
    assert main([*args, "--sketch-dim", "64", "--out", str(out)]) == 0
    info = json.loads(out.read_text())["info"]
    assert info["sketch"] == {"kind": "none", "reason": "r <= sketch_dim"}


def test_a_store_shard_with_a_matching_checksum_but_pickled_content_is_refused(tmp_path):
    store = _write_store(tmp_path / "s")
    shard = store / "shard-00000.npy"
    shard.write_bytes(pickle.dumps(Boom(tmp_path / "pwned")))
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    _edit_manifest(store, lambda m: m["shards"][0].update(sha256=digest))
    with pytest.raises(StoreError, match="not a valid .npy file"):
        SketchStore.open(store)
    assert not (tmp_path / "pwned").exists()
