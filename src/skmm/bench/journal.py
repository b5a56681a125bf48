"""The real benchmark's run journal: runs.csv, shared safely by any number of processes.

A journal is three files beside each other: ``runs.csv`` (one row per finished run,
rewritten atomically), ``runs.settings.json`` (what the runs were made with) and
``runs.claims.json`` (the runs under way, by host and pid), all changed under the exclusive
lock ``runs.lock``. A run is keyed by (protocol, n, method, seed).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write, file_lock, read_json, write_json
from ..progress import progress_bar

CLAIM_POLL_SECONDS = 5.0  # how often a process waiting for others' runs looks again


@dataclass
class RealRun:
    """One (protocol, method, n, seed) result."""

    task: str
    protocol: str
    method: str
    n: int
    seed: int
    accuracy: float
    macro_f1: float
    select_seconds: float
    train_seconds: float
    steps: int = 0
    """Finetuning steps to the kept (best validated) state; 0 for the linear probe."""

    @classmethod
    def of(
        cls,
        task: str,
        key: tuple[str, int, str, int],
        metrics: dict[str, float],
        select_seconds: float,
        train_seconds: float,
        steps: int = 0,
    ) -> RealRun:
        """The run of grid ``key`` (protocol, n, method, seed) on ``task``."""
        protocol, n, method, seed = key
        return cls(
            task,
            protocol,
            method,
            n,
            seed,
            **metrics,
            select_seconds=select_seconds,
            train_seconds=train_seconds,
            steps=steps,
        )


PROTOCOL_SETTINGS = {
    "linear": ("penalty_grid", "penalties"),
    "finetune": ("finetune", "tuning", "sketch_dim"),
}


def _merged_settings(stored: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any] | None:
    """``stored`` widened by ``settings`` if they describe the same runs, else None.

    The task's settings must be equal. A protocol's settings (:data:`PROTOCOL_SETTINGS`)
    present on one side only join the journal (a request may run one protocol of it, or add
    one); present on both, they must be equal, except the linear probe's ``penalties``, which
    are tuned per n independently (:func:`tune_linear`): a journal grows by new budgets as
    long as the budgets it shares with the request kept their penalty.
    """
    protocol_keys = {key for keys in PROTOCOL_SETTINGS.values() for key in keys}
    task_stored = {k: v for k, v in stored.items() if k not in protocol_keys}
    if task_stored != {k: v for k, v in settings.items() if k not in protocol_keys}:
        return None
    merged = dict(stored)
    for keys in PROTOCOL_SETTINGS.values():
        if not any(key in settings for key in keys):
            continue
        if not any(key in stored for key in keys):
            merged.update({key: settings[key] for key in keys if key in settings})
            continue
        if any(stored.get(k) != settings.get(k) for k in keys if k != "penalties"):
            return None
        old, new = stored.get("penalties"), settings.get("penalties")
        if old is not None and new is not None:
            if any(old[n] != new[n] for n in old.keys() & new.keys()):
                return None
            union = {**old, **new}
            merged["penalties"] = {n: union[n] for n in sorted(union, key=int)}
    return merged


def _run_key(key: tuple) -> str:
    return "/".join(str(part) for part in key)


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process that made a claim still runs (assumed so on another host)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


class Journal:
    """A grid's runs.csv, shared safely by any number of processes.

    Every change happens under an exclusive lock (``runs.lock`` beside it): a process
    re-reads the file, adds its run and rewrites it atomically, so the runs of the others are
    kept. A process claims a run before starting it (``runs.claims.json``: host and pid);
    the others skip it and, once nothing else is left, wait for it. A claim whose process is
    gone (checked on this host) is void, so a crash costs at most the run it was doing. The
    settings (``runs.settings.json``) must agree with the journal's (:func:`_merged_settings`;
    they then cover both), else ValueError.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.settings_path = path.with_suffix(".settings.json")
        self.claims_path = path.with_suffix(".claims.json")
        self.lock_path = path.with_suffix(".lock")
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        with file_lock(self.lock_path):
            fresh = not path.exists() and not self._claims()  # no runs, none under way
            if fresh or not self.settings_path.exists():
                write_json(self.settings_path, settings)
                return
            stored = read_json(self.settings_path)
            merged = _merged_settings(stored, json.loads(json.dumps(settings)))
            if merged is None:
                raise ValueError(
                    f"{path} holds runs made with other settings ({self.settings_path}); "
                    "choose another --out or remove them"
                )
            if merged != stored:
                write_json(self.settings_path, merged)

    def runs(self) -> dict[tuple, RealRun]:
        """The journaled runs, keyed by (protocol, n, method, seed), in file order."""
        if not self.path.exists():
            return {}
        return {(r.protocol, r.n, r.method, r.seed): r for r in read_runs_csv(self.path)}

    def _claims(self) -> dict[str, dict[str, Any]]:
        if not self.claims_path.exists():
            return {}
        return {k: v for k, v in read_json(self.claims_path).items() if _alive(v)}

    def claim(self, keys: Sequence[tuple]) -> tuple[tuple | None, dict[tuple, RealRun], int]:
        """The first of ``keys`` neither journaled nor claimed by a live process, now claimed
        by this one (or None), the journal's runs, and how many of ``keys`` others hold."""
        with file_lock(self.lock_path):
            runs = self.runs()
            # a claim of this process's own is left from a run that failed before its end
            claims = {k: v for k, v in self._claims().items() if v != self.owner}
            held = sum(_run_key(key) in claims for key in keys if key not in runs)
            for key in keys:
                if key not in runs and _run_key(key) not in claims:
                    write_json(self.claims_path, {**claims, _run_key(key): self.owner})
                    return key, runs, held
            write_json(self.claims_path, claims)
            return None, runs, held

    def record(self, key: tuple, run: RealRun) -> dict[tuple, RealRun]:
        """Add ``run`` to the file and drop its claim; the journal's runs after."""
        with file_lock(self.lock_path):
            runs = {**self.runs(), key: run}
            write_runs_csv(list(runs.values()), self.path)
            self._drop_claim(key)
            return runs

    def release(self, key: tuple) -> None:
        """Drop this process's claim of ``key`` (its run failed or was interrupted)."""
        with file_lock(self.lock_path):
            self._drop_claim(key)

    def wait(self) -> None:
        """Sleep :data:`CLAIM_POLL_SECONDS`: the runs left are under way in other processes."""
        time.sleep(CLAIM_POLL_SECONDS)

    def _drop_claim(self, key: tuple) -> None:
        claims = self._claims()
        if claims.get(_run_key(key)) == self.owner:
            del claims[_run_key(key)]
            write_json(self.claims_path, claims)


