"""Numeric cores of the post's Claims 2 and 3: growth fits and attention-role statistics.

Pure numpy/scipy; no torch, no I/O.  Every function returns the frozen
:class:`~mechclaims.Effect` vocabulary (statistic, ci, n, pvalue) or plain arrays.

Claim 2 (growth in the number of examples ``n``):

* :func:`fit_range` fixes, from mean P(correct) by ``n`` on the exploration
  split, the range "before saturation": ``n = first .. last`` where ``last`` is
  the first ``n`` whose mean P(correct) reaches ``saturation`` (0.9), the whole
  range when none does, and never fewer than :data:`MIN_POINTS` points.
* :func:`growth` fits ``value = intercept + slope * n`` to the mean curve over
  sequences (that slope is the mean of the sequences' own slopes, so its interval and p-value
  are the core's bootstrap of a mean, :func:`mechclaims.bootstrap_mean`),
  reports its R^2, and compares it with ``value = intercept + slope * log(n + 1)``
  by held-out squared error (K-fold over sequences, paired per sequence).

Claim 3 (attention between token roles): :func:`role_attention` tests a set of heads
against both baselines: uniform attention over the causal window (paired per sequence)
and randomly drawn sets of heads of the same size. The role weights and masses it reads
are the core's (``mechclaims.role_weights``, ``role_mass``, ``uniform_pattern``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from mechclaims import Effect, Interval, beats_random, bootstrap_mean, paired_increase

SATURATION = 0.9  # mean P(correct) that ends the range "before saturation"
MIN_POINTS = 4  # a line is never fitted to fewer points
MIN_R2 = 0.9  # fit quality a linear growth claim needs (R^2 of the mean curve)
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before the logit


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[EPS, 1 - EPS]``."""
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def fit_range(mean_p: Sequence[float], *, saturation: float = SATURATION, first: int = 0,
              min_points: int = MIN_POINTS) -> tuple[int, int]:
    """``(first, last)``: the examples counts fitted, ``last`` inclusive (see module doc)."""
    mean_p = np.asarray(mean_p, dtype=float)
    size = mean_p.size
    if size < min_points:
        raise ValueError(f"fit_range needs at least {min_points} points, got {size}")
    if not 0 <= first <= size - min_points:
        raise ValueError(f"first={first} leaves fewer than {min_points} of {size} points")
    reached = np.flatnonzero(mean_p[first:] >= saturation)
    last = first + int(reached[0]) if reached.size else size - 1
    return first, int(min(max(last, first + min_points - 1), size - 1))


def line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``(slope, intercept, r2)`` of ``y`` on ``x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 0.0
    return float(slope), float(intercept), r2


