import json
import os
import socket
import subprocess

from skmm.bench.journal import Journal, RealRun, _merged_settings, read_runs_csv


def test_a_claim_holds_while_its_process_lives_and_is_void_after(tmp_path):
    journal = Journal(tmp_path / "runs.csv", {"task": "t"})
    keys = [("linear", 5, "skmm", 0), ("linear", 5, "skmm", 1)]
    finished = subprocess.Popen(["true"])
    finished.wait()
    host = socket.gethostname()
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
