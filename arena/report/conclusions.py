""""What to conclude" per attack, written from the numbers of a `leakage_frame` (no judgement
that the numbers do not support: differences whose 95% CIs overlap are called indistinguishable).
"""
from __future__ import annotations

import math

ACC_BUDGET = 0.02  # "keeps utility": test accuracy within 2 points of the undefended run


def _f(v: float) -> str:
    return "?" if v is None or v != v else f"{v:.3f}"


def _pm(v: float, h: float) -> str:
    return _f(v) + (f" ± {h:.3f}" if isinstance(h, float) and h == h and h > 0 else "")


def _overlap(a, b) -> bool:
    """95% CIs of two rows overlap (a single seed has no interval: never call it significant)."""
    if a.n_seeds < 2 or b.n_seeds < 2:
        return True
    return abs(a.value - b.value) <= (a.ci or 0) + (b.ci or 0)


def _sig(r, ref) -> str:
    """How far to trust a difference from undefended."""
    if r.n_seeds < 2 or ref.n_seeds < 2:
        return " (one seed: no confidence interval)"
    return " (CIs overlap with undefended: not distinguishable at this number of seeds)" if _overlap(r, ref) else ""


def _acc(r) -> str:
    return f"test accuracy {_f(r.test_acc)}"


def _main_depth(g) -> int:
    ok = g[g["state"].isin(["ok", "partial"])]
    counts = (ok if len(ok) else g).groupby("depth")["defense_label"].nunique()
    return int(counts[counts == counts.max()].index.min())


def conclude(lf, attack_label: str, dataset: str) -> list[str]:
    """A few sentences on one attack on one dataset: undefended leakage, the defense that reduces it
    most and at what accuracy cost, the best setting that keeps accuracy, what blocks it, depth."""
    g = lf[(lf["attack_label"] == attack_label) & (lf["dataset"] == dataset)]
    if g.empty:
        return []
    metric = g["metric"].dropna().iloc[0] if g["metric"].notna().any() else None
    if metric is None:
        return [f"{attack_label} produced no leakage metric on {dataset} (no finished seed)."]
    depth = _main_depth(g)
    at = g[g["depth"] == depth]
    ok = at[at["state"].isin(["ok", "partial"]) & at["value"].notna()]
    out: list[str] = []
    ref = next(iter(ok[ok["defense"] == "none"].itertuples()), None)
    where = f"at depth {depth}" + (f" (of depths {', '.join(map(str, sorted(g['depth'].unique())))})"
                                   if g["depth"].nunique() > 1 else "")
    if ref is not None:
        out.append(f"Undefended {where}: {metric} {_pm(ref.value, ref.ci)} (n = {ref.n_seeds} seed{'s' if ref.n_seeds != 1 else ''}"
                   f"{_targets(ref)}), {_acc(ref)}.")
        if metric in CHANCE_TEXT:
            out.append(_vs_chance(ref, metric))
        base = _baseline(lf, dataset, depth, metric)
        if base is not None and attack_label != base.attack_label:
            if min(ref.n_seeds, base.n_seeds) < 2:
                verdict = ("above" if ref.value > base.value else "not above") + " it (one seed: no confidence interval)"
            else:
                verdict = "not distinguishable from it" if _overlap(ref, base) else (
                    "clearly above it" if ref.value > base.value else "below it")
            out.append(f"The {base.attack_label} baseline scores {metric} {_pm(base.value, base.ci)}: the attack "
                       f"is {verdict}.")
    else:
        out.append(f"No undefended (`none`) cell {where}; the settings below are compared with each other.")
    others = ok[ok["defense"] != "none"]
    if len(others):
        best = min(others.itertuples(), key=lambda r: r.value)
        if ref is not None and best.value >= ref.value:
            out.append(f"No defense setting lowers {metric} below undefended (lowest: {best.defense_label}, "
                       f"{_pm(best.value, best.ci)}).")
            out.extend(_blocked_errors(at, g, metric))
            return out
        out.append(_change("Lowest leakage", best, ref, metric))
        if ref is not None:
            keep = [r for r in others.itertuples() if r.test_acc == r.test_acc
                    and r.test_acc >= ref.test_acc - ACC_BUDGET]
            if keep:
                kbest = min(keep, key=lambda r: r.value)
                if kbest.Index == best.Index:
                    out.append(f"It keeps test accuracy within {100 * ACC_BUDGET:.0f} points of undefended.")
                elif kbest.value >= ref.value or (_overlap(kbest, ref) and min(kbest.n_seeds, ref.n_seeds) >= 2):
                    out.append(f"No setting that keeps test accuracy within {100 * ACC_BUDGET:.0f} points reduces "
                               f"{metric} beyond the noise (best: {kbest.defense_label}, {_pm(kbest.value, kbest.ci)}).")
                else:
                    out.append(_change(f"Best within {100 * ACC_BUDGET:.0f} accuracy points", kbest, ref, metric))
            else:
                out.append(f"Every defense setting costs more than {100 * ACC_BUDGET:.0f} points of test accuracy.")
    out.extend(_blocked_errors(at, g, metric))
    return out


