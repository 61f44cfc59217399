"""The defense scorecard: each defense setting judged by its WORST case over every applicable attack.

One row per (dataset, defense setting or stack), the undefended (``none``) row first as the reference.
For each attack kind (`KINDS`) the row gives the highest leakage any attack of that kind, at any of its
parameter settings (and any depth or setup the run used), reached under the defense: the mean over
seeds of the kind's headline metric (`arena.report.headline`: SSIM for inversion and hijacking, label
accuracy, or leak AUC on a binary task, for label inference; clone accuracy for stealing, counted for
every attack that produces a clone, e.g. UnSplit's, since no registered attack has the kind itself),
*which* attack reached it, and whether that attack is **adaptive** in that cell: it is built against a
member of the defense (``cell.adapts_to``) or its view rebuilt what the defense hides (``cell.derived``;
cells recorded before either field existed count as not adaptive). Attacks are compared across metrics
by their leakage above chance, (value − chance) / (1 − chance).

The verdict of a kind (`verdict`), decided by the paired test the per-attack tables use
(`arena.report.paired`): an attack setting **beats its baseline** when the 95% CI of its per-seed
difference from the baseline (label accuracy: the cell's majority-class share; leak AUC: 0.5; SSIM:
the strongest undefended ``mean-image``; clone accuracy: ``random-front``) lies above 0; with one seed
the point difference is used and the verdict says "1 seed: no CI".

- ``broken``: some attack of the kind beats its baseline under the defense (``leaks`` on the none row);
- ``not evaluated: ...``: an attack needs what the server could rebuild but no attack here does, a cell
  failed, the threat model denied it, or nothing of the kind ran: **never** a hold;
- ``holds``: attacks of the kind ran and none beats its baseline, and at least one of them beats it
  undefended (so there was a leak to stop);
- ``blocked (removes X)``: every attack of the kind that could run needs X, which the defense removes;
- ``not evaluated: under budget``: the attacks ran but none beats its baseline even undefended, so
  there is nothing the defense can be credited with stopping.

DP-SGD (``dp-sgd`` alone) protects the client's weights, not the activations it sends each step: an
inversion or hijacking column it would "hold" says ``not credited`` instead (the attacks that beat it
show the point; a run where none does is no evidence that noising the weights' updates hides the
activations).

Costs (`_costs`): the paired Δ test accuracy vs none at the scenario with most paired seeds (honest
training only: a hijacker's run is not the deployer's model), client seconds and bytes per sample, and
each ε with its own scope (`arena.report.coverage.privacy_figures`).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .coverage import privacy_figures
from .headline import attack_kind, attack_metric, chance_line, known_baselines
from .paired import ABOVE, SETTING, _baseline, _per_seed, baseline_checks
from .statistics import estimate, paired_difference
from .tables import CELL_COLUMNS, blocked_state, cells_frame, params_text

KINDS = ("inversion", "stealing", "label", "hijack")
STEALING_METRIC = "clone_acc"
HOLDS, BROKEN, LEAKS = "holds", "broken", "leaks"
NOT_EVALUATED = "not evaluated"
ONE_SEED = "1 seed: no CI"
ACTIVATION_KINDS = ("inversion", "hijack")  # what the activations give away
DP_SGD_NOT_CREDITED = ("not credited: no attack beat its baseline here, but dp-sgd protects the client's weights, "
                       "not the activations it sends")


def is_adaptive(cell) -> bool:
    """Whether the attack of ``cell`` was built against a member of its defense, or its view rebuilt
    something the defense hides; cells without either field (recorded earlier) are not adaptive."""
    members = set(cell.defense.split("+"))
    return bool(set(getattr(cell, "adapts_to", None) or ()) & members) or bool(getattr(cell, "derived", None))


def _kinds_of(attack: str, metric: str | None, has_clone: bool) -> list[tuple[str, str]]:
    """(kind, metric) pairs an attack setting contributes to: its own kind by its headline metric, and
    stealing by clone accuracy when it produces a clone (UnSplit)."""
    kind = attack_kind(attack)
    out = [(kind, metric)] if kind in KINDS and metric else []
    if has_clone and kind not in ("stealing", "baseline"):
        out.append(("stealing", STEALING_METRIC))
    return out


def _settings(df, cells) -> list[dict[str, Any]]:
    """One record per (attack setting, defense setting) and kind: state, mean, chance, the paired test
    against its baseline, whether it is adaptive, and its undefended verdict."""
    metrics = {(a, d): attack_metric(a, g) for (a, d), g in df.groupby(["attack", "dataset"], sort=False)}
    baseline_of = known_baselines(dict.fromkeys(a for a, _ in metrics))
    label = lambda a, p: a + params_text(p)  # noqa: E731
    undefended = baseline_checks(df, metrics, baseline_of, label)
    clone_checks = baseline_checks(df, {k: STEALING_METRIC for k in metrics}, baseline_of, label)
    ok_none = df[(df["status"] == "ok") & (df["defense"] == "none")]
    adaptive: dict[tuple, bool] = {}
    assumes: dict[tuple, str] = {}  # the threat model the attack ran under: what it was granted
    for c in cells:
        k = _key(c)
        adaptive[k] = adaptive.get(k, False) or (c.status == "ok" and is_adaptive(c))
        if c.status == "ok" and k not in assumes:
            assumes[k] = ", ".join(g for g in (c.granted or []) if g != "architecture")
    clones = set(df.loc[(df["status"] == "ok") & df[STEALING_METRIC].notna(), "attack"]) \
        if STEALING_METRIC in df.columns else set()
    scenarios = {ds: len(set(zip(g["depth"], g["setup"]))) for ds, g in df.groupby("dataset")}
    out = []
    for key, g in df.groupby(CELL_COLUMNS, sort=True, dropna=False):
        s = dict(zip(CELL_COLUMNS, key))
        ok = g[g["status"] == "ok"]
        for kind, metric in _kinds_of(s["attack"], metrics.get((s["attack"], s["dataset"])), s["attack"] in clones):
            rec = dict(s, kind=kind, metric=metric, adaptive=adaptive.get(key, False), assumes=assumes.get(key, ""),
                       label=label(s["attack"], s["attack_params"])
                       + (f" @ d{s['depth']} {s['setup']}" if scenarios.get(s["dataset"], 1) > 1 else ""),
                       defense_label=s["defense"] + params_text(s["defense_params"]), reason="", n=0,
                       value=math.nan, chance=math.nan, beats=False, one_seed=False, baseline="",
                       baseline_value=math.nan)
            checks = undefended if metric == metrics.get((s["attack"], s["dataset"])) else clone_checks
            rec["undefended"] = checks.get(key[:len(SETTING)], {}).get("vs_baseline", "")
            if len(ok) == 0:
                bad = g.iloc[0]
                rec["state"], rec["reason"] = (blocked_state(bad["reason"]) if bad["status"] == "blocked"
                                               else ("error", bad["error"] or "failed"))
                out.append(rec)
                continue
            e = estimate(ok[metric].tolist() if metric in ok.columns else [])
            rec |= {"state": "ok", "value": e.mean, "n": e.n}
            if len(ok) < len(g):  # some seeds failed or were refused: the setting is judged on the rest only
                rec["failed_seeds"] = sorted(int(x) for x in g.loc[g["status"] != "ok", "seed"])
            rec["chance"] = (chance_line(metric, {"label_chance": estimate(ok["label_chance"].tolist()).mean})
                             if metric == "label_acc" and "label_chance" in ok.columns else chance_line(metric, {}))
            name, base = _baseline(ok_none, s, metric, ok, baseline_of, label)
            rec["baseline"] = name
            if base is None:  # no baseline to test against: this attack cannot support a hold
                rec["no_baseline"] = True
            else:
                p = paired_difference(_per_seed(ok, metric), base)
                vals = [v for k, v in base.items() if k in _per_seed(ok, metric)]
                rec |= {"beats": p.above_zero, "one_seed": p.n == 1, "d_baseline": p.mean, "d_baseline_ci95": p.ci,
                        "d_baseline_n": p.n, "baseline_value": estimate(vals).mean}
            out.append(rec)
    return out


def _key(c) -> tuple:
    """A cell's `CELL_COLUMNS` values, params JSON-encoded as `cells_frame` encodes them."""
    enc = lambda d: json.dumps(d, sort_keys=True) if d else ""  # noqa: E731
    return (c.dataset, c.model, c.depth, c.setup, c.attack, enc(c.attack_params), c.defense, enc(c.defense_params))


