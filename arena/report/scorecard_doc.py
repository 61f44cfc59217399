"""The scorecard in the report: its table (the report's first section), its notes, `scorecard.csv`,
and HE beside `deeper-split` at the same effective depth.

A defense that moves the cut (HE: the client keeps the layers up to the first trained server layer and
the last ones, so the split runs deeper and U-shaped) is shown with the ``deeper-split`` setting that
runs at the same effective depth, placed right after it (`with_same_cut`), so the effect of encryption
is not confused with the deeper cut it imposes; without one the row says "no deeper-split at depth D in
this run". The notes say in words what DP-SGD protects (the client's weights: the stealing column) and
what it does not (the activations: the inversion attacks show it).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .scorecard import BROKEN, HOLDS, KINDS, LEAKS, ONE_SEED

CSV = "scorecard.csv"
DEEPER = "deeper-split"


def with_same_cut(sc):
    """``same_cut`` per row: for a defense that moved the split (other than deeper-split itself), the
    deeper-split setting at the same effective depth or why there is none; the matching deeper-split
    rows are moved right after the first row they pair with."""
    if sc.empty:
        return sc.assign(same_cut=[])
    same = [""] * len(sc)
    rows = list(sc.itertuples())
    after: dict[int, list[int]] = {}  # moved row -> the rows placed right after it
    for i, r in enumerate(rows):
        if not r.effective_depth or r.defense == DEEPER:
            continue
        match = [j for j, o in enumerate(rows) if o.defense == DEEPER and o.dataset == r.dataset
                 and o.effective_depth == r.effective_depth]
        depth = r.effective_depth.replace(",", "/")
        if not match:
            same[i] = f"no {DEEPER} at depth {depth} in this run: encryption and the deeper cut are not separated"
            continue
        same[i] = "same cut as " + ", ".join(rows[j].defense_label for j in match) + f" (depth {depth})"
        for j in match:
            same[j] = same[j] or f"runs at depth {depth}, as {r.defense_label}"
            if not any(j in v for v in after.values()):
                after.setdefault(i, []).append(j)
    moved = {j for v in after.values() for j in v}
    order = [k for i in range(len(rows)) if i not in moved for k in [i, *after.get(i, [])]]
    return sc.assign(same_cut=same).iloc[order].reset_index(drop=True)


def write_csv(out: Path, sc) -> Path:
    path = Path(out) / CSV
    tmp = path.with_suffix(".csv.tmp")
    sc.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _f(v) -> str:
    return "-" if not isinstance(v, (int, float)) or v != v else f"{v:.3f}"


def one_seed_only(sc) -> bool:
    """Every decided verdict (holds / broken / leaks) of the run is a one-seed point comparison."""
    decided = [v for k in KINDS for v in sc[f"{k}_verdict"] if v.startswith((BROKEN, HOLDS, LEAKS))]
    return bool(decided) and all(ONE_SEED in v for v in decided)


def short_labels(sc) -> dict[str, str]:
    """Attack labels shortened for the table: the bare name when the run has one setting of that attack,
    else the name with only the parameters that tell its settings apart."""
    labels = {str(v) for k in KINDS for v in sc[f"{k}_attack"] if isinstance(v, str) and v}
    parsed: dict[str, tuple[str, dict[str, str], str]] = {}
    for lab in labels:
        m = re.match(r"^([^(@\s]+)(?:\((.*?)\))?(.*)$", lab)
        name, params, rest = (m.group(1), m.group(2) or "", m.group(3)) if m else (lab, "", "")
        parsed[lab] = (name, dict(kv.split("=", 1) for kv in params.split(",") if "=" in kv), rest)
    out = {}
    for lab, (name, params, rest) in parsed.items():
        sib = [p for n, p, _ in parsed.values() if n == name]
        keep = {k: v for k, v in params.items() if len({s.get(k) for s in sib}) > 1}
        out[lab] = name + ("(" + ",".join(f"{k}={v}" for k, v in keep.items()) + ")" if keep else "") + rest
    return out


def kind_text(r, kind: str, quiet_one_seed: bool = False, short: dict[str, str] | None = None) -> str:
    """"**broken** ssim 0.997 by he-whitebox(...) [adaptive]" for one row and kind (``quiet_one_seed``:
    without the "(1 seed: no CI)" the table's caption says once for the whole run)."""
    g = lambda k: getattr(r, f"{kind}_{k}")  # noqa: E731
    verdict, worst = g("verdict"), g("worst")
    if quiet_one_seed:
        verdict = verdict.replace(f" ({ONE_SEED})", "")
    head = f"**{verdict}**" if verdict.startswith((BROKEN, HOLDS, LEAKS)) else verdict
    if worst != worst:
        return head + (f"; {g('note')}" if g("note") else "")
    name = (short or {}).get(g("attack"), g("attack"))
    s = f"{head}: {g('metric')} {_f(worst)} by {name}" + (" **[adaptive]**" if g("adaptive") else "")
    if getattr(r, f"{kind}_assumes", ""):
        s += f" (assumes {g('assumes')})"
    if g("beaten_by") and not g("beaten_by").startswith(g("attack")):
        by = g("beaten_by")
        s += f"; beats its baseline: {(short or {}).get(by.replace(' [adaptive]', ''), by)}"
    base = g("baseline_value")
    if base == base:
        s += f" (baseline {_f(base)})"
    return s + (f"; {g('note')}" if g("note") else "")


def _acc(r) -> str:
    if r.defense == "none":
        return f"test acc {_f(r.test_acc)} ({r.cost_at})" if r.test_acc == r.test_acc else "-"
    n = int(r.d_test_acc_n)
    if n == 0:
        return "no paired seeds"
    if n == 1:
        return f"{r.d_test_acc:+.3f} (1 seed: no CI; {r.cost_at})"
    return f"{r.d_test_acc:+.3f} ± {r.d_test_acc_ci95:.3f} ({n} pairs, {r.cost_at})"


def _cost(r) -> str:
    t, b = r.client_s_per_sample, r.bytes_per_sample
    parts = [f"{t * 1e3:.3g} ms" if t == t else "-", f"{b / 1024:.3g} KiB" if b == b else "-"]
    return " / ".join(parts)


def table(sc) -> tuple[list[str], list[list[str]]]:
    header = ["dataset", "defense", *KINDS, "Δ test acc vs none (paired)", "client time / bytes per sample",
              "ε (scope)", "split"]
    rows = []
    quiet, short = one_seed_only(sc), short_labels(sc)
    for r in sc.itertuples():
        split = "; ".join(x for x in (f"runs {r.effective}" if r.effective else "", r.same_cut) if x)
        rows.append([r.dataset, f"`{r.defense_label}`", *(kind_text(r, k, quiet, short) for k in KINDS), _acc(r), _cost(r),
                     r.privacy or "-", split or "-"])
    return header, rows


def notes(sc) -> list[str]:
    """The words under the table: how to read it, and what DP-SGD does and does not protect."""
    out = [
        "Each kind's cell is the **worst case** under that defense: the highest leakage any applicable attack, at any "
        "of its settings, reached (mean over seeds of the kind's headline metric), the attack that reached it, "
        "and **[adaptive]** when that attack is built against the defense or rebuilt what it hides.",
        "**holds** only when attacks of the kind ran, none beats its baseline (paired 95% CI; with one seed the "
        "point difference, marked `1 seed: no CI`) and at least one of them beats it undefended; **broken** when one "
        "beats it (named after `beats its baseline` when it is not the highest). `not evaluated` (the server could "
        "rebuild what an attack needs, a cell failed, nothing of the kind ran, or no attack leaks even undefended) "
        "is never a hold; `blocked (removes X)` means every attack of the kind that could run needs X, which the "
        "defense removes.",
        "Stealing is judged by the clone accuracy of every attack that produces a clone (UnSplit's), against the "
        "`random-front` baseline.",
    ]
    dp = sc[sc["defense"] == "dp-sgd"]
    for r in dp.itertuples():
        inv = kind_text(r, "inversion").replace("**", "")
        out.append(f"`{r.defense_label}` protects the client's **weights** (its ε covers them: the stealing "
                   f"column), **not the activations** it sends each step; the inversion attacks show it ({inv}) "
                   "and it is not credited for inversion.")
    if any(sc["same_cut"].astype(str).str.startswith("no ")):
        out.append("A defense that moves the cut is compared with `deeper-split` at the same effective depth; "
                   "where none ran, encryption is not separated from the deeper cut it imposes.")
    return out


def blocks(sc, figure: str | None) -> list[tuple]:
    """The report's first section."""
    out: list[tuple] = [("h", 2, "Defense scorecard"),
                        ("p", "Every defense judged by its worst case over all applicable attacks, adaptive ones "
                              f"included (also written as `{CSV}`). The undefended row on top is the reference.")]
    if sc.empty:
        return out + [("p", "No cells yet.")]
    if one_seed_only(sc):
        out.append(("p", f"**One seed** ({ONE_SEED}): every verdict below is a point comparison with the baseline, "
                         "without a confidence interval; run more seeds before relying on a hold."))
    out.append(("table", *table(sc)))
    if figure:
        out.append(("img", figure, "Worst-case leakage per defense (rows) and attack kind (columns): 0 = the "
                    "kind's baseline, 1 = undefended; text = value, attack, A = adaptive"))
    return out + [("ul", notes(sc))]


def norm(sc):
    """Per row and kind: worst-case leakage normalised to 0 = baseline .. 1 = the undefended row's
    worst case (same dataset); NaN where there is no value or the undefended row does not leak."""
    out = {}
    for r in sc.itertuples():
        ref = sc[(sc["dataset"] == r.dataset) & (sc["defense"] == "none")]
        for k in KINDS:
            v, base = getattr(r, f"{k}_worst"), getattr(r, f"{k}_baseline_value")
            top = ref[f"{k}_worst"].iloc[0] if len(ref) else math.nan
            if base != base:
                base = getattr(r, f"{k}_chance", math.nan) if hasattr(r, f"{k}_chance") else math.nan
            out[(r.Index, k)] = (min(max((v - base) / (top - base), 0.0), 1.0)
                                 if v == v and base == base and top == top and top > base else math.nan)
    return out
