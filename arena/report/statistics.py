"""Statistics over seeds: the mean and its 95% confidence interval (Student t)."""
from __future__ import annotations

import math
from typing import Sequence

# two-sided 95% t quantiles for small n; large n -> 1.96
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% CI); half-width is 0 for one value (shown as such)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return math.nan, math.nan
    m = sum(v) / len(v)
    if len(v) == 1:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return m, _T95.get(len(v) - 1, 1.96) * sd / math.sqrt(len(v))
