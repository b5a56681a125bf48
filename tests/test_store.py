import hashlib
import itertools
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skmm.store
from skmm.store import MANIFEST, STORE_VERSION, SketchStore, StoreError, is_store

WIDTH = 6
IDENTITY = {
    "model": "sha256:abc123",
    "params": ["layer.weight", "layer.bias"],
    "r": 4,
    "seed": 0,
    "sketch": "gaussian",
    "sketch_dim": WIDTH,
    "dtype": "float32",
    "target": "logits",
}


def make_rows(start, stop, width=WIDTH):
    """Deterministic rows [start, stop): the same formula as the subprocess script below."""
    i = np.arange(start, stop, dtype=np.float64)[:, None]
    j = np.arange(width, dtype=np.float64)[None, :]
    features = np.sin(i * 0.37 + j * 1.3).astype(np.float32)
    return features, (np.arange(start, stop) % 5).astype(np.int64)


def write_store(path, n, cuts=(), *, shard_rows=4, labels=True, start=0, finish=True, meta=None):
    """Append rows [start, n) split at ``cuts``; finish unless told not to. Returns the store."""
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=shard_rows)
    bounds = [start, *sorted(c for c in set(cuts) if start < c < n), n]
    for lo, hi in itertools.pairwise(bounds):
        features, label_rows = make_rows(lo, hi)
        store.append(features, label_rows if labels else None)
    if finish:
        store.finish(meta)
    return store


def snapshot(path):
    return {entry.name: entry.read_bytes() for entry in sorted(Path(path).iterdir())}


def edit_manifest(path, change):
    manifest = json.loads((path / MANIFEST).read_text())
    change(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


# ------------------------------------------------------------------ round trip


def test_round_trip(tmp_path):
    write_store(tmp_path / "s", 10, [3, 7], meta={"n_params": 12, "note": "ok"})
    store = SketchStore.open(tmp_path / "s")
    features, labels = make_rows(0, 10)
    assert store.complete and store.rows_done == 10 and store.sketch_dim == WIDTH
    assert store.identity == IDENTITY and store.metadata == {"n_params": 12, "note": "ok"}
    np.testing.assert_array_equal(store.load_features(), features)
    np.testing.assert_array_equal(store.labels, labels)
    assert store.load_features().dtype == np.float32 and store.labels.dtype == np.int64
    assert sorted(snapshot(tmp_path / "s")) == [
        "labels-00000.npy",
        "labels-00001.npy",
        "labels-00002.npy",
        MANIFEST,
        "shard-00000.npy",
        "shard-00001.npy",
        "shard-00002.npy",
    ]
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert manifest["format"] == "skmm-sketch-store" and manifest["version"] == STORE_VERSION
    assert manifest["state"] == "complete" and manifest["n_rows"] == 10
    assert [(s["start"], s["rows"]) for s in manifest["shards"]] == [(0, 4), (4, 4), (8, 2)]
    assert str(tmp_path) not in (tmp_path / "s" / MANIFEST).read_text()
    assert is_store(tmp_path / "s") and not is_store(tmp_path)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(0, 30),
    shard_rows=st.integers(1, 7),
    cuts=st.lists(st.integers(1, 29), max_size=8),
    labels=st.booleans(),
)
def test_any_chunking_gives_identical_files(n, shard_rows, cuts, labels):
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp, "one"), Path(tmp, "many")
        write_store(one, n, shard_rows=shard_rows, labels=labels)
        write_store(many, n, cuts, shard_rows=shard_rows, labels=labels)
        assert snapshot(one) == snapshot(many)
        store = SketchStore.open(many)
        features, label_rows = make_rows(0, n)
        np.testing.assert_array_equal(store.load_features(), features)
        if labels and n:
            np.testing.assert_array_equal(store.labels, label_rows)
        else:
            assert store.labels is None


def test_store_without_labels(tmp_path):
    write_store(tmp_path / "s", 9, [5], labels=False)
    store = SketchStore.open(tmp_path / "s")
    assert store.labels is None
    np.testing.assert_array_equal(store.load_features(), make_rows(0, 9)[0])
    assert not any(name.startswith("labels-") for name in snapshot(tmp_path / "s"))


