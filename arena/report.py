"""Tables derived from stored cells (`python -m arena.report DIR` rebuilds them without rerunning).

Every figure is a mean over seeds with a 95% confidence interval (Student t); the number of seeds
is a column of its own.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

from .records import Cell
from .store import read_cells

CELL_COLUMNS = ["dataset", "model", "depth", "setup", "attack", "attack_params", "defense", "defense_params"]
HEADLINE = ["mse", "psnr", "ssim", "clone_acc", "label_acc", "leak_auc", "test_acc"]
# two-sided 95% t quantiles for small n; large n -> 1.96
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% CI); half-width is 0 for one value (shown as such)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return m, _T95.get(len(v) - 1, 1.96) * sd / math.sqrt(len(v))


def cells_frame(cells: list[Cell]):
    import pandas as pd

    rows = []
    for c in cells:
        row = {k: getattr(c, k) for k in CELL_COLUMNS}
        row["attack_params"] = json.dumps(c.attack_params, sort_keys=True) if c.attack_params else ""
        row["defense_params"] = json.dumps(c.defense_params, sort_keys=True) if c.defense_params else ""
        row |= {"seed": c.seed, "status": c.status, "wall_s": c.wall_s, "reason": c.reason,
                "error": (c.error or "").splitlines()[0] if c.error else None}
        row |= {k: v for k, v in c.metrics.items() if isinstance(v, (int, float))}
        row |= {k: v for k, v in c.utility.items()}
        row |= {f"cost.{k}": v for k, v in c.cost.items() if isinstance(v, (int, float))}
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(cells: list[Cell]):
    """One row per cell definition: status, seeds, and mean ± CI of every numeric column."""
    import pandas as pd

    df = cells_frame(cells)
    if df.empty:
        return df
    numeric = [c for c in df.columns if c not in CELL_COLUMNS + ["seed", "status", "reason", "error"]
               and pd.api.types.is_numeric_dtype(df[c])]
    out = []
    for key, g in df.groupby(CELL_COLUMNS, sort=True, dropna=False):
        row = dict(zip(CELL_COLUMNS, key))
        statuses = sorted(set(g["status"]))
        row["status"] = statuses[0] if len(statuses) == 1 else "/".join(statuses)
        ok = g[g["status"] == "ok"]
        row["n_seeds"] = len(ok)
        row["reason"] = next((r for r in g["reason"] if isinstance(r, str)), "")
        row["error"] = next((r for r in g["error"] if isinstance(r, str)), "")
        for col in numeric:
            m, h = ci95(ok[col].tolist())
            row[col] = m
            row[f"{col}_ci95"] = h
        out.append(row)
    return pd.DataFrame(out)


def format_table(summary) -> str:
    """A compact text table of the headline metrics (mean ± CI over seeds)."""
    if summary is None or len(summary) == 0:
        return "(no cells)"
    cols = [c for c in HEADLINE if c in summary.columns]
    header = ["dataset", "depth", "setup", "attack", "defense", "status", "seeds"] + cols
    lines = [header]
    for _, r in summary.iterrows():
        atk = r["attack"] + (f" {r['attack_params']}" if r["attack_params"] else "")
        dfn = r["defense"] + (f" {r['defense_params']}" if r["defense_params"] else "")
        vals = []
        for c in cols:
            m, h = r.get(c), r.get(f"{c}_ci95")
            if m is None or (isinstance(m, float) and math.isnan(m)):
                vals.append("-")
            else:
                vals.append(f"{m:.3f}" + (f"±{h:.3f}" if h and not math.isnan(h) else ""))
        status = r["status"] if r["status"] != "blocked" else "BLOCKED"
        lines.append([r["dataset"], str(r["depth"]), r["setup"], _short(atk), _short(dfn), status,
                      str(r["n_seeds"])] + vals)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    text = "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in lines)
    notes = [f"- {r['attack']} vs {r['defense']}: {r['reason']}" for _, r in summary.iterrows()
             if r["status"] == "blocked" and r["reason"]]
    errors = [f"- {r['attack']} vs {r['defense']} (depth {r['depth']}): {r['error']}"
              for _, r in summary.iterrows() if "error" in r["status"] and r["error"]]
    if notes:
        text += "\nblocked:\n" + "\n".join(dict.fromkeys(notes))
    if errors:
        text += "\nerrors:\n" + "\n".join(dict.fromkeys(errors))
    return text


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def write_summary(out_dir: str | Path) -> str:
    """Write DIR/summary.csv from DIR/cells.jsonl and return the printed table."""
    out_dir = Path(out_dir)
    summary = summarize(read_cells(out_dir))
    if len(summary):
        tmp = out_dir / "summary.csv.tmp"
        summary.to_csv(tmp, index=False)
        tmp.replace(out_dir / "summary.csv")
    return format_table(summary)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m arena.report",
                                description="Rebuild summary.csv and the table from DIR/cells.jsonl (no rerun).")
    p.add_argument("dir", help="a run folder written by python -m arena.matrix")
    a = p.parse_args(argv)
    if not (Path(a.dir) / "cells.jsonl").exists():
        print(f"error: {a.dir} has no cells.jsonl; pass the --out folder of a matrix run", file=sys.stderr)
        return 2
    print(write_summary(a.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
