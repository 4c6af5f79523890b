"""Known-answer checks of the numeric core."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims.stats import equivalence, holm, onset, onset_layer, paired_increase


def _flags(rates, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([rng.random(n) < r for r in rates])


def test_onset_is_the_first_layer_clearing_the_threshold_at_its_lower_bound():
    flags = _flags([0.0, 0.05, 0.3, 0.9, 0.95, 0.2])
    assert onset_layer(flags, 0.5) == 3
    effect = onset(flags, 0.5, n_boot=200)
    assert effect.statistic == 3 and effect.ci.low <= 3 <= effect.ci.high and effect.n == 200


def test_onset_beyond_the_last_layer_when_none_qualifies():
    flags = _flags([0.0, 0.1, 0.2])
    assert onset_layer(flags, 0.5) == 3


def test_onset_interval_widens_near_the_threshold():
    sharp = onset(_flags([0.0, 0.0, 1.0, 1.0]), 0.5, n_boot=200)
    fuzzy = onset(_flags([0.0, 0.55, 0.6, 0.65], n=60), 0.5, n_boot=200)
    assert sharp.ci.low == sharp.ci.high == 2
    assert fuzzy.ci.high - fuzzy.ci.low >= 1


def test_equivalence_holds_for_an_unchanged_answer_and_fails_for_a_drop():
    rng = np.random.default_rng(1)
    before = rng.random(300) < 0.9
    same = before.copy()
    same[:6] = ~same[:6]
    unchanged = equivalence(before, same, margin=0.1)
    assert unchanged.pvalue < 0.05 and -0.1 < unchanged.ci.low and unchanged.ci.high < 0.1
    dropped = equivalence(before, before & (rng.random(300) < 0.6), margin=0.1)
    assert dropped.pvalue > 0.05 and dropped.statistic < -0.2


def test_equivalence_is_not_shown_by_too_little_data():
    before = np.array([1, 0, 1, 1, 0], dtype=float)
    after = np.array([1, 1, 0, 1, 0], dtype=float)
    assert equivalence(before, after, margin=0.1).pvalue > 0.05


def test_paired_increase_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(2)
    before = rng.normal(size=100)
    # the bootstrap-t p-value: never below 1 / (n_boot + 1), reached here
    assert paired_increase(before, before + 0.5 + rng.normal(scale=0.5, size=100)).pvalue == pytest.approx(1 / 2001)
    assert paired_increase(before, before + rng.normal(scale=0.5, size=100)).pvalue > 0.01


def test_holm_matches_the_textbook_example():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_equivalence_rejects_a_non_positive_margin(bad):
    with pytest.raises(ValueError, match="margin must be > 0"):
        equivalence(np.zeros(5), np.zeros(5), margin=bad)


def test_vectorised_wilson_bound_matches_scipy():
    """The onset rule's bound is Wilson's (proportion itself now gives the exact interval)."""
    from scipy.stats import binomtest

    from mechclaims.stats import wilson_low

    for k, n in [(0, 10), (3, 10), (10, 10), (57, 200)]:
        scipy_low = binomtest(k, n).proportion_ci(method="wilson").low
        assert wilson_low(np.array([k]), n)[0] == pytest.approx(scipy_low, abs=1e-12)