def test_empty_store(tmp_path):
    write_store(tmp_path / "s", 0)
    store = SketchStore.open(tmp_path / "s")
    assert store.rows_done == 0 and store.load_features().shape == (0, WIDTH)
    assert store.labels is None


# ------------------------------------------------------------------ resume


def test_resume_after_crash_is_byte_identical(tmp_path):
    write_store(tmp_path / "ref", 23, [5, 11])
    crashed = write_store(tmp_path / "s", 14, [6], finish=False)
    assert crashed.rows_done == 12  # 2 rows still buffered, lost in the crash
    del crashed
    # a shard written before the kill but not yet in the manifest, and half-written temp files
    (tmp_path / "s" / "shard-00003.npy").write_bytes(b"written before the kill")
    (tmp_path / "s" / ".shard-00004.npy.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / "s" / ".manifest.json.abcd.tmp").write_bytes(b"{")
    (tmp_path / "s" / "notes.txt").write_text("not ours: left alone")
    with pytest.raises(StoreError, match="incomplete store .*12 of \\? rows.*rerun"):
        SketchStore.open(tmp_path / "s")

    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    assert not store.complete and store.rows_done == 12
    assert (
        sorted(p.name for p in (tmp_path / "s").iterdir() if "0003" in p.name or ".tmp" in p.name)
        == []
    )
    assert (tmp_path / "s" / "notes.txt").exists()
    (tmp_path / "s" / "notes.txt").unlink()
    features, labels = make_rows(12, 23)
    store.append(features, labels)
    store.finish()
    assert snapshot(tmp_path / "s") == snapshot(tmp_path / "ref")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "labels"])
def test_resume_drops_a_damaged_shard_and_all_after_it(tmp_path, damage):
    write_store(tmp_path / "ref", 22)
    write_store(tmp_path / "s", 20, finish=False)  # 5 shards
    target = tmp_path / "s" / ("labels-00002.npy" if damage == "labels" else "shard-00002.npy")
    data = target.read_bytes()
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(data[:-7])
    else:
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    assert store.rows_done == 8
    manifest = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert [s["file"] for s in manifest["shards"]] == ["shard-00000.npy", "shard-00001.npy"]
    assert not (tmp_path / "s" / "shard-00004.npy").exists()
    store.append(*make_rows(8, 22))
    store.finish()
    assert snapshot(tmp_path / "s") == snapshot(tmp_path / "ref")


def test_complete_store_reopened_for_writing_is_left_alone(tmp_path):
    write_store(tmp_path / "s", 10, meta={"a": 1})
    before = snapshot(tmp_path / "s")
    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    assert store.complete and store.rows_done == 10 and store.metadata == {"a": 1}
    with pytest.raises(StoreError, match="already complete"):
        store.append(*make_rows(10, 11))
    with pytest.raises(StoreError, match="already complete"):
        store.finish()
    assert snapshot(tmp_path / "s") == before


def test_complete_store_with_a_damaged_shard_is_reopened_from_there(tmp_path):
    write_store(tmp_path / "s", 10, meta={"a": 1})
    before = snapshot(tmp_path / "s")
    (tmp_path / "s" / "shard-00002.npy").write_bytes(b"garbage")
    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    assert not store.complete and store.rows_done == 8
    store.append(*make_rows(8, 10))
    store.finish({"a": 1})
    assert snapshot(tmp_path / "s") == before


SCRIPT = r"""
import json, sys, time, types
# stand-in for the package so that only skmm.store and skmm.io load (not torch): starts fast
package = types.ModuleType("skmm")
package.__path__ = [sys.argv[1]]
sys.modules["skmm"] = package
import numpy as np
from skmm.store import SketchStore

path, total, identity = sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
store = SketchStore.open_for_writing(path, identity, shard_rows=4)
row = store.rows_done
print(row, flush=True)
while row < total:
    stop = min(total, row + 3)
    i = np.arange(row, stop, dtype=np.float64)[:, None]
    j = np.arange(identity["sketch_dim"], dtype=np.float64)[None, :]
    features = np.sin(i * 0.37 + j * 1.3).astype(np.float32)
    store.append(features, (np.arange(row, stop) % 5).astype(np.int64))
    row = stop
    time.sleep(0.02)
store.finish({"note": "done"})
"""


