"""DIR/report.md and DIR/report.html from DIR/cells.jsonl: heatmaps, frontiers, conclusions, grids.

Everything here is derived from the stored cells (and the manifest): rebuilding never reruns a
cell. Figures go to DIR/figures/ (rewritten each time); reconstruction grids are the PNGs the run
saved under DIR/grids/ and are linked, not copied.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from . import plots, scorecard_doc
from .conclusions import ACC_BUDGET, conclude, overview
from .coverage import defenses_table
from .paired import ABOVE, NO_BASELINE, UNDER, paired_of, resolve_text
from .tables import attack_kind, baseline_metrics, blocked_state, leakage_frame, params_text, summarize
from .html import Block, to_html, to_markdown
from .scorecard import scorecard
from ..run.store import MANIFEST, read_cells

MAX_GRIDS = 12  # per attack: one per defense setting (lowest seed), the main depth first


def _slug(text: str) -> str:
    h = hashlib.sha1(text.encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60].strip("_") + "-" + h


def _pm(v, h) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:.3f}" + (f" ± {h:.3f}" if h == h and h and h > 0 else "")


def _cost(v) -> str:
    if v != v:
        return "-"
    return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} FLOPs"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _header(out: Path, cells) -> list[Block]:
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {}
    counts: dict[str, int] = {}
    for c in cells:
        state = blocked_state(c.reason)[0] if c.status == "blocked" else c.status  # n/a, n/e, denied apart
        counts[state] = counts.get(state, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    blocks: list[Block] = [("h", 1, f"arena report: {out.name}")]
    meta = [f"{len(cells)} cells ({states}) from `cells.jsonl`; table: `summary.csv`."]
    if manifest:
        meta.append(f"Command: `{' '.join(manifest.get('command', []))}`; code {manifest.get('code_version', '?')}, "
                    f"torch {manifest.get('packages', {}).get('torch', '?')}; last run {manifest.get('updated', '?')}.")
    seeds = sorted({c.seed for c in cells})
    planned = list(manifest.get("spec", {}).get("experiment", {}).get("seeds", []))
    missing = [s for s in planned if s not in seeds]
    meta.append(f"Seeds in this report: {', '.join(map(str, seeds)) or 'none'}"
                + (f"; still to run: {', '.join(map(str, missing))} (an anytime run: the same command adds them "
                   f"and rewrites this report)." if missing else "."))
    blocks.append(("p", " ".join(meta)))
    return blocks


def _how_to_read() -> list[Block]:
    return [("h", 2, "How to read this report"), ("ul", [
        "Every number is a **mean over seeds with its 95% confidence interval** (Student t, exact quantile); "
        "`n` is the number of seeds averaged: seeds that finished with a finite value (a NaN or inf seed is "
        "left out of the mean and of `n`, and the table says so). A single seed has no interval.",
        "Each attack is judged by one **headline leakage metric** (higher = more leakage): SSIM for inversion "
        "and hijacking, clone test accuracy for model stealing, label accuracy (else leak AUC) for label "
        "inference. A leak AUC is shown as computed, never folded to max(AUC, 1 − AUC): each attack states "
        "before it sees the truth which side of its score means positive (norm-label: the larger gradient "
        "norm), so an AUC below 0.5 means its rule ranks the classes backwards, and a score with no signal "
        "stays near 0.5.",
        "**Chance lines**: SSIM 0, clone accuracy 0.1 (1/classes on the balanced 10-class test sets), leak "
        "AUC 0.5, and label accuracy the **majority-class share of the scored targets** (the accuracy of "
        "always guessing the most common label among exactly the examples the attack labelled, mean over "
        "seeds; for a one-vs-rest question the larger side's share, not 1/classes). Heatmap colours rescale "
        "the metric to 0 = chance .. 1 = perfect; a cell whose 95% CI reaches its chance line is coloured as "
        "chance (its number is still written), so a chance score cannot look like a leak.",
        "**blocked** (grey, hatched): the defense removes a capability the attack requires, so the attack "
        "cannot run; **n/a** (light grey): the defense is not defined for the cell's setup (e.g. SplitGuard "
        "only guards the vanilla setup); **not evaluated** (yellow, dotted): the defense does not send what "
        "the attack needs in plaintext, but the server can rebuild it from what it does see (HE with a "
        "trained server layer: dL/dW and the cut gradient give back the activations), and no attack here "
        "rebuilds it yet: the defense gets **no** credit; **denied** (lavender): the experiment's threat "
        "model denies an assumption the attack needs; **error** (red, hatched): the cell failed. None is ever "
        "counted as zero leakage.",
        "**Paired comparisons**: a defended cell and the undefended one of the same attack setting and seed "
        "share data order and initialisation, so each defense is compared with undefended on the per-seed "
        "differences (defense − none) of the headline metric and of test accuracy: mean ± 95% CI (Student t "
        "over the differences) and the number of pairs, **distinguishable** when that CI excludes 0. A "
        "difference that is not yet distinguishable comes with an estimate of the seeds that would resolve a "
        "difference of its size (n ≈ (t·sd/mean)², assuming the spread stays), or a bound below which any "
        "difference lies.",
        "**Baselines**: each attack is paired, seed by seed and undefended, with what a server gets without "
        "using the protocol: `mean-image` (a constant image) for SSIM, `random-front` (a randomly initialised "
        "client part before the real server part) for clone accuracy, the chance line for label accuracy "
        "and leak AUC. An attack that does not beat it (the 95% CI of attack − baseline does not lie above "
        "0; one seed: not above) is **UNDER BUDGET**: its heatmap row is labelled so and left uncoloured, and "
        "no defense is credited with lowering it. Without a baseline cell the report says **no baseline run**.",
        "A defense that moves the cut (he) is labelled with the split that actually ran, e.g. `he [runs at "
        "depth 5, u-shaped]`; each attack's section states its threat model: the capabilities the server "
        "was granted.",
        "Frontier plots: leakage vs test accuracy, one point per defense setting; marker area grows with "
        "the client's cost (measured client seconds per sample); the dashed line joins the best trade-offs.",
    ])]


def _attack_label(r) -> str:
    return r["attack"] + params_text(r["attack_params"])


def _grids(out: Path, cells) -> dict[tuple, str]:
    """(attack_label, dataset, depth, defense_label) -> grid PNG of the lowest finished seed."""
    best: dict[tuple, tuple[int, str]] = {}
    for c in cells:
        path = c.artifacts.get("grid") if c.status == "ok" else None
        if not path or not (out / path).exists():
            continue
        k = (c.attack + params_text(json.dumps(c.attack_params, sort_keys=True) if c.attack_params else ""),
             c.dataset, c.depth, c.defense + params_text(json.dumps(c.defense_params, sort_keys=True)
                                                      if c.defense_params else ""))
        if k not in best or c.seed < best[k][0]:
            best[k] = (c.seed, path)
    return {k: v[1] for k, v in best.items()}


def _why(r) -> str:
    """Why a cell has no numbers: its error, or the reason it was blocked or is not applicable."""
    return (r.error if r.state == "error" else r.reason) or ""


def _attack_table(g) -> tuple[list[str], list[list[str]]]:
    used = list(dict.fromkeys(g["metric"].dropna()))
    # one headline per attack and dataset (a label attack: leak AUC on a binary task); named per row if several
    metric = used[0] if len(used) == 1 else "leakage (metric)" if used else "leakage"
    header = ["dataset", "depth", "defense", "n", metric, f"Δ {metric} vs none (paired)", "test acc",
              "Δ test acc vs none (paired)", "client cost / sample", "status"]
    rows = []
    for r in g.sort_values(["dataset", "depth", "defense", "defense_label"]).itertuples():
        if r.state in ("blocked", "n/a", "n/e", "denied", "error"):
            rows.append([r.dataset, r.depth, r.defense_label, 0, "-", "-", "-", "-", _cost(r.cost),
                         f"{r.state}: {_why(r)}"])
        else:
            dropped = getattr(r, "dropped", 0)
            state = r.state + (f" ({dropped} seed{'s' if dropped != 1 else ''} without a finite {metric}: "
                               "left out)" if dropped else "")
            if r.defense == "none" and getattr(r, "vs_baseline", "") in (UNDER, NO_BASELINE, ABOVE):
                state += f"; {_baseline_note(r)}"
            value = _pm(r.value, r.ci) + (f" ({r.metric})" if len(used) > 1 else "")
            acc, d_acc = _pm(r.test_acc, r.test_acc_ci), _delta(r, "d_test_acc")
            auc = getattr(r, "test_auc", float("nan"))
            if auc == auc:  # a binary task: accuracy alone hides the cost (always "rest" scores 0.9)
                acc += f"; AUC {auc:.3f}"
                d_acc += "" if r.defense == "none" else f"; AUC {_delta(r, 'd_test_auc')}"
            rows.append([r.dataset, r.depth, r.defense_label, r.n_seeds, value,
                         _delta(r, "d_headline"), acc, d_acc, _cost(r.cost), state])
    return header, rows


def _delta(r, prefix: str) -> str:
    """"-0.120 ± 0.030 (3 pairs, distinguishable)" / "(3 pairs, n.s.: ~8 seeds)"; "-" for undefended."""
    if r.defense == "none":
        return "-"
    p = paired_of(r, prefix)
    if p.n == 0:
        return "no paired seeds"
    if p.n == 1:
        return f"{p.mean:+.3f} (1 pair: no interval)"
    if p.distinguishable:
        verdict = "distinguishable"
    else:
        verdict = "n.s.: " + resolve_text(p).replace("an estimated ~", "est. ~").replace(
            " would resolve a difference of this size", " to resolve")
    return f"{p.mean:+.3f} ± {p.ci:.3f} ({p.n} pairs, {verdict})"


def _baseline_note(r) -> str:
    p = paired_of(r, "d_baseline")
    if r.vs_baseline == NO_BASELINE:
        return f"no baseline run ({r.baseline})"
    d = f"{p.mean:+.3f}" + (f" ± {p.ci:.3f}" if p.n > 1 else "") + f", {p.n} pair{'s' if p.n != 1 else ''}"
    if r.vs_baseline == UNDER:
        return f"**UNDER BUDGET**: does not beat {r.baseline} (Δ {d}); no defense credited"
    return f"beats {r.baseline} (Δ {d})"


def build_report(out: Path) -> Path:
    cells = read_cells(out)
    summary = summarize(cells)
    lf = leakage_frame(summary)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for old in figdir.glob("*.png"):
        old.unlink()
    head = _header(out, cells)
    blocks = head[:1] + _scorecard(out, cells, figdir) + [("h", 2, "This run")] + head[1:]
    if lf.empty:
        blocks.append(("p", "No cells yet."))
        return _write(out, blocks)
    blocks += [("h", 2, "Which defense, at what cost"),
               ("p", "Per attack at its main split depth: mean leakage over seeds without a defense, the defense "
                     "setting that lowers it most with its test-accuracy cost, and the best setting that costs at "
                     f"most {100 * ACC_BUDGET:.0f} accuracy points (n.s.: the 95% CI of its per-seed difference "
                     "from undefended includes 0). UNDER BUDGET: the attack does not beat its baseline "
                     "undefended, so no defense is credited."),
               ("table", *overview(lf)),
               ("h", 2, "Defenses in this run"),
               ("p", "What each defense setting protects, in words; a stack (members joined by `+`) covers what "
                     "each of its members covers, and its privacy figures stay per member, each with its scope."),
               ("table", *defenses_table(cells))]
    plot_error = None
    try:
        blocks.append(("h", 2, "Leakage heatmaps"))
        for ds in dict.fromkeys(lf["dataset"]):
            path = plots.heatmap(lf, ds, figdir / f"heatmap-{_slug(ds)}.png")
            blocks.append(("img", str(path.relative_to(out)), f"{ds}: headline leakage per attack (rows) and "
                           "defense setting (columns), mean ± 95% CI over seeds"))
    except plots.PlotError as e:  # seaborn missing: say so; the text report is still written
        plot_error = str(e)
    if plot_error:
        blocks.append(("p", f"Figures skipped: {plot_error}"))
    grids = _grids(out, cells)
    adapts = {c.attack: list(c.adapts_to or ()) for c in cells if getattr(c, "adapts_to", None)}
    rebuilt = {(c.attack, c.defense) for c in cells if c.status == "ok" and getattr(c, "derived", None)}
    blocks += _how_to_read()
    blocks.append(("h", 2, "Attacks"))
    for label in dict.fromkeys(lf.sort_values(["attack", "attack_label"])["attack_label"]):
        g = lf[lf["attack_label"] == label]
        kind = attack_kind(g["attack"].iloc[0]) or "unknown kind"
        if baseline_metrics(g["attack"].iloc[0]):
            kind = f"the baseline for {', '.join(baseline_metrics(g['attack'].iloc[0]))}"
        name = g["attack"].iloc[0]
        marks = [f"ADAPTIVE: built against {', '.join(adapts[name])}"] if adapts.get(name) else []
        marks += [f"under {d} on activations the view rebuilt" for a, d in sorted(rebuilt) if a == name]
        blocks.append(("h", 3, f"{label} ({kind}{'; ' + '; '.join(marks) if marks else ''})"))
        granted = [x for x in dict.fromkeys(g.loc[g["state"].isin(["ok", "partial"]), "granted"]) if x]
        if granted:
            blocks.append(("p", "**Threat model**: the server was granted " + "; or ".join(f"`{x}`" for x in granted)
                           + " (what the attack declared, as far as each defended protocol hands it over)."))
        if not plot_error and g["state"].isin(["ok", "partial"]).any():
            path = plots.frontier(lf, label, figdir / f"frontier-{_slug(label)}.png")
            blocks.append(("img", str(path.relative_to(out)), f"{label}: privacy–utility frontier"))
            path = plots.curves(summary, label, _attack_label, figdir / f"curve-{_slug(label)}.png")
            if path is not None:
                blocks.append(("img", str(path.relative_to(out)), f"{label}: reconstruction error during "
                               "training (mean ± 95% CI over seeds)"))
        datasets = list(dict.fromkeys(g["dataset"]))
        what = []
        for ds in datasets:
            prefix = f"**{ds}**: " if len(datasets) > 1 else ""
            what.extend(prefix + s for s in conclude(lf, label, ds))
        blocks += [("p", "**What to conclude**"), ("ul", what), ("table", *_attack_table(g))]
        shots = sorted(((k, v) for k, v in grids.items() if k[0] == label),
                       key=lambda kv: (kv[0][1], kv[0][2], kv[0][3] != "none", kv[0][3]))[:MAX_GRIDS]
        if shots:
            blocks.append(("p", "Reconstructions (top row true, bottom row reconstructed; lowest seed):"))
            blocks.append(("gallery", [(v, f"{k[1]} depth {k[2]}, {k[3]}") for k, v in shots]))
    bad = lf[lf["state"].isin(["blocked", "n/a", "n/e", "denied", "error"])]
    if len(bad):
        blocks.append(("h", 2, "Blocked, not applicable and failed cells"))
        blocks.append(("table", ["dataset", "depth", "attack", "defense", "status", "why"],
                       [[r.dataset, r.depth, r.attack_label, r.defense_label, r.state,
                         _why(r)] for r in bad.itertuples()]))
    return _write(out, blocks)


def _scorecard(out: Path, cells, figdir: Path) -> list[Block]:
    """The first section: the defense scorecard (`arena.report.scorecard`), also written as scorecard.csv."""
    sc = scorecard(cells)
    if sc.empty:
        return scorecard_doc.blocks(sc, None)
    sc = scorecard_doc.with_same_cut(sc)
    scorecard_doc.write_csv(out, sc)
    figure = None
    try:
        from .scorecard_plot import figure as draw

        figure = str(draw(sc, figdir / "scorecard.png").relative_to(out))
    except plots.PlotError:
        pass  # the other figures say why; the table is written without it
    return scorecard_doc.blocks(sc, figure)


def _write(out: Path, blocks: list[Block]) -> Path:
    _atomic_write(out / "report.html", to_html(blocks, f"arena report: {out.name}"))
    path = out / "report.md"
    _atomic_write(path, to_markdown(blocks))
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write DIR/report.md, DIR/report.html and their figures from DIR/cells.jsonl; returns report.md."""
    return build_report(Path(out_dir))
