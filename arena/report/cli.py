"""`python -m arena.report DIR`: rebuild DIR/summary.csv, DIR/scorecard.csv, DIR/report.md,
DIR/report.html and DIR/figures/ from DIR/cells.jsonl without rerunning anything;
`python -m arena.report --compare OLD_DIR NEW_DIR` prints what changed between two runs."""
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
    p.add_argument("dir", nargs="?", help="a run folder written by python -m arena.matrix")
    p.add_argument("--compare", nargs=2, metavar=("OLD_DIR", "NEW_DIR"),
                   help="print the headline numbers and scorecard verdicts that changed between two runs "
                        "(writes nothing)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (so plugin attacks get their kind's headline metric)")
    p.add_argument("--table-only", action="store_true", help="only summary.csv and the printed table")
    a = p.parse_args(argv)
    if a.compare:
        return _compare(a.compare, a.plugin)
    if a.dir is None:
        p.error("give a run folder DIR, or --compare OLD_DIR NEW_DIR")
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


def _compare(dirs: list[str], plugins: list[str]) -> int:
    from .compare import NoCells, compare

    try:
        import_plugins(plugins)
        print(compare(*dirs))
    except (NoCells, PluginError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
