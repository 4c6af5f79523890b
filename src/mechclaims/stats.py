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


def onset_layer(flags: np.ndarray, threshold: float, *, level: float = 0.95) -> int:
    """Smallest layer whose rate's lower Wilson bound reaches ``threshold``.

    ``flags`` is ``[n_layers, n_prompts]`` (True where the prompt shows the
    effect at that layer).  Returns ``n_layers`` when no layer qualifies:
    "beyond the last layer", which keeps onsets ordered and finite.
    """
    flags = np.asarray(flags, dtype=bool)
    n_layers, n = flags.shape
    counts = flags.sum(axis=1)
    for layer in range(n_layers):
        if _wilson_low(int(counts[layer]), n, level) >= threshold:
            return layer
    return n_layers


def onset(
    flags: np.ndarray, threshold: float, *, level: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> Effect:
    """:func:`onset_layer` with a percentile bootstrap interval over prompts."""
    flags = np.asarray(flags, dtype=bool)
    n_layers, n = flags.shape
    if n < 2:
        raise ValueError(f"onset needs at least 2 prompts, got {n}")
    rng = np.random.default_rng(seed)
    boot = np.array(
        [onset_layer(flags[:, rng.integers(0, n, n)], threshold, level=level) for _ in range(n_boot)]
    )
    alpha = 1 - level
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return Effect(float(onset_layer(flags, threshold, level=level)), Interval(float(low), float(high), level), n)


def equivalence(
    before: np.ndarray, after: np.ndarray, margin: float, *, level: float = 0.95
) -> Effect:
    """Paired two one-sided tests (TOST) that ``after - before`` lies within ±``margin``.

    Returns the mean paired difference with its ``1 - 2*alpha`` interval (the
    interval TOST inverts) and the TOST p-value: equivalence is shown at
    ``alpha = 1 - level`` when ``pvalue < alpha``, i.e. when the interval lies
    inside ``[-margin, margin]``.
    """
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    n = diff.size
    if n < 2:
        raise ValueError(f"equivalence needs at least 2 paired values, got {n}")
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(n))
    alpha = 1 - level
    if se == 0.0:
        inside = abs(mean) < margin
        return Effect(mean, Interval(mean, mean, 1 - 2 * alpha), n, 0.0 if inside else 1.0)
    df = n - 1
    p_lower = _st.t.sf((mean + margin) / se, df)  # H0: diff <= -margin
    p_upper = _st.t.cdf((mean - margin) / se, df)  # H0: diff >= +margin
    half = _st.t.ppf(1 - alpha, df) * se
    return Effect(mean, Interval(mean - half, mean + half, 1 - 2 * alpha), n, float(max(p_lower, p_upper)))


def paired_increase(before: np.ndarray, after: np.ndarray, *, level: float = 0.95) -> Effect:
    """One-sided Wilcoxon signed-rank test that ``after`` exceeds ``before`` (paired).

    The statistic is the mean paired increase with a t interval at ``level``.
    """
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    n = diff.size
    if n < 2:
        raise ValueError(f"paired_increase needs at least 2 paired values, got {n}")
    mean = float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(n))
    half = _st.t.ppf(1 - (1 - level) / 2, n - 1) * se
    if np.all(diff == 0):
        pvalue = 1.0
    else:
        pvalue = float(_st.wilcoxon(diff, alternative="greater", zero_method="zsplit").pvalue)
    return Effect(mean, Interval(mean - half, mean + half, level), n, pvalue)


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in input order."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _wilson_low(successes: int, n: int, level: float) -> float:
    return float(_st.binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson").low)
