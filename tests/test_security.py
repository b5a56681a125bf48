"""Security: nothing in skmm unpickles or evaluates data, and the CLI runs no code from files.

The source scan is by syntax tree (tests/test_store.py, test_io.py and
test_reliability_inputs.py check the behaviour: manifests naming files outside their store,
symlinked shards, pickles disguised as .npy or .pt, pickled shards with matching checksums).
"""

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from skmm import Selection
from skmm.cli import main
from skmm.io import load_array

SOURCE = Path(__file__).parents[1] / "src" / "skmm"
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _sources():
    return sorted(SOURCE.rglob("*.py"))


def _keyword(call, name):
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_true(node):
    return isinstance(node, ast.Constant) and node.value is True


def _call_name(call):
    """'np.load' for np.load(...), 'eval' for eval(...), '<expression>.eval' for m.to(d).eval()."""
    func = call.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expression>")
    return ".".join(reversed(parts))


def _problems(path, root=SOURCE):
    """Each forbidden import or call in the file at ``path``, as 'file:line what'."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    where = path.relative_to(root.parent)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{where}:{node.lineno} imports {alias.name}"
                for alias in node.names
                if alias.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{where}:{node.lineno} imports from {node.module}")
            elif node.module == "importlib" and str(where) != "skmm/cli.py":
                found.append(f"{where}:{node.lineno} imports code dynamically (from importlib)")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            short = name.rsplit(".", 1)[-1]
            if name in FORBIDDEN_BUILTINS:
                found.append(f"{where}:{node.lineno} calls {name}()")
            elif short == "load" and name.split(".")[0] in ("np", "numpy"):
                if not _is_false(_keyword(node, "allow_pickle")):
                    found.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
            elif name == "torch.load":
                if not _is_true(_keyword(node, "weights_only")):
                    found.append(f"{where}:{node.lineno} torch.load without weights_only=True")
            elif short in ("system", "popen", "spawnl", "spawnv") and name.startswith("os."):
                found.append(f"{where}:{node.lineno} calls {name}()")
            elif short == "from_pretrained" and "Model" in name:
                if not _is_true(_keyword(node, "use_safetensors")):
                    found.append(f"{where}:{node.lineno} {name} without use_safetensors=True")
            elif name.startswith("importlib.") and str(where) != "skmm/cli.py":
                found.append(f"{where}:{node.lineno} imports code dynamically ({name})")
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads"):
            if isinstance(node.value, ast.Name) and node.value.id in ("yaml", "subprocess"):
                found.append(f"{where}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def _is_false(node):
    return isinstance(node, ast.Constant) and node.value is False


def test_the_source_never_unpickles_evaluates_or_imports_from_data():
    problems = [problem for path in _sources() for problem in _problems(path)]
    assert problems == []


def test_the_scan_finds_what_it_forbids(tmp_path):
    """The scanner itself: each forbidden pattern in a sample file is reported."""
    sample = tmp_path / "skmm" / "bad.py"
    sample.parent.mkdir()
    sample.write_text(
        "import pickle\n"
        "import numpy as np\n"
        "import torch\n"
        "from importlib import import_module\n"
        "np.load('x.npy')\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "torch.load('x.pt')\n"
        "torch.load('x.pt', weights_only=False)\n"
        "eval('1')\n"
        "AutoModel.from_pretrained('m')\n"
        "importlib.import_module('m')\n"
    )
    found = _problems(sample, root=tmp_path / "skmm")
    assert [line.split(" ", 1)[1] for line in found] == [
        "imports pickle",
        "imports code dynamically (from importlib)",
        "np.load without allow_pickle=False",
        "np.load without allow_pickle=False",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "calls eval()",
        "AutoModel.from_pretrained without use_safetensors=True",
        "imports code dynamically (importlib.import_module)",
    ]


def test_only_the_cli_task_option_imports_code():
    calls = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Call) and _call_name(inner).startswith("importlib."):
                        calls.append(f"{path.name}:{node.name}")
    assert sorted(set(calls)) == ["cli.py:_load_task"]


class Payload:
    """Unpickling (or evaluating) this creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "content",
    ["python code", "pickle", "npz of objects", "pickle named .npz"],
)
def test_data_files_never_run_code(tmp_path, capsys, content):
    marker = tmp_path / "pwned"
    path = tmp_path / ("features.npz" if "npz" in content else "features.txt")
    if content == "python code":
        path.write_text(f"__import__('os').system('touch {marker}')\n")
    elif content == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif content == "npz of objects":
        np.savez(path, x=np.array([Payload(marker)], dtype=object))
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    for args in (
        ["select", str(path), "--n", "1", "--quiet"],
        ["select", str(tmp_path / "ok.npy"), "--n", "1", "--labels", str(path), "--quiet"],
    ):
        np.save(tmp_path / "ok.npy", np.ones((3, 2), np.float32))
        assert main(args) == 2
        assert "skmm: error:" in capsys.readouterr().err
    with pytest.raises((ValueError, TypeError)):
        Selection.load(path)
    assert not marker.exists()


def test_a_saved_selection_with_pickled_info_is_refused(tmp_path):
    np.savez(
        tmp_path / "sel.npz",
        indices=np.arange(3),
        info=np.array([Payload(tmp_path / "pwned")], dtype=object),
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        Selection.load(tmp_path / "sel.npz")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ValueError, match="pickle"):
        load_array(tmp_path / "sel.npz", "info")
