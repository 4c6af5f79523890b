"""Invariants of interventions and the batched patch sweep (on a tiny random Llama).

Exact tensor equality is asserted only between passes of the same shapes in one process, where
it holds by construction (same kernels, same reduction order; rows of a matmul do not depend on
other rows' values). Passes of different batch shapes are compared on their greedy answers under
the one rule of tests/answers_rule.py (near ties may go either way), and on floats within fp32
rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from answers_rule import agree

from mechclaims import ConfigError
from mechclaims_icl.answers import OUTCOMES, classify, encode
from mechclaims.interventions import AblateHeads, SetResidual, capture, head_means, resid_pre, run_with
from mechclaims_icl.patching import patch_sweep, patch_sweep_loop
from mechclaims_icl.tasks import CANONICAL, MIN_QUERY_GAP, make_patch_pairs, make_prompts


@pytest.fixture
def model(tiny_model):
    return tiny_model


def _tokens(model, texts):
    return torch.tensor([encode(model.tokenizer, t) for t in texts])


def _same_length_prompts(model, n, seed):
    prompts = make_prompts(CANONICAL, n_prompts=n, n_examples=4, seed=seed)
    return _tokens(model, prompts.texts)


def test_patching_layer0_at_all_positions_reproduces_a(model):
    a = _same_length_prompts(model, 3, seed=1)
    b = _same_length_prompts(model, 3, seed=2)
    assert a.shape == b.shape and not torch.equal(a, b)
    logits_a, acts = capture(model, a, [resid_pre(0)], position=None)
    patched = run_with(model, b, [SetResidual(0, slice(None), acts[resid_pre(0)])])
    assert torch.equal(patched, logits_a)


def test_ablating_no_heads_changes_nothing(model):
    tokens = _same_length_prompts(model, 4, seed=3)
    assert torch.equal(run_with(model, tokens, [AblateHeads(())]), run_with(model, tokens))


def test_zero_ablation_at_the_last_position_touches_only_it(model):
    tokens = _same_length_prompts(model, 4, seed=3)
    clean = run_with(model, tokens)
    ablated = run_with(model, tokens, [AblateHeads.layers([0, 1], model.cfg.n_heads)])
    assert torch.equal(ablated[:, :-1], clean[:, :-1])
    assert not torch.equal(ablated[:, -1], clean[:, -1])


def test_all_position_ablation_of_every_head_equals_removing_attention(model):
    tokens = _same_length_prompts(model, 2, seed=4)
    ablated = run_with(model, tokens, [AblateHeads.layers([0], model.cfg.n_heads, position=None)])

    def no_attention(out, hook):
        return torch.zeros_like(out)

    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_attn_out", no_attention)]):
        reference = model(tokens)
    assert torch.allclose(ablated, reference, atol=1e-6)


def test_head_ablation_is_per_query_head_under_gqa(model):
    # 4 query heads share 2 kv heads; ablating query head 0 must differ from ablating head 1.
    assert model.cfg.n_heads == 4
    tokens = _same_length_prompts(model, 2, seed=5)
    h0 = run_with(model, tokens, [AblateHeads(((1, 0),), position=None)])
    h1 = run_with(model, tokens, [AblateHeads(((1, 1),), position=None)])
    assert not torch.allclose(h0, h1)


def test_mean_ablation_uses_given_means_and_requires_them(model):
    reference = _same_length_prompts(model, 8, seed=6)
    means = head_means(model, reference, [1])
    assert means[1].shape == (model.cfg.n_heads, model.cfg.d_head)
    tokens = _same_length_prompts(model, 3, seed=7)
    _, z = capture(model, tokens, ["blocks.1.attn.hook_z"], interventions=[AblateHeads(((1, 2),), mode="mean", means=means)])
    assert torch.allclose(z["blocks.1.attn.hook_z"][:, 2], means[1][2].expand(3, -1))
    with pytest.raises(ConfigError, match="mean ablation needs head means for layers \\[1\\]"):
        AblateHeads(((1, 2),), mode="mean")


def test_hooks_are_removed_even_when_a_hook_raises(model):
    tokens = _same_length_prompts(model, 1, seed=8)

    class Boom(RuntimeError):
        pass

    def explode(act, hook):
        raise Boom("inside a hook")

    bad = SetResidual(0, 0, torch.zeros(1, model.cfg.d_model))
    object.__setattr__(bad, "hooks", lambda: [(resid_pre(0), explode)])
    with pytest.raises(Boom):
        run_with(model, tokens, [bad])
    assert model.list_hooks() == {}


def test_batched_sweep_equals_the_per_layer_loop(model):
    pairs = make_patch_pairs(CANONICAL, n_pairs=6, n_examples=5, seed=0)
    batched = patch_sweep(model, pairs)
    loop = patch_sweep_loop(model, pairs)
    assert agree(batched.answers, loop.answers)
    chunked = patch_sweep(model, pairs, max_rows=6)  # one layer per forward
    assert agree(chunked.answers, loop.answers)
    assert model.list_hooks() == {}


def test_patch_pairs_keep_p_away_from_a():
    pairs = make_patch_pairs(CANONICAL, n_pairs=200, n_examples=12, seed=1)
    for pair in pairs.pairs:
        assert pair.p not in {x for x, _ in pair.a.examples}
        assert abs(pair.p - pair.a.query) >= MIN_QUERY_GAP


def test_classification_of_patched_answers():
    p, q = 15, 42  # a*p = 30, exact 33, copy 87
    answers = np.array([16, 30, 28, 32, 33, 87, 34, -1])
    got = [OUTCOMES[c] for c in classify(answers, p, q, 2, 3)]
    assert got == ["none", "approx", "approx", "approx", "exact", "copy", "none", "none"]


def test_head_outputs_sum_to_the_attention_output(model):
    from mechclaims_icl.scores import head_outputs
    from mechclaims.interventions import head_z

    tokens = _same_length_prompts(model, 3, seed=9)
    names = [head_z(layer) for layer in range(model.cfg.n_layers)] + ["blocks.1.hook_attn_out"]
    _, acts = capture(model, tokens, names, position=-1)
    per_head = head_outputs(model, acts)
    assert torch.allclose(per_head[:, 1].sum(1), acts["blocks.1.hook_attn_out"], atol=1e-5)


def test_direct_logit_attribution_of_all_components_is_the_logit(model):
    from mechclaims_icl.scores import FINAL_SCALE, final_norm_weight, head_scores

    prompts = make_prompts(CANONICAL, n_prompts=3, n_examples=4, seed=10)
    scores = head_scores(model, prompts.texts, prompts.answers, read_layer=1)
    tokens = _tokens(model, prompts.texts)
    names = [FINAL_SCALE, "hook_embed"] + [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]
    logits, acts = capture(model, tokens, names, position=-1)
    answer_ids = [model.tokenizer(str(a), add_special_tokens=False)["input_ids"][0] for a in prompts.answers]
    w = final_norm_weight(model)
    rest = acts["hook_embed"] + sum(acts[f"blocks.{l}.hook_mlp_out"] for l in range(model.cfg.n_layers))
    rest_logit = ((rest / acts[FINAL_SCALE]) * w @ model.W_U)[torch.arange(3), answer_ids]
    total = torch.tensor(scores.dla.sum(axis=(1, 2))) + rest_logit
    assert torch.allclose(total.float(), logits[torch.arange(3), -1, answer_ids], atol=1e-4)
    assert scores.dot.shape == (3, model.cfg.n_layers, model.cfg.n_heads)


def test_head_scores_through_the_store_equal_direct_ones_and_need_no_weights_from_disk(model, tmp_path):
    """Scores depend on weights too; memoised by the digest of the activations, a run
    served from the disk cache reads them back bitwise equal without computing."""
    from mechclaims_icl.scores import head_scores
    from mechclaims.store import ActivationStore, attach

    prompts = make_prompts(CANONICAL, n_prompts=3, n_examples=4, seed=12)
    direct = head_scores(model, prompts.texts, prompts.answers, read_layer=1)
    attach(model, ActivationStore(model_key="m", mode="disk", directory=tmp_path, version="t"))
    try:
        head_scores(model, prompts.texts, prompts.answers, read_layer=1)
        fresh = ActivationStore(model_key="m", mode="disk", directory=tmp_path, version="t")
        attach(model, fresh)
        from_disk = head_scores(model, prompts.texts, prompts.answers, read_layer=1)
    finally:
        attach(model, None)
    assert fresh.stats.computed == 0 and fresh.stats.disk_hits >= 2  # the capture and the scores
    assert np.array_equal(from_disk.dla, direct.dla) and np.array_equal(from_disk.dot, direct.dot)


def test_cached_decoding_of_multi_token_answers_equals_full_forwards(digit_model):
    pairs = make_patch_pairs(CANONICAL, n_pairs=6, n_examples=4, seed=0)
    batched = patch_sweep(digit_model, pairs)
    assert (batched.answers >= 100).any()  # answers of three and more tokens were decoded
    assert (batched.answers[batched.answers >= 0] < 100).any()  # and shorter ones, whose rows left the batch early
    assert agree(batched.answers, patch_sweep_loop(digit_model, pairs).answers)
    assert digit_model.list_hooks() == {}


def test_a_capture_without_logits_ends_the_pass_after_its_last_activation(model):
    tokens = _tokens(model, ["\n(3, 9)\n(4, "])
    ran = []
    handles = [block.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, block in enumerate(model.blocks)]
    try:
        _, early = capture(model, tokens, [resid_pre(0)], logits="none")
        assert ran == []  # block 0 never ran: resid_pre(0) is its input
        _, both = capture(model, tokens, [resid_pre(0), resid_pre(1)], logits="all")
    finally:
        for handle in handles:
            handle.remove()
    assert ran == list(range(model.cfg.n_layers))  # with logits the whole pass runs
    assert torch.equal(early[resid_pre(0)], both[resid_pre(0)])


def test_a_small_key_value_budget_splits_pairs_and_layers_alike(model, monkeypatch):
    import mechclaims_icl.patching as patching

    pairs = make_patch_pairs(CANONICAL, n_pairs=6, n_examples=5, seed=0)
    whole = patch_sweep(model, pairs)
    calls = []
    decode = patching._decode_block
    monkeypatch.setattr(patching, "_decode_block", lambda *a: calls.append(a[5]) or decode(*a))
    # less than one row's keys and values: one (pair, layer) row per step
    monkeypatch.setitem(patching.KV_BLOCK_BYTES, "cpu", patching.kv_bytes_per_token(model))
    assert agree(patch_sweep(model, pairs).answers, whole.answers)
    assert len(calls) == len(pairs) * model.cfg.n_layers and all(len(chunk) == 1 for chunk in calls)


def test_an_empty_key_value_cache_is_refused_with_the_versions_to_install():
    from mechclaims_icl.patching import _prefill

    class NoCache:
        def __call__(self, tokens, return_type, logits_to_keep):
            return None, None

    with pytest.raises(ConfigError, match=r"holds 0 positions after a prefill of 5.*transformers < 5.24"):
        _prefill(NoCache(), torch.zeros(2, 5, dtype=torch.long))
