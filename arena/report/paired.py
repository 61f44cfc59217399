"""Paired comparisons over seeds, from the per-seed cells frame (`arena.report.tables.cells_frame`).

Two cells of the same (dataset, model, depth, setup, attack, attack params) and the same **seed**
share data order and initialisation whatever the defense (the runner derives both from the seed),
so a defense is judged against undefended on the per-seed differences, not by comparing two
independent CIs (`defense_deltas`). Likewise an attack is judged against its baseline on the same
seeds (`baseline_checks`): undefended, the attack must beat it, else its setting is **under budget**
and no defense is credited with lowering its leakage.

A metric's baseline: label accuracy's is the cell's own ``label_chance`` (majority-class share of
the scored targets), leak AUC's 0.5; any other headline metric's is the undefended cells of a
baseline attack for it (``baseline_of``: e.g. ``mean-image`` for SSIM, ``random-front`` for clone
accuracy) at the same dataset, model, depth and seed (same setup where one ran, else any). Where
several baseline settings ran, the strongest (highest mean over the shared seeds) is the one to beat.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .statistics import Paired, paired_difference, seeds_to_resolve

SETTING = ["dataset", "model", "depth", "setup", "attack", "attack_params"]
DEFENSE = ["defense", "defense_params"]
CHANCE_BASELINE = {"label_acc": "label_chance", "leak_auc": 0.5}  # a column of the same cell, or a constant

# vs_baseline values
ABOVE, UNDER, NO_BASELINE, IS_BASELINE, NO_UNDEFENDED = (
    "above baseline", "under budget", "no baseline run", "baseline", "no undefended run")


def _per_seed(rows, metric: str) -> dict[int, float]:
    if metric not in rows.columns:
        return {}
    return {int(s): v for s, v in zip(rows["seed"], rows[metric]) if isinstance(v, (int, float))}


def _cols(prefix: str, p: Paired) -> dict[str, Any]:
    return {prefix: p.mean, f"{prefix}_ci95": p.ci, f"{prefix}_n": p.n, f"{prefix}_sd": p.sd,
            f"{prefix}_sig": p.distinguishable}


def defense_deltas(df, metrics: Mapping[tuple[str, str], str | None]) -> dict[tuple, dict[str, Any]]:
    """Per defended setting (a key of `CELL_COLUMNS` values): the paired difference defense − none of
    the attack's headline metric (``d_headline``) and of test accuracy (``d_test_acc``), each with its
    CI, number of pairs, standard deviation and whether the CI excludes 0 (``_sig``)."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return {}
    none = {k: g for k, g in ok[ok["defense"] == "none"].groupby(SETTING, sort=False, dropna=False)}
    out = {}
    for key, g in ok[ok["defense"] != "none"].groupby(SETTING + DEFENSE, sort=False, dropna=False):
        ref = none.get(key[:len(SETTING)])
        if ref is None:
            continue
        metric = metrics.get((key[SETTING.index("attack")], key[SETTING.index("dataset")]))
        row: dict[str, Any] = {}
        if metric:
            row |= _cols("d_headline", paired_difference(_per_seed(g, metric), _per_seed(ref, metric)))
        row |= _cols("d_test_acc", paired_difference(_per_seed(g, "test_acc"), _per_seed(ref, "test_acc")))
        if _per_seed(g, "test_auc"):  # binary tasks: the model's AUC, which accuracy at 10% positives hides
            row |= _cols("d_test_auc", paired_difference(_per_seed(g, "test_auc"), _per_seed(ref, "test_auc")))
        out[key] = row
    return out


def baseline_checks(df, metrics: Mapping[tuple[str, str], str | None], baseline_of: Mapping[str, tuple[str, ...]],
                    label=lambda attack, params: attack) -> dict[tuple, dict[str, Any]]:
    """Per attack setting (a key of `SETTING` values): its baseline (``baseline``), the paired
    difference attack − baseline undefended (``d_baseline``, CI, pairs) and the verdict
    (``vs_baseline``: above baseline, under budget, no baseline run, baseline, no undefended run).
    ``baseline_of`` maps an attack name to the headline metrics it is the baseline of."""
    ok = df[(df["status"] == "ok") & (df["defense"] == "none")]
    out = {}
    for key, g in df.groupby(SETTING, sort=False, dropna=False):
        s = dict(zip(SETTING, key))
        metric = metrics.get((s["attack"], s["dataset"]))
        if not metric:
            continue
        mine = ok
        for c in SETTING:
            mine = mine[mine[c] == s[c]]
        row: dict[str, Any] = {"baseline": "", "vs_baseline": ""}
        if baseline_of.get(s["attack"]):
            row["vs_baseline"] = IS_BASELINE
        elif mine.empty:
            row["vs_baseline"] = NO_UNDEFENDED
        else:
            name, base = _baseline(ok, s, metric, mine, baseline_of, label)
            row["baseline"] = name
            if base is None:
                row["vs_baseline"] = NO_BASELINE
            else:
                p = paired_difference(_per_seed(mine, metric), base)
                row |= {k.replace("d_headline", "d_baseline"): v for k, v in _cols("d_headline", p).items()}
                row["vs_baseline"] = NO_BASELINE if p.n == 0 else ABOVE if p.above_zero else UNDER
            row |= _secondary(ok, s, metric, mine, baseline_of, label)
        out[key] = row
    return out


