"""`python -m arena.report DIR`: rebuild DIR/summary.csv, DIR/report.md, DIR/report.html and
DIR/figures/ from DIR/cells.jsonl without rerunning anything."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..run.plugins import PluginError, import_plugins
from .document import write_report
from .tables import write_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arena.report",
                                description="Rebuild summary.csv, report.md, report.html and figures/ from "
                                            "DIR/cells.jsonl (nothing is rerun).")
    p.add_argument("dir", help="a run folder written by python -m arena.matrix")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (so plugin attacks get their kind's headline metric)")
    p.add_argument("--table-only", action="store_true", help="only summary.csv and the printed table")
    a = p.parse_args(argv)
    if not (Path(a.dir) / "cells.jsonl").exists():
        print(f"error: {a.dir} has no cells.jsonl; pass the --out folder of a matrix run", file=sys.stderr)
        return 2
    try:
        import_plugins(a.plugin)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(write_summary(a.dir))
    if not a.table_only:
        print(f"report: {write_report(a.dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