def run_until_killed(path, total, kill_at_shards, while_running=None):
    """Run SCRIPT in a subprocess; SIGKILL it once the manifest lists kill_at_shards shards
    (calling ``while_running()`` just before)."""
    args = [str(Path(skmm.store.__file__).parent), str(path), str(total), json.dumps(IDENTITY)]
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the writer finished before it could be killed"
            try:
                shards = json.loads((path / MANIFEST).read_text())["shards"]
            except (FileNotFoundError, json.JSONDecodeError):
                shards = []
            if len(shards) >= kill_at_shards:
                break
            time.sleep(0.001)
        else:
            pytest.fail("the writer made no progress")
        if while_running is not None:
            while_running()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        out, _ = process.communicate()
    assert process.returncode == -signal.SIGKILL
    return int(out.split()[0])


def test_sigkilled_writer_resumes_to_identical_store(tmp_path):
    total = 200
    path = tmp_path / "s"
    first_start = run_until_killed(path, total, kill_at_shards=3)
    with pytest.raises(StoreError, match="incomplete store"):
        SketchStore.open(path)
    second_start = run_until_killed(path, total, kill_at_shards=20)
    with pytest.raises(StoreError, match="incomplete store"):
        SketchStore.open(path)
    assert first_start == 0 and second_start >= 12 and second_start % 4 == 0

    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    assert store.rows_done >= 80 and store.rows_done % 4 == 0 and not store.complete
    store.close()
    write_store(
        path, total, [store.rows_done + 5, 150], start=store.rows_done, meta={"note": "done"}
    )
    write_store(tmp_path / "ref", total, meta={"note": "done"})
    assert snapshot(path) == snapshot(tmp_path / "ref")
    np.testing.assert_array_equal(SketchStore.open(path).load_features(), make_rows(0, total)[0])


# ------------------------------------------------------------------ refusals


WRITING = "being written by another writer"


def test_a_second_writer_in_another_process_is_refused_until_the_first_dies(tmp_path):
    path = tmp_path / "s"

    def second_writer():
        with pytest.raises(StoreError, match=WRITING + ".*choose another --out"):
            SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
        with pytest.raises(StoreError, match="still running; wait for it to finish"):
            SketchStore.open(path)  # a reader is told not to resume it

    run_until_killed(path, 400, kill_at_shards=2, while_running=second_writer)
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)  # the kernel let go
    assert store.rows_done >= 8 and not store.complete
    write_store(tmp_path / "ref", 30)
    store.close()
    write_store(path, 30, start=store.rows_done)
    assert snapshot(path) == snapshot(tmp_path / "ref")


def test_a_second_writer_in_this_process_is_refused_until_close_or_finish(tmp_path):
    path = tmp_path / "s"
    first = write_store(path, 6, finish=False)  # one full shard listed, two rows buffered
    with pytest.raises(StoreError, match=WRITING):
        SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    with pytest.raises(StoreError, match="still running"):
        SketchStore.open(path)
    first.close()
    with pytest.raises(StoreError, match="incomplete store .*4 of \\? rows written; rerun"):
        SketchStore.open(path)
    with pytest.raises(StoreError, match="was closed; open it again"):
        first.append(*make_rows(6, 7))
    with pytest.raises(StoreError, match="was closed"):
        first.finish()
    second = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    assert second.rows_done == 4  # the closed writer's buffered rows were dropped
    second.append(*make_rows(4, 10))
    second.finish()
    second.close()  # a no-op after finish
    assert snapshot(path) == snapshot(write_store(tmp_path / "ref", 10).path)
    readers = [SketchStore.open_for_writing(path, IDENTITY, shard_rows=4) for _ in range(2)]
    assert all(store.complete for store in readers)  # a complete store holds no lock