def _above(rec) -> float:
    """Leakage above chance, comparable across metrics: (value − chance) / (1 − chance)."""
    v, ch = rec["value"], rec["chance"]
    if v != v:
        return -math.inf
    ch = 0.0 if ch != ch else ch
    return (v - ch) / (1 - ch) if ch < 1 else v - ch


def _removes(reason: str) -> str:
    m = re.search(r"requires (.+?), which defense", reason or "")
    return m.group(1) if m else "what the attack needs"


def verdict(recs: list[dict[str, Any]], reference: bool = False) -> dict[str, Any]:
    """The worst case of one defense setting for one kind, from its attack-setting records."""
    ok = [r for r in recs if r["state"] == "ok" and r["value"] == r["value"]]
    worst = max(ok, key=_above, default=None)
    out: dict[str, Any] = {"verdict": "", "worst": math.nan, "metric": "", "attack": "", "adaptive": False,
                           "assumes": "", "n": 0, "baseline_value": math.nan, "beaten_by": "", "note": ""}
    if worst is not None:
        out |= {"worst": worst["value"], "metric": worst["metric"], "attack": worst["label"],
                "adaptive": worst["adaptive"], "assumes": worst.get("assumes", ""), "n": worst["n"],
                "baseline_value": worst["baseline_value"], "chance": worst["chance"]}
    beaters = [r for r in ok if r["beats"]]
    states = {s: [r for r in recs if r["state"] == s] for s in ("n/e", "error", "denied", "blocked", "n/a")}
    one = ONE_SEED if any(r["one_seed"] for r in ok) else ""
    if beaters:
        by = max(beaters, key=_above)
        out["beaten_by"] = by["label"] + (" [adaptive]" if by["adaptive"] else "")
        out["verdict"] = (LEAKS if reference else BROKEN) + (f" ({one})" if by["one_seed"] else "")
        return out
    partial = [r for r in ok if r.get("failed_seeds")]
    untested = [r for r in ok if r.get("no_baseline")]
    if states["n/e"]:
        names = ", ".join(dict.fromkeys(r["attack"] for r in states["n/e"]))
        out["verdict"] = (f"{NOT_EVALUATED}: {names} did not run here (the server could rebuild what it needs, "
                          "or the attack cannot read this cell)")
    elif partial:  # an attack that failed on the seeds where it might win must not credit the defense
        out["verdict"] = f"{NOT_EVALUATED}: " + "; ".join(
            f"{r['label']} failed on seed(s) {', '.join(map(str, r['failed_seeds']))}" for r in partial)
    elif untested:
        out["verdict"] = f"{NOT_EVALUATED}: no baseline to test {', '.join(r['label'] for r in untested)} against"
    elif states["error"]:
        out["verdict"] = f"{NOT_EVALUATED}: {', '.join(dict.fromkeys(r['label'] for r in states['error']))} failed"
    elif any(r["undefended"] == ABOVE for r in ok):
        out["verdict"] = HOLDS + (f" ({one})" if one else "")
    elif states["blocked"]:
        out["verdict"] = "blocked (removes " + ", ".join(dict.fromkeys(_removes(r["reason"]) for r in states["blocked"])) + ")"
    elif ok:
        out["verdict"] = (f"{NOT_EVALUATED}: under budget (no attack of this kind beats its baseline "
                          "even undefended)")
    elif states["denied"]:
        out["verdict"] = f"{NOT_EVALUATED}: denied by the threat model"
    elif states["n/a"]:
        out["verdict"] = "n/a (the defense does not apply to these attacks' setups)"
    else:
        out["verdict"] = f"{NOT_EVALUATED}: no attack of this kind ran"
    if states["blocked"] and not out["verdict"].startswith("blocked"):
        out["note"] = "blocked: " + ", ".join(dict.fromkeys(r["label"] for r in states["blocked"]))
    return out


