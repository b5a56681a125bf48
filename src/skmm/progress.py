"""Progress and notes on stderr: a tqdm bar on a terminal, plain lines in logs and notebooks.

``progress=False`` silences both; ``True`` or ``None`` shows them. On a terminal a tqdm bar
redraws in place; elsewhere (stderr redirected to a log, a notebook cell, CI) a bar would
print hundreds of carriage-return frames, so :class:`PlainProgress` prints one line with the
rate and the time left at every 10% of the work or every 30 s, and one when it ends; a stage
done within a second prints nothing.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from tqdm.auto import tqdm

LINE_STEPS = 10
LINE_SECONDS = 30.0
QUIET_SECONDS = 1.0


def log(message: str) -> None:
    """One line ``skmm: message`` on stderr (callers decide whether to be quiet)."""
    sys.stderr.write(f"skmm: {message}\n")
    sys.stderr.flush()


class PlainProgress:
    """tqdm's ``update``/``set_postfix``/``close`` as plain stderr lines: ``desc: done/total
    unit (p%), rate/s, ETA`` at every 10% of ``total`` or every 30 s once a second has
    passed, and a last line on close when any line was printed or the stage took a second."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.began = self.last_time = time.monotonic()
        self.last_step = 0
        self.postfix = ""
        self.printed = False
        self.closed = False

    def update(self, count: int = 1) -> None:
        """Count ``count`` more units done; print a line when a step or 30 s has passed."""
        self.n += count
        now = time.monotonic()
        step = self.n * LINE_STEPS // self.total if self.total else 0
        if step > self.last_step or now - self.last_time >= LINE_SECONDS:
            unfinished = self.total is None or self.n < self.total
            if unfinished and now - self.began >= QUIET_SECONDS:
                self._line(now)
            self.last_step, self.last_time = step, now

    def set_postfix(self, **values: object) -> None:
        """Values shown at the end of the next line (as tqdm shows them beside the bar)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Print the final line (once)."""
        if not self.closed:
            self.closed = True
            now = time.monotonic()
            if self.printed or now - self.began >= QUIET_SECONDS:
                self._line(now, final=True)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.began
        rate = self.n / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if final:
            timing = f" in {elapsed:.1f}s"
        elif self.total and rate > 0:
            timing = f", ETA {(self.total - self.n) / rate:.0f}s"
        else:
            timing = ""
        postfix = f" [{self.postfix}]" if self.postfix else ""
        log(f"{self.desc}: {done} {self.unit}{share}, {rate:.3g} {self.unit}/s{timing}{postfix}")
        self.printed = True

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def progress_bar(
    total: int | None, desc: str, enabled: bool | None, unit: str = "it"
) -> tqdm | PlainProgress | Any:
    """Progress of a long stage: off when ``enabled`` is False, else a tqdm bar when stderr is
    a terminal and :class:`PlainProgress` lines when it is not."""
    if enabled is not False and not sys.stderr.isatty():
        return PlainProgress(total, desc, unit)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=enabled is False,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