def _secondary(ok, s: dict, metric: str, mine, baseline_of, label) -> dict[str, Any]:
    """The attack's other leakage metrics that have a baseline attack (UnSplit's clone accuracy against
    random-front): ``base_<m>`` (its name) and ``d_base_<m>`` (paired difference). Reported, never
    what flags the setting: that is the headline's job."""
    row: dict[str, Any] = {}
    for m in sorted({m for ms in baseline_of.values() for m in ms} - {metric}):
        if not any(math.isfinite(v) for v in _per_seed(mine, m).values()):
            continue
        name, base = _baseline(ok, s, m, mine, baseline_of, label)
        if base is not None:
            p = paired_difference(_per_seed(mine, m), base)
            row |= {f"base_{m}": name} | {k.replace("d_headline", f"d_base_{m}"): v
                                          for k, v in _cols("d_headline", p).items()}
    return row


def _baseline(ok, s: dict, metric: str, mine, baseline_of, label) -> tuple[str, dict[int, float] | None]:
    """(name of the baseline, its value per seed) for one attack setting; None where none ran."""
    chance = CHANCE_BASELINE.get(metric)
    if isinstance(chance, str):
        return chance, _per_seed(mine, chance) or None
    if chance is not None:
        return f"{metric} {chance}", {seed: chance for seed in _per_seed(mine, metric)}
    names = sorted(a for a, ms in baseline_of.items() if metric in ms)
    if not names:
        return f"a {metric} baseline", None
    c = ok[(ok["dataset"] == s["dataset"]) & (ok["model"] == s["model"]) & (ok["depth"] == s["depth"])
           & ok["attack"].isin(names)]
    if (c["setup"] == s["setup"]).any():
        c = c[c["setup"] == s["setup"]]
    seeds = set(_per_seed(mine, metric))
    best, best_mean = None, -math.inf
    for (attack, params, _), g in c.groupby(["attack", "attack_params", "setup"], sort=True):
        vals = {k: v for k, v in _per_seed(g, metric).items() if k in seeds and math.isfinite(v)}
        if vals and (m := math.fsum(vals.values()) / len(vals)) > best_mean:
            best, best_mean = (label(attack, params), vals), m
    return best if best is not None else (" or ".join(names), None)


def resolve_text(p: Paired, unit: str = "") -> str:
    """For a comparison that is not distinguishable: how many seeds would resolve it (an estimate), or
    how small any difference must be."""
    if p.n < 2:
        return "one pair: no interval; run more seeds"
    if p.sd == 0 and p.mean == 0:
        return f"identical on all {p.n} seeds"
    need = seeds_to_resolve(p.mean, p.sd)
    if need is None or need > 1000:
        return f"any difference is below {abs(p.mean) + p.ci:.3g}{unit}"
    return f"an estimated ~{need} seeds would resolve a difference of this size"


def paired_text(p: Paired, what: str = "Δ") -> str:
    """"Δ −0.120 ± 0.030 over 3 paired seeds, distinguishable" (or why not)."""
    if p.n == 0 or p.mean != p.mean:
        return f"{what}: no paired seeds"
    pm = f" ± {p.ci:.3f}" if p.n > 1 else ""
    s = f"{what} {p.mean:+.3f}{pm} over {p.n} paired seed{'s' if p.n != 1 else ''}"
    return s + (", distinguishable" if p.distinguishable else f", not distinguishable ({resolve_text(p)})")


def paired_of(row, prefix: str) -> Paired:
    """The Paired stored in a row's ``<prefix>``, ``_ci95``, ``_n``, ``_sd`` columns."""
    def num(col: str) -> float:
        v = row.get(col, math.nan) if hasattr(row, "get") else getattr(row, col, math.nan)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    n = num(f"{prefix}_n")
    return Paired(num(prefix), num(f"{prefix}_ci95"), int(n) if n == n else 0, num(f"{prefix}_sd"))
