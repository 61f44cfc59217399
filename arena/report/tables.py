"""Tables derived from stored cells: the per-setting summary (summary.csv), the printed table and
the leakage frame that the heatmaps, frontiers and conclusions read.

Every figure is a mean over seeds with a 95% confidence interval (Student t, exact quantile). Only
finite values are averaged: ``n_seeds`` is the number of seeds that finished, ``<metric>_n`` the
number of values that went into ``<metric>``'s mean, and ``dropped`` names the metrics some finished
seed had no finite value for. Each attack is judged by one headline leakage metric, with its chance
line (`arena.report.headline`). Each summary row also carries its paired comparisons over seeds
(`arena.report.paired`): ``d_headline`` and ``d_test_acc`` (defense − none, per seed; ``_ci95``,
``_n`` pairs, ``_sd``, ``_sig``: the CI excludes 0), and, for its attack setting, ``baseline``,
``d_baseline`` (attack − baseline undefended, per seed) and ``vs_baseline`` (above baseline, under
budget, no baseline run, baseline, no undefended run). The figures are in `arena.report.plots`, the
document (with the per-attack conclusions) in `arena.report.document`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..records import DENIED, NOT_APPLICABLE, NOT_EVALUATED, Cell, not_applicable
from ..run.store import read_cells
from .headline import (CHANCE, HEADLINE_BY_KIND, LEAKAGE, above_chance, attack_kind, attack_metric,  # noqa: F401
                       baseline_metrics, chance_line, headline_metric, known_baselines)
from .paired import NO_BASELINE, SETTING, UNDER, baseline_checks, defense_deltas, paired_of, paired_text
from .statistics import estimate

CELL_COLUMNS = ["dataset", "model", "depth", "setup", "attack", "attack_params", "defense", "defense_params"]
HEADLINE = ["mse", "psnr", "ssim", "clone_acc", "label_acc", "leak_auc", "label_ari", "test_acc", "test_auc"]  # columns printed
def cells_frame(cells: list[Cell]):
    import pandas as pd

    rows = []
    for c in cells:
        row = {k: getattr(c, k) for k in CELL_COLUMNS}
        row["attack_params"] = json.dumps(c.attack_params, sort_keys=True) if c.attack_params else ""
        row["defense_params"] = json.dumps(c.defense_params, sort_keys=True) if c.defense_params else ""
        row |= {"seed": c.seed, "status": c.status, "wall_s": c.wall_s, "reason": c.reason,
                "error": (c.error or "").splitlines()[0] if c.error else None,
                "ran_at": _ran_at(c), "granted": ", ".join(c.granted)}
        row |= {k: v for k, v in c.metrics.items() if isinstance(v, (int, float))}
        row |= {k: v for k, v in c.utility.items()}
        row |= {f"cost.{k}": v for k, v in c.cost.items() if isinstance(v, (int, float))}
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(cells: list[Cell]):
    """One row per cell definition: status, seeds, and mean ± CI of every numeric column.

    ``n_seeds`` counts the seeds that finished (status ok); ``<col>_n`` the finite values averaged
    into ``<col>`` (a NaN or inf seed is left out of the mean and not counted); ``dropped`` lists,
    e.g. ``leak_auc: 1``, the columns that some finished seed had no finite value for (columns no
    finished seed reports are not listed)."""
    import pandas as pd

    df = cells_frame(cells)
    if df.empty:
        return df
    numeric = [c for c in df.columns if c not in CELL_COLUMNS + ["seed", "status", "reason", "error", "ran_at",
                                                                  "granted"]
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
        row["ran_at"] = next((r for r in g["ran_at"] if r), "")
        row["granted"] = next((r for r in g["granted"] if r), "")
        dropped = []
        for col in numeric:
            e = estimate(ok[col].tolist())
            row[col], row[f"{col}_ci95"], row[f"{col}_n"] = e.mean, e.ci, e.n
            if e.n and e.dropped:
                dropped.append(f"{col}: {e.dropped}")
        row["dropped"] = "; ".join(dropped)
        out.append(row)
    return _with_paired(pd.DataFrame(out), df)


def _with_paired(summary, df):
    """Add each row's headline metric, its paired differences from undefended (`paired.defense_deltas`)
    and its setting's paired check against its baseline (`paired.baseline_checks`)."""
    # per (attack, dataset): a label attack is judged by leak AUC on a binary task, label accuracy elsewhere
    metrics = {(a, d): attack_metric(a, g) for (a, d), g in summary.groupby(["attack", "dataset"], sort=False)}
    baseline_of = known_baselines(dict.fromkeys(a for a, _ in metrics))
    deltas = defense_deltas(df, metrics)
    checks = baseline_checks(df, metrics, baseline_of, lambda a, p: a + params_text(p))
    extra = []
    for _, r in summary.iterrows():
        key = tuple(r[c] for c in CELL_COLUMNS)
        extra.append({"headline": metrics.get((r["attack"], r["dataset"])) or ""} | checks.get(key[:len(SETTING)], {})
                     | deltas.get(key, {}))
    import pandas as pd

    return pd.concat([summary, pd.DataFrame(extra, index=summary.index)], axis=1)


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
            m, h, n = r.get(c), r.get(f"{c}_ci95"), r.get(f"{c}_n")
            if m is None or (isinstance(m, float) and math.isnan(m)):
                vals.append("-")
            else:
                fewer = isinstance(n, (int, float)) and n == n and n < r["n_seeds"]  # NaN/inf seeds dropped
                vals.append(f"{m:.3f}" + (f"±{h:.3f}" if h and not math.isnan(h) else "")
                            + (f" (n={int(n)})" if fewer else ""))
        status = r["status"] if r["status"] != "blocked" else blocked_state(r["reason"])[0].upper()
        lines.append([r["dataset"], str(r["depth"]), r["setup"], _short(atk), _short(dfn), status,
                      str(r["n_seeds"])] + vals)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    text = "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in lines)
    notes = [f"- {r['attack']} vs {r['defense']}: {r['reason']}" for _, r in summary.iterrows()
             if r["status"] == "blocked" and r["reason"]]
    errors = [f"- {r['attack']} vs {r['defense']} (depth {r['depth']}): {r['error']}"
              for _, r in summary.iterrows() if "error" in r["status"] and r["error"]]
    dropped = [f"- {r['attack']} vs {r['defense']} (depth {r['depth']}): {r['dropped']}"
               for _, r in summary.iterrows() if isinstance(r.get("dropped"), str) and r["dropped"]]
    flagged = {}
    for _, r in summary[summary["defense"] == "none"].iterrows():
        flag = r.get("vs_baseline")
        if flag in (UNDER, NO_BASELINE):
            flagged.setdefault(flag, []).append(f"- {r['attack']}{params_text(r['attack_params'])} (depth "
                                                f"{r['depth']}): {_vs_text(r)}")
    for flag, what in ((UNDER, "does not beat its baseline undefended (paired over seeds); no defense is "
                        "credited with lowering it"), (NO_BASELINE, "no baseline cell ran to compare with")):
        if flag in flagged:
            text += f"\n{flag} ({what}):\n" + "\n".join(flagged[flag])
    if dropped:
        text += "\nNaN/inf seeds left out of the mean (metric: seeds dropped):\n" + "\n".join(dropped)
    if notes:
        text += "\nblocked:\n" + "\n".join(dict.fromkeys(notes))
    if errors:
        text += "\nerrors:\n" + "\n".join(dict.fromkeys(errors))
    return text


