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


# --------------------------------------------------------------------------- against scipy and textbooks
# One set of statistics: exact binomial for flags, Tango's score test for paired flags, the
# bootstrap-t for other means, Phipson & Smyth's permutation p-value against random controls,
# and inverted-CDF quantiles. Each is checked here against scipy or a textbook value.


def test_bootstrap_mean_of_normal_data_agrees_with_the_t_interval_and_t_test():
    """On normal data the bootstrap-t interval and p-value approach Student's t (scipy)."""
    from scipy import stats as st

    from mechclaims import bootstrap_mean

    x = np.random.default_rng(1).normal(0.2, 1.0, 400)
    effect = bootstrap_mean(x, null=0.0, n_boot=20000, seed=3)
    low, high = st.t.interval(0.95, x.size - 1, x.mean(), st.sem(x))
    assert effect.ci.low == pytest.approx(low, abs=0.02) and effect.ci.high == pytest.approx(high, abs=0.02)
    assert effect.pvalue == pytest.approx(st.ttest_1samp(x, 0.0, alternative="greater").pvalue, abs=0.005)
    less = bootstrap_mean(x, null=0.3, alternative="less", n_boot=20000, seed=3)
    assert less.pvalue == pytest.approx(st.ttest_1samp(x, 0.3, alternative="less").pvalue, abs=0.01)


def test_bootstrap_mean_p_value_inverts_its_interval():
    """``p < (1 - level) / 2`` exactly when the bound is beyond the null, at every null."""
    from mechclaims import bootstrap_mean

    x = np.random.default_rng(4).lognormal(size=60)
    ci = bootstrap_mean(x, seed=5).ci
    for null in np.linspace(ci.low - 0.3, ci.high + 0.3, 61):
        assert (bootstrap_mean(x, seed=5, null=null).pvalue < 0.025) == (ci.low > null), null
        assert (bootstrap_mean(x, seed=5, null=null, alternative="less").pvalue < 0.025) == (ci.high < null), null


def test_bootstrap_mean_of_flags_is_the_exact_binomial_test():
    from scipy.stats import binomtest

    from mechclaims import bootstrap_mean

    flags = np.r_[np.ones(15), np.zeros(5)]
    effect = bootstrap_mean(flags, null=0.5)
    assert effect.pvalue == pytest.approx(binomtest(15, 20, 0.5, alternative="greater").pvalue, rel=1e-12)
    assert (effect.ci.low, effect.ci.high) == pytest.approx(tuple(binomtest(15, 20).proportion_ci(method="exact")))
    assert bootstrap_mean(flags, null=-0.1).pvalue == 0.0 and bootstrap_mean(flags, null=1.1).pvalue == 1.0


def test_bootstrap_mean_refuses_a_bad_alternative_naming_the_choices():
    from mechclaims import bootstrap_mean

    with pytest.raises(ValueError, match="alternative='two-sided'; choose one of greater, less"):
        bootstrap_mean(np.arange(5.0), null=0.0, alternative="two-sided")
    assert bootstrap_mean(np.ones(5) * 2, null=0.0).pvalue == 1.0  # no spread: no evidence
    assert bootstrap_mean(np.ones(5) * 2, null=0.0, deterministic=True).pvalue == 0.0


def test_paired_increase_of_flags_is_mcnemars_test_at_zero():
    """Tango's score statistic at a difference of 0 is McNemar's ``(b - c) / sqrt(b + c)``."""
    from scipy.stats import norm

    before = np.r_[np.zeros(12), np.ones(4), np.ones(30), np.zeros(34)].astype(bool)
    after = np.r_[np.ones(12), np.zeros(4), np.ones(30), np.zeros(34)].astype(bool)
    assert paired_increase(before, after).pvalue == pytest.approx(norm.sf((12 - 4) / np.sqrt(12 + 4)), rel=1e-9)
    assert paired_increase(before, after).statistic == pytest.approx(8 / 80)


def test_paired_increase_of_normal_differences_agrees_with_the_paired_t_test():
    from scipy import stats as st

    rng = np.random.default_rng(6)
    before = rng.normal(size=300)
    after = before + 0.1 + rng.normal(size=300)
    effect = paired_increase(before, after, n_boot=20000, seed=2)
    assert effect.pvalue == pytest.approx(st.ttest_rel(after, before, alternative="greater").pvalue, abs=0.01)
    low, high = st.t.interval(0.95, 299, (after - before).mean(), st.sem(after - before))
    assert effect.ci.low == pytest.approx(low, abs=0.02) and effect.ci.high == pytest.approx(high, abs=0.02)


def test_beats_random_p_value_is_exact_under_exchangeability():
    """Phipson & Smyth (2010): with the observed value exchangeable with 19 controls, p is uniform
    on {1/20, ..., 1}, so P(p <= 1/20) = 1/20 exactly; 4000 draws keep within 4 standard errors."""
    from mechclaims import beats_random

    rng = np.random.default_rng(7)
    draws = rng.normal(size=(4000, 20))
    p = np.array([beats_random(row[0], row[1:]).pvalue for row in draws])
    assert set(np.round(p * 20).astype(int)) <= set(range(1, 21))
    rate = float((p <= 0.05 + 1e-12).mean())
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 4000), rate


def test_onset_interval_uses_the_inverted_cdf_quantile():
    """The percentile bootstrap's bounds are order statistics (numpy's ``inverted_cdf``), which on
    the integer layers keeps them layers."""
    flags = _flags([0.1, 0.3, 0.5, 0.7, 0.9, 0.95])
    effect = onset(flags, 0.6, seed=1)
    assert float(effect.ci.low).is_integer() and float(effect.ci.high).is_integer()


def test_every_quantile_in_the_package_uses_one_convention():
    """numpy's ``inverted_cdf``: a quantile is a value of the sample (the percentile bootstrap's
    order statistic). A call without it is found, and a planted one is (negative control)."""
    import ast
    from pathlib import Path

    def loose(tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in {"quantile", "percentile",
                                                                               "nanquantile", "nanpercentile"}:
                method = {k.arg: k.value for k in node.keywords}.get("method")
                if not (isinstance(method, ast.Constant) and method.value == "inverted_cdf"):
                    yield node.lineno

    src = Path(__file__).resolve().parents[1] / "src"
    found = {str(p.relative_to(src)): list(loose(ast.parse(p.read_text()))) for p in sorted(src.rglob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}
    assert list(loose(ast.parse("np.quantile(x, 0.5)\nnp.quantile(x, 0.5, method='inverted_cdf')"))) == [1]
