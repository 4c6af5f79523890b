"""The activation store: each forward pass once, bitwise equal to recomputing it,
safe on disk (checksummed, atomic, invalidated by model, prompts and version).

Bitwise equality here holds by construction: a recomputation in the same process runs the same
kernels on the same shapes at the same thread count, and a hit returns the stored tensor. Passes
of different shapes are compared within fp32 rounding instead."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from mechclaims import ConfigError
from mechclaims_icl.answers import encode, greedy_is
from mechclaims_icl.experiments import measure
from mechclaims.interventions import AblateHeads, SetResidual, capture, forward, resid_pre, run_with
from mechclaims.store import ActivationStore, CacheCorruptionWarning, attach, store_of
from mechclaims_icl.tasks import CANONICAL, make_patch_pairs, make_prompts


@pytest.fixture
def model(tiny_model):
    yield tiny_model
    attach(tiny_model, None)


def _tokens(model, seed=1, n=4):
    prompts = make_prompts(CANONICAL, n_prompts=n, n_examples=4, seed=seed)
    return torch.tensor([encode(model.tokenizer, t) for t in prompts.texts])


def _store(mode="memory", directory=None, key="model-a", version="v1"):
    return ActivationStore(model_key=key, mode=mode, directory=directory, version=version)


NAMES = [resid_pre(0), resid_pre(1)]


def test_memory_hits_are_bitwise_equal_to_recomputation(model):
    tokens = _tokens(model)
    ablate = [AblateHeads.layers([1], model.cfg.n_heads)]
    fresh_logits, fresh_acts = capture(model, tokens, NAMES, interventions=ablate)
    store = _store()
    attach(model, store)
    first = capture(model, tokens, NAMES, interventions=ablate)
    again = capture(model, tokens, NAMES, interventions=ablate)
    assert store.stats.computed == 1 and store.stats.memory_hits == 1
    for logits, acts in (first, again):
        assert torch.equal(logits, fresh_logits)
        assert all(torch.equal(acts[n], fresh_acts[n]) for n in NAMES)


def test_an_entry_serves_requests_for_fewer_hooks_and_less_logits(model):
    tokens = _tokens(model)
    store = _store()
    attach(model, store)
    full = forward(model, tokens, names=NAMES, logits="all")
    last = forward(model, tokens, names=NAMES[:1], logits="last")
    top = forward(model, tokens, logits="argmax")
    assert store.stats.computed == 1 and store.stats.memory_hits == 2
    assert torch.equal(last.logits, full.logits[:, -1]) and list(last.acts) == NAMES[:1]
    assert torch.equal(top.logits, full.logits.argmax(-1))
    # a hook the entry did not keep, or a different intervention, is a new forward
    forward(model, tokens, names=[resid_pre(1), "blocks.1.attn.hook_z"], logits="none")
    forward(model, tokens, interventions=[AblateHeads.layers([0], model.cfg.n_heads)], logits="all")
    assert store.stats.computed == 3
    assert store.stats.tokens_needed == 2 * tokens.numel()  # two distinct (tokens, interventions)


def test_callers_cannot_corrupt_the_memory_cache_by_modifying_results(model):
    tokens = _tokens(model)
    attach(model, _store())
    logits, acts = capture(model, tokens, NAMES)
    logits.zero_()
    acts[NAMES[0]].zero_()
    again_logits, again_acts = capture(model, tokens, NAMES)
    assert again_logits.abs().sum() > 0 and again_acts[NAMES[0]].abs().sum() > 0


def test_intervention_values_are_part_of_the_key(model):
    tokens = _tokens(model)
    store = _store()
    attach(model, store)
    values = torch.zeros(tokens.shape[0], model.cfg.d_model)
    a = run_with(model, tokens, [SetResidual(1, -1, values)])
    b = run_with(model, tokens, [SetResidual(1, -1, values + 1)])
    assert store.stats.computed == 2 and not torch.equal(a, b)


def test_disk_entries_are_reused_across_stores_and_bitwise_equal(model, tmp_path):
    tokens = _tokens(model)
    fresh = capture(model, tokens, NAMES, logits="last")
    attach(model, _store("disk", tmp_path))
    capture(model, tokens, NAMES, logits="last")
    second = _store("disk", tmp_path)  # a later session
    attach(model, second)
    logits, acts = capture(model, tokens, NAMES, logits="last")
    assert second.stats.disk_hits == 1 and second.stats.computed == 0
    assert torch.equal(logits, fresh[0]) and all(torch.equal(acts[n], fresh[1][n]) for n in NAMES)


@pytest.mark.parametrize("change", ["model", "version", "tokens"])
def test_a_changed_model_version_or_prompt_set_misses_the_disk_cache(model, tmp_path, change):
    tokens = _tokens(model)
    attach(model, _store("disk", tmp_path))
    capture(model, tokens, NAMES)
    later = _store("disk", tmp_path, key="model-b" if change == "model" else "model-a",
                   version="v2" if change == "version" else "v1")
    attach(model, later)
    capture(model, _tokens(model, seed=2) if change == "tokens" else tokens, NAMES)
    assert later.stats.disk_hits == 0 and later.stats.computed == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_disk_entry_is_detected_recomputed_and_rewritten(model, tmp_path, damage):
    tokens = _tokens(model)
    fresh_logits, _ = capture(model, tokens, NAMES)
    attach(model, _store("disk", tmp_path))
    capture(model, tokens, NAMES)
    (path,) = list(tmp_path.rglob("*.safetensors"))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF  # a bit of the tensor payload
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a safetensors file")
    path.write_bytes(bytes(data))
    later = _store("disk", tmp_path)
    attach(model, later)
    with pytest.warns(CacheCorruptionWarning, match=str(path.name)):
        logits, _ = capture(model, tokens, NAMES)
    assert torch.equal(logits, fresh_logits)
    assert later.stats.corrupt_entries == 1 and later.stats.disk_writes == 1
    # rewritten: the next session reads it cleanly
    clean = _store("disk", tmp_path)
    attach(model, clean)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)
        capture(model, tokens, NAMES)
    assert clean.stats.disk_hits == 1


def test_disk_writes_leave_no_temporary_files(model, tmp_path):
    attach(model, _store("disk", tmp_path))
    capture(model, _tokens(model), NAMES)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")] == []


def test_off_mode_counts_but_never_caches(model):
    tokens = _tokens(model)
    store = _store("off")
    attach(model, store)
    run_with(model, tokens)
    run_with(model, tokens)
    assert store.stats.computed == 2 and store.stats.memory_hits == 0
    assert store.stats.tokens_needed == tokens.numel() and store.stats.tokens_processed == 2 * tokens.numel()


def test_bad_modes_are_refused_with_the_choices():
    with pytest.raises(ConfigError, match="'memroy' is not one of off, memory, disk"):
        _store("memroy")
    with pytest.raises(ConfigError, match="--mechclaims-cache-dir"):
        ActivationStore(model_key="m", mode="disk")


def test_an_intervention_without_a_key_bypasses_the_store(model):
    class Opaque:
        def hooks(self):
            return []

    store = _store()
    attach(model, store)
    run_with(model, _tokens(model), [Opaque()])
    assert store.stats.requests == 0


def test_a_claim_condition_is_identical_with_and_without_the_store(model):
    pairs = make_patch_pairs(CANONICAL, n_pairs=6, n_examples=4, seed=3)
    plain = measure(model, pairs, [1], read_layer=1)
    correct = greedy_is(model, pairs.a_texts, [p.a.answer for p in pairs.pairs])
    store = _store()
    attach(model, store)
    cached = [measure(model, pairs, [1], read_layer=1) for _ in range(2)]
    assert store.stats.memory_hits >= store.stats.computed
    for c in cached:
        assert np.array_equal(c.correct, plain.correct)
        assert np.array_equal(c.sweep.answers, plain.sweep.answers)
        # scores are floats from passes the store may shape differently (fewer hooks, a shorter tail):
        # equal to fp32 rounding; the answers above, which verdicts count, must be equal
        np.testing.assert_allclose(c.scores.dla, plain.scores.dla, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c.scores.dot, plain.scores.dot, rtol=1e-4, atol=1e-5)
    assert np.array_equal(greedy_is(model, pairs.a_texts, [p.a.answer for p in pairs.pairs]), correct)


def test_store_registry_is_per_model(model):
    assert store_of(model) is None
    store = _store()
    attach(model, store)
    assert store_of(model) is store
    assert store_of(object()) is None


FORWARD_CLAIMS = '''
import numpy as np
import pytest
from mechclaims import proportion_of
from mechclaims_icl.experiments import measure
from mechclaims_icl.tasks import CANONICAL, make_patch_pairs

PAIRS = make_patch_pairs(CANONICAL, n_pairs=8, n_examples=4, seed=5)


@pytest.mark.claim(id="S.clean")
def test_clean(target, claim):
    c = measure(target.model, PAIRS, (), read_layer=1)
    claim.record(proportion_of(c.sweep.answers[1] >= 0), threshold=0.0)


@pytest.mark.claim(id="S.ablated")
def test_ablated(target, claim):
    c = measure(target.model, PAIRS, (0,), read_layer=1)
    claim.record(proportion_of(c.sweep.answers[1] % 2 == 0), threshold=2.0)
    assert False, claim.evidence()  # a refuted claim: the verdict must match across runs too
'''


def _claim_run(pytester, cache, reports, *args):
    pytester.runpytest_subprocess("--mechclaims-exploratory", 
        "--mechclaims-target", "organism", "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(cache),
        "--mechclaims-report-dir", str(reports), "-p", "no:cacheprovider", *args,
    )
    return json.loads((reports / "latest" / "claims.json").read_text())


def _verdicts(run):
    return sorted((c["id"], c["verdict"], c["statistic"], *c["ci"]) for c in run["claims"])


@pytest.mark.slow
def test_a_warm_disk_cache_serves_a_whole_claim_run(pytester, as_organism, tmp_path):
    pytester.makepyfile(test_forward_claims=FORWARD_CLAIMS)
    cold = _claim_run(pytester, tmp_path / "acts", tmp_path / "r0")
    warm = _claim_run(pytester, tmp_path / "acts", tmp_path / "r1")
    c, w = (r["run"]["activation_cache"]["stats"]["organism"] for r in (cold, warm))
    assert c["computed"] > 0 and c["disk_writes"] == c["computed"] and c["tokens_processed"] == c["tokens_needed"]
    assert w["computed"] == 0 and w["disk_hits"] == c["computed"] and w["tokens_processed"] == 0
    assert cold["run"]["activation_cache"]["mode"] == "disk"
    assert _verdicts(cold) == _verdicts(warm)


@pytest.mark.slow
def test_two_xdist_workers_share_one_cache_directory(pytester, as_organism, tmp_path):
    """Same verdicts as one process, and every cache file intact afterwards."""
    pytester.makepyfile(test_forward_claims=FORWARD_CLAIMS)
    single = _claim_run(pytester, tmp_path / "solo", tmp_path / "r0")
    shared = tmp_path / "shared"
    parallel = _claim_run(pytester, shared, tmp_path / "r1", "-n", "2", "--dist", "load")
    assert _verdicts(single) == _verdicts(parallel)
    files = list(shared.rglob("*"))
    assert [f.name for f in files if f.is_file() and f.name.startswith(".")] == []
    check = _claim_run(pytester, shared, tmp_path / "r2")
    stats = check["run"]["activation_cache"]["stats"]["organism"]
    assert stats["corrupt_entries"] == 0 and stats["computed"] == 0 and stats["disk_hits"] > 0
    assert _verdicts(check) == _verdicts(single)


def test_derived_results_are_memoised_in_memory_and_on_disk(model, tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(6.0).reshape(2, 3), "b": np.array([True, False])}

    first = _store("disk", tmp_path)
    attach(model, first)
    from mechclaims.store import derived

    one = derived(model, "reading", "k1", 10, compute)
    one["a"][:] = -1  # the caller's copy; the memo keeps its own
    two = derived(model, "reading", "k1", 10, compute)
    assert len(calls) == 1 and two["a"][1, 2] == 5.0 and first.stats.memory_hits == 1
    later = _store("disk", tmp_path)
    attach(model, later)
    three = derived(model, "reading", "k1", 10, compute)
    assert len(calls) == 1 and later.stats.disk_hits == 1
    assert np.array_equal(three["a"], np.arange(6.0).reshape(2, 3)) and three["b"].dtype == bool
    derived(model, "reading", "k2", 10, compute)
    assert len(calls) == 2 and later.stats.tokens_needed == 20 and later.stats.tokens_processed == 10


def test_logits_of_the_last_positions_only_are_computed_and_served_by_wider_entries(model):
    tokens = _tokens(model)
    everything = run_with(model, tokens, logits="all")
    tail = run_with(model, tokens, logits="all", tail=3)  # no store: computed with logits_to_keep=3
    assert tail.shape == (tokens.shape[0], 3, everything.shape[-1])
    assert torch.allclose(tail, everything[:, -3:], atol=1e-5)
    store = _store()
    attach(model, store)
    narrow = forward(model, tokens, logits="argmax", tail=2)
    wider = forward(model, tokens, logits="argmax", tail=3)  # an entry of 2 positions cannot serve 3
    assert store.stats.computed == 2
    again = forward(model, tokens, logits="argmax", tail=1)
    assert store.stats.memory_hits == 1 and torch.equal(again.logits, narrow.logits[:, -1:])
    assert torch.equal(wider.logits[:, -2:], narrow.logits)


def test_a_tail_beyond_the_batch_is_refused(model):
    tokens = _tokens(model)
    with pytest.raises(ConfigError, match=r"tail=0 must be between 1 and the \d+ positions"):
        run_with(model, tokens, logits="argmax", tail=0)


SAME_WORK = """
import pytest
from mechclaims import proportion_of
from mechclaims_icl.answers import greedy_is
from mechclaims_icl.tasks import CANONICAL, make_prompts

