"""The report's figures (seaborn, an optional extra: ``pip install 'arena[plot]'``).

Both take `arena.report.leakage_frame` rows. A heatmap row whose attack does not beat its baseline
undefended is labelled "UNDER BUDGET" and left uncoloured (grey numbers), so no defense looks as if it
lowered a leakage that was never there; one with no baseline cell says "no baseline run". A `blocked` cell (the defense removes what the attack
needs) is a hatched grey square labelled "blocked", one whose defense does not apply to the
cell's setup a light square labelled "n/a", and an `error` cell a hatched red one: none is ever
drawn as a leakage of 0.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

STATE_STYLE = {"blocked": ("#d9d9d9", "///", "blocked"), "error": ("#f4c7c3", "xx", "error"),
               "n/a": ("#f2f2f2", "", "n/a"),
               # n/e: the server could rebuild what the attack needs; not evaluated, never "protected"
               "n/e": ("#fde9a9", "..", "not\nevaluated"), "denied": ("#e8e8f4", "\\\\", "denied")}  # n/a: the defense does not apply to the cell's setup


class PlotError(RuntimeError):
    """A figure cannot be drawn (e.g. seaborn is missing); the message says what to install."""


def _libs():
    try:
        import seaborn as sns
    except ImportError:
        raise PlotError("the report's figures need seaborn, an optional extra: pip install 'arena[plot]' "
                        "(or pip install seaborn); the tables and text are written without it") from None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return sns, plt


# a row whose attack does not beat its baseline undefended (or has none to compare with) says so
ROW_FLAGS = {"under budget": "UNDER BUDGET", "no baseline run": "no baseline run", "baseline": "baseline"}


def _row_label(r, multi_depth: bool) -> str:
    flag = ROW_FLAGS.get(getattr(r, "vs_baseline", "") or "")
    return (f"{r.attack_label}{f' · depth {r.depth}' if multi_depth else ''}  [{r.metric}]"
            + (f"  ({flag})" if flag else ""))


def _under_budget(r) -> bool:
    return getattr(r, "vs_baseline", "") == "under budget"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def heatmap(lf, dataset: str, path: Path) -> Path:
    """Attack × defense leakage for one dataset: colour = leakage above chance (as chance where the
    95% CI reaches the chance line), text = mean ± CI."""
    sns, plt = _libs()
    import numpy as np

    d = lf[lf["dataset"] == dataset]
    depths_per_attack = d.groupby("attack_label")["depth"].nunique()
    d = d.assign(row=[_row_label(r, depths_per_attack[r.attack_label] > 1) for r in d.itertuples()])
    rows = list(dict.fromkeys(d.sort_values(["attack", "attack_label", "depth"])["row"]))
    cols = list(dict.fromkeys(["none"] * ("none" in set(d["defense_label"])) +
                              list(d.sort_values(["defense", "defense_label"])["defense_label"])))
    norm = np.full((len(rows), len(cols)), np.nan)
    cell = {(r.row, r.defense_label): r for r in d.itertuples()}
    for (row, col), r in cell.items():
        if r.state in ("ok", "partial") and not _under_budget(r):  # under budget: no colour, no defense "wins"
            norm[rows.index(row), cols.index(col)] = r.norm
    fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * len(cols) + 4.5), max(2.5, 0.55 * len(rows) + 1.6)))
    sns.heatmap(norm, mask=np.isnan(norm), cmap="rocket_r", vmin=0, vmax=1, linewidths=1, linecolor="white",
                cbar_kws={"label": "leakage above chance (0 = chance or within\nthe 95% CI of it, 1 = perfect)"}, ax=ax,
                xticklabels=cols, yticklabels=rows)
    ax.set_facecolor("white")
    small = 7 if len(cols) > 8 else 8
    for (row, col), r in cell.items():
        i, j = rows.index(row), cols.index(col)
        if r.state in STATE_STYLE:
            face, hatch, text = STATE_STYLE[r.state]
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=face, hatch=hatch, edgecolor="#8c8c8c", lw=0))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=small, color="#404040",
                    bbox={"facecolor": face, "edgecolor": "none", "pad": 1})
        elif r.value != r.value:  # finished, but the attack reports no leakage metric
            ax.text(j + 0.5, i + 0.5, "no metric", ha="center", va="center", fontsize=small, color="#777777")
        else:
            ci = f"\n±{r.ci:.2f}" if isinstance(r.ci, float) and r.ci > 0 else ""
            star = "*" if r.state == "partial" else ""
            if _under_budget(r):
                ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor="#f7f7f7", edgecolor="white", lw=1))
            ax.text(j + 0.5, i + 0.5, f"{r.value:.2f}{star}{ci}", ha="center", va="center", fontsize=small,
                    color="#808080" if _under_budget(r) else "white" if r.norm > 0.55 else "black")
    for i, row in enumerate(rows):  # a pairing the experiment did not include: said so, never blank
        for j, col in enumerate(cols):
            if (row, col) not in cell:
                ax.text(j + 0.5, i + 0.5, "not run", ha="center", va="center", fontsize=small - 1, color="#9a9a9a")
    ax.set_xlabel("defense")
    ax.set_ylabel("attack  [headline leakage metric]")
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_yticklabels(rows, rotation=0)
    n = sorted(set(d.loc[d["state"].isin(["ok", "partial"]), "n_seeds"]))
    seeds = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}–{n[-1]}" if n else "no finished seeds"
    partial = "; * = some seeds failed" if (d["state"] == "partial").any() else ""
    if "vs_baseline" in d.columns and (d["vs_baseline"] == "under budget").any():
        partial += ";\nUNDER BUDGET (grey): not above its baseline undefended; no defense credited"
    ax.set_title(f"{dataset}: leakage per attack and defense (mean ± 95% CI over seeds, {seeds}{partial})",
                 fontsize=9)
    out = _save(fig, path)
    plt.close(fig)
    return out


def _palette(names: list[str]) -> dict[str, tuple]:
    sns, _ = _libs()
    return dict(zip(names, sns.color_palette("tab10", max(len(names), 1))))


def frontier(lf, attack_label: str, path: Path) -> Path:
    """Privacy–utility plane of one attack: leakage vs test accuracy, one point per defense setting
    (and depth), marker area ∝ client cost; the dashed line joins the non-dominated settings."""
    _, plt = _libs()
    d = lf[(lf["attack_label"] == attack_label)]
    datasets = list(dict.fromkeys(d["dataset"]))
    colors = _palette(sorted(set(lf["defense"])))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.2 * len(datasets), 4.6), squeeze=False)
    metric = d["metric"].dropna().iloc[0] if d["metric"].notna().any() else "leakage"
    for ax, ds in zip(axes[0], datasets):
        g = d[d["dataset"] == ds]
        ok = g[g["state"].isin(["ok", "partial"]) & g["value"].notna() & g["test_acc"].notna()]
        multi_depth = g["depth"].nunique() > 1
        costs = ok["cost"].dropna()
        top = costs.max() if len(costs) else math.nan
        if len(ok):
            lo, hi = ok["test_acc"].min(), ok["test_acc"].max()
            pad = max(0.02, 0.15 * (hi - lo))
            ax.set_xlim(max(0.0, lo - pad), min(1.0, hi + pad) + 0.01)
            lo, hi = ok["value"].min(), ok["value"].max()
            pad = max(0.02, 0.15 * (hi - lo))
            ax.set_ylim(lo - pad, hi + pad)
        n_settings = ok.groupby("defense")["defense_label"].nunique()
        placed: list[tuple[float, float]] = []
        for r in ok.itertuples():
            size = 40 + 460 * (r.cost / top) if top and top > 0 and r.cost == r.cost else 60
            c = colors[r.defense]
            ax.errorbar(r.test_acc, r.value, xerr=_ci(r.test_acc_ci), yerr=_ci(r.ci), fmt="none", ecolor=c,
                        alpha=0.5, lw=1)
            ax.scatter(r.test_acc, r.value, s=size, color=c, alpha=0.75, edgecolor="black", lw=0.5,
                       label=r.defense)
            # the colour names the defense; its parameters only when it has several settings here
            params = r.defense_label[len(r.defense):].strip("()") if n_settings[r.defense] > 1 else ""
            tag = ", ".join(t for t in (params, f"d{r.depth}" if multi_depth else "") if t)
            if tag:
                off = _free_spot(ax, (r.test_acc, r.value), placed)
                ax.annotate(tag, (r.test_acc, r.value), xytext=off, textcoords="offset points",
                            fontsize=7, color="#333333", ha="left" if off[0] > 0 else "right")
        front = _pareto(ok)
        if len(front) > 1:
            ax.plot(front["test_acc"], front["value"], ls="--", color="grey", lw=1, zorder=0,
                    label="frontier (best trade-offs)")
        notes = [f"{s}: " + ", ".join(dict.fromkeys(g.loc[g["state"] == s, "defense_label"]))
                 for s in ("blocked", "n/a", "n/e", "denied", "error") if (g["state"] == s).any()]
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom",
                    bbox={"facecolor": "#eeeeee", "edgecolor": "#999999", "hatch": "//", "alpha": 0.9})
        ax.set_xlabel("test accuracy (utility; right is better)")
        ds_metric = g["metric"].dropna().iloc[0] if g["metric"].notna().any() else metric  # per dataset
        ax.set_ylabel(f"{ds_metric} (leakage; lower is better)")
        under = "vs_baseline" in g.columns and (g["vs_baseline"] == "under budget").any()
        ax.set_title(f"{attack_label} on {ds}" + ("\nUNDER BUDGET: does not beat its baseline undefended; "
                                                  "no defense is credited" if under else ""), fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        if uniq:
            leg = ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
                            title="defense", title_fontsize=7, markerscale=0.6)
            for h in leg.legend_handles:
                if hasattr(h, "set_sizes"):
                    h.set_sizes([40])
        if len(costs):
            ax.text(1.01, 0.0, f"marker area ∝ client cost\n(max {_cost_text(top)})", transform=ax.transAxes,
                    fontsize=7, va="bottom")
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


OFFSETS = [(6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (-6, -22)]


def _free_spot(ax, xy: tuple[float, float], placed: list[tuple[float, float]]) -> tuple[int, int]:
    """The label offset (points) farthest from the labels already placed, so close points stay legible."""
    px, py = ax.transData.transform(xy)
    scale = ax.figure.dpi / 72

    def room(off: tuple[int, int]) -> float:
        x, y = px + off[0] * scale, py + off[1] * scale
        return min((((x - a) / 3) ** 2 + (y - b) ** 2 for a, b in placed), default=math.inf)

    best = max(OFFSETS, key=room)  # first of the equally free spots: up-right
    placed.append((px + best[0] * scale, py + best[1] * scale))
    return best


def _ci(h: float) -> float:
    return h if isinstance(h, float) and h == h else 0.0


def _cost_text(v: float) -> str:
    return f"{v * 1e3:.2g} ms client time / sample" if v < 1 else f"{v:.3g} client FLOPs / sample"


def _pareto(ok):
    """Settings no other setting beats on both accuracy (higher) and leakage (lower)."""
    pts = ok.sort_values(["test_acc", "value"], ascending=[False, True])
    keep, best = [], math.inf
    for idx, r in pts.iterrows():
        if r["value"] < best:
            keep.append(idx)
            best = r["value"]
    return pts.loc[keep].sort_values("test_acc")


CURVE = re.compile(r"^(?P<metric>[a-z_]+)@(?P<step>\d+)$")


def curve_columns(summary) -> dict[str, list[tuple[int, str]]]:
    """Metrics recorded during training as ``<metric>@<step>`` (the FSHA curve): metric -> [(step, column)]."""
    out: dict[str, list[tuple[int, str]]] = {}
    for c in summary.columns:
        m = CURVE.match(str(c))
        if m:
            out.setdefault(m["metric"], []).append((int(m["step"]), c))
    return {k: sorted(v) for k, v in out.items()}


def curves(summary, attack_label: str, label_of, path: Path) -> Path | None:
    """Each ``<metric>@<step>`` curve of one attack: mean ± 95% CI over seeds per defense setting."""
    _, plt = _libs()
    cols = curve_columns(summary)
    mine = summary.apply(lambda r: label_of(r) == attack_label, axis=1).astype(bool)
    rows = summary[mine & (summary["n_seeds"] > 0)]
    cols = {m: [(s, c) for s, c in v if rows[c].notna().any()] for m, v in cols.items()}
    cols = {m: v for m, v in cols.items() if v}
    if rows.empty or not cols:
        return None
    datasets = list(dict.fromkeys(rows["dataset"]))
    fig, axes = plt.subplots(len(cols), len(datasets), figsize=(6.2 * len(datasets), 4.2 * len(cols)),
                             squeeze=False)
    from .tables import params_text

    colors = _palette(sorted(set(summary["defense"])))
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D", "v", "P"]
    settings = {d: sorted(set(rows.loc[rows["defense"] == d, "defense_params"])) for d in set(rows["defense"])}
    depths = sorted(set(rows["depth"]))
    for i, (metric, steps) in enumerate(cols.items()):
        for ax, ds in zip(axes[i], datasets):
            for _, r in rows[rows["dataset"] == ds].iterrows():
                pts = [(s, r[c], r.get(f"{c}_ci95", math.nan)) for s, c in steps if r[c] == r[c]]
                if not pts:
                    continue
                x, y, h = zip(*pts)
                h = [v if v == v else 0.0 for v in h]
                name = r["defense"] + params_text(r["defense_params"]) + (f" d{r['depth']}" if len(depths) > 1 else "")
                ax.plot(x, y, marker=markers[depths.index(r["depth"]) % 6], ms=4, color=colors[r["defense"]],
                        ls=styles[settings[r["defense"]].index(r["defense_params"]) % 4], label=name)
                ax.fill_between(x, [a - b for a, b in zip(y, h)], [a + b for a, b in zip(y, h)],
                                color=colors[r["defense"]], alpha=0.15)
            ax.set_xlabel("training step")
            ax.set_ylabel(f"{metric} (lower = better reconstruction)")
            ax.set_title(f"{attack_label} on {ds}: {metric} during training", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