def _vs_text(r) -> str:
    """"ssim vs mean-image: Δ +0.001 ± 0.004 over 3 paired seeds" (or the missing baseline)."""
    p = paired_of(r, "d_baseline")
    if p.n == 0:
        return f"{r.get('headline')}: no {r.get('baseline') or 'baseline'} cell at this depth and seed"
    return f"{r.get('headline')} vs {r.get('baseline')}: " + paired_text(p)


def _short(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def params_text(js: str) -> str:
    """"(k=v,...)" of a JSON parameter table; a stack's member tables flatten to ``member.k=v``."""
    if not js:
        return ""
    return "(" + ",".join(f"{k}={v}" for k, v in _flat(json.loads(js))) + ")"


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _num(row, col: str) -> float:
    v = row.get(col, math.nan)
    return float(v) if isinstance(v, (int, float)) else math.nan


def leakage_frame(summary):
    """One row per summarised cell with its attack's headline metric: value (never folded), CI, the
    number of seeds averaged (``n_seeds``: finite values of that metric) and how many were dropped,
    its chance line, whether it is distinguishable from chance, the scored targets (and positives of a
    one-vs-rest question) per seed, a colour value normalised to 0 =
    chance .. 1 = full leakage (0 as well where the 95% CI reaches the chance line: a chance score
    must not look like a leak), the cell state (ok / partial / blocked / error), test accuracy and
    cost. The input of the heatmaps, frontiers and conclusions."""
    import pandas as pd

    rows = []
    if summary is None or len(summary) == 0:
        return pd.DataFrame(rows)
    ran_at = _ran_at_labels(summary)
    for (attack, _), g in summary.groupby(["attack", "dataset"], sort=True):
        metric = attack_metric(attack, g)  # per dataset: leak AUC on a binary task (see headline_metric)
        for _, r in g.iterrows():
            v = r.get(metric, math.nan) if metric else math.nan
            ci = r.get(f"{metric}_ci95", math.nan) if metric else math.nan
            n = r.get(f"{metric}_n", r["n_seeds"]) if metric else r["n_seeds"]
            n = int(n) if n == n else 0
            chance = chance_line(metric, r)
            state = ("partial" if "error" in r["status"] else "ok") if r["n_seeds"] > 0 else \
                ("blocked" if "blocked" in r["status"] else "error")
            reason = r.get("reason") or ""
            if state == "blocked":  # blocked, n/a, not evaluated (n/e) or denied: each shown as itself
                state, reason = blocked_state(reason)
            cost = next((r.get(c) for c in ("cost.client_s_per_sample", "cost.client_flops")
                         if isinstance(r.get(c), float) and not math.isnan(r[c])), math.nan)
            significant = above_chance(v, ci, n, chance)
            if v != v or chance != chance:
                norm = math.nan
            else:
                norm = min(max((v - chance) / (1 - chance), 0.0), 1.0) if significant else 0.0
            rows.append({
                "dataset": r["dataset"], "depth": int(r["depth"]), "setup": r["setup"], "attack": attack,
                "attack_label": attack + params_text(r["attack_params"]), "defense": r["defense"],
                "defense_label": r["defense"] + params_text(r["defense_params"]) + (
                    f" [{ran_at[(r['dataset'], r['defense'], r['defense_params'])]}]"
                    if ran_at.get((r["dataset"], r["defense"], r["defense_params"])) else ""), "metric": metric,
                "granted": r.get("granted") or "",
                "value": v, "ci": ci, "chance": chance, "above_chance": significant, "norm": norm,
                "state": state, "n_seeds": n, "dropped": int(r["n_seeds"]) - n,
                "targets": _num(r, "n_labels" if metric in ("label_acc", "leak_auc") else "n_targets"),
                "positives": _num(r, "n_positive"),
                "test_acc": r.get("test_acc", math.nan), "test_auc": r.get("test_auc", math.nan),
                "test_acc_ci": r.get("test_acc_ci95", math.nan), "cost": cost,
                "reason": reason, "error": r.get("error") or ""}
                | {"baseline": _text(r, "baseline"), "vs_baseline": _text(r, "vs_baseline")}
                | {c: r[c] for c in r.index if c.startswith(PAIRED_PREFIXES)})
    return pd.DataFrame(rows)


PAIRED_PREFIXES = ("d_headline", "d_test_acc", "d_test_auc", "d_baseline", "d_base_", "base_")


def _text(row, col: str) -> str:
    v = row.get(col)
    return v if isinstance(v, str) else ""


def blocked_state(reason: str | None) -> tuple[str, str]:
    """(state, reason without its prefix) of a blocked cell: "n/a" (the defense is not defined for the
    setup), "n/e" (not evaluated: the server could rebuild what the attack needs, but no attack here
    does: never a defense that works), "denied" (the experiment's threat model denies an assumption the
    attack needs) or "blocked" (the defense removes what the attack needs)."""
    r = reason or ""
    if not_applicable(r):
        return "n/a", r.removeprefix(NOT_APPLICABLE)
    if r.startswith(NOT_EVALUATED):
        return "n/e", r.removeprefix(NOT_EVALUATED)
    if r.startswith(DENIED):
        return "denied", r.removeprefix(DENIED)
    return "blocked", r


def _ran_at(c: Cell) -> str:
    """"depth/setup" the split ran at when a defense moved it from the cell's nominal one (else "")."""
    e = c.effective or {}
    if not e or (e.get("depth") == c.depth and e.get("setup") == c.setup):
        return ""
    return f"{e.get('depth')}/{e.get('setup')}"


def _ran_at_labels(summary) -> dict[tuple, str]:
    """(dataset, defense, params) -> "runs at depth 3" / "runs at depth 5, u-shaped": one label per
    defense setting (the setup only where every moved cell ran in the same one), so a setting that moves
    the cut stays one column of the heatmap whatever setups its attacks use."""
    out = {}
    for key, g in summary.groupby(["dataset", "defense", "defense_params"], sort=False):
        moved = [x.split("/") for x in g["ran_at"] if x]
        if not moved:
            continue
        depths, setups = {d for d, _ in moved}, {s for _, s in moved}
        text = "runs at depth " + "/".join(sorted(depths, key=int))
        if len(setups) == 1 and set(g["setup"]) - setups:  # the defense changed the setup too (he)
            text += f", {setups.pop()}"
        out[key] = text
    return out


def write_summary(out_dir: str | Path) -> str:
    """Write DIR/summary.csv from DIR/cells.jsonl and return the printed table."""
    out_dir = Path(out_dir)
    summary = summarize(read_cells(out_dir))
    if len(summary):
        tmp = out_dir / "summary.csv.tmp"
        summary.to_csv(tmp, index=False)
        tmp.replace(out_dir / "summary.csv")
    return format_table(summary)
