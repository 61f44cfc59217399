"""Which metric judges an attack (its headline), and that metric's chance line.

Each attack is judged by one headline leakage metric chosen by its kind (`headline_metric`): SSIM for
inversion and hijacking, clone accuracy for stealing, label accuracy (else leak AUC) for label
inference; higher means more leakage. A baseline attack (kind "baseline") is judged by the metric of
the kinds it is the baseline of (``baseline_of``; `baseline_metrics`). A leak AUC is shown as the
scorer computed it, never folded to max(AUC, 1 − AUC): an attack commits to which side of its score
is "positive" before it sees the truth, so an AUC below 0.5 means its rule ranks the classes backwards.

The chance line of each headline metric (`chance_line`): SSIM 0; clone accuracy 1/10 (the
balanced 10-class test sets); leak AUC 0.5; label accuracy the **majority-class share of the scored
targets** (``label_chance``: the accuracy of always guessing the most common label among exactly the
examples the attack labelled, averaged over seeds; for a one-vs-rest question that is the share of
the larger side, not 1/classes).
"""
from __future__ import annotations

import math
from typing import Sequence

HEADLINE_BY_KIND = {"inversion": ("ssim",), "hijack": ("ssim",), "baseline": ("ssim",),
                    "stealing": ("clone_acc",), "label": ("label_acc", "leak_auc")}
LEAKAGE = ("ssim", "clone_acc", "label_acc", "leak_auc")  # fallback order for unknown kinds


def attack_kind(name: str) -> str | None:
    """The registered attack's kind (None if its module is not importable here)."""
    cls = _attack_class(name)
    return getattr(cls, "kind", None) if cls is not None else None


def _attack_class(name: str):
    from ..attacks import ATTACKS
    from ..registry import UnknownNameError

    try:
        return ATTACKS.get(name)
    except UnknownNameError:
        return None


def baseline_metrics(name: str) -> tuple[str, ...]:
    """The headline metrics the registered attack ``name`` is the baseline of (its ``baseline_of``
    kinds' first metric each; () for an attack that is no baseline)."""
    kinds = getattr(_attack_class(name), "baseline_of", ())
    return tuple(dict.fromkeys(HEADLINE_BY_KIND[k][0] for k in kinds if k in HEADLINE_BY_KIND))


def known_baselines(names=()) -> dict[str, tuple[str, ...]]:
    """Every registered baseline attack (and each of ``names``) -> the headline metrics it is the
    baseline of; an attack that is no baseline maps to ()."""
    from ..attacks import ATTACKS

    return {n: baseline_metrics(n) for n in dict.fromkeys([*ATTACKS.names(), *names])}


def headline_metric(attack: str, available: Sequence[str], binary: bool = False) -> str | None:
    """The one leakage metric an attack is judged by: its kind's first metric it reports (a baseline's:
    that of the kinds it is the baseline of). A label attack that answers a yes/no question
    (``binary``: label accuracy's chance is >= 0.5, e.g. "is this the positive class?") is judged by
    its leak AUC, as Li et al. do."""
    base = baseline_metrics(attack)
    order = base or HEADLINE_BY_KIND.get(attack_kind(attack) or "", ())
    if binary:
        order = ("leak_auc",) + order
    return next((m for m in order + LEAKAGE if m in available), None)


def attack_metric(attack: str, rows) -> str | None:
    """The headline metric of ``attack`` given its summary rows (what they report; binary or not)."""
    have = [m for m in LEAKAGE if m in rows.columns and rows[m].notna().any()]
    binary = "label_chance" in rows.columns and rows["label_chance"].mean() >= 0.5
    return headline_metric(attack, have, binary)


# Fixed chance lines; label accuracy has none here: its chance line is each setting's label_chance.
CHANCE = {"ssim": 0.0, "clone_acc": 0.1, "leak_auc": 0.5}


def chance_line(metric: str | None, row) -> float:
    """The chance line of a headline metric for one summary row (see the module docstring): label
    accuracy's is the row's ``label_chance`` (majority-class share of the scored targets, mean over
    seeds; NaN where the cells lack it), the others are fixed (`CHANCE`; 0 for an unknown metric)."""
    if metric == "label_acc":
        return _num(row, "label_chance")
    return CHANCE.get(metric or "", 0.0)


def above_chance(value: float, ci: float, n: int, chance: float) -> bool:
    """Whether a mean is distinguishable from its chance line: the lower end of its 95% CI lies above
    the line. One value has no interval: it counts when it is above the line (the figures say n = 1)."""
    if value != value or chance != chance:
        return False
    if n < 2:
        return value > chance
    return value - (ci if ci == ci else math.inf) > chance


def _num(row, col: str) -> float:
    v = row.get(col, math.nan)
    return float(v) if isinstance(v, (int, float)) else math.nan
