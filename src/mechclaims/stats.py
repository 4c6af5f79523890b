"""Numeric core: intervals and tests.  Pure numpy/scipy; no torch, no I/O.

Each constructor gives the interval its data call for, and its p-value (where it has one)
tests the same hypothesis as that interval at the matching level:

- 0/1 data: the exact (Clopper-Pearson) interval (:func:`proportion`, and
  :func:`bootstrap_mean` of flags); paired 0/1 flags: Tango's score interval for a difference
  of paired proportions, with the score test it inverts;
- continuous data: the studentized bootstrap (bootstrap-t) of the mean, with the bootstrap-t
  p-values its bounds invert (:func:`bootstrap_mean`, :func:`paired_increase`,
  :func:`equivalence`);
- a sample with no variance carries no information about its spread: its interval is
  unbounded (every rule on it is inconclusive) unless the caller declares the quantity
  deterministic.

A one-sided p-value is the one whose test the interval's bound inverts: ``pvalue < (1 -
level) / 2`` exactly when the lower bound is above zero, which is what
:func:`mechclaims.significant` reads by default. The calibration of every constructor and
check is measured in ``tests/calibration`` and tabulated in docs/statistics.md.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _st

from .results import Effect, Interval


def proportion(successes: int, n: int, *, level: float = 0.95) -> Effect:
    """The share ``successes / n`` with its exact (Clopper-Pearson) interval: each side keeps its
    ``(1 - level) / 2`` error at every n and p (Wilson's score interval does not near 0 and 1 at
    small n: 7-9% per side at p = .05 or .95, n = 10 to 20; docs/statistics.md).

    >>> proportion(18, 20).ci.low > 0.68
    True
    """
    successes, n = int(successes), int(n)
    if n <= 0:
        raise ValueError(f"proportion needs n >= 1 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    ci = _st.binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
    return Effect(statistic=successes / n, ci=Interval(float(ci.low), float(ci.high), level), n=n)


def proportion_of(flags: np.ndarray, *, level: float = 0.95) -> Effect:
    """:func:`proportion` of a boolean array."""
    flags = np.asarray(flags, dtype=bool).ravel()
    return proportion(int(flags.sum()), flags.size, level=level)


def wilson_low(successes: np.ndarray, n: int, level: float = 0.95) -> np.ndarray:
    """Vectorised lower bound of the Wilson score interval (the onset rule's)."""
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
    """Smallest layer whose rate's lower Wilson bound reaches ``threshold`` (not the first layer
    whose rate reaches it: that one is not estimable when a rate sits at the threshold).

    ``flags`` is ``[n_layers, n_prompts]`` (True where the prompt shows the
    effect at that layer).  Returns ``n_layers`` when no layer qualifies:
    "beyond the last layer", which keeps onsets ordered and finite.
    """
    flags = np.asarray(flags, dtype=bool)
    return int(_first_layer(flags.sum(axis=1), flags.shape[1], threshold, level))


def onset(
    flags: np.ndarray, threshold: float, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Effect:
    """:func:`onset_layer` with a percentile bootstrap interval over prompts.

    The estimand is the onset of the population that the prompts are drawn from under the same
    rule at the same ``n``: the first layer whose lower Wilson bound at ``n`` prompts reaches the
    threshold. A layer whose true rate sits exactly at the threshold is found about half the
    time, so the interval covers "the first layer whose rate is clearly above the threshold"
    (tests/calibration measures it), not "the first layer whose rate reaches it"."""
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
    before: np.ndarray, after: np.ndarray, margin: float, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
) -> Effect:
    """Paired two one-sided tests (TOST) that ``after - before`` lies within ±``margin``.

    Returns the mean paired difference with its ``1 - 2*alpha`` interval (the interval TOST
    inverts; ``alpha = 1 - level``) and the TOST p-value: equivalence is shown when
    ``pvalue < alpha``, exactly when the interval lies inside ``[-margin, margin]``. Paired
    0/1 flags get Tango's score interval for a difference of paired proportions (and its score
    test), other data the studentized bootstrap (``n_boot`` resamples from ``seed``);
    differences with no spread give an unbounded interval and p = 1.
    """
    before, after = np.asarray(before, dtype=float).ravel(), np.asarray(after, dtype=float).ravel()
    if before.shape != after.shape:
        raise ValueError(f"equivalence needs paired values of one length, got {before.size} and {after.size}")
    diff = after - before
    n = diff.size
    if n < 2:
        raise ValueError(f"equivalence needs at least 2 paired values, got {n}")
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    mean = float(diff.mean())
    alpha = 1 - level
    if is_binary(before) and is_binary(after):
        tango = _Tango(before.astype(bool), after.astype(bool))
        return Effect(mean, tango.interval(1 - 2 * alpha), n, max(tango.p_greater(-margin), tango.p_less(margin)))
    if np.all(diff == diff[0]):
        return Effect(mean, _no_variance(mean, 1 - 2 * alpha, False), n, 1.0)
    boot = _StudentT(diff, n_boot, seed)
    # H0: diff <= -margin, and H0: diff >= +margin
    return Effect(mean, boot.interval(1 - 2 * alpha), n, max(boot.p_greater(-margin), boot.p_less(margin)))


def paired_increase(
    before: np.ndarray, after: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0,
) -> Effect:
    """The mean paired increase ``after - before`` with an interval at ``level`` and the
    one-sided p-value of "no increase" that the interval's lower bound inverts.

    Paired 0/1 flags get Tango's score interval for a difference of paired proportions (the
    p-value is its score test: ``p < (1 - level) / 2`` exactly when the lower bound is above 0);
    other data the studentized bootstrap of the mean difference (``n_boot`` resamples from
    ``seed``) with its bootstrap-t p-value. Differences with no spread give an unbounded
    interval and p = 1 (no evidence either way)."""
    before, after = np.asarray(before, dtype=float).ravel(), np.asarray(after, dtype=float).ravel()
    if before.shape != after.shape:
        raise ValueError(f"paired_increase needs paired values of one length, got {before.size} and {after.size}")
    n = before.size
    if n < 2:
        raise ValueError(f"paired_increase needs at least 2 paired values, got {n}")
    if is_binary(before) and is_binary(after):
        tango = _Tango(before.astype(bool), after.astype(bool))
        return Effect(tango.point, tango.interval(level), n, tango.p_greater(0.0))
    diff = after - before
    mean = float(diff.mean())
    if np.all(diff == diff[0]):
        return Effect(mean, _no_variance(mean, level, False), n, 1.0)
    boot = _StudentT(diff, n_boot, seed)
    return Effect(mean, boot.interval(level), n, boot.p_greater(0.0))


class _Tango:
    """Tango's score test and interval (1998) for ``P(after) - P(before)`` on paired flags: the
    score statistic ``T(delta)`` of the hypothesis that the difference is ``delta``, decreasing in
    ``delta``; the interval at a level is every ``delta`` that the two-sided test keeps, and the
    one-sided p-values are ``T``'s normal tails, so each interval and p-value invert each other.
    It keeps its level with few discordant pairs and all of them one way, where Newcombe's
    hybrid interval does not (docs/statistics.md)."""

    def __init__(self, before: np.ndarray, after: np.ndarray) -> None:
        self.n = before.size
        self.up = int(np.sum(~before & after))  # 0 -> 1
        self.down = int(np.sum(before & ~after))  # 1 -> 0
        self.point = (self.up - self.down) / self.n

    def statistic(self, delta: float) -> float:
        n, up, down = self.n, self.up, self.down
        b = -up - down + (2 * n - up + down) * delta
        c = -down * delta * (1 - delta)
        p_down = (math.sqrt(max(b * b - 8 * n * c, 0.0)) - b) / (4 * n)  # restricted ML of P(1 -> 0)
        variance = n * (2 * p_down + delta * (1 - delta))
        if variance <= 0:
            return math.copysign(math.inf, up - down - n * delta) if up - down != n * delta else 0.0
        return (up - down - n * delta) / math.sqrt(variance)

    def interval(self, level: float) -> Interval:
        from scipy.optimize import brentq

        z = float(_st.norm.ppf(1 - (1 - level) / 2))
        tol = 1e-10
        low = -1.0 if self.point <= -1 + tol else brentq(lambda d: self.statistic(d) - z, -1 + tol, self.point)
        high = 1.0 if self.point >= 1 - tol else brentq(lambda d: self.statistic(d) + z, self.point, 1 - tol)
        return Interval(min(low, self.point), max(high, self.point), level)

    def p_greater(self, delta: float) -> float:
        """One-sided p-value of "difference <= delta"."""
        return float(_st.norm.sf(self.statistic(delta)))

    def p_less(self, delta: float) -> float:
        """One-sided p-value of "difference >= delta"."""
        return float(_st.norm.cdf(self.statistic(delta)))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control), in input order."""
    p = np.asarray(pvalues, dtype=float)
    if np.isnan(p).any():
        raise ValueError(f"holm got NaN p-values at positions {np.flatnonzero(np.isnan(p)).tolist()}; a NaN p-value "
                         "is not a test: fix the test that gave it, or leave it out of the family (and say so)")
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


def bootstrap_mean(
    values: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0, deterministic: bool = False,
    null: float | None = None, alternative: str = "greater",
) -> Effect:
    """Mean of ``values`` with an interval for the data it is given: the exact binomial interval
    when every value is 0 or 1 (a share, :func:`proportion`), else the studentized (bootstrap-t)
    interval, ``n_boot`` resamples drawn from ``seed`` (the run's seed, so the interval is
    reproducible). The bootstrap-t keeps its error rate on skewed data where the percentile,
    BCa and t intervals do not (docs/statistics.md). Values that are all equal give an
    unbounded interval (no rule decides on them) unless ``deterministic`` declares that the
    quantity has no sampling error.

    With ``null``, the result carries the one-sided p-value that the interval's bound inverts:
    of "mean <= null" for ``alternative="greater"``, of "mean >= null" for ``"less"`` (the exact
    binomial test for flags, the bootstrap-t test otherwise). ``pvalue < (1 - level) / 2``
    exactly when the lower (upper) bound is beyond ``null``."""
    values = np.asarray(values, dtype=float).ravel()
    n = values.size
    if n < 2:
        raise ValueError(f"bootstrap_mean needs at least 2 values, got {n}")
    if not np.isfinite(values).all():
        raise ValueError(f"bootstrap_mean got non-finite values: {values[~np.isfinite(values)][:3]}")
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"bootstrap_mean: alternative={alternative!r}; choose one of {', '.join(_ALTERNATIVES)}")
    if null is not None and not math.isfinite(null):
        raise ValueError(f"bootstrap_mean: null={null!r} must be a finite number (or None for no p-value)")
    mean = float(values.mean())
    greater = alternative == "greater"
    if is_binary(values):
        k = int(values.sum())
        p = None
        if null is not None and 0 <= null <= 1:
            p = float(_st.binomtest(k, n, null, alternative=alternative).pvalue)
        elif null is not None:  # a share is never outside [0, 1]: the hypothesis is certain or impossible
            p = 0.0 if (null < 0) == greater else 1.0
        return Effect(mean, proportion(k, n, level=level).ci, n, p)
    if np.all(values == values[0]):
        p = None
        if null is not None:  # no spread: no evidence, unless the quantity has no sampling error
            p = float(not (mean > null if greater else mean < null)) if deterministic else 1.0
        return Effect(mean, _no_variance(mean, level, deterministic), n, p)
    boot = _StudentT(values, n_boot, seed)
    p = None if null is None else (boot.p_greater(null) if greater else boot.p_less(null))
    return Effect(mean, boot.interval(level), n, p)


_ALTERNATIVES = ("greater", "less")


class _StudentT:
    """The studentized bootstrap of a mean: ``t* = (mean* - mean) / se*`` over resamples, which
    gives intervals at any level and the one-sided p-values those intervals invert."""

    def __init__(self, values: np.ndarray, n_boot: int, seed: int) -> None:
        n = values.size
        self.mean = float(values.mean())
        self.se = float(values.std(ddof=1) / math.sqrt(n))
        weights = _resample_weights(n, n_boot, seed)
        means = weights @ values / n
        variances = np.maximum(weights @ (values * values) / n - means * means, 0.0) * n / (n - 1)
        ses = np.sqrt(variances / n)
        spread = ses > 0  # a resample of one repeated value has no t
        self.t = np.sort((means[spread] - self.mean) / ses[spread])

    def interval(self, level: float) -> Interval:
        """The bounds are order statistics of ``t*`` picked so that the lower bound is above a
        value exactly when :meth:`p_greater` of it is below ``(1 - level) / 2`` (and the upper
        bound likewise with :meth:`p_less`): the interval and the p-values invert each other."""
        size = self.t.size
        k = math.ceil((1 - level) / 2 * (size + 1) - 1) - 1  # at most k draws beyond: p < (1 - level) / 2
        if k < 0:  # too few resamples for this level: no bound
            return Interval(-math.inf, math.inf, level)
        low_q, high_q = float(self.t[k]), float(self.t[size - 1 - k])
        return Interval(self.mean - high_q * self.se, self.mean - low_q * self.se, level)

    def p_greater(self, null: float) -> float:
        """One-sided p-value of "mean <= null" (small when the mean is clearly above it)."""
        t_obs = (self.mean - null) / self.se
        return float((1 + np.sum(self.t >= t_obs)) / (self.t.size + 1))

    def p_less(self, null: float) -> float:
        """One-sided p-value of "mean >= null"."""
        t_obs = (self.mean - null) / self.se
        return float((1 + np.sum(self.t <= t_obs)) / (self.t.size + 1))


def is_binary(values: np.ndarray) -> bool:
    """Whether every value is 0 or 1 (flags): such data get score intervals, not bootstrap or t."""
    values = np.asarray(values)
    return values.size > 0 and bool(np.isin(values, (0, 1)).all())


def _no_variance(point: float, level: float, deterministic: bool) -> Interval:
    """The interval of a sample with no spread: zero width only for a declared deterministic
    quantity; otherwise unbounded, so that no rule reads certainty into it."""
    return Interval(point, point, level) if deterministic else Interval(-math.inf, math.inf, level)


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


def beats_random(observed: float, controls: np.ndarray, *, level: float = 0.95) -> Effect:
    """How ``observed`` ranks among the same statistic on random controls (random head sets).

    The statistic is the share of controls strictly below ``observed``; its interval is the
    exact (Clopper-Pearson) interval for the share of all such controls that ``observed`` beats,
    ``n`` the number of controls, and the p-value ``(1 + #controls >= observed) / (n + 1)``
    (one-sided, exact under exchangeability; never below ``1 / (n + 1)``, so give at least
    ``2 / alpha`` controls). ``at_least(beats_random(...), 0.95, ...)`` reads "beats more than
    95% of random sets"; ``significant`` reads the permutation p-value."""
    draws = np.asarray(controls, dtype=float).ravel()
    if draws.size < 1:
        raise ValueError("beats_random needs at least one random control")
    if not (math.isfinite(observed) and np.isfinite(draws).all()):
        raise ValueError(f"beats_random needs finite values, got observed={observed!r} and "
                         f"{int((~np.isfinite(draws)).sum())} non-finite controls")
    below = int((draws < observed - 1e-12).sum())
    p = float((1 + (draws >= observed - 1e-12).sum()) / (draws.size + 1))
    ci = _st.binomtest(below, draws.size).proportion_ci(confidence_level=level, method="exact")
    return Effect(below / draws.size, Interval(float(ci.low), float(ci.high), level), int(draws.size), p)