def _slopes(x: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``curves`` on ``x`` (vectorised)."""
    xc = x - x.mean()
    return (curves - curves.mean(-1, keepdims=True)) @ xc / float(xc @ xc)


@dataclass(frozen=True)
class Growth:
    """A linear-in-n fit of per-sequence values and its comparison with linear-in-log(n+1)."""

    slope: Effect  # mean of the sequences' slopes (bootstrap-t); pvalue: one-sided, slope <= 0
    intercept: float
    r2: float  # linear fit of the mean curve
    r2_log: float  # linear-in-log(n + 1) fit of the mean curve
    heldout: Effect  # mean per-sequence held-out squared error, linear minus log (bootstrap-t); pvalue: of >= 0
    aic: float  # of the mean curve's linear fit (Gaussian errors, 3 parameters)
    aic_log: float
    n: np.ndarray = field(repr=False)  # the example counts fitted
    mean: np.ndarray = field(repr=False)  # mean value per n
    fit: np.ndarray = field(repr=False)  # the linear fit at each n
    fit_log: np.ndarray = field(repr=False)

    def linear(self, min_r2: float = MIN_R2) -> bool:
        """Slope above 0 (CI), a good fit, and linear beats log on held-out sequences (CI)."""
        return bool(self.slope.ci.low > 0 and self.r2 >= min_r2 and self.heldout.ci.high < 0)


def _aic(resid: np.ndarray) -> float:
    n = resid.size
    return float(n * np.log(max(float((resid**2).mean()), 1e-300)) + 2 * 3)


def growth(
    n: Sequence[float], values: np.ndarray, *, n_boot: int = 2000, n_folds: int = 5,
    level: float = 0.95, seed: int = 0,
) -> Growth:
    """Fit ``values`` (``[n_sequences, len(n)]``) linearly in ``n`` and in ``log(n + 1)``."""
    x = np.asarray(n, dtype=float)
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != x.size:
        raise ValueError(f"values must be [n_sequences, {x.size}], got {values.shape}")
    n_seq = values.shape[0]
    if n_seq < max(n_folds, 2) or x.size < 3:
        raise ValueError(f"growth needs >= {max(n_folds, 2)} sequences and >= 3 points, got {values.shape}")
    lx = np.log(x + 1.0)
    mean = values.mean(0)
    slope, intercept, r2 = line(x, mean)
    slope_log, intercept_log, r2_log = line(lx, mean)
    fit, fit_log = intercept + slope * x, intercept_log + slope_log * lx

    # The slope of the mean curve is the mean of the sequences' own slopes (least squares is linear
    # in y), so its interval and p-value are the core's one bootstrap of a mean (bootstrap-t).
    slope_effect = bootstrap_mean(_slopes(x, values), level=level, n_boot=n_boot, seed=seed, null=0.0)

    folds = np.array_split(np.random.default_rng(seed).permutation(n_seq), n_folds)
    diff = np.empty(n_seq)
    for held in folds:
        train = np.setdiff1d(np.arange(n_seq), held)
        m = values[train].mean(0)
        s, i, _ = line(x, m)
        sl, il, _ = line(lx, m)
        err = ((values[held] - (i + s * x)) ** 2).mean(1)
        err_log = ((values[held] - (il + sl * lx)) ** 2).mean(1)
        diff[held] = err - err_log
    return Growth(
        slope=slope_effect, intercept=intercept, r2=r2, r2_log=r2_log,
        heldout=bootstrap_mean(diff, level=level, n_boot=n_boot, seed=seed, null=0.0, alternative="less"),
        aic=_aic(mean - fit), aic_log=_aic(mean - fit_log),
        n=x, mean=mean, fit=fit, fit_log=fit_log,
    )


def mean_curve(values: np.ndarray, *, level: float = 0.95, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per column of ``values`` ``[n, k]``: ``(mean, low, high)``, each column's mean with the core's
    interval of a mean (:func:`mechclaims.bootstrap_mean`). For figures: a column with no spread
    is drawn with no band."""
    values = np.asarray(values, dtype=float)
    effects = [bootstrap_mean(column, level=level, seed=seed, deterministic=True) for column in values.T]
    return tuple(np.array(a) for a in zip(*((e.statistic, e.ci.low, e.ci.high) for e in effects)))


def slope_c(slope: Effect) -> Effect:
    """The per-example odds factor of the Bayesian reading, ``c = sigmoid(slope)``, with its interval."""
    return Effect(
        float(sigmoid(slope.statistic)),
        Interval(float(sigmoid(slope.ci.low)), float(sigmoid(slope.ci.high)), slope.ci.level),
        slope.n, slope.pvalue,
    )


# --------------------------------------------------------------------------- feature direction


def mean_difference(task: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Unit vector along ``mean(task) - mean(control)`` (rows are samples, last axis features)."""
    d = np.asarray(task, dtype=float).reshape(-1, task.shape[-1]).mean(0) - np.asarray(
        control, dtype=float
    ).reshape(-1, control.shape[-1]).mean(0)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError("task and control activations have the same mean; no direction to read")
    return d / norm


def separation(task: np.ndarray, control: np.ndarray, *, seed: int = 0) -> float:
    """Held-out standardised separation of a mean-difference direction.

    ``task``/``control``: ``[n_sequences, d]``.  The direction is estimated on one
    half of the sequences and the two groups' projections compared on the other
    half (difference of means over the pooled standard deviation).
    """
    rng = np.random.default_rng(seed)
    t_idx, c_idx = rng.permutation(len(task)), rng.permutation(len(control))
    ta, tb = task[t_idx[: len(task) // 2]], task[t_idx[len(task) // 2 :]]
    ca, cb = control[c_idx[: len(control) // 2]], control[c_idx[len(control) // 2 :]]
    try:
        d = mean_difference(ta, ca)
    except ValueError:
        return 0.0
    pt, pc = tb @ d, cb @ d
    pooled = np.sqrt((pt.var(ddof=1) + pc.var(ddof=1)) / 2)
    return float((pt.mean() - pc.mean()) / pooled) if pooled > 0 else 0.0


# --------------------------------------------------------------------------- attention roles


@dataclass(frozen=True)
class RoleAttention:
    """Attention along a role link for a set of heads, against both baselines."""

    excess: Effect  # mean over sequences of (set mass - uniform mass): mechclaims.paired_increase
    mass: Effect  # the set's mean mass (mechclaims.bootstrap_mean)
    uniform: float  # mean uniform-baseline mass
    random_p: float  # permutation p-value against random head sets of the same size (mechclaims.beats_random)
    random_mean: float  # mean mass of a random head set
    random_high: float  # the random sets' spread: their 95th percentile (inverted-CDF quantile)
    heads: tuple[tuple[int, int], ...]
    per_head: np.ndarray = field(repr=False)  # [n_layers, n_heads] mean mass

    def above_baselines(self, min_excess: float, alpha: float = 0.025) -> bool:
        return bool(self.excess.ci.low > min_excess and self.random_p < alpha)


def role_attention(
    masses: np.ndarray, uniform: np.ndarray, heads: Sequence[tuple[int, int]], *,
    n_random: int = 2000, level: float = 0.95, seed: int = 0,
) -> RoleAttention:
    """Test ``heads`` (``(layer, head)`` pairs) on ``masses`` ``[n_seq, n_layers, n_heads]``.

    ``uniform`` ``[n_seq]`` is each sequence's mass under causal-uniform attention.
    """
    masses = np.asarray(masses, dtype=float)
    uniform = np.asarray(uniform, dtype=float)
    heads = tuple((int(layer), int(h)) for layer, h in heads)
    if not heads:
        raise ValueError("role_attention needs at least one head")
    n_seq, n_layers, n_heads = masses.shape
    rows = np.array([layer for layer, _ in heads]), np.array([h for _, h in heads])
    per_seq = masses[:, rows[0], rows[1]].mean(1)
    excess = paired_increase(uniform, per_seq, level=level, seed=seed)
    per_head = masses.mean(0)
    flat = per_head.ravel()
    k = len(heads)
    rng = np.random.default_rng(seed)
    draws = np.argsort(rng.random((n_random, flat.size)), axis=1)[:, :k]
    random_means = flat[draws].mean(1)
    mass = bootstrap_mean(per_seq, level=level, seed=seed)
    return RoleAttention(
        excess=excess,
        mass=mass,
        uniform=float(uniform.mean()),
        random_p=float(beats_random(mass.statistic, random_means, level=level).pvalue),
        random_mean=float(random_means.mean()),
        random_high=float(np.quantile(random_means, 0.95, method="inverted_cdf")),
        heads=heads,
        per_head=per_head,
    )