def run_grid(
    grid: Sequence[tuple],
    journal: Journal | None,
    run: Callable[[tuple], RealRun],
    progress: bool | None = None,
) -> list[RealRun]:
    """``run(key)`` for every key of ``grid`` (protocol, n, method, seed) not in ``journal``
    yet, each recorded as it ends; the runs in grid order.

    Several processes may share one journal: each runs the keys no other holds, then waits
    for the others' runs. A run that fails or is interrupted is released for another process.
    """
    done: dict[tuple, RealRun] = {}
    shown = 0  # runs of the grid the bar shows done
    with progress_bar(len(grid), "runs", progress, unit="run") as bar:
        while True:
            if journal is None:
                key, held = next((k for k in grid if k not in done), None), 0
            else:
                key, done, held = journal.claim(grid)
            finished = sum(k in done for k in grid)
            bar.update(finished - shown)
            shown = finished
            if key is None:
                if not held:
                    break
                journal.wait()
                continue
            try:
                result = run(key)
            except BaseException:
                if journal is not None:
                    journal.release(key)
                raise
            if journal is None:
                done[key] = result
            else:
                done = journal.record(key, result)
    return [done[key] for key in grid]


def read_runs_csv(path: Path) -> list[RealRun]:
    """The runs of a journal written by :func:`write_runs_csv`, in file order."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    types = {name: field.type for name, field in RealRun.__dataclass_fields__.items()}
    casts = {"int": int, "float": float, "str": str}
    return [RealRun(**{k: casts[types[k]](v) for k, v in row.items()}) for row in rows]


def write_runs_csv(runs: Sequence[RealRun], path: Path) -> None:
    """Every run as a CSV row (written atomically)."""
    with atomic_write(path, "w") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(RealRun.__dataclass_fields__))
        writer.writeheader()
        for run in runs:
            writer.writerow(asdict(run))
