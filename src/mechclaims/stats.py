"""Numeric core: intervals and tests.  Pure numpy/scipy; no torch, no I/O."""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from .results import Effect, Interval


def proportion(successes: int, n: int, *, level: float = 0.95) -> Effect:
    """The share ``successes / n`` with its Wilson score interval.

    >>> proportion(18, 20).ci.low > 0.68
    True
    """
    successes, n = int(successes), int(n)
    if n <= 0:
        raise ValueError(f"proportion needs n >= 1 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    ci = _st.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return Effect(statistic=successes / n, ci=Interval(float(ci.low), float(ci.high), level), n=n)


def proportion_of(flags: np.ndarray, *, level: float = 0.95) -> Effect:
    """:func:`proportion` of a boolean array."""
    flags = np.asarray(flags, dtype=bool).ravel()
    return proportion(int(flags.sum()), flags.size, level=level)
