"""Connecting to Ray for `--executor ray` (an optional extra: ``pip install 'arena[ray]'``).

Ray is imported only here, only when that executor is chosen. Without ``--address`` a local Ray
instance is started for the run (and stopped after it) and its workers find arena and the
``--plugin`` modules through PYTHONPATH. With ``--address`` (an existing cluster, e.g.
``ray://head:10001`` or ``auto``) arena's package and the plugin modules are shipped to the
workers as ``py_modules``; the cluster's nodes need the same torch/numpy versions and the dataset
files (``--data-dir`` must name a folder that exists on every node).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .workers import ExecutorError, RunOptions, Sink, Tracker, group_context, init_worker, throttled
from .progress import Progress
from .runner import CellSpec, run_group

INSTALL_HINT = ("--executor ray needs Ray, an optional extra: pip install 'arena[ray]' "
                "(or pip install 'ray[default]'), or use --workers N for local processes")


def _import_ray():
    try:
        import ray
        from ray.util.queue import Empty, Queue
    except ImportError as e:
        raise ExecutorError(f"{INSTALL_HINT} ({e})") from None
    return ray, Queue, Empty


def _local_paths() -> list[str]:
    """arena's folder and the sys.path folders a plugin may come from (not the interpreter's own)."""
    roots = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = [str(Path(__file__).resolve().parents[2])]  # the folder that holds arena/
    for p in sys.path:
        path = Path(p or os.getcwd()).resolve()
        if path.is_dir() and "site-packages" not in path.parts and not any(r in path.parents or r == path
                                                                            for r in roots):
            out.append(str(path))
    return list(dict.fromkeys(out))


def connect(address: str | None, workers: int, opts: RunOptions) -> tuple[Any, Any, Any, bool]:
    """(ray, Queue, Empty, started_here): an initialised Ray, local unless ``address`` is given."""
    ray, Queue, Empty = _import_ray()
    if ray.is_initialized():
        return ray, Queue, Empty, False
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": True}
    if address:
        import arena
        from .plugins import import_plugins

        modules = [arena, *import_plugins(opts.plugins)]
        try:
            ray.init(address=address, runtime_env={"py_modules": modules}, **quiet)
        except ConnectionError as e:
            raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: {e}") from None
    else:
        cpus = max(1, workers) * (opts.threads or 1)
        ray.init(num_cpus=cpus, include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_local_paths())}}, **quiet)
    return ray, Queue, Empty, True


# -- Ray --------------------------------------------------------------------------------------
def _ray_group(gid: int, specs: list[CellSpec], opts: RunOptions, q) -> int:
    """One group as a Ray task. The task may run on another machine: its image grids are written
    to a scratch folder and travel with the cell, and the driver writes them under OUT."""
    import dataclasses
    import shutil
    import tempfile

    init_worker(opts, ignore_sigint=False)
    scratch = Path(tempfile.mkdtemp(prefix="arena-ray-"))
    try:
        ctx = group_context(dataclasses.replace(opts, out_dir=str(scratch)),
                       throttled(lambda m: q.put(("progress", gid, *m)), every=2.0))
        for cell in run_group(specs, ctx):
            files = {rel: (scratch / rel).read_bytes() for rel in cell.artifacts.values() if (scratch / rel).is_file()}
            q.put(("cell", gid, gid, cell, files))
        q.put(("done", gid, gid))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return gid


def run_ray(groups: list[list[CellSpec]], opts: RunOptions, workers: int, address: str | None,
            sink: Sink, progress: Progress | None) -> None:
    ray, Queue, Empty, started = connect(address, workers, opts)
    if address:  # on the cluster a plugin file is a shipped module: import it by name
        import dataclasses

        opts = dataclasses.replace(opts, plugins=tuple(Path(p).stem if p.endswith(".py") else p
                                                       for p in opts.plugins))
    try:
        q = Queue()
        task = ray.remote(num_cpus=opts.threads or 1, max_retries=2)(_ray_group)
        track = Tracker(groups, sink, progress, opts.out_dir)
        refs = {task.remote(gid, g, opts, q): gid for gid, g in enumerate(groups)}
        while track.pending:
            try:
                track.handle(q.get(timeout=0.5))
                continue
            except Empty:
                pass
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            for ref in ready:
                gid = refs.pop(ref)
                try:
                    ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task failed for good (retries spent)
                    while q.qsize():
                        track.handle(q.get())
                    track.fail(gid, gid, f"Ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        for ref in refs:
            ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()
