"""What the executors share: the run options, a worker's start-up, the group context, throttled
progress, and the parent's book of owed cells (`Tracker`), used by the local processes
(`executors`) and by Ray (`ray`) alike.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..records import Cell
from .progress import Progress
from .runner import CellSpec, GroupContext, _cell

Sink = Callable[[Cell, Any], None]  # (cell, worker id or None)


class ExecutorError(RuntimeError):
    """An executor cannot start (e.g. Ray is not installed); the message says what to do."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1




@dataclass(frozen=True)
class RunOptions:
    data_dir: str | None = None
    device: str = "cpu"
    out_dir: str | None = None
    plugins: tuple[str, ...] = ()
    threads: int | None = 1  # torch threads per worker; None: leave torch's default
    model_cache: str | None = None  # folder of the trained-model cache (arena.run.model_cache); None: off


def init_worker(opts: RunOptions, ignore_sigint: bool = True) -> None:
    if ignore_sigint:  # Ctrl-C reaches the whole process group; the parent decides what stops
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    from .plugins import import_plugins

    import_plugins(opts.plugins)


def throttled(send: Callable[[tuple], None], every: float = 0.5) -> Callable[[str, int, int], None]:
    last = [0.0]

    def report(what: str, i: int, n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or i == n:
            last[0] = now
            send((what, i, n))

    return report


def group_context(opts: RunOptions, progress: Callable[[str, int, int], None] | None) -> GroupContext:
    return GroupContext(data_dir=opts.data_dir, device=opts.device,
                        out_dir=Path(opts.out_dir) if opts.out_dir else None, progress=progress,
                        extra={"model_cache": opts.model_cache})


def lost(specs: Sequence[CellSpec], keys: set[str], why: str) -> list[Cell]:
    return [_cell(s, "error", error=why) for s in specs if s.key in keys]


class Tracker:
    """The parent's book of which cells of which group are still owed."""

    def __init__(self, groups: list[list[CellSpec]], sink: Sink, progress: Progress | None,
                 out_dir: str | None = None) -> None:
        self.groups = groups
        self.pending = {gid: {s.key for s in g} for gid, g in enumerate(groups)}
        self.sink, self.progress, self.out_dir = sink, progress, out_dir

    def handle(self, msg: tuple) -> int | None:
        """Apply one worker message; returns the worker id that finished a group, if any."""
        kind, wid = msg[0], msg[1]
        if kind == "progress":
            if self.progress:
                self.progress.inner(*msg[2:], worker=wid)
        elif kind == "cell":
            gid, cell = msg[2], msg[3]
            if cell.key in self.pending.get(gid, ()):  # a retried task may resend a cell: keep the first
                self.pending[gid].discard(cell.key)
                if len(msg) > 4 and self.out_dir:  # files made elsewhere (a Ray node): write them here
                    for rel, data in msg[4].items():
                        path = Path(self.out_dir) / rel
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tmp = path.with_name(path.name + ".part")
                        tmp.write_bytes(data)
                        os.replace(tmp, path)
                self.sink(cell, wid)
        elif kind == "done":
            self.fail(msg[2], wid, "the worker returned no result for this cell")
            return wid
        return None

    def fail(self, gid: int, wid: Any, why: str) -> None:
        for cell in lost(self.groups[gid], self.pending.pop(gid, set()), why):
            self.sink(cell, wid)
        if self.progress:
            self.progress.idle(wid)
