"""Claim 2 findings: known answers on synthetic learners (each claim shown able to
fail), and the teacher-forced reading and discovery on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechclaims_icl.expectations import task as task_of
from mechclaims_icl import claim2
from mechclaims_icl.claim2 import C2Params, Reading
from mechclaims_icl.fits import fit_range, growth, logit, sigmoid

K = 16
LN2 = math.log(2)


def bayesian_learner(n_seq: int, *, c: float = LN2, n_hyp: int = 1000, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """P(correct y_n) of an exact Bayesian learner, ``[n_seq, K]``.

    Hypotheses h_m(x) = 2x + m (m < n_hyp, uniform prior), the truth m = 3. Each
    example has likelihood c under a hypothesis it agrees with and 1 - c otherwise.
    With probability ``noise`` a label is corrupted to a value no hypothesis
    predicts.  The posterior log-odds of the truth are then exactly linear in the
    number of clean examples, so their mean is exactly linear in n.
    """
    rng = np.random.default_rng(seed)
    m = np.arange(n_hyp)
    out = np.zeros((n_seq, K))
    for s in range(n_seq):
        xs = rng.choice(np.arange(10, 100), size=K, replace=False)
        log_post = np.full(n_hyp, -math.log(n_hyp))
        for j, x in enumerate(xs):
            post = np.exp(log_post - np.logaddexp.reduce(log_post))
            truth = 2 * x + 3
            out[s, j] = post[(2 * x + m) == truth].sum()  # predictive probability of the true answer
            y = truth + 0.5 if rng.random() < noise else truth
            agrees = (2 * x + m) == y
            log_post = log_post + np.where(agrees, math.log(c), math.log(1 - c))
    return out


def reading_of(p: np.ndarray) -> Reading:
    flags = np.ones_like(p, dtype=bool)
    return Reading(p_correct=p, correct=flags, parity_ok=flags)


def curve_learner(n_seq: int, shape, *, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = np.arange(K)
    return sigmoid(shape(n)[None, :] + rng.normal(0, spread, size=(n_seq, 1)) + rng.normal(0, 0.2, size=(n_seq, K)))


PARAMS = C2Params(feature_layer=0, parity_from=3)


def _judge(p: np.ndarray, params: C2Params = PARAMS, explore: np.ndarray | None = None):
    explore = p if explore is None else explore
    span = claim2.fitted_range(params, reading_of(explore))
    return claim2.log_additive(reading_of(p), params, span), span


def test_an_exact_bayesian_learner_passes_log_additive_with_its_c():
    finding, span = _judge(bayesian_learner(150, seed=1), explore=bayesian_learner(150, seed=2))
    assert finding.supported, finding.message
    assert span[0] == 0 and 8 <= span[1] < K - 1  # stops before saturation
    slope = (1 - 0.1) * math.log(LN2 / (1 - LN2))  # clean examples only move the odds
    assert finding.effect.ci.low <= slope <= finding.effect.ci.high
    c = finding.figures["c"]
    assert c.ci.low <= sigmoid(slope) <= c.ci.high


def test_the_preregistered_c_is_checked():
    p = bayesian_learner(150, c=LN2, noise=0.0, seed=3) * 0.999 + 0.0005 * np.random.default_rng(0).random((150, K))
    right = C2Params(feature_layer=0, parity_from=3, c_expected=LN2, c_margin=0.05)
    wrong = C2Params(feature_layer=0, parity_from=3, c_expected=0.9, c_margin=0.05)
    assert _judge(p, right)[0].supported, _judge(p, right)[0].message
    assert not _judge(p, wrong)[0].supported


def test_a_saturating_learner_fails_log_additive():
    p = curve_learner(150, lambda n: -3 + 4 * (1 - np.exp(-n / 2)))
    finding, span = _judge(p)
    assert span == (0, K - 1)  # never reaches 0.9: the whole range
    assert not finding.supported, finding.message


def test_a_learner_with_log_odds_growing_like_log_n_fails_log_additive():
    p = curve_learner(150, lambda n: -4 + 2.6 * np.log(n + 1))
    finding, span = _judge(p)
    assert span[1] < K - 1
    assert not finding.supported, finding.message
    assert finding.figures["heldout_error_difference"].ci.low > 0  # log(n+1) predicts held-out sequences better


def test_a_learner_that_does_not_learn_fails_log_additive():
    p = curve_learner(150, lambda n: -3 + 0 * n)
    assert not _judge(p)[0].supported


def test_growth_recovers_a_known_line():
    rng = np.random.default_rng(0)
    n = np.arange(10)
    values = 0.5 + 0.8 * n + rng.normal(0, 0.5, size=(200, 10))
    g = growth(n, values)
    assert g.slope.ci.low < 0.8 < g.slope.ci.high and g.r2 > 0.99 and g.heldout.ci.high < 0
    assert g.linear()


def test_fit_range_rule():
    assert fit_range([0.1, 0.3, 0.5, 0.7, 0.95, 0.99]) == (0, 4)
    assert fit_range([0.1, 0.95, 0.99, 0.99, 0.99, 0.99]) == (0, 3)  # never fewer than 4 points
    assert fit_range([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == (0, 5)  # never saturates: everything
    with pytest.raises(ValueError):
        fit_range([0.1, 0.2, 0.3])


def test_logit_is_clipped_and_finite():
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0, 0.5]))))


# --------------------------------------------------------------------------- parity


def _parity(rates: list[float], n_seq: int = 200, seed: int = 0) -> Reading:
    rng = np.random.default_rng(seed)
    ok = rng.random((n_seq, len(rates))) < np.array(rates)[None, :]
    return Reading(p_correct=np.full(ok.shape, 0.5), correct=ok, parity_ok=ok)


def test_parity_in_place_after_three_examples_is_supported():
    post = [0.29, 0.61, 0.55, 0.98] + [1.0] * (K - 4)  # the post's llama-3-8b figures (spec §2)
    finding = claim2.parity_by_n(_parity(post), PARAMS)
    assert finding.supported, finding.message
    assert finding.figures["curves"]["correct parity by examples seen"]["y"][0] < 0.5


def test_parity_never_learned_or_known_without_examples_is_refuted():
    assert not claim2.parity_by_n(_parity([0.5] * K), PARAMS).supported
    assert not claim2.parity_by_n(_parity([1.0] * K), PARAMS).supported  # right before any example
    assert not claim2.parity_by_n(_parity([0.3] * 6 + [1.0] * (K - 6)), PARAMS).supported  # too late


# --------------------------------------------------------------------------- task feature


def _resid(proj: np.ndarray, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    noise = rng.normal(0, 0.3, size=(*proj.shape, d))
    return proj[..., None] * direction + noise, direction


def test_a_linearly_growing_feature_is_supported_and_a_saturating_one_is_not():
    n = np.arange(K)
    rng = np.random.default_rng(1)
    offsets = rng.normal(0, 0.5, size=(100, 1))
    linear, direction = _resid(0.4 * n[None, :] + offsets)
    reading = Reading(np.full((100, K), 0.5), np.ones((100, K), bool), np.ones((100, K), bool), {3: linear})
    f = claim2.feature_linear(reading, direction, 3, PARAMS, (0, K - 1))
    assert f.supported, f.message
    saturating, direction = _resid(4 * (1 - np.exp(-n[None, :] / 1.5)) + offsets)
    reading = Reading(np.full((100, K), 0.5), np.ones((100, K), bool), np.ones((100, K), bool), {3: saturating})
    assert not claim2.feature_linear(reading, direction, 3, PARAMS, (0, K - 1)).supported
    flat, direction = _resid(0 * n[None, :] + offsets)
    reading = Reading(np.full((100, K), 0.5), np.ones((100, K), bool), np.ones((100, K), bool), {3: flat})
    assert not claim2.feature_linear(reading, direction, 3, PARAMS, (0, K - 1)).supported


def test_the_feature_direction_is_the_mean_difference():
    rng = np.random.default_rng(0)
    d = np.zeros(8)
    d[2] = 1.0
    task = rng.normal(size=(50, K, 8)) + 2 * d
    control = rng.normal(size=(50, K, 8))
    found = claim2.feature_direction(
        Reading(None, None, None, {1: task}), Reading(None, None, None, {1: control}), 1
    )
    assert abs(np.linalg.norm(found) - 1) < 1e-9 and found[2] > 0.95


# --------------------------------------------------------------------------- on a model


def test_selective_unembedding_equals_the_model_logits(tiny_model):
    import torch

    from mechclaims_icl.answers import encode, greedy_is
    from mechclaims_icl.roles import roles
    from mechclaims_icl.tasks import CANONICAL, Prompt, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=6, n_examples=5, seed=4)
    got = claim2.read_sequences(tiny_model, prompts)
    for i, prompt in enumerate(prompts.prompts):
        r = roles(tiny_model.tokenizer, prompt)
        with torch.no_grad():
            probs = torch.softmax(tiny_model(torch.tensor([r.tokens]))[0].float(), -1)
        for j, span in enumerate(r.y):
            want = float(np.prod([float(probs[t - 1, r.tokens[t]]) for t in span]))
            assert got.p_correct[i, j] == pytest.approx(want, rel=1e-4, abs=1e-7)
    # correct at example j is the greedy answer of the prompt cut before y_j (causal)
    j = 3
    cut = [Prompt(p.examples[:j], p.examples[j][0], p.examples[j][1]) for p in prompts.prompts]
    greedy = greedy_is(tiny_model, [p.text for p in cut], [p.answer for p in cut])
    assert np.array_equal(got.correct[:, j], greedy)
    assert tiny_model.list_hooks() == {}
    assert encode(tiny_model.tokenizer, prompts.prompts[0].text) == list(roles(tiny_model.tokenizer, prompts.prompts[0]).tokens)


def test_a_partial_forward_reads_the_same_residual(tiny_model):
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=4, n_examples=5, seed=5)
    full = claim2.read_sequences(tiny_model, prompts, resid_layers=[1])
    partial = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], examples=[])
    assert np.allclose(full.resid[1], partial.resid[1])
    assert np.isnan(partial.p_correct).all()


def test_shuffled_labels_keep_the_values_and_break_the_task():
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=20, n_examples=8, seed=0)
    shuffled = claim2.shuffled_labels(prompts, 0)
    for p, q in zip(prompts.prompts, shuffled):
        assert [x for x, _ in p.examples] == [x for x, _ in q.examples]
        assert sorted(y for _, y in p.examples) == sorted(y for _, y in q.examples)
    assert np.mean([y == CANONICAL(x) for q in shuffled for x, y in q.examples]) < 0.4


def test_c2_params_read_back_and_are_range_checked(tmp_path):
    from mechclaims.errors import ConfigError
    from mechclaims.expectations import load

    path = tmp_path / "organism.toml"
    path.write_text('[task]\na = 1\nb = 0\n[c2]\nfeature_layer = 1\nparity_from = 3\nc_expected = 0.693\n')
    exp = load(path, "organism")
    p = claim2.params_from(exp, n_layers=2)
    assert p.feature_layer == 1 and p.fit_last is None and p.c_expected == 0.693
    assert task_of(exp).name == "x"
    path.write_text("[c2]\nfeature_layer = 1\nparity_from = 30\n")
    with pytest.raises(ConfigError, match="parity_from"):
        claim2.params_from(load(path, "organism"), n_layers=2)
    path.write_text("[c2]\nfeature_layer = 5\nparity_from = 3\n")
    with pytest.raises(ConfigError, match="out of range"):
        claim2.params_from(load(path, "organism"), n_layers=2)


READING_FIELDS = ("p_correct", "correct", "parity_ok", "x_to_y", "y_to_prey", "uniform_x_to_y", "uniform_y_to_prey")
# Another batch shape may reduce in another order (torch promises no bitwise equality across
# shapes), so float readings agree to fp32 rounding; what the claims decide on must be equal.
FLOAT_FIELDS = ("p_correct", "x_to_y", "y_to_prey", "uniform_x_to_y", "uniform_y_to_prey")


def _assert_same_reading(got, want):
    assert np.array_equal(got.correct, want.correct) and np.array_equal(got.parity_ok, want.parity_ok)
    for name in FLOAT_FIELDS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-6, err_msg=name)
    assert list(got.resid) == list(want.resid)
    for layer in want.resid:
        np.testing.assert_allclose(got.resid[layer], want.resid[layer], rtol=1e-4, atol=1e-5)


def test_readings_through_the_store_equal_direct_ones(tiny_model, tmp_path):
    from mechclaims.store import ActivationStore, attach
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=4, n_examples=5, seed=11)
    direct = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
    store = ActivationStore(model_key="tiny", mode="disk", directory=tmp_path, version="t")
    attach(tiny_model, store)
    try:
        first = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
        again = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
        attach(tiny_model, ActivationStore(model_key="tiny", mode="disk", directory=tmp_path, version="t"))
        from_disk = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
    finally:
        attach(tiny_model, None)
    assert store.stats.computed == 1 and store.stats.memory_hits == 1
    _assert_same_reading(first, direct)
    for got in (again, from_disk):  # served from the store: the stored arrays, bit for bit by construction
        for name in READING_FIELDS:
            assert np.array_equal(getattr(got, name), getattr(first, name), equal_nan=name == "p_correct"), name
        assert list(got.resid) == [1] and np.array_equal(got.resid[1], first.resid[1])


def test_a_reading_split_into_one_row_per_pass_is_the_same(tiny_model, monkeypatch):
    """On CPU the rows per pass shrink to keep a pass under a memory budget; the reading does not change."""
    from mechclaims import batching
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    prompts = make_prompts(CANONICAL, n_prompts=6, n_examples=5, seed=12)
    whole = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", 1)
    forwards = []
    real = claim2.token_batches
    monkeypatch.setattr(claim2, "token_batches",
                        lambda *a, **k: [forwards.append(rows) or (rows, t) for rows, t in real(*a, **k)])
    split = claim2.read_sequences(tiny_model, prompts, resid_layers=[1], attention=True)
    assert [len(rows) for rows in forwards] == [1] * len(prompts.prompts)
    _assert_same_reading(split, whole)


def test_the_growth_slope_is_the_mean_of_the_sequences_slopes():
    """Least squares is linear in y: the mean curve's slope (numpy's polyfit) is the mean of the
    per-sequence slopes (scipy's linregress), and its interval is the core's bootstrap of a mean."""
    from scipy.stats import linregress

    from mechclaims import bootstrap_mean

    rng = np.random.default_rng(3)
    n = np.arange(8)
    values = 0.2 * n + rng.gamma(2.0, 1.0, size=(40, 8))
    g = growth(n, values, seed=9)
    per_seq = np.array([linregress(n, row).slope for row in values])
    assert g.slope.statistic == pytest.approx(np.polyfit(n, values.mean(0), 1)[0], rel=1e-10)
    same = bootstrap_mean(per_seq, seed=9, null=0.0)
    assert (g.slope.ci.low, g.slope.ci.high, g.slope.pvalue) == pytest.approx((same.ci.low, same.ci.high, same.pvalue))
