"""Progress off a terminal: plain lines with rate and ETA at every 10% or 30 s."""

import pytest

import skmm.progress
from skmm.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(skmm.progress.time, "monotonic", fake)
    return fake


def lines(capsys):
    return capsys.readouterr().err.splitlines()


def test_plain_lines_at_every_tenth_with_rate_and_eta(clock, capsys):
    bar = PlainProgress(100, "sketch", "row")
    for row in range(1, 101):
        clock.now = row / 8
        bar.update(1)
    bar.close()
    out = lines(capsys)
    assert len(out) == 10  # 10%, ..., 90%, and the last line
    assert out[0] == "skmm: sketch: 10/100 row (10%), 8 row/s, ETA 11s"
    assert out[-1] == "skmm: sketch: 100/100 row (100%), 8 row/s in 12.5s"


def test_a_slow_stage_gets_a_line_every_30_seconds(clock, capsys):
    bar = PlainProgress(1000, "greedy", "pick")
    clock.now = 31.0
    bar.update(1)
    clock.now = 45.0
    bar.update(1)  # neither 10% nor 30 s since the last line
    bar.set_postfix(gap="1e-3")
    clock.now = 62.0
    bar.update(1)
    assert lines(capsys) == [
        "skmm: greedy: 1/1000 pick (0%), 0.0323 pick/s, ETA 30969s",
        "skmm: greedy: 3/1000 pick (0%), 0.0484 pick/s, ETA 20605s [gap=1e-3]",
    ]


def test_a_quick_stage_prints_nothing(clock, capsys):
    with PlainProgress(10, "quick", "it") as bar:
        bar.update(10)
    assert lines(capsys) == []


def test_off_a_terminal_the_bar_is_plain_and_false_is_silent(capsys):
    assert isinstance(progress_bar(10, "x", None), PlainProgress)  # pytest's stderr: no tty
    assert isinstance(progress_bar(10, "x", True), PlainProgress)
    quiet = progress_bar(10, "x", False)
    quiet.update(10)
    quiet.close()
    assert capsys.readouterr().err == ""