def scorecard(cells):
    """The scorecard as a DataFrame: one row per (dataset, defense setting), none first; per kind
    ``<kind>_verdict``, ``_worst``, ``_metric``, ``_attack``, ``_adaptive``, ``_assumes`` (the worst
    attack's granted capabilities: the threat model that number assumes), ``_n``, ``_beaten_by``,
    ``_baseline_value``, ``_note``; then the costs and the effective split (`_costs`)."""
    import pandas as pd

    df = cells_frame(cells)
    if df.empty:
        return pd.DataFrame()
    recs = _settings(df, cells)
    rows = []
    for (ds, dn, dp), g in df.groupby(["dataset", "defense", "defense_params"], sort=True):
        row: dict[str, Any] = {"dataset": ds, "defense": dn, "defense_params": dp,
                               "defense_label": dn + params_text(dp)}
        for kind in KINDS:
            mine = [r for r in recs if (r["dataset"], r["defense"], r["defense_params"], r["kind"]) == (ds, dn, dp, kind)]
            v = verdict(mine, reference=dn == "none")
            if dn == "dp-sgd" and kind in ACTIVATION_KINDS and v["verdict"].startswith(HOLDS):
                v["verdict"] = DP_SGD_NOT_CREDITED  # no credit for what it does not protect (module docstring)
            row |= {f"{kind}_{k}": x for k, x in v.items()}
        row |= _costs(df, cells, ds, dn, dp)
        rows.append(row)
    sc = pd.DataFrame(rows)
    sc = sc.assign(_o=(sc["defense"] != "none")).sort_values(["dataset", "_o", "defense", "defense_params"],
                                                             kind="stable").drop(columns="_o")
    return sc.reset_index(drop=True)