def test_a_writer_dropped_without_close_lets_go(tmp_path):
    write_store(tmp_path / "s", 6, finish=False)  # returned and discarded: garbage
    assert SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4).rows_done == 4


def test_a_failed_write_lets_a_new_writer_resume(tmp_path, monkeypatch):
    path = tmp_path / "s"
    store = write_store(path, 5, finish=False)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(skmm.store, "write_shard", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.append(*make_rows(5, 9))
    monkeypatch.undo()
    with pytest.raises(StoreError, match="earlier write .* failed"):
        store.append(*make_rows(9, 10))
    resumed = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)  # store still alive
    assert resumed.rows_done == 4
    resumed.append(*make_rows(4, 10))
    resumed.finish()
    assert snapshot(path) == snapshot(write_store(tmp_path / "ref", 10).path)


def test_mismatched_identity_names_each_key(tmp_path):
    write_store(tmp_path / "s", 5, finish=False)
    other = {**IDENTITY, "seed": 1, "sketch_dim": 512}
    with pytest.raises(StoreError) as excinfo:
        SketchStore.open_for_writing(tmp_path / "s", other, shard_rows=4)
    message = str(excinfo.value)
    assert f"store {tmp_path / 's'} was made for a different request" in message
    assert "seed: stored 0, requested 1" in message
    assert f"sketch_dim: stored {WIDTH}, requested 512" in message
    assert "remove it or choose another --out" in message
    with pytest.raises(StoreError, match="shard_rows: stored 4, requested 8"):
        SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=8)
    with pytest.raises(StoreError, match='extra: stored \\(absent\\), requested "x"'):
        SketchStore.open_for_writing(tmp_path / "s", {**IDENTITY, "extra": "x"}, shard_rows=4)


def test_verify_request(tmp_path):
    write_store(tmp_path / "s", 5)
    store = SketchStore.open(tmp_path / "s")
    store.verify_request(dict(reversed(IDENTITY.items())))
    with pytest.raises(StoreError, match='model: stored "sha256:abc123", requested "other"'):
        store.verify_request({**IDENTITY, "model": "other"})


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("flip", "shard-00001.npy fails its checksum"),
        ("truncate", "shard-00001.npy fails its checksum"),
        ("delete", "shard-00001.npy is missing"),
        ("labels", "labels-00001.npy fails its checksum"),
    ],
)
def test_damaged_shard_is_refused_on_open(tmp_path, damage, match):
    write_store(tmp_path / "s", 10)
    target = tmp_path / "s" / ("labels-00001.npy" if damage == "labels" else "shard-00001.npy")
    data = target.read_bytes()
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    with pytest.raises(StoreError, match=match) as excinfo:
        SketchStore.open(tmp_path / "s")
    assert str(tmp_path / "s") in str(excinfo.value)


@pytest.mark.parametrize("name", ["../x.npy", "/etc/passwd", "shard-00000.npy/../../x.npy", 7])
def test_manifest_pointing_outside_the_store_is_refused(tmp_path, name):
    write_store(tmp_path / "s", 5)
    np.save(tmp_path / "x.npy", make_rows(0, 4)[0])

    def point_outside(manifest):
        manifest["shards"][0]["file"] = name

    edit_manifest(tmp_path / "s", point_outside)
    with pytest.raises(StoreError, match="not a plain shard file name"):
        SketchStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match="not a plain shard file name"):
        SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)


def test_a_pickle_with_a_matching_checksum_is_never_loaded(tmp_path):
    write_store(tmp_path / "s", 4)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    shard = tmp_path / "s" / "shard-00000.npy"
    np.save(shard, np.array([Boom()] * 4, dtype=object), allow_pickle=True)

    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    edit_manifest(tmp_path / "s", lambda m: m["shards"][0].update(sha256=digest))
    with pytest.raises(StoreError, match="shard-00000.npy is not a valid .npy file"):
        SketchStore.open(tmp_path / "s")
    shard.write_bytes(pickle.dumps(Boom()))
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    edit_manifest(tmp_path / "s", lambda m: m["shards"][0].update(sha256=digest))
    with pytest.raises(StoreError, match="shard-00000.npy is not a valid .npy file"):
        SketchStore.open(tmp_path / "s")
    assert not (tmp_path / "pwned").exists()


