"""Run groups of cells (one training run each, see `arena.run.runner.groups`): serially, in local
worker processes, or as Ray tasks.

Every executor streams finished cells back to the parent, which alone appends them to
cells.jsonl (the `sink`), so a run's results do not depend on the executor: the same seeds give
the same numbers. Workers are fresh processes (``spawn``): they import the ``--plugin`` modules
again, ignore Ctrl-C (the parent stops them), and use ``threads`` torch threads each.

Why one torch thread by default, also serially: a CPU reduction (a convolution's backward pass,
say) adds its terms in an order that depends on the number of threads, so 1 and 2 threads train
models that differ in the 8th digit, and an attack can amplify that. Pinning the thread count
makes serial, ``--workers N`` and Ray runs bit-identical; parallelism comes from running
several training runs at once (``--workers``), which suits these small models better anyway.
``--threads T`` trades that identity for speed within a cell.

A worker that dies (killed, out of memory) turns the unfinished cells of its group into `error`
cells and the run goes on with a fresh worker; a finished cell is never lost.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .progress import Progress
from ..records import Cell
from .runner import CellSpec, GroupContext, _cell, run_group

Sink = Callable[[Cell, Any], None]  # (cell, worker id or None)
EXECUTORS = ("serial", "process", "ray")


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


def _init_worker(opts: RunOptions, ignore_sigint: bool = True) -> None:
    if ignore_sigint:  # Ctrl-C reaches the whole process group; the parent decides what stops
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    from .plugins import import_plugins

    import_plugins(opts.plugins)


def _throttled(send: Callable[[tuple], None], every: float = 0.5) -> Callable[[str, int, int], None]:
    last = [0.0]

    def report(what: str, i: int, n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or i == n:
            last[0] = now
            send((what, i, n))

    return report


def _context(opts: RunOptions, progress: Callable[[str, int, int], None] | None) -> GroupContext:
    return GroupContext(data_dir=opts.data_dir, device=opts.device,
                        out_dir=Path(opts.out_dir) if opts.out_dir else None, progress=progress,
                        extra={"model_cache": opts.model_cache})


def _lost(specs: Sequence[CellSpec], keys: set[str], why: str) -> list[Cell]:
    return [_cell(s, "error", error=why) for s in specs if s.key in keys]


# -- serial -----------------------------------------------------------------------------------
def run_serial(groups: list[list[CellSpec]], opts: RunOptions, sink: Sink, progress: Progress | None) -> None:
    import torch

    ctx = _context(opts, progress.inner if progress else None)
    before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        for group in groups:
            for cell in run_group(group, ctx):
                sink(cell, None)
    finally:
        torch.set_num_threads(before)


# -- local processes --------------------------------------------------------------------------
def _process_worker(wid: int, conn, opts: RunOptions) -> None:
    """Receive groups over ``conn``, send back each cell as it finishes. ``Connection.send``
    writes into the pipe before returning, so a cell sent is a cell the parent can still read
    even if this process is killed right after."""
    _init_worker(opts)
    ctx = _context(opts, _throttled(lambda m: conn.send(("progress", wid, *m))))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone: do not linger
            return
        if task is None:
            return
        gid, specs = task
        try:
            for cell in run_group(specs, ctx):
                conn.send(("cell", wid, gid, cell))
            conn.send(("done", wid, gid))
        except (BrokenPipeError, ConnectionResetError):  # the parent was killed mid-group: stop quietly
            return


class _Tracker:
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
        for cell in _lost(self.groups[gid], self.pending.pop(gid, set()), why):
            self.sink(cell, wid)
        if self.progress:
            self.progress.idle(wid)


def run_processes(groups: list[list[CellSpec]], opts: RunOptions, workers: int, sink: Sink,
                  progress: Progress | None) -> None:
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    track = _Tracker(groups, sink, progress)
    todo = list(range(len(groups)))[::-1]
    procs: dict[int, tuple[Any, Any]] = {}  # wid -> (process, the parent's end of its pipe)
    busy: dict[int, int] = {}  # wid -> gid
    next_wid = 0

    def start() -> int:
        nonlocal next_wid
        wid, next_wid = next_wid, next_wid + 1
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_process_worker, args=(wid, theirs, opts), daemon=True, name=f"arena-worker-{wid}")
        p.start()
        theirs.close()  # only the child holds it now: its death is an EOF on our end
        procs[wid] = (p, mine)
        return wid

    def feed(wid: int) -> None:
        if todo:
            gid = todo.pop()
            busy[wid] = gid
            procs[wid][1].send((gid, groups[gid]))

    try:
        for _ in range(min(workers, len(groups))):
            feed(start())
        while track.pending:
            conns = {conn: wid for wid, (_, conn) in procs.items()}
            if not conns:
                raise ExecutorError("no worker left to run the remaining cells")
            for conn in wait(list(conns), timeout=1.0):
                wid = conns[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died; every message it sent was read first
                    p = procs.pop(wid)[0]
                    p.join(timeout=5)
                    if wid in busy:
                        track.fail(busy.pop(wid), wid, f"worker process died (exit code {p.exitcode}): "
                                                       "killed or out of memory?")
                    if todo:
                        feed(start())
                    continue
                if track.handle(msg) is not None:
                    busy.pop(wid, None)
                    feed(wid)
    finally:
        for p, conn in procs.values():
            try:
                if p.is_alive() and not track.pending:
                    conn.send(None)
            except OSError:
                pass
            if track.pending:
                p.terminate()  # interrupted: the unfinished groups are re-run on resume
        for p, conn in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
            conn.close()


def execute(groups: list[list[CellSpec]], opts: RunOptions, sink: Sink, progress: Progress | None = None,
            executor: str = "serial", workers: int = 1, address: str | None = None) -> None:
    """Run every group with the chosen executor; ``sink`` receives each finished cell once."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from .ray import run_ray

        run_ray(groups, opts, workers, address, sink, progress)
    elif executor == "process" and workers > 1 and len(groups) > 1:
        run_processes(groups, opts, workers, sink, progress)
    else:
        run_serial(groups, opts, sink, progress)
