"""Results on disk: append-only, schema-versioned JSONL cells plus a manifest.

Each finished cell is one line, written with a single ``write`` of the whole line, flushed and
fsynced, so an interrupted run loses no finished cell and leaves at most one partial last line,
which `read_cells` ignores (and `CellStore` truncates before appending again).
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from ..records import SCHEMA, Cell

CELLS = "cells.jsonl"
MANIFEST = "manifest.json"


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: store them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def read_cells(out_dir: str | Path, older: bool = False) -> list[Cell]:
    """Every complete cell line; a later line with the same key supersedes an earlier one.

    Cells of an older schema (written before a change of what the numbers mean) are left out unless
    ``older``: a resumed run recomputes them, and tables never mix them with current ones."""
    path = Path(out_dir) / CELLS
    if not path.exists():
        return []
    cells: dict[str, Cell] = {}
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break  # a partial last line from an interrupted write
            try:
                d = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e}); remove that line to resume") from None
            if d.get("schema", 0) > SCHEMA:
                raise ValueError(f"{path}:{n} has schema {d['schema']}, newer than this arena ({SCHEMA})")
            cell = Cell.from_json(d)
            cells[cell.key] = cell
    stale = [c for c in cells.values() if c.schema < SCHEMA]
    if stale and not older:
        warnings.warn(f"{path}: {len(stale)} cells of an older schema (< {SCHEMA}) are ignored; rerun the "
                      f"same command to recompute them", stacklevel=2)
        return [c for c in cells.values() if c.schema >= SCHEMA]
    return list(cells.values())


class CellStore:
    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / CELLS
        self._drop_partial_line()

    def _drop_partial_line(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def done_keys(self, retry_errors: bool = False) -> set[str]:
        return {c.key for c in read_cells(self.dir) if not (retry_errors and c.status == "error")}

    def append(self, cell: Cell) -> None:
        line = json.dumps(_clean(cell.to_json()), sort_keys=True, allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_manifest(self, spec: dict[str, Any], argv: Iterable[str]) -> tuple[str | None, str]:
        """Write (or update) the manifest; returns (code version of the previous run here or None, this one)."""
        path = self.dir / MANIFEST
        old = json.loads(path.read_text()) if path.exists() else {}
        now = code_version()
        earlier = old.get("code_versions") or ([old["code_version"]] if "code_version" in old else [])
        manifest = {
            "schema": SCHEMA,
            "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": list(argv),
            "code_version": now,
            # every code version that wrote cells here: a resumed run keeps cells of earlier versions
            "code_versions": list(dict.fromkeys([*earlier, now])),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": package_versions(),
            "spec": _clean(spec),
            "runs": old.get("runs", 0) + 1,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return old.get("code_version"), now


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("arena", "torch", "numpy", "pandas", "opacus", "tenseal", "seaborn", "ray"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    here = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=5)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from .. import __version__

    return __version__
