"""Statistics over seeds: the mean and its 95% confidence interval (Student t, exact quantile).

Only finite values are averaged: a seed whose value is NaN or ±inf is dropped, and the count that
goes with a mean (``Estimate.n``) is the number of values actually averaged, never the number of
seeds that were given (``Estimate.dropped`` says how many were left out).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Estimate(NamedTuple):
    """A mean over seeds: its 95% CI half-width, how many values were averaged, how many dropped."""

    mean: float
    ci: float
    n: int
    dropped: int


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile with ``df`` degrees of freedom (exact, for any df)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    from scipy.stats import t  # imported here: scipy.stats takes a while to load

    return float(t.ppf(0.975, df))


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, 95% CI half-width (Student t with n − 1 degrees of freedom; 0 for one value, NaN for
    none), n = the number of finite values averaged, dropped = the NaN/inf/None values left out."""
    v = [f for f in (_finite(x) for x in values) if f is not None]
    dropped = len(values) - len(v)
    if not v:
        return Estimate(math.nan, math.nan, 0, dropped)
    m = math.fsum(v) / len(v)
    if len(v) == 1:
        return Estimate(m, 0.0, 1, dropped)
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1))
    return Estimate(m, t95(len(v) - 1) * sd / math.sqrt(len(v)), len(v), dropped)


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% CI) of the finite values; half-width is 0 for one value."""
    e = estimate(values)
    return e.mean, e.ci