def test_wrong_shape_with_matching_checksum_is_refused(tmp_path):
    write_store(tmp_path / "s", 4)
    edit_manifest(tmp_path / "s", lambda m: m["identity"].update(sketch_dim=5))
    with pytest.raises(StoreError, match="shard-00000.npy holds float32 \\(4, 6\\); expected"):
        SketchStore.open(tmp_path / "s")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.update(version=3), "store version 3; this skmm reads versions 1 and 2"),
        (lambda m: m.pop("shards"), "lacks the field 'shards'"),
        (lambda m: m.update(format="other"), "not a skmm sketch store manifest"),
        (lambda m: m.update(n_rows=11), "n_rows is 11 but its shards hold 10 rows"),
        (lambda m: m.update(state="done"), "unknown state 'done'"),
        (lambda m: m["shards"][0].update(rows=3), "inconsistent entry for shard 0"),
        (lambda m: m["identity"].pop("sketch_dim"), "positive integer sketch_dim"),
    ],
)
def test_malformed_manifest_is_refused(tmp_path, change, match):
    write_store(tmp_path / "s", 10)
    edit_manifest(tmp_path / "s", change)
    with pytest.raises(StoreError, match=match):
        SketchStore.open(tmp_path / "s")


def test_a_version_1_store_is_read_but_not_resumed(tmp_path):
    write_store(tmp_path / "s", 10)
    edit_manifest(tmp_path / "s", lambda m: m.update(version=1))
    features, _ = make_rows(0, 10)
    np.testing.assert_array_equal(np.asarray(SketchStore.open(tmp_path / "s").features), features)
    with pytest.raises(StoreError, match="store version 1, written by an earlier skmm"):
        SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]"])
def test_garbage_manifest_is_refused(tmp_path, content):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / MANIFEST).write_text(content)
    with pytest.raises(StoreError, match=MANIFEST) as excinfo:
        SketchStore.open(tmp_path / "s")
    assert str(tmp_path / "s") in str(excinfo.value)
    with pytest.raises(StoreError, match=MANIFEST):
        SketchStore.open_for_writing(tmp_path / "s", IDENTITY)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        SketchStore.open(tmp_path / "missing")
    with pytest.raises(StoreError, match="holds no manifest.json"):
        SketchStore.open(tmp_path)
    (tmp_path / "file.npy").write_bytes(b"x")
    with pytest.raises(StoreError, match="not a directory"):
        SketchStore.open(tmp_path / "file.npy")
    with pytest.raises(StoreError, match="not a directory"):
        SketchStore.open_for_writing(tmp_path / "file.npy", IDENTITY)


def test_unrelated_directory_is_not_written_into(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(StoreError, match="not empty and holds no manifest.json"):
        SketchStore.open_for_writing(tmp_path, IDENTITY)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_empty_directory_and_leftover_manifest_temp_are_fine(tmp_path):
    (tmp_path / ".manifest.json.k3j4.tmp").write_text("{")
    store = SketchStore.open_for_writing(tmp_path, IDENTITY)
    assert store.rows_done == 0 and [p.name for p in tmp_path.iterdir()] == [MANIFEST]


# ------------------------------------------------------------------ bad input


def test_append_checks_its_input(tmp_path):
    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    features, labels = make_rows(0, 3)
    with pytest.raises(ValueError, match="shape \\(rows, 6\\)"):
        store.append(features[:, :5], labels)
    with pytest.raises(ValueError, match="shape \\(rows, 6\\)"):
        store.append(features[0], labels[:1])
    with pytest.raises(ValueError, match="float32"):
        store.append(features.astype(np.float64), labels)
    with pytest.raises(ValueError, match="labels must have shape \\(3,\\)"):
        store.append(features, labels[:2])
    with pytest.raises(ValueError, match="integers"):
        store.append(features, labels.astype(np.float32))
    bad = features.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1 .*NaN or Inf"):
        store.append(bad, labels)
    with pytest.raises(ValueError, match="JSON-serializable"):
        store.finish({"x": object()})
    store.append(features, labels.astype(np.int32))
    with pytest.raises(ValueError, match="every batch or with none"):
        store.append(features)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="row 4 .*NaN or Inf"):
        store.append(bad, labels)
    store.append(features, labels)  # the refused calls left nothing behind
    store.finish()
    np.testing.assert_array_equal(SketchStore.open(tmp_path / "s").labels, [0, 1, 2] * 2)
    with pytest.raises(StoreError, match="opened for reading"):
        SketchStore.open(tmp_path / "s").append(features, labels)


