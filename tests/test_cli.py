import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse
from safetensors.numpy import save_file

import skmm
from skmm import Selection
from skmm.cli import main


@pytest.fixture
def features_file(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).standard_normal((200, 50)).astype(np.float32))
    return path


def test_select_writes_json_with_diagnostics(features_file, tmp_path, capsys):
    out = tmp_path / "sel.json"
    status = main(
        [
            "select",
            str(features_file),
            "--n",
            "10",
            "--seed",
            "3",
            "--out",
            str(out),
            "--sketch-dim",
            "16",
        ]
    )
    assert status == 0
    payload = json.loads(out.read_text())
    assert payload["format"] == "skmm.selection" and len(payload["indices"]) == 10
    assert payload["info"]["params"]["sketch_dim"] == 16
    assert "selected 10 of 200 rows with skmm" in capsys.readouterr().err


def test_cli_matches_the_python_api(features_file, tmp_path):
    import skmm

    out = tmp_path / "sel.npy"
    assert (
        main(
            [
                "select",
                str(features_file),
                "--n",
                "7",
                "--method",
                "uniform",
                "--seed",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    expected = skmm.select(np.load(features_file), 7, "uniform", random_state=1)
    np.testing.assert_array_equal(Selection.load(out).indices, expected.indices)


def test_indices_go_to_stdout_without_out(features_file, capsys):
    assert (
        main(
            [
                "select",
                str(features_file),
                "--n",
                "4",
                "--method",
                "uniform",
                "--seed",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.split()
    assert len(lines) == 4 and all(line.isdigit() for line in lines)


def test_safetensors_npz_labels_and_generic_options(tmp_path, capsys):
    rng = np.random.default_rng(1)
    save_file(
        {"g": rng.standard_normal((60, 8)).astype(np.float32)}, str(tmp_path / "g.safetensors")
    )
    (tmp_path / "labels.txt").write_text("\n".join(["cat"] * 40 + ["dog"] * 20))
    out = tmp_path / "sel.npz"
    status = main(
        [
            "select",
            str(tmp_path / "g.safetensors"),
            "--key",
            "g",
            "--n",
            "9",
            "--labels",
            str(tmp_path / "labels.txt"),
            "--stratify",
            "proportional",
            "-o",
            "objective=diagonal",
            "-o",
            "max_iter=50",
            "-o",
            'rounding="pivotal"',
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0, capsys.readouterr().err
    selection = Selection.load(out)
    assert [c["budget"] for c in selection.info["classes"]] == [6, 3]
    assert selection.info["params"]["max_iter"] == 50


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "n must be >= 1"),
        (["--n", "500"], "exceeds the pool size"),
        (["--n", "3", "--method", "nope"], "available methods"),
        (["--n", "3", "--method", "uniform", "--sketch-dim", "4"], "does not take option"),
        (["--n", "3", "-o", "bogus"], "NAME=VALUE"),
        (["--n", "3", "--stratify", "balanced"], "needs --labels"),
        (["--n", "3", "--stratify", "maybe"], "true/false (also yes/no, 1/0), proportional"),
        (["--n", "3", "--out", "x.csv"], "use .json, .npy or .npz"),
    ],
)
def test_input_errors_exit_2_with_one_line(features_file, tmp_path, capsys, args, message):
    status = main(["select", str(features_file), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("skmm: error:") and message in err
    assert "Traceback" not in err


def test_pickle_input_is_refused(tmp_path, capsys):
    path = tmp_path / "features.npy"
    path.write_bytes(pickle.dumps(np.ones((5, 5))))
    assert main(["select", str(path), "--n", "2"]) == 2
    assert "never loads pickles" in capsys.readouterr().err


@pytest.mark.parametrize(("layout", "compressed"), [("csr", True), ("csc", False), ("coo", True)])
@pytest.mark.parametrize("method", ["skmm", "kcenter"])
def test_sparse_npz_features_select_like_their_dense_form(tmp_path, layout, compressed, method):
    dense = np.random.default_rng(2).standard_normal((150, 90)).astype(np.float32)
    dense[np.random.default_rng(3).random(dense.shape) < 0.9] = 0.0
    sparse_path, dense_path = tmp_path / "features.npz", tmp_path / "features.npy"
    scipy.sparse.save_npz(sparse_path, scipy.sparse.csr_array(dense).asformat(layout), compressed)
    np.save(dense_path, dense)
    picks = []
    for path in (sparse_path, dense_path):
        out = tmp_path / f"{path.stem}-{path.suffix[1:]}.npy"
        args = ["select", str(path), "--n", "8", "--method", method, "--seed", "2", "--quiet"]
        assert main([*args, "--out", str(out)] + (["--sketch-dim", "16"] * (method == "skmm"))) == 0
        picks.append(Selection.load(out).indices)
    np.testing.assert_array_equal(*picks)


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"format": np.array("csr"), "shape": np.array([2, 3]), "data": np.ones(2)},
            "malformed scipy.sparse .npz file: format 'csr' needs the array(s) indices, indptr",
        ),
        (
            {"format": np.array("abc"), "shape": np.array([2, 3]), "data": np.ones(2)},
            "its format is 'abc', not one of csr, csc, bsr, coo, dia",
        ),
        (
            {
                "format": np.array(b"csr"),
                "shape": np.array([2, 3]),
                "data": np.ones(2),
                "indices": np.array([0, 7]),
                "indptr": np.array([0, 1, 2]),
            },
            "malformed scipy.sparse .npz file: indices must be < 3",
        ),
        (
            {
                "format": np.array(b"csr"),
                "shape": np.array([2, 3]),
                "data": np.ones(2),
                "indices": np.array([0, 1]),
                "indptr": np.array([0, 5, 2]),
            },
            "malformed scipy.sparse .npz file: indptr must be a non-decreasing",
        ),
        (
            {
                "format": np.array(b"coo"),
                "shape": np.array([2, 3]),
                "data": np.array([1.0, np.nan]),
                "row": np.array([0, 1]),
                "col": np.array([1, 2]),
            },
            "contains non-finite values: 1 NaN/Inf among its 2 stored values (first: nan at "
            "row 1, column 2)",
        ),
    ],
)
def test_malformed_sparse_npz_files_exit_2_with_one_line(tmp_path, capsys, arrays, message):
    path = _write_npz(tmp_path / "features.npz", **arrays)
    assert main(["select", str(path), "--n", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skmm: error:") and message in err and "Traceback" not in err


def test_sparse_npz_takes_no_key_and_is_no_labels_file(tmp_path, features_file, capsys):
    path = tmp_path / "sparse.npz"
    scipy.sparse.save_npz(path, scipy.sparse.random(200, 5, density=0.5, format="csr"))
    assert main(["select", str(path), "--n", "2", "--key", "data"]) == 2
    assert "holds one scipy sparse matrix; it has no key 'data'" in capsys.readouterr().err
    assert main(["select", str(features_file), "--n", "2", "--labels", str(path)]) == 2
    assert "only a features file may be sparse" in capsys.readouterr().err
    assert skmm.select(str(path), 2, "uniform", random_state=0).indices.shape == (2,)


def test_missing_file(tmp_path, capsys):
    assert main(["select", str(tmp_path / "nope.npy"), "--n", "2"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_methods_command_lists_options(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "skmm" in out and "sketch_dim" in out and "uniform" in out
    lines = out.splitlines()
    for name in ("less", "knn"):
        (line,) = [line for line in lines if line.split()[0] == name]
        assert "[needs --target]" in line
    assert not any("[needs --target]" in line for line in lines if line.startswith("skmm "))


def test_console_script_runs_as_a_module(features_file):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "skmm",
            "select",
            str(features_file),
            "--n",
            "3",
            "--method",
            "uniform",
            "--seed",
            "0",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and len(done.stdout.split()) == 3


def test_bench_synthetic_quick(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(
        [
            "bench",
            "synthetic",
            "--quick",
            "--seeds",
            "1",
            "--budgets",
            "12",
            "--methods",
            "skmm",
            "uniform",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| skmm |" in printed and (out / "table.md").exists() and (out / "runs.csv").exists()


def test_bench_rejects_unknown_methods(tmp_path, capsys):
    status = main(["bench", "synthetic", "--quick", "--methods", "magic", "--out", str(tmp_path)])
    assert status == 2 and "unknown benchmark method" in capsys.readouterr().err


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "skmm", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture
def labeled_files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [120, 60, 20])
    features = rng.standard_normal((3, 30))[labels] * 3 + rng.standard_normal((200, 30))
    np.save(tmp_path / "f.npy", features.astype(np.float32))
    (tmp_path / "labels.txt").write_text("\n".join(map(str, labels)))
    return tmp_path / "f.npy", tmp_path / "labels.txt"


@pytest.mark.parametrize(
    ("word", "stratified"), [("true", True), ("YES", True), ("1", True), ("no", False)]
)
def test_stratify_takes_true_false_words(labeled_files, capsys, word, stratified):
    features, labels = labeled_files
    args = ["select", str(features), "--n", "10", "--seed", "0", "--labels", str(labels)]
    assert main([*args, "--stratify", word, "--sketch-dim", "8", "--quiet"]) == 0
    picked = [int(line) for line in capsys.readouterr().out.split()]
    classes = np.repeat([0, 1, 2], [120, 60, 20])
    options = {"labels": classes, "random_state": 0, "sketch_dim": 8}
    expected = skmm.select(np.load(features), 10, stratify=stratified, **options)
    other = skmm.select(np.load(features), 10, stratify=not stratified, **options)
    assert picked == expected.indices.tolist() and picked != other.indices.tolist()


def test_the_summary_goes_to_stderr_and_the_picture_to_a_png(labeled_files, tmp_path):
    features, labels = labeled_files
    picture = tmp_path / "coreset.png"
    done = run_cli(
        "select",
        features,
        "--n",
        "12",
        "--seed",
        "0",
        "--labels",
        labels,
        "--sketch-dim",
        "8",
        "--plot",
        picture,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 12 and all(line.isdigit() for line in done.stdout.split())
    assert "one design per class" in done.stderr  # labels alone stratify SkMM
    assert "  class      pool  share  coreset  share     k      c_S" in done.stderr
    assert f"picture written to {picture}" in done.stderr
    assert picture.read_bytes()[:4] == b"\x89PNG"


def test_selection_warnings_print_once_as_skmm_lines(labeled_files):
    features, labels = labeled_files
    done = run_cli(
        "select",
        features,
        "--n",
        "2",
        "--method",
        "uniform",
        "--seed",
        "0",
        "--labels",
        labels,
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("labeled classes got no rows") == 1
    assert done.stderr.startswith("skmm: warning: ") and "SelectionWarning" not in done.stderr


def test_select_for_a_target_matches_the_api_and_refuses_a_foreign_store(
    features_file, tmp_path, capsys
):
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    from skmm.gradients import sketch_gradients

    target = tmp_path / "target.npy"
    np.save(target, np.load(features_file)[:40] * 3.0)
    out = tmp_path / "sel.npy"
    args = ["select", str(features_file), "--n", "9", "--seed", "2", "--sketch-dim", "16"]
    assert main([*args, "--target", str(target), "--out", str(out), "--quiet"]) == 0
    expected = skmm.select(
        np.load(features_file), 9, target=np.load(target), random_state=2, sketch_dim=16
    )
    np.testing.assert_array_equal(Selection.load(out).indices, expected.indices)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,)))
    for name, seed in (("pool", 0), ("other", 1)):
        sketch_gradients(model, data, sketch_dim=8, seed=seed, store=tmp_path / name)
    capsys.readouterr()
    status = main(
        ["select", str(tmp_path / "pool"), "--n", "5", "--target", str(tmp_path / "other")]
    )
    err = capsys.readouterr().err
    assert status == 2 and "does not match the pool's" in err and "seed: pool 0, target 1" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("method", "option"), [("less", 'aggregate="mean"'), ("knn", None)])
def test_select_with_a_targeted_baseline_matches_the_api(
    features_file, tmp_path, capsys, method, option
):
    target = tmp_path / "target.npy"
    np.save(target, np.load(features_file)[:40] * 3.0)
    out = tmp_path / "sel.json"
    args = ["select", str(features_file), "--n", "9", "--seed", "2", "--method", method]
    args += ["--option", option] if option else []
    assert main([*args, "--target", str(target), "--out", str(out), "--quiet"]) == 0
    options = {"aggregate": "mean"} if option else {}
    expected = skmm.select(
        np.load(features_file), 9, method, target=np.load(target), random_state=2, **options
    )
    selection = Selection.load(out)
    np.testing.assert_array_equal(selection.indices, expected.indices)
    assert selection.info["target"]["n_rows"] == 40
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--method {method} selects for a target set: pass --target FILE" in err
    assert "Traceback" not in err
