"""No certainty from ties or zero-width intervals, and one hypothesis per Effect (the cases the
calibration issue named, each checked exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechclaims import (
    at_least, at_most, beats_random, bootstrap_mean, equivalence, equivalent, holm, paired_increase, significant,
)
from mechclaims.results import Effect, Interval


def test_ten_ones_are_not_supported_as_at_least_point_nine():
    effect = bootstrap_mean(np.ones(10))
    assert effect.ci.low < 0.9 and at_least(effect, 0.9, "share").verdict == "inconclusive"


def test_twenty_unchanged_pairs_are_neither_at_least_nor_at_most_zero():
    for flags in (np.zeros(20), np.ones(20), np.r_[np.ones(10), np.zeros(10)]):
        effect = paired_increase(flags, flags)
        assert at_least(effect, 0.0, "x").verdict == "inconclusive"
        assert at_most(effect, 0.0, "x").verdict == "inconclusive"
    continuous = paired_increase(np.linspace(0, 1, 20), np.linspace(0, 1, 20))
    assert math.isinf(continuous.ci.low) and at_least(continuous, 0.0, "x").verdict == "inconclusive"


def test_ten_unchanged_flag_pairs_are_not_equivalent_within_point_one():
    for flags in (np.ones(10), np.r_[np.ones(7), np.zeros(3)]):
        effect = equivalence(flags, flags, 0.1)
        assert equivalent(effect, 0.1, "change").verdict == "inconclusive" and effect.pvalue >= 0.05


def test_a_quantity_declared_deterministic_may_have_a_zero_width_interval():
    assert bootstrap_mean(np.full(5, 3.0)).ci == Interval(-math.inf, math.inf, 0.95)
    sure = bootstrap_mean(np.full(5, 3.0), deterministic=True)
    assert sure.ci == Interval(3.0, 3.0, 0.95) and at_least(sure, 2.0, "x").verdict == "supported"


def test_a_bound_equal_to_the_threshold_decides_only_when_the_rule_says_so():
    on_the_bound = Effect(2.0, Interval(1.0, 3.0), 50)
    assert at_least(on_the_bound, 1.0, "onset shift").verdict == "inconclusive"
    assert at_least(on_the_bound, 1.0, "onset shift", inclusive=True).verdict == "supported"
    assert at_most(on_the_bound, 3.0, "x").verdict == "inconclusive"
    assert equivalent(Effect(0.0, Interval(-0.1, 0.05), 9), 0.1, "x").verdict == "inconclusive"
    assert "lower bound must be > 1" in at_least(on_the_bound, 1.0, "x").message


def test_significant_reads_the_level_the_interval_bound_keeps():
    rng = np.random.default_rng(3)
    for _ in range(200):
        effect = paired_increase(np.zeros(30), rng.normal(0.3, 1, 30), seed=1)
        assert (significant(effect, "p").verdict == "supported") == (at_least(effect, 0.0, "lb").verdict == "supported")
    flags_before = rng.random(60) < 0.5
    flags_after = flags_before | (rng.random(60) < 0.2)
    effect = paired_increase(flags_before.astype(float), flags_after.astype(float))
    assert (significant(effect, "p").verdict == "supported") == (at_least(effect, 0.0, "lb").verdict == "supported")
    assert significant(Effect(1.0, Interval(0.5, 1.5, 0.95), 10, 0.03), "p").rules[0].bound == pytest.approx(0.025)


def test_beats_random_gives_an_interval_for_its_own_statistic():
    controls = np.arange(99.0)
    effect = beats_random(95.5, controls)
    assert effect.statistic == pytest.approx(96 / 99) and effect.ci.low < effect.statistic < effect.ci.high
    assert effect.pvalue == pytest.approx(4 / 100)
    assert at_least(beats_random(1000.0, controls), 0.95, "beats").verdict == "supported"
    assert at_least(beats_random(50.0, controls), 0.95, "beats").verdict == "refuted"


def test_holm_refuses_nan_in_one_line():
    with pytest.raises(ValueError, match=r"holm got NaN p-values at positions \[1\]"):
        holm([0.01, float("nan"), 0.02])
    assert holm([0.01, 0.04, 0.02]).tolist() == pytest.approx([0.03, 0.04, 0.04])