def test_identity_needs_an_integer_sketch_dim(tmp_path):
    with pytest.raises(ValueError, match="sketch_dim"):
        SketchStore.open_for_writing(tmp_path / "s", {"seed": 0})
    with pytest.raises(ValueError, match="shard_rows"):
        SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=0)
    assert not (tmp_path / "s").exists()


def test_caller_reusing_its_buffer_does_not_change_written_rows(tmp_path):
    store = SketchStore.open_for_writing(tmp_path / "s", IDENTITY, shard_rows=4)
    features, labels = make_rows(0, 3)
    buffer = features.copy()
    store.append(buffer, labels)
    buffer[:] = 0
    store.finish()
    np.testing.assert_array_equal(SketchStore.open(tmp_path / "s").load_features(), features)


def test_store_array_reads_ranges_and_rows_shard_by_shard(tmp_path):
    write_store(tmp_path / "s", 23, shard_rows=4)
    features, _ = make_rows(0, 23)
    array = SketchStore.open(tmp_path / "s", verify=False).features
    assert array.shape == (23, WIDTH) and len(array) == 23 and array.dtype == np.float32
    np.testing.assert_array_equal(array[3:18], features[3:18])
    np.testing.assert_array_equal(array[20:], features[20:])
    rows = np.array([22, 0, 5, 5, -1])
    np.testing.assert_array_equal(array[rows], features[rows])
    np.testing.assert_array_equal(array[7], features[7])
    np.testing.assert_array_equal(np.asarray(array), features)
    assert array[10:10].shape == (0, WIDTH)
    with pytest.raises(IndexError, match="contiguous"):
        array[::2]
    with pytest.raises(IndexError, match="out of range"):
        array[np.array([23])]


def test_store_array_checks_a_shard_when_it_first_reads_it(tmp_path):
    path = tmp_path / "s"
    write_store(path, 12, shard_rows=4)
    damaged = path / "shard-00002.npy"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    array = SketchStore.open(path, verify=False).features
    np.testing.assert_array_equal(array[0:8], make_rows(0, 8)[0])
    with pytest.raises(StoreError, match="checksum"):
        array[9:10]
    with pytest.raises(StoreError, match="checksum"):
        SketchStore.open(path)


def test_shards_written_by_any_rank_are_listed_in_order(tmp_path):
    path = tmp_path / "s"
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    entries = [
        skmm.store.write_shard(
            path, index, 4 * index, *make_rows(4 * index, min(4 * index + 4, 10))
        )
        for index in range(3)
    ]
    store.add_shards(entries[:2])
    listed = json.loads((path / MANIFEST).read_text())
    assert listed["state"] == "writing" and len(listed["shards"]) == 2
    with pytest.raises(ValueError, match="not the next one"):
        store.add_shards([entries[0]])
    store.add_shards([entries[2]])  # the short last shard waits for finish()
    assert len(json.loads((path / MANIFEST).read_text())["shards"]) == 2
    store.finish()
    assert snapshot(path) == snapshot(write_store(tmp_path / "appended", 10).path)


# ------------------------------------------------------------------ partial shards


def partial_entry(path, rows, index=0, shard_rows=4):
    """Rows [index·shard_rows, +rows) written as shard ``index``'s file, not yet listed."""
    start = index * shard_rows
    return skmm.store.write_shard(path, index, start, *make_rows(start, start + rows))


