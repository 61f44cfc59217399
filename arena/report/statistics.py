"""Statistics over seeds: the mean and its 95% confidence interval (Student t, exact quantile), and
paired differences.

Only finite values are averaged: a seed whose value is NaN or ±inf is dropped, and the count that
goes with a mean (``Estimate.n``) is the number of values actually averaged, never the number of
seeds that were given (``Estimate.dropped`` says how many were left out).

Paired (`paired_difference`): two cells of the same setting and seed share data order and
initialisation, so "defense vs undefended" (or "attack vs its baseline") is judged on the per-seed
differences: mean ± 95% CI (Student t over the differences), the number of pairs, and whether the CI
excludes 0. `seeds_to_resolve` estimates how many pairs a CI would need to exclude 0 for a
difference of the observed size and spread.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, NamedTuple, Sequence


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


class Paired(NamedTuple):
    """A mean of per-seed differences: 95% CI half-width, number of pairs, standard deviation."""

    mean: float
    ci: float
    n: int
    sd: float

    @property
    def distinguishable(self) -> bool:
        """The 95% CI of the difference excludes 0 (one pair has no interval: never)."""
        return self.n >= 2 and self.ci == self.ci and abs(self.mean) > self.ci

    @property
    def above_zero(self) -> bool:
        """The 95% CI lies above 0; with one pair, the difference is above 0."""
        if self.n < 1 or self.mean != self.mean:
            return False
        return self.mean > 0 if self.n < 2 else self.mean - self.ci > 0


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Paired:
    """a − b over the keys (seeds) both have a finite value for."""
    diffs = []
    for k in sorted(set(a) & set(b), key=repr):
        x, y = _finite(a[k]), _finite(b[k])
        if x is not None and y is not None:
            diffs.append(x - y)
    e = estimate(diffs)
    sd = math.sqrt(math.fsum((d - e.mean) ** 2 for d in diffs) / (len(diffs) - 1)) if len(diffs) > 1 else math.nan
    return Paired(e.mean, e.ci, e.n, sd)


def seeds_to_resolve(mean: float, sd: float, limit: int = 10_000) -> int | None:
    """An estimate of the pairs needed for a 95% CI to exclude 0 if the differences keep this mean and
    spread: the smallest n with t(n − 1)·sd/√n < |mean| (n ≈ (t·sd/mean)²). None when it cannot be
    estimated (no spread known, a zero mean) or exceeds ``limit``."""
    if not (math.isfinite(mean) and math.isfinite(sd)) or mean == 0:
        return None
    if sd == 0:
        return 2

    def enough(n: int) -> bool:
        return t95(n - 1) * sd / math.sqrt(n) < abs(mean)

    lo = max(2, math.ceil((1.959964 * sd / abs(mean)) ** 2))  # t > z: never fewer than the normal answer
    if not enough(limit):
        return None
    hi = max(lo, 2)
    while not enough(hi):
        lo, hi = hi + 1, min(2 * hi, limit)
    while lo < hi:  # smallest n in [lo, hi] that is enough (t·sd/√n falls as n grows)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return hi
