""""What to conclude" per attack, written from the numbers of a `leakage_frame` (no judgement
that the numbers do not support). A defense is compared with undefended on the **paired** per-seed
differences (`arena.report.paired`): a difference whose 95% CI includes 0 is called not
distinguishable, with the number of seeds it used and an estimate of the seeds that would resolve it.
An attack that does not beat its baseline undefended is "under budget": no defense is credited with
lowering its leakage, and a baseline itself is never ranked.
"""
from __future__ import annotations

import math

from .paired import ABOVE, IS_BASELINE, NO_BASELINE, UNDER, paired_of, paired_text

ACC_BUDGET = 0.02  # "keeps utility": test accuracy within 2 points of the undefended run


def keeps_utility(r, ref) -> bool:
    """Within ACC_BUDGET of undefended in test accuracy and, on a binary task (where always answering the
    majority class already scores 0.9 accuracy), in test AUC too."""
    if not (r.test_acc == r.test_acc and r.test_acc >= ref.test_acc - ACC_BUDGET):
        return False
    mine, theirs = getattr(r, "test_auc", float("nan")), getattr(ref, "test_auc", float("nan"))
    return not (mine == mine and theirs == theirs) or mine >= theirs - ACC_BUDGET


def _f(v: float) -> str:
    return "?" if v is None or v != v else f"{v:.3f}"


def _pm(v: float, h: float) -> str:
    return _f(v) + (f" ± {h:.3f}" if isinstance(h, float) and h == h and h > 0 else "")


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
        out.extend(_vs_baseline(ref, metric))
        if _flag(ref) in (UNDER, IS_BASELINE):  # nothing a defense could be credited with lowering
            out.extend(_blocked_errors(at, g, metric))
            return out
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
            keep = [r for r in others.itertuples() if keeps_utility(r, ref)]
            if keep:
                kbest = min(keep, key=lambda r: r.value)
                p = paired_of(kbest, "d_headline")
                if kbest.Index == best.Index:
                    out.append(f"It keeps test accuracy within {100 * ACC_BUDGET:.0f} points of undefended.")
                elif kbest.value >= ref.value or (p.n >= 2 and not p.distinguishable):
                    out.append(f"No setting that keeps test accuracy within {100 * ACC_BUDGET:.0f} points reduces "
                               f"{metric} beyond the noise (best: {kbest.defense_label}, {_pm(kbest.value, kbest.ci)}; "
                               f"{paired_text(p, 'paired Δ')}).")
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
    p = paired_of(r, "d_baseline")
    if metric in ("label_acc", "leak_auc") and p.n >= 2:  # the chance line is this cell's own baseline: paired
        if p.above_zero:
            return s + f"clearly above it ({paired_text(p, 'paired Δ')})."
        if p.mean + p.ci < 0:
            return s + "below it" + (" (its rule ranks the classes backwards)." if metric == "leak_auc" else ".")
        return s + f"not distinguishable from it at this number of seeds and targets ({paired_text(p, 'paired Δ')})."
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
    acc = paired_of(r, "d_test_acc")
    d_acc = 100 * (r.test_acc - ref.test_acc) if r.test_acc == r.test_acc else math.nan
    acc_note = "" if acc.n == 0 else "; one seed" if acc.n < 2 else f"; paired over {acc.n} seeds: " + (
        "distinguishable" if acc.distinguishable else "identical" if acc.sd == 0 and acc.mean == 0 else
        "not distinguishable")
    p = paired_of(r, "d_headline")
    diff = paired_text(p, "Δ vs undefended") if p.n else f"{r.value - ref.value:+.3f} vs undefended, no paired seeds"
    return s + f" ({diff}), at {_acc(r)} ({d_acc:+.1f} points{acc_note})."


def _flag(r) -> str:
    v = getattr(r, "vs_baseline", "")
    return v if isinstance(v, str) else ""