def test_a_partial_shard_is_kept_by_a_resume_and_replaced_by_the_whole_shard(tmp_path):
    path = tmp_path / "s"
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    store.add_shards([partial_entry(path, 4)])
    store.set_partial(partial_entry(path, 2, index=1))
    listed = json.loads((path / MANIFEST).read_text())
    assert [len(listed["shards"]), listed["partial"]["rows"]] == [1, 2]
    with pytest.raises(StoreError, match="incomplete store"):
        SketchStore.open(path)
    store.close()
    resumed = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    assert (resumed.rows_done, resumed.partial_rows) == (4, 2)
    features, labels = resumed.read_partial()
    np.testing.assert_array_equal(features, make_rows(4, 6)[0])
    np.testing.assert_array_equal(labels, make_rows(4, 6)[1])
    resumed.add_shards([partial_entry(path, 4, index=1), partial_entry(path, 2, index=2)])
    assert "partial" not in json.loads((path / MANIFEST).read_text())
    resumed.finish()
    assert snapshot(path) == snapshot(write_store(tmp_path / "appended", 10).path)


def test_a_partial_shard_must_be_the_next_shard_and_shorter_than_one(tmp_path):
    path = tmp_path / "s"
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    with pytest.raises(ValueError, match="must be shard 0 at row 0; got shard 1"):
        store.set_partial(partial_entry(path, 2, index=1))
    with pytest.raises(ValueError, match="holds 1 to 3 rows; got 4"):
        store.set_partial(partial_entry(path, 4))
    with pytest.raises(ValueError, match="lists no partial shard"):
        store.read_partial()


@pytest.mark.parametrize("damage", ["file", "shard before"])
def test_a_damaged_partial_shard_is_dropped_on_resume(tmp_path, damage):
    path = tmp_path / "s"
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    store.add_shards([partial_entry(path, 4)])
    store.set_partial(partial_entry(path, 3, index=1))
    store.close()
    victim = "shard-00001.npy" if damage == "file" else "shard-00000.npy"
    (path / victim).write_bytes(b"damaged")
    resumed = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    assert (resumed.rows_done, resumed.partial_rows) == (4 if damage == "file" else 0, 0)
    assert "partial" not in json.loads((path / MANIFEST).read_text())
    assert not (path / "shard-00001.npy").exists()  # unlisted now: deleted


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.update(state="complete", n_rows=6), "complete store lists a partial shard"),
        (lambda m: m["partial"].update(rows=4), "inconsistent entry for shard 1"),
        (lambda m: m["partial"].update(index=2), "inconsistent entry for shard 1"),
        (lambda m: m["partial"].update(file="../x.npy"), "not a plain shard file name"),
        (lambda m: m.update(partial=[1]), "partial shard entry that is not a JSON object"),
    ],
)
def test_a_malformed_partial_shard_is_refused(tmp_path, change, match):
    path = tmp_path / "s"
    store = SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)
    store.add_shards([partial_entry(path, 4)])
    store.set_partial(partial_entry(path, 2, index=1))
    store.close()
    edit_manifest(path, change)
    with pytest.raises(StoreError, match=match):
        SketchStore.open_for_writing(path, IDENTITY, shard_rows=4)


def test_the_reader_has_the_attributes_a_user_expects(tmp_path):
    write_store(tmp_path / "s", 10)
    store = SketchStore.open(tmp_path / "s")
    features, labels = make_rows(0, 10)
    assert store.shape == (10, WIDTH) and len(store) == 10
    assert store.features.shape == (10, WIDTH)  # a StoreArray, read on demand
    np.testing.assert_array_equal(store.features[3:7], features[3:7])
    np.testing.assert_array_equal(np.asarray(store.features), features)
    np.testing.assert_array_equal(store.labels, labels)
    assert store.features is store.features  # one reader: each shard is verified once
    with pytest.raises(ValueError):
        store.labels[0] = 7  # the cached labels are read-only
