"""Progress on stderr: a bar over cells with the time left, and the current activity with its own.

The matrix calls `cell()` once per finished cell and `inner()` from inside long work: training
reports its steps, an attack reports through ``view.report_progress(i, n)``. With parallel
workers several activities run at once; `inner()` takes the worker's id and the line shows the
most recently updated one. On a terminal the line is redrawn in place; in a log file (not a tty)
each finished cell is one line and long activities print at most every ``log_every`` seconds.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

WIDTH = 150


def fmt_seconds(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def bar(fraction: float, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    full = int(fraction * width)
    return "#" * full + "." * (width - full)


@dataclass
class Activity:
    what: str
    done: int
    total: int
    started: float
    updated: float

    def eta(self, now: float) -> float | None:
        if self.done <= 0:
            return None
        return (now - self.started) / self.done * (self.total - self.done)


class Progress:
    """Cells done of total, an estimated time left, and what is running now."""

    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None,
                 log_every: float = 30.0, min_interval: float = 0.5) -> None:
        self.total, self.done, self.quiet = total, 0, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.log_every, self.min_interval = log_every, min_interval
        self.statuses: dict[str, int] = {}
        self.activities: dict[object, Activity] = {}
        self._drawn = 0.0
        self._logged = 0.0

    # -- estimates ---------------------------------------------------------------------------
    def fraction(self) -> float:
        """Cells done, plus the part of each running activity that is done (for the ETA)."""
        running = sum(a.done / a.total for a in self.activities.values() if a.total > 0)
        return min(self.done + running, self.total) / max(self.total, 1)

    def eta(self) -> float | None:
        f = self.fraction()
        if f <= 0 or self.done == 0:  # before the first cell the extrapolation is noise
            return None
        return (time.perf_counter() - self.t0) / f * (1 - f)

    # -- events ------------------------------------------------------------------------------
    def inner(self, what: str, i: int, n: int, worker: object = 0) -> None:
        """Activity ``what`` (training or an attack) has done ``i`` of ``n`` steps."""
        now = time.perf_counter()
        act = self.activities.get(worker)
        if act is None or act.what != what or i < act.done:
            act = self.activities[worker] = Activity(what, i, n, now, now)
        act.done, act.total, act.updated = i, n, now
        if self.quiet:
            return
        if self.tty:
            if now - self._drawn >= self.min_interval or i == n:
                self._draw(now)
        elif now - self._logged >= self.log_every:
            self._logged = now
            print(self._line(now), file=self.stream, flush=True)

    def cell(self, label: str, status: str, worker: object | None = None) -> None:
        """A cell finished with ``status``."""
        self.done += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.activities.pop(0 if worker is None else worker, None)  # serial runs report as worker 0
        if self.quiet:
            return
        now = time.perf_counter()
        msg = f"[{self.done}/{self.total}] {status:<7} {label}"
        if self.tty:
            print("\r" + msg.ljust(WIDTH), file=self.stream, flush=True)
            self._draw(now)
        else:
            print(f"{msg}   (~{fmt_seconds(self.eta())} left)", file=self.stream, flush=True)

    def note(self, msg: str) -> None:
        """A line of its own (a pass begins or ends), with the elapsed time."""
        if self.quiet:
            return
        line = f"-- {msg} ({fmt_seconds(time.perf_counter() - self.t0)} elapsed)"
        print(("\r" + line.ljust(WIDTH)) if self.tty else line, file=self.stream, flush=True)

    def idle(self, worker: object) -> None:
        """A worker finished its activity (no more updates from it for now)."""
        self.activities.pop(worker, None)

    def close(self) -> None:
        if self.quiet:
            return
        if self.tty:
            print("\r" + " " * WIDTH + "\r", end="", file=self.stream, flush=True)
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.statuses.items()))
        print(f"{self.done}/{self.total} cells in {fmt_seconds(time.perf_counter() - self.t0)}"
              + (f" ({counts})" if counts else ""), file=self.stream, flush=True)

    # -- drawing -----------------------------------------------------------------------------
    def _line(self, now: float) -> str:
        head = f"[{bar(self.fraction())}] {self.done}/{self.total} cells, ~{fmt_seconds(self.eta())} left"
        if not self.activities:
            return head
        act = max(self.activities.values(), key=lambda a: a.updated)
        pct = 100 * act.done // max(act.total, 1)
        more = f" (+{len(self.activities) - 1} running)" if len(self.activities) > 1 else ""
        return f"{head} | {act.what}: {pct}% ~{fmt_seconds(act.eta(now))}{more}"

    def _draw(self, now: float) -> None:
        self._drawn = now
        line = self._line(now)
        print("\r" + line[:WIDTH].ljust(WIDTH), end="", file=self.stream, flush=True)
