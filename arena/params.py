"""Checks for attack and defense parameters: each raises a ValueError that names the parameter, the
value it got and what it takes, so a bad experiment fails before any work. Vocabulary: imports nothing
of arena's.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_float_in(name: str, value: Any, low: float, high: float, low_open: bool = False,
                   high_open: bool = False) -> float:
    """A real number (not a bool, not a string) in the interval [low, high], either end open if asked."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return v
