import os
import pickle
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from skmm.io import (
    atomic_write,
    file_lock,
    hold_lock,
    load_array,
    read_json,
    sniff_format,
    write_json,
)


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2), dtype=np.float32))
    loaded = load_array(tmp_path / "x.npy")
    assert isinstance(loaded, np.memmap) and loaded.shape == (3, 2)


def test_npz_and_safetensors_with_and_without_key(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.ones((2, 2)))
    np.savez(tmp_path / "two.npz", x=np.ones((2, 2)), y=np.arange(2))
    save_file({"g": np.ones((2, 3), dtype=np.float32)}, str(tmp_path / "g.safetensors"))
    assert load_array(tmp_path / "one.npz").shape == (2, 2)
    assert load_array(tmp_path / "two.npz", "y").shape == (2,)
    assert load_array(tmp_path / "g.safetensors").shape == (2, 3)
    with pytest.raises(ValueError, match="holds 2 arrays"):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ValueError, match="no array 'z'"):
        load_array(tmp_path / "two.npz", "z")


def test_text_labels(tmp_path):
    (tmp_path / "ints.txt").write_text("1\n0\n1\n")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    (tmp_path / "table.csv").write_text("1,2\n3,4\n")
    assert load_array(tmp_path / "ints.txt").tolist() == [1, 0, 1]
    assert load_array(tmp_path / "names.txt").tolist() == ["cat", "dog"]
    assert load_array(tmp_path / "table.csv").shape == (2, 2)


def test_a_pickle_disguised_as_npy_is_refused_without_running_it(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "features.npy"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ValueError, match="pickle"):
        load_array(path)
    assert not (tmp_path / "pwned").exists()


def test_object_npy_is_refused(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_array(path)


def test_torch_pt_file_is_refused(tmp_path):
    path = tmp_path / "features.pt"
    torch.save(torch.ones(2, 2), path)
    with pytest.raises(ValueError, match="pickle"):
        load_array(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'", "truncated|corrupt")],
)
def test_empty_and_truncated_files(tmp_path, content, match):
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_array(path)


def test_truncated_npy_data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((100, 100), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_array(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_array(tmp_path / "nope.npy")
    with pytest.raises(ValueError, match="directory"):
        sniff_format(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(path, "w") as stream:
        stream.write("partial")
        raise RuntimeError("crash")
    assert read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_written_by_the_cli_respect_the_umask(tmp_path, umask):
    np.save(tmp_path / "features.npy", np.random.default_rng(0).standard_normal((30, 4)))
    out = tmp_path / "coreset.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "skmm",
            "select",
            str(tmp_path / "features.npy"),
            "--n",
            "5",
            "--method",
            "uniform",
            "--seed",
            "0",
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
        preexec_fn=lambda: os.umask(umask),
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_corrupt_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_json(path)


def test_a_held_lock_refuses_a_nonwaiting_taker_and_makes_a_waiting_one_wait(tmp_path):
    lock_path = tmp_path / "deep" / "x.lock"
    held = hold_lock(lock_path)  # the file and its folder are created
    assert held is not None and lock_path.is_file()
    with pytest.raises(BlockingIOError):
        hold_lock(lock_path, wait=False)  # another descriptor: flock refuses it
    entered = threading.Event()

    def waiter():
        with file_lock(lock_path):
            entered.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not entered.wait(0.3)  # it waits while the lock is held
    os.close(held)
    assert entered.wait(10)
    thread.join()
    os.close(hold_lock(lock_path, wait=False))  # file_lock let go at the end of its block


def test_a_directory_is_locked_without_creating_anything_in_it(tmp_path):
    held = hold_lock(tmp_path, wait=False)
    with pytest.raises(BlockingIOError):
        hold_lock(tmp_path, wait=False)
    os.close(held)
    assert list(tmp_path.iterdir()) == []