def _vs_baseline(ref, metric: str) -> list[str]:
    """The undefended attack against its baseline, paired by seed (label metrics: their chance line,
    stated by `_vs_chance` already, unless it is under budget)."""
    flag, base = _flag(ref), getattr(ref, "baseline", "") or "baseline"
    p = paired_of(ref, "d_baseline")
    if flag == IS_BASELINE:
        return ["This is a baseline: what a server gets without using what the protocol sends. Its values under "
                "each defense are reference points, not leakage for a defense to reduce."]
    label = metric in ("label_acc", "leak_auc")  # the chance line is the baseline, and `_vs_chance` said how
    if flag == UNDER:
        return [f"**Under budget**: undefended, the attack does not beat its baseline ({base}"
                + ("" if label else f"; {paired_text(p, f'Δ {metric}')}") + f"). Its {metric} is no more than a "
                "server gets without the protocol, so no defense is credited with lowering it; the defended "
                "values are in the table below, unranked."] + _secondary(ref)
    if flag == NO_BASELINE:
        return [f"No baseline run: no undefended {base} cell at this depth and seed, so whether the attack "
                "beats what a server gets without the protocol is not known."] + _secondary(ref)
    if flag == ABOVE and not label:
        return [f"It beats the {base} baseline, paired by seed: {paired_text(p, f'Δ {metric}')}."] + _secondary(ref)
    return _secondary(ref)


def _secondary(ref) -> list[str]:
    """Other leakage metrics of the attack against their own baseline (UnSplit's clone vs random-front)."""
    out = []
    for col in getattr(ref, "_fields", ()):
        if col.startswith("base_") and isinstance(getattr(ref, col), str):
            m = col.removeprefix("base_")
            p = paired_of(ref, f"d_base_{m}")
            if p.n:
                verdict = "above it" if p.above_zero else "not above it"
                out.append(f"Its {m} against the {getattr(ref, col)} baseline, paired by seed: {verdict} "
                           f"({paired_text(p, f'Δ {m}')}).")
    return out


def _depth_trend(g, metric: str) -> list[str]:
    none = g[(g["defense"] == "none") & g["value"].notna()].sort_values("depth")
    if none["depth"].nunique() < 2:
        return []
    steps = ", ".join(f"depth {r.depth}: {_f(r.value)}" for r in none.itertuples())
    return [f"Undefended {metric} by split depth: {steps}."]


def overview(lf) -> tuple[list[str], list[list[str]]]:
    """One row per attack and dataset, at its main depth: undefended leakage (flagged when under budget
    or without a baseline run), the setting with the lowest leakage and its accuracy cost, the best
    setting within ACC_BUDGET (n.s.: its paired difference from undefended is not distinguishable
    from 0), what blocks it. An under-budget attack or a baseline gets no lowest/best setting."""
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
        flag = _flag(ref) if ref is not None else ""
        low = within = "-"
        if flag in (UNDER, IS_BASELINE):
            low = "not credited: under budget" if flag == UNDER else "- (a baseline)"
        elif others:
            best = min(others, key=lambda r: r.value)
            d_acc = f" ({100 * (best.test_acc - ref.test_acc):+.1f} pts)" if ref is not None else ""
            low = f"{best.defense_label}: {_f(best.value)}{d_acc}"
            if ref is not None:
                keep = [r for r in others if keeps_utility(r, ref) and r.value < ref.value]
                if keep:
                    k = min(keep, key=lambda r: r.value)
                    p = paired_of(k, "d_headline")
                    note = " (1 seed)" if p.n < 2 else "" if p.distinguishable else " (n.s.)"
                    within = f"{k.defense_label}: {_f(k.value)}{note}"
                else:
                    within = "none lowers it"
        blocked = ", ".join(dict.fromkeys(at.loc[at["state"] == "blocked", "defense_label"])) or "-"
        undefended = _pm(ref.value, ref.ci) if ref is not None else "-"
        if flag in (UNDER, NO_BASELINE):
            undefended += f" ({flag.upper() if flag == UNDER else flag})"
        rows.append([label, ds, depth, metric, undefended, low, within, blocked])
    return header, rows
