"""Numeric core: intervals and tests.  Pure numpy/scipy; no torch, no I/O."""

from __future__ import annotations

from typing import Sequence

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


def wilson_low(successes: np.ndarray, n: int, level: float = 0.95) -> np.ndarray:
    """Vectorised lower bound of the Wilson score interval (same as :func:`proportion`)."""
    z = _st.norm.ppf(1 - (1 - level) / 2)
    p = np.asarray(successes, dtype=float) / n
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.maximum((centre - spread) / (1 + z * z / n), 0.0)


def _first_layer(counts: np.ndarray, n: int, threshold: float, level: float) -> np.ndarray:
    """Per row of ``counts`` ``[..., n_layers]``: first layer clearing the threshold, else n_layers."""
    clears = wilson_low(counts, n, level) >= threshold
    return np.where(clears.any(-1), clears.argmax(-1), counts.shape[-1])


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each prompt is drawn in each bootstrap resample: ``[n_boot, n]``."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _counts(weights: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Flag counts per layer in each resample: ``[n_boot, n_layers]``."""
    return weights @ flags.T.astype(np.int64)


def onset_layer(flags: np.ndarray, threshold: float, *, level: float = 0.95) -> int:
    """Smallest layer whose rate's lower Wilson bound reaches ``threshold``.

    ``flags`` is ``[n_layers, n_prompts]`` (True where the prompt shows the
    effect at that layer).  Returns ``n_layers`` when no layer qualifies:
    "beyond the last layer", which keeps onsets ordered and finite.
    """
    flags = np.asarray(flags, dtype=bool)
    return int(_first_layer(flags.sum(axis=1), flags.shape[1], threshold, level))


def onset(
    flags: np.ndarray, threshold: float, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Effect:
    """:func:`onset_layer` with a percentile bootstrap interval over prompts."""
    flags = np.asarray(flags, dtype=bool)
    n = flags.shape[1]
    if n < 2:
        raise ValueError(f"onset needs at least 2 prompts, got {n}")
    boot = _first_layer(_counts(_resample_weights(n, n_boot, seed), flags), n, threshold, level)
    return Effect(float(onset_layer(flags, threshold, level=level)), _percentile(boot, level), n)


def _percentile(samples: np.ndarray, level: float) -> Interval:
    alpha = 1 - level
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return Interval(float(low), float(high), level)


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


def onset_shift(
    before: np.ndarray,
    after: np.ndarray,
    threshold: float,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Effect:
    """``onset(after) - onset(before)`` on the same prompts, with a paired bootstrap interval."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"flag arrays differ in shape: {before.shape} vs {after.shape}")
    n = before.shape[1]
    weights = _resample_weights(n, n_boot, seed)
    shift = _first_layer(_counts(weights, after), n, threshold, level) - _first_layer(
        _counts(weights, before), n, threshold, level
    )
    point = onset_layer(after, threshold, level=level) - onset_layer(before, threshold, level=level)
    return Effect(float(point), _percentile(shift, level), n)


def bootstrap_mean(values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Effect:
    """Mean of ``values`` with a percentile bootstrap interval (resampling the values; ``seed``
    from the run's seed, so the interval is reproducible)."""
    values = np.asarray(values, dtype=float).ravel()
    n = values.size
    if n < 2:
        raise ValueError(f"bootstrap_mean needs at least 2 values, got {n}")
    if not np.isfinite(values).all():
        raise ValueError(f"bootstrap_mean got non-finite values: {values[~np.isfinite(values)][:3]}")
    means = _resample_weights(n, n_boot, seed) @ values / n
    return Effect(float(values.mean()), _percentile(means, level), n)


def random_sets(n_layers: int, n_heads: int, k: int, n_sets: int, *, seed: int = 0,
                exclude: Sequence[tuple[int, int]] = ()) -> list[tuple[tuple[int, int], ...]]:
    """``n_sets`` random sets of ``k`` distinct (layer, head) pairs, none in ``exclude``: the
    random-head control a claim about particular heads is compared with."""
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in set(exclude)]
    if not 1 <= k <= len(pool):
        raise ValueError(f"cannot draw {k} heads from {len(pool)} ({n_layers} layers x {n_heads} heads, "
                         f"{len(exclude)} excluded)")
    rng = np.random.default_rng(seed)
    return [tuple(sorted(pool[i] for i in rng.choice(len(pool), size=k, replace=False))) for _ in range(n_sets)]


def beats_random(observed: float, random_values: np.ndarray) -> Effect:
    """How ``observed`` compares with the same statistic on random controls (random head sets):
    the statistic is ``observed``, the interval the controls' 2.5-97.5 percentiles, ``n`` the
    number of controls and the p-value ``(1 + #controls >= observed) / (n + 1)`` (one-sided, exact
    under exchangeability; with n controls it is never below ``1 / (n + 1)``)."""
    draws = np.asarray(random_values, dtype=float).ravel()
    if draws.size < 1:
        raise ValueError("beats_random needs at least one random control")
    p = float((1 + (draws >= observed - 1e-12).sum()) / (draws.size + 1))
    low, high = np.quantile(draws, [0.025, 0.975])
    return Effect(float(observed), Interval(float(low), float(high), 0.95), int(draws.size), p)