def _costs(df, cells, ds: str, dn: str, dp: str) -> dict[str, Any]:
    honest = df[(df["status"] == "ok") & (df["dataset"] == ds) & df["attack"].map(lambda a: attack_kind(a) != "hijack")]
    mine = honest[(honest["defense"] == dn) & (honest["defense_params"] == dp)]
    none = honest[honest["defense"] == "none"]
    out: dict[str, Any] = {"d_test_acc": math.nan, "d_test_acc_ci95": math.nan, "d_test_acc_n": 0,
                           "test_acc": math.nan, "cost_at": ""}
    best = None
    for (model, depth, setup), g in mine.groupby(["model", "depth", "setup"], sort=True):
        ref = none[(none["model"] == model) & (none["depth"] == depth) & (none["setup"] == setup)]
        a, b = _first_per_seed(g, "test_acc"), _first_per_seed(ref, "test_acc")
        p = paired_difference(a, b)
        if best is None or p.n > best[0].n:
            best = (p, f"depth {depth} {setup}", estimate(list(a.values())).mean)
    if best is not None:
        p, at, acc = best
        out |= {"test_acc": acc, "cost_at": at}
        if dn != "none":
            out |= {"d_test_acc": p.mean, "d_test_acc_ci95": p.ci, "d_test_acc_n": p.n}
    ok = df[(df["status"] == "ok") & (df["dataset"] == ds) & (df["defense"] == dn) & (df["defense_params"] == dp)]
    for col, name in (("cost.client_s_per_sample", "client_s_per_sample"), ("cost.bytes_per_sample", "bytes_per_sample")):
        out[name] = estimate(ok[col].tolist()).mean if col in ok.columns else math.nan
    mine_cells = [c for c in cells if c.dataset == ds and c.defense == dn and _key(c)[7] == dp]
    out["privacy"] = privacy_figures([c for c in mine_cells if c.status == "ok"])
    out["effective"], out["effective_depth"] = _effective(mine_cells)
    return out


def _first_per_seed(g, col: str) -> dict[int, float]:
    """Test accuracy per seed: every honest cell of one training run reports the same model's."""
    out: dict[int, float] = {}
    if col in g.columns:
        for s, v in zip(g["seed"], g[col]):
            if isinstance(v, (int, float)) and v == v and int(s) not in out:
                out[int(s)] = float(v)
    return out


def _effective(cells) -> tuple[str, str]:
    """("1->5 u-shaped", "5"): where a defense moved the split, per nominal depth, and the effective
    depths it ran at ("" when it moved nothing)."""
    moved: dict[str, None] = {}
    depths: set[int] = set()
    for c in cells:
        e = c.effective or {}
        if e and (e.get("depth") != c.depth or e.get("setup", c.setup) != c.setup):
            es = e.get("setup", c.setup)
            moved[f"{c.depth}->{e.get('depth')}" + (f" {es}" if es != c.setup else "")] = None
            depths.add(int(e.get("depth")))
    return "; ".join(sorted(moved)), ",".join(map(str, sorted(depths)))
