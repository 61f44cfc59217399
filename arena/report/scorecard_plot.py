"""The scorecard's figure: rows defense settings, columns attack kinds, colour = worst-case leakage
normalised between the kind's baseline (0) and the undefended worst case (1), text = the value, the
attack's short name and "A" when it is adaptive. A kind with no value (blocked, not evaluated, n/a) is
a grey square that says which, never a leakage of 0."""
from __future__ import annotations

from pathlib import Path

from .plots import _libs, _save
from .scorecard import KINDS
from .scorecard_doc import norm


def _short(verdict: str) -> str:
    for word in ("blocked", "not credited", "not evaluated", "n/a"):
        if verdict.startswith(word):
            return word.replace(" ", "\n")
    return verdict.split(" (")[0]


def figure(sc, path: Path) -> Path:
    sns, plt = _libs()
    import numpy as np

    multi = sc["dataset"].nunique() > 1
    rows = [(f"{r.dataset}: " if multi else "") + r.defense_label for r in sc.itertuples()]
    values = norm(sc)
    grid = np.full((len(sc), len(KINDS)), np.nan)
    text = [["" for _ in KINDS] for _ in range(len(sc))]
    for i, r in enumerate(sc.itertuples()):
        for j, k in enumerate(KINDS):
            grid[i, j] = values[(r.Index, k)]
            v, verdict = getattr(r, f"{k}_worst"), getattr(r, f"{k}_verdict")
            if v == v:
                attack = getattr(r, f"{k}_attack").split("(")[0].split(" @")[0]
                text[i][j] = (f"{v:.2f} {attack}{' A' if getattr(r, f'{k}_adaptive') else ''}\n"
                              f"{_short(verdict)}")
            else:
                text[i][j] = _short(verdict)
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.6 * len(sc) + 1.5)))
    ax.set_facecolor("#eeeeee")
    sns.heatmap(grid, mask=np.isnan(grid), cmap="rocket_r", vmin=0, vmax=1, linewidths=1, linecolor="white",
                cbar_kws={"label": "worst-case leakage\n(0 = baseline, 1 = undefended)"}, ax=ax,
                xticklabels=list(KINDS), yticklabels=rows)
    for i in range(len(sc)):
        for j in range(len(KINDS)):
            dark = grid[i, j] == grid[i, j] and grid[i, j] > 0.6
            ax.text(j + 0.5, i + 0.5, text[i][j], ha="center", va="center", fontsize=7,
                    color="white" if dark else "#222")
    ax.set_title("Defense scorecard: worst case over all applicable attacks (A = adaptive)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out
