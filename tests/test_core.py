"""Numeric core, prompt sets, settings and answer reading."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims import ConfigError, Interval, load_target, proportion, settings
from mechclaims_icl.answers import encode, greedy_is, greedy_numbers, numbers_are_single_tokens
from mechclaims_icl.tasks import CANONICAL, AffineTask, make_prompts


def test_a_proportion_has_the_exact_clopper_pearson_interval():
    """Each bound is a beta quantile: P(Binom(n, low) >= k) = P(Binom(n, high) <= k) = (1 - level) / 2."""
    from scipy.stats import binom

    effect = proportion(18, 20)
    assert binom.sf(17, 20, effect.ci.low) == pytest.approx(0.025) and binom.cdf(18, 20, effect.ci.high) == pytest.approx(0.025)
    assert effect.n == 20 and effect.statistic == 0.9


@pytest.mark.parametrize("args", [(3, 0), (5, 3), (-1, 3)])
def test_proportion_rejects_impossible_counts(args):
    with pytest.raises(ValueError, match="n="):
        proportion(*args)


def test_interval_rejects_reversed_bounds():
    with pytest.raises(ValueError, match="exceeds high"):
        Interval(0.5, 0.1)


def test_prompts_are_seeded_distinct_and_exclude_the_query():
    a = make_prompts(CANONICAL, n_prompts=50, n_examples=12, seed=3)
    b = make_prompts(CANONICAL, n_prompts=50, n_examples=12, seed=3)
    c = make_prompts(CANONICAL, n_prompts=50, n_examples=12, seed=4)
    assert a == b and a != c
    for p in a.prompts:
        xs = [x for x, _ in p.examples]
        assert len(set(xs)) == 12 and p.query not in xs
        assert all(y == 2 * x + 3 for x, y in p.examples) and p.answer == 2 * p.query + 3
        assert p.text.startswith("\n(") and p.text.endswith(f"({p.query}, ")


def test_blog_format_of_a_prompt():
    prompt = make_prompts(AffineTask(2, 3), n_prompts=1, n_examples=2, seed=0).prompts[0]
    (x1, y1), (x2, y2) = prompt.examples
    assert prompt.text == f"\n({x1}, {y1})\n({x2}, {y2})\n({prompt.query}, "


def test_unsatisfiable_prompt_parameters_name_the_fix():
    with pytest.raises(ConfigError, match=r"n_examples=95 cannot be met: x_range \(10, 99\) has 90 distinct values"):
        make_prompts(CANONICAL, n_prompts=1, n_examples=95, seed=0)


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown settings profile 'fast'; valid profiles: ci, paper"):
        settings("fast")
    assert settings("paper", seed=3).seed == 3


def test_teacher_forced_check_agrees_with_greedy_decoding(as_organism):
    model = load_target("organism").model
    prompts = make_prompts(CANONICAL, n_prompts=30, n_examples=3, seed=0)
    decoded = greedy_numbers(model, prompts.texts)
    assert numbers_are_single_tokens(model.tokenizer)
    assert (greedy_is(model, prompts.texts, decoded) == (decoded >= 0)).all()
    assert (greedy_is(model, prompts.texts, prompts.answers) == (decoded == prompts.answers)).all()


def test_the_teacher_forced_check_is_the_same_one_row_per_pass(as_organism, monkeypatch):
    """On CPU the rows per pass shrink to keep full-vocabulary logits under a budget; answers do not change."""
    from mechclaims import batching
    from mechclaims_icl import answers

    model = load_target("organism").model
    prompts = make_prompts(CANONICAL, n_prompts=12, n_examples=3, seed=1)
    decoded = greedy_numbers(model, prompts.texts)
    whole = greedy_is(model, prompts.texts, decoded)
    assert 1 <= batching.rows_per_pass(model, 20) <= batching.MAX_ROWS
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", 1)
    assert batching.rows_per_pass(model, 20) == 1
    calls = []
    real = answers.forward
    monkeypatch.setattr(answers, "forward", lambda m, tokens, *a, **k: calls.append(len(tokens)) or real(m, tokens, *a, **k))
    assert (greedy_is(model, prompts.texts, decoded) == whole).all() and whole.all()
    assert calls == [1] * len(prompts.texts)


def test_encode_puts_one_bos_first(as_organism):
    tokenizer = load_target("organism").tokenizer
    ids = encode(tokenizer, "\n(28, 59)\n(42, ")
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.convert_ids_to_tokens(ids[1:]) == ["\n", "(", "28", ",", " ", "59", ")\n", "(", "42", ",", " "]


def test_token_batches_group_equal_lengths_within_the_pass_budget(as_organism, monkeypatch):
    """One batching helper: equal lengths (with answers: equal prompt and answer lengths), every row once,
    at most rows_per_pass rows a batch unless whole, on the model's device."""
    from mechclaims import batching, token_batches

    model = load_target("organism").model
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9, 10], [11, 12, 13]]
    answers = [[1], [2, 3], [4, 5], [6], [7]]
    batches = list(token_batches(model, prompts))
    assert sorted(i for rows, _ in batches for i in rows) == list(range(5))
    for rows, tokens in batches:
        assert tokens.tolist() == [prompts[i] for i in rows] and tokens.device == batching.device_of(model)
    forced = list(token_batches(model, prompts, answers))
    assert {tuple(rows) for rows, _ in forced} == {(0, 4), (1,), (2,), (3,)}
    assert all(t.tolist() == [prompts[i] + answers[i] for i in rows] for rows, t in forced)
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", 1)  # one row a pass, unless whole
    assert [len(rows) for rows, _ in token_batches(model, prompts)] == [1] * 5
    assert sorted(len(rows) for rows, _ in token_batches(model, prompts, whole=True)) == [2, 3]
    with pytest.raises(ValueError, match="5 prompts but 2 answers"):
        list(token_batches(model, prompts, answers[:2]))
