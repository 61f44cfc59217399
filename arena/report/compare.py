"""`python -m arena.report --compare OLD_DIR NEW_DIR`: what changed between two runs (the before/after
every note needs), from their cells.jsonl only.

Two parts: the headline numbers per (dataset, depth and setup, attack + params, defense + params): the
mean headline metric old → new with its Δ and test accuracy old → new, for the rows whose numbers or
state changed, plus the rows only in one run (added / removed); then the scorecard's worst case per
defense and attack kind old → new, with every verdict change flagged (``holds → broken`` loudest).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..run.store import CELLS, read_cells
from .scorecard import HOLDS, KINDS, scorecard
from .tables import leakage_frame, summarize

EPS = 1e-9


class NoCells(ValueError):
    """A folder given to --compare has no cells.jsonl."""


def _cells(d: str | Path):
    if not (Path(d) / CELLS).exists():
        raise NoCells(f"{d} has no {CELLS}; pass the --out folder of a matrix run")
    return read_cells(d)


def _headlines(cells) -> dict[tuple, dict]:
    lf = leakage_frame(summarize(cells))
    out = {}
    for r in lf.itertuples():
        defense = re.sub(r" \[runs at [^\]]*\]$", "", r.defense_label)
        out[(r.dataset, f"d{r.depth} {r.setup}", r.attack_label, defense)] = {
            "metric": r.metric or "-", "value": r.value, "acc": r.test_acc, "state": r.state}
    return out


def _f(v) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else f"{v:.3f}"


def _differs(a: float, b: float) -> bool:
    if (a != a) and (b != b):
        return False
    return (a != a) != (b != b) or abs(a - b) > EPS


def _delta(a: float, b: float) -> str:
    return f" ({b - a:+.3f})" if a == a and b == b else ""


def headline_changes(old, new) -> list[str]:
    a, b = _headlines(old), _headlines(new)
    lines, same = [], 0
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if not (_differs(x["value"], y["value"]) or _differs(x["acc"], y["acc"]) or x["state"] != y["state"]
                or x["metric"] != y["metric"]):
            same += 1
            continue
        metric = x["metric"] if x["metric"] == y["metric"] else f"{x['metric']}→{y['metric']}"
        state = "" if x["state"] == y["state"] else f"; state {x['state']} → {y['state']}"
        lines.append(f"  {' · '.join(k)}: {metric} {_f(x['value'])} → {_f(y['value'])}{_delta(x['value'], y['value'])}"
                     f"; test acc {_f(x['acc'])} → {_f(y['acc'])}{_delta(x['acc'], y['acc'])}{state}")
    out = [f"headline numbers (dataset · split · attack · defense): {len(lines)} changed, {same} unchanged"] + lines
    for name, keys, src in (("added (only in NEW)", sorted(set(b) - set(a)), b),
                            ("removed (only in OLD)", sorted(set(a) - set(b)), a)):
        if keys:
            out.append(f"{name}: {len(keys)}")
            out += [f"  {' · '.join(k)}: {src[k]['metric']} {_f(src[k]['value'])} ({src[k]['state']})" for k in keys]
    return out


def _worst(r, kind: str) -> str:
    v = getattr(r, f"{kind}_worst")
    if v != v:
        return "-"
    adaptive = " [adaptive]" if getattr(r, f"{kind}_adaptive") else ""
    return f"{getattr(r, f'{kind}_metric')} {_f(v)} by {getattr(r, f'{kind}_attack')}{adaptive}"


def _short(verdict: str) -> str:
    return verdict.split(":")[0].split(" (")[0]


def scorecard_changes(old, new) -> list[str]:
    rows = {}
    for which, cells in (("old", old), ("new", new)):
        sc = scorecard(cells)
        for r in sc.itertuples():
            for kind in KINDS:
                rows.setdefault((r.dataset, r.defense_label, kind), {})[which] = r
    lines, flips = [], []
    for (ds, label, kind), pair in sorted(rows.items()):
        x, y = pair.get("old"), pair.get("new")
        name = f"{ds} · {label} · {kind}"
        if x is None or y is None:
            r, side = (y, "added") if x is None else (x, "removed")
            lines.append(f"  {name}: {side}: {_short(getattr(r, f'{kind}_verdict'))}, {_worst(r, kind)}")
            continue
        vx, vy = getattr(x, f"{kind}_verdict"), getattr(y, f"{kind}_verdict")
        wx, wy = _worst(x, kind), _worst(y, kind)
        if vx == vy and wx == wy:
            continue
        flag = ""
        if _short(vx) != _short(vy):
            flag = "  [VERDICT CHANGED: " + ("holds → broken" if _short(vx) == HOLDS and _short(vy) != HOLDS
                                              else f"{_short(vx)} → {_short(vy)}") + "]"
            flips.append(name)
        lines.append(f"  {name}: {_short(vx)} → {_short(vy)}; worst {wx} → {wy}{flag}")
    head = (f"scorecard (worst case per defense and kind): {len(lines)} changed, {len(flips)} verdict change"
            f"{'s' if len(flips) != 1 else ''}")
    return [head] + lines


def compare(old_dir: str | Path, new_dir: str | Path) -> str:
    """The printed comparison of two run folders (raises `NoCells` for a folder without cells)."""
    old, new = _cells(old_dir), _cells(new_dir)
    out = [f"compare {old_dir} (OLD, {len(old)} cells) → {new_dir} (NEW, {len(new)} cells)"]
    return "\n".join(out + headline_changes(old, new) + [""] + scorecard_changes(old, new))
