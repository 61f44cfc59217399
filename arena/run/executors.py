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
from typing import Any

from .progress import Progress
from .runner import CellSpec, run_group
from .workers import (ExecutorError, RunOptions, Sink, Tracker, group_context, init_worker,
                      throttled)

EXECUTORS = ("serial", "process", "ray")


# -- serial -----------------------------------------------------------------------------------
def run_serial(groups: list[list[CellSpec]], opts: RunOptions, sink: Sink, progress: Progress | None) -> None:
    import torch

    ctx = group_context(opts, progress.inner if progress else None)
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
    init_worker(opts)
    ctx = group_context(opts, throttled(lambda m: conn.send(("progress", wid, *m))))
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


def run_processes(groups: list[list[CellSpec]], opts: RunOptions, workers: int, sink: Sink,
                  progress: Progress | None) -> None:
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    track = Tracker(groups, sink, progress)
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