def _blocked_errors(at, g, metric: str) -> list[str]:
    out = []
    blocked, na = at[at["state"] == "blocked"], at[at["state"] == "n/a"]
    if len(blocked):
        names = ", ".join(dict.fromkeys(blocked["defense_label"]))
        out.append(f"Blocked (the defense removes what the attack needs) by {names}: {blocked['reason'].iloc[0]}.")
    if len(na):
        names = ", ".join(dict.fromkeys(na["defense_label"]))
        out.append(f"Not applicable here: {names} ({na['reason'].iloc[0]}).")
    ne, denied = at[at["state"] == "n/e"], at[at["state"] == "denied"]
    if len(ne):
        names = ", ".join(dict.fromkeys(ne["defense_label"]))
        out.append(f"Not evaluated under {names}, and not protected: {ne['reason'].iloc[0]}.")
    if len(denied):
        out.append(f"Denied by this experiment's threat model: {denied['reason'].iloc[0]}.")
    errors = at[at["state"] == "error"]
    if len(errors):
        out.append(f"Failed (error) with {', '.join(dict.fromkeys(errors['defense_label']))}: "
                   f"{errors['error'].iloc[0] or 'see the error list'}.")
    return out + _depth_trend(g, metric)


# how each label/stealing metric's chance line is defined (arena.report.tables.chance_line)
CHANCE_TEXT = {"label_acc": "the majority-class share of the scored targets",
               "leak_auc": "AUC 0.5", "clone_acc": "1/classes"}


def _targets(r) -> str:
    """", 56 targets per seed (4.0 positive)": how many examples a label attack was scored on."""
    t, p = getattr(r, "targets", math.nan), getattr(r, "positives", math.nan)
    if not isinstance(t, float) or t != t:
        return ""
    pos = f", {p:.1f} positive" if isinstance(p, float) and p == p else ""
    return f"; {t:.0f} targets per seed{pos}"


def _vs_chance(r, metric: str) -> str:
    """Is the undefended leakage distinguishable from its chance line (95% CI)?"""
    chance = getattr(r, "chance", math.nan)
    if not isinstance(chance, float) or chance != chance:
        return f"No chance line for {metric} (the cells lack label_chance)."
    s = f"Chance ({CHANCE_TEXT[metric]}) is {chance:.3f}: the attack is "
    if r.n_seeds < 2:
        return s + ("above" if r.value > chance else "not above") + " it (one seed: no confidence interval)."
    ci = r.ci if isinstance(r.ci, float) and r.ci == r.ci else math.inf
    if r.value - ci > chance:
        return s + "clearly above it."
    if r.value + ci < chance:
        return s + "below it" + (" (its rule ranks the classes backwards)." if metric == "leak_auc" else ".")
    return s + "not distinguishable from it at this number of seeds and targets."


def _change(what: str, r, ref, metric: str) -> str:
    s = f"{what}: {r.defense_label}, {metric} {_pm(r.value, r.ci)}"
    if ref is None:
        return s + f", {_acc(r)}."
    d_acc = 100 * (r.test_acc - ref.test_acc) if r.test_acc == r.test_acc else math.nan
    return (s + f" ({r.value - ref.value:+.3f} vs undefended){_sig(r, ref)}, at {_acc(r)} "
            f"({d_acc:+.1f} points).")


def _baseline(lf, dataset: str, depth: int, metric: str):
    b = lf[(lf["dataset"] == dataset) & (lf["depth"] == depth) & (lf["defense"] == "none")
           & (lf["metric"] == metric) & lf["attack"].isin(["mean-image"]) & lf["value"].notna()]
    return next(iter(b.itertuples()), None)


def _depth_trend(g, metric: str) -> list[str]:
    none = g[(g["defense"] == "none") & g["value"].notna()].sort_values("depth")
    if none["depth"].nunique() < 2:
        return []
    steps = ", ".join(f"depth {r.depth}: {_f(r.value)}" for r in none.itertuples())
    return [f"Undefended {metric} by split depth: {steps}."]


def overview(lf) -> tuple[list[str], list[list[str]]]:
    """One row per attack and dataset, at its main depth: undefended leakage, the setting with the
    lowest leakage and its accuracy cost, the best setting within ACC_BUDGET, what blocks it."""
    header = ["attack", "dataset", "depth", "metric", "undefended", "lowest leakage (Δ test acc)",
              f"best within {100 * ACC_BUDGET:.0f} acc. points", "blocked by"]
    rows = []
    for (label, ds), g in lf.groupby(["attack_label", "dataset"], sort=True):
        metric = g["metric"].dropna().iloc[0] if g["metric"].notna().any() else None
        if metric is None:
            continue
        depth = _main_depth(g)
        at = g[g["depth"] == depth]
        ok = at[at["state"].isin(["ok", "partial"]) & at["value"].notna()]
        ref = next(iter(ok[ok["defense"] == "none"].itertuples()), None)
        others = list(ok[ok["defense"] != "none"].itertuples())
        low = within = "-"
        if others:
            best = min(others, key=lambda r: r.value)
            d_acc = f" ({100 * (best.test_acc - ref.test_acc):+.1f} pts)" if ref is not None else ""
            low = f"{best.defense_label}: {_f(best.value)}{d_acc}"
            if ref is not None:
                keep = [r for r in others if r.test_acc >= ref.test_acc - ACC_BUDGET and r.value < ref.value]
                if keep:
                    k = min(keep, key=lambda r: r.value)
                    note = " (1 seed)" if min(k.n_seeds, ref.n_seeds) < 2 else " (n.s.)" if _overlap(k, ref) else ""
                    within = f"{k.defense_label}: {_f(k.value)}{note}"
                else:
                    within = "none lowers it"
        blocked = ", ".join(dict.fromkeys(at.loc[at["state"] == "blocked", "defense_label"])) or "-"
        rows.append([label, ds, depth, metric, _pm(ref.value, ref.ci) if ref is not None else "-", low, within,
                     blocked])
    return header, rows
