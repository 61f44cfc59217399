"""The report's "Defenses in this run" table: what each defense setting protects, in words, and its
privacy figures, each with its own scope.

What a defense covers comes from the cells when they say it (a stack's cost carries
``stack_covers``: its members' ``covers`` joined in words, e.g. "each release of the activations
(clipped, noised) [noise] and the client's front weights (DP-SGD) [dp-sgd]"), else from the
defense's class (`Defense.covers`; a plug-in defense that is not imported says nothing). Privacy
figures are the cells' ε keys that come with a ``<key>_scope``: each is shown on its own with its
scope and its range over the finished cells, never added to another (a stack's members give
different guarantees: noise's ε covers each release of the activations, dp-sgd's the client's
weights).
"""
from __future__ import annotations

import json
import math
from typing import Any

from ..registry import stack_members
from .tables import params_text


def defense_covers(name: str, cells: list[Any]) -> str:
    """What defense ``name`` protects, in words ("" when nothing says)."""
    said = next((c.cost.get("stack_covers") for c in cells if c.defense == name and c.cost.get("stack_covers")), None)
    if said:
        return str(said)
    try:
        from ..defenses import DEFENSES

        return str(getattr(DEFENSES.get(name), "covers", "") or "")
    except Exception:  # noqa: BLE001 - an unknown (not imported) plug-in: nothing to say
        return ""


def privacy_figures(cells: list[Any]) -> str:
    """"epsilon_weights 2.1–2.3 (scope: ...)" for each ε key with a scope in these cells' cost."""
    values: dict[str, list[float]] = {}
    scopes: dict[str, str] = {}
    for c in cells:
        for k, v in c.cost.items():
            scope = c.cost.get(f"{k}_scope")
            if isinstance(scope, str) and isinstance(v, (int, float)) and not isinstance(v, bool):
                values.setdefault(k, []).append(float(v))
                scopes[k] = scope
    out = []
    for k in sorted(values):
        vs = [v for v in values[k] if not math.isnan(v)]
        if not vs:
            continue
        lo, hi = min(vs), max(vs)
        num = f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"
        out.append(f"`{k}` {num} (scope: {scopes[k]})")
    return "; ".join(out)


def defenses_table(cells: list[Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per defense setting of the run, undefended first."""
    settings: dict[tuple[str, str], list[Any]] = {}
    for c in sorted(cells, key=lambda c: (c.defense != "none", c.defense)):
        js = json.dumps(c.defense_params, sort_keys=True) if c.defense_params else ""
        settings.setdefault((c.defense, js), []).append(c)
    rows = []
    for (name, js), group in settings.items():
        covers = defense_covers(name, cells)
        ok = [c for c in group if c.status == "ok"]
        kind = "a stack (its members apply in the order named): " if stack_members(name) else ""
        rows.append([f"`{name + params_text(js)}`", kind + (covers or "not stated"), privacy_figures(ok) or "-"])
    return ["defense", "what it protects", "privacy figures (each with its scope; never added up)"], rows