PROMPTS = make_prompts(CANONICAL, n_prompts=6, n_examples=3, seed=0)

@pytest.mark.parametrize("copy", [pytest.param(k, marks=pytest.mark.claim(id=f"T.same-{k}")) for k in range(4)])
def test_same(target, claim, copy):
    claim.record(proportion_of(greedy_is(target.model, PROMPTS.texts, PROMPTS.answers) | True), threshold=0.5)
"""


@pytest.mark.slow
def test_work_two_xdist_workers_both_need_counts_once_in_tokens_needed(pytester, as_organism, tmp_path):
    pytester.makepyfile(test_same_work=SAME_WORK)
    single = _claim_run(pytester, tmp_path / "solo", tmp_path / "r0")
    parallel = _claim_run(pytester, tmp_path / "shared", tmp_path / "r1", "-n", "2", "--dist", "load")
    one, two = (r["run"]["activation_cache"]["stats"]["organism"] for r in (single, parallel))
    assert one["requests"] == two["requests"] == 4  # four claims, one pass each, as one process sees it
    assert two["tokens_needed"] == one["tokens_needed"] > 0


# ------------------------------------------------------------ a pack's own readings: cached()


def test_a_reading_key_hashes_values_not_identities():
    from mechclaims import reading_key

    a = {"tokens": torch.arange(6).reshape(2, 3), "weights": np.eye(3, dtype=np.float32), "layers": (1, 2)}
    same = {"layers": [1, 2], "weights": np.eye(3, dtype=np.float32), "tokens": torch.arange(6).reshape(2, 3)}
    assert reading_key(a) == reading_key(same)  # equal values, other objects, other order: one key
    for changed in ({**a, "tokens": torch.arange(6).reshape(3, 2)}, {**a, "weights": 2 * np.eye(3, dtype=np.float32)},
                    {**a, "weights": np.eye(3)}, {**a, "layers": (1, 3)}):
        assert reading_key(changed) != reading_key(a)
    ablate = AblateHeads(((1, 2),))
    assert reading_key([ablate]) == reading_key([AblateHeads(((1, 2),))]) != reading_key([AblateHeads(((1, 3),))])


def test_a_reading_with_an_unkeyed_intervention_is_computed_not_cached(model):
    from mechclaims import cached, reading_key

    class Probe:  # an intervention without key(): its effect has no identity
        def hooks(self):
            return []

    assert reading_key({"interventions": [Probe()]}) is None
    store = _store()
    attach(model, store)
    calls = []
    compute = lambda: calls.append(1) or {"x": np.ones(2)}  # noqa: E731
    for _ in range(2):
        cached(model, "probe", {"interventions": [Probe()]}, compute)
        cached(model, "plain", {"n": 1}, compute)
    assert len(calls) == 3 and store.stats.computed == 1 and store.stats.memory_hits == 1


def test_an_input_that_cannot_be_keyed_is_refused_by_type():
    from mechclaims import reading_key

    with pytest.raises(ConfigError, match=r"cannot key a reading on object .*tensors, arrays, numbers"):
        reading_key({"x": object()})
