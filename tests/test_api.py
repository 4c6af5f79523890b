"""The public API for writing claims: prompts with roles, readers, checks, statistics,
pre-registration sections and their merging. Each reader is checked against the same
quantity computed the plain way (whole activations kept), on the tiny random Llama."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
import torch

import mechclaims as mc
from mechclaims.expectations import load, merge_write
from mechclaims.hooks import attn_pattern, resid_pre


def test_the_public_api_is_what_init_exports():
    assert sorted(mc.__all__) == sorted(set(mc.__all__))
    import importlib
    import types

    for name in mc.__all__:
        assert hasattr(mc, name), name
    for module in sorted(set(mc._WHERE.values()) | {"settings"}):  # every submodule imported, as a run does
        importlib.import_module(f"mechclaims.{module}")
    shadowed = [name for name in mc.__all__ if isinstance(getattr(mc, name), types.ModuleType)]
    assert not shadowed, f"submodules shadow exported names: {shadowed}"
    with pytest.raises(AttributeError, match="no attribute 'nope'; the public API is mechclaims.__all__"):
        mc.nope


# ------------------------------------------------------------------ prompts


def test_role_marks_map_to_the_tokens_their_text_spans(tiny_model):
    ps = mc.PromptSet.from_texts(tiny_model.tokenizer, ["({{x:12}}, {{y:27}})\n({{x:3}}, ", "({{x:5}}, {{y:13}})\n({{x:9}}, "])
    plain = mc.encode(tiny_model.tokenizer, "(12, 27)\n(3, ")
    assert ps.tokens[0] == tuple(plain)  # marks never change the tokens
    pieces = tiny_model.tokenizer.convert_ids_to_tokens(list(ps.tokens[0]))
    assert [pieces[i] for i in ps.roles["x"][0]] == ["12", "3"] and [pieces[i] for i in ps.roles["y"][0]] == ["27"]
    assert ps.tensor(tiny_model).shape == (2, len(plain))


def test_an_exact_role_refuses_a_token_that_runs_past_its_mark(tiny_model):
    """``12`` is one token of the number tokenizer: a mark on its first digit covers that token, which
    an exact set refuses (negative control: marks on whole tokens are exact)."""
    loose = mc.PromptSet.from_texts(tiny_model.tokenizer, ["({{a:1}}2, 27)\n"])
    assert tiny_model.tokenizer.convert_ids_to_tokens([loose.tokens[0][i] for i in loose.roles["a"][0]]) == ["12"]
    with pytest.raises(mc.ConfigError, match=r"role 'a' marks '1', but token '12' of '\(12, 27\)\\n' runs past it"):
        mc.PromptSet.from_texts(tiny_model.tokenizer, ["({{a:1}}2, 27)\n"], exact=True)
    assert mc.PromptSet.from_texts(tiny_model.tokenizer, ["({{a:12}}, 27)\n"], exact=True).roles["a"] == ((2,),)


def test_prompts_of_different_lengths_are_no_single_tensor(tiny_model):
    ps = mc.PromptSet.from_texts(tiny_model.tokenizer, ["(1, 2)\n", "(1, 2)\n(3, 4)\n"])
    with pytest.raises(mc.ConfigError, match="lengths"):
        ps.tensor(tiny_model)
    assert sorted(len(rows) for rows, _ in ps.batches(tiny_model)) == [1, 1]


def test_a_role_position_outside_its_prompt_is_refused():
    with pytest.raises(mc.ConfigError, match=r"role 'q' of prompt 0: positions \[5\]"):
        mc.PromptSet.from_tokens([[1, 2, 3]], {"q": [[5]]})


# ------------------------------------------------------------------ readers


def _tokens(model, n=5, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(20, 200, (n, length), generator=g)


def test_attention_mass_reduced_in_the_hook_equals_the_whole_pattern_read(tiny_model):
    tokens = _tokens(tiny_model)
    weights = mc.role_weights([(q, [q - 3]) for q in range(6, 12)], tokens.shape[1])
    got = mc.attention_mass(tiny_model, tokens, weights)
    names = [attn_pattern(layer) for layer in range(tiny_model.cfg.n_layers)]
    out = mc.forward(tiny_model, tokens, names=names, position=None, logits="none")
    want = np.stack([np.einsum("bhqk,qk->bh", out.acts[n].numpy(), weights) for n in names], axis=1)
    assert got.shape == (5, tiny_model.cfg.n_layers, tiny_model.cfg.n_heads)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # negative control: other links read other masses
    other = mc.attention_mass(tiny_model, tokens, mc.role_weights([(q, [q]) for q in range(6, 12)], 12))
    assert not np.allclose(other, got)


def test_attention_mass_split_across_passes_is_the_same(tiny_model, monkeypatch):
    from mechclaims import batching

    tokens = _tokens(tiny_model, n=6)
    weights = np.stack([mc.role_weights([(11, [i])], 12) for i in range(6)])  # per-row links
    whole = mc.attention_mass(tiny_model, tokens, weights)
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", 1)  # one row per pass
    np.testing.assert_allclose(mc.attention_mass(tiny_model, tokens, weights, layers=[0, 1]), whole, rtol=1e-5, atol=1e-6)


def test_a_weight_matrix_of_the_wrong_shape_is_one_line(tiny_model):
    with pytest.raises(mc.ConfigError, match=r"weights have shape \(3, 3\)"):
        mc.attention_mass(tiny_model, _tokens(tiny_model), np.eye(3))


def test_residual_at_reads_one_position_per_row(tiny_model):
    tokens = _tokens(tiny_model, n=3)
    positions = [2, 7, 11]
    got = mc.residual_at(tiny_model, tokens, 1, positions)
    full = mc.forward(tiny_model, tokens, names=[resid_pre(1)], position=None, logits="none").acts[resid_pre(1)]
    np.testing.assert_allclose(got, full[torch.arange(3), torch.tensor(positions)].numpy(), rtol=1e-6)
    np.testing.assert_allclose(mc.residual_at(tiny_model, tokens, 1, -1), full[:, -1].numpy(), rtol=1e-6)


def test_greedy_tokens_and_string_probability_agree_with_the_logits(tiny_model):
    tokens = _tokens(tiny_model, n=2)
    logits = mc.forward(tiny_model, tokens, logits="all").logits
    assert (mc.greedy_tokens(tiny_model, tokens, last=4) == logits[:, -4:].argmax(-1).numpy()).all()
    tok = tiny_model.tokenizer
    prompt, cont = "(12, 27)\n(3, ", "9"
    p = mc.string_probability(tiny_model, [prompt], [cont])[0]
    ids = torch.tensor([mc.encode(tok, prompt) + tok(cont, add_special_tokens=False)["input_ids"]])
    want = torch.softmax(mc.forward(tiny_model, ids, logits="all").logits[0, -2], -1)[ids[0, -1]].item()
    assert p == pytest.approx(want, rel=1e-5)
    # ablating every head changes it (the reader sees interventions)
    ablated = mc.string_probability(tiny_model, [prompt], [cont], interventions=[
        mc.AblateHeads.layers(range(tiny_model.cfg.n_layers), tiny_model.cfg.n_heads, position=None)])[0]
    assert ablated != pytest.approx(p, rel=1e-3)


def test_zero_ablating_mlps_needs_no_means_and_changes_the_output(tiny_model):
    tokens = _tokens(tiny_model, n=2)
    clean = mc.forward(tiny_model, tokens, logits="last").logits
    ablated = mc.forward(tiny_model, tokens, logits="last", interventions=[mc.AblateMLP((0, 1), mode="zero")]).logits
    assert not torch.allclose(clean, ablated)
    with pytest.raises(mc.ConfigError, match="needs means for layers"):
        mc.AblateMLP((0,))


# ------------------------------------------------------------------ statistics and checks


def test_checks_read_the_interval_and_say_the_rule():
    effect = mc.proportion(80, 100)
    passed, failed = mc.at_least(effect, 0.7, "accuracy"), mc.at_least(effect, 0.75, "accuracy")
    assert passed.supported and not failed.supported  # lower bound 0.708: the point 0.8 is not what counts
    assert "lower bound must be > 0.75" in failed.message and "accuracy: 0.8 [" in failed.message
    assert mc.at_most(mc.proportion(5, 100), 0.15, "x").supported and not mc.at_most(mc.proportion(5, 100), 0.1, "x").supported
    both = mc.all_of(passed, failed)
    assert not both.supported and passed.message in both.message and failed.message in both.message


def test_beats_random_is_exact_and_can_fail():
    draws = np.arange(19, dtype=float)
    assert mc.beats_random(100.0, draws).pvalue == pytest.approx(1 / 20)
    assert mc.beats_random(10.0, draws).pvalue == pytest.approx(10 / 20)
    assert not mc.significant(mc.beats_random(10.0, draws), "x").supported


def test_random_sets_are_seeded_distinct_and_avoid_the_excluded():
    sets = mc.random_sets(4, 3, 2, 50, seed=1, exclude=[(0, 0)])
    assert sets == mc.random_sets(4, 3, 2, 50, seed=1, exclude=[(0, 0)]) != mc.random_sets(4, 3, 2, 50, seed=2)
    assert all(len(set(s)) == 2 and (0, 0) not in s for s in sets)
    with pytest.raises(ValueError, match="cannot draw 13 heads"):
        mc.random_sets(4, 3, 13, 1)


def test_bootstrap_mean_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(0).normal(1.0, 1.0, 200)
    a, b = mc.bootstrap_mean(values, seed=3), mc.bootstrap_mean(values, seed=3)
    assert a == b and a.ci.low < values.mean() < a.ci.high and a.n == 200
    assert mc.bootstrap_mean(values, seed=4).ci != a.ci


# ------------------------------------------------------------------ pre-registration sections


def test_a_section_must_be_registered_before_a_file_may_hold_it(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[unregistered_pack]\nk = 1\n")
    with pytest.raises(mc.ConfigError, match="unknown key or section 'unregistered_pack'.*register_section"):
        load(path, "m")
    mc.register_section("unregistered_pack", {"k": mc.Key(int, 0, 5, "a small number")})
    assert load(path, "m").get("unregistered_pack", "k", int) == 1
    path.write_text("[unregistered_pack]\nk = 9\n")
    with pytest.raises(mc.ConfigError, match=r"\[unregistered_pack\] k = 9 is out of range"):
        load(path, "m")
    with pytest.raises(mc.ConfigError, match="already registered with other keys"):
        mc.register_section("unregistered_pack", {"other": mc.Key(int)})


def test_merging_a_pack_section_keeps_every_other_section_verdict_and_comment(tmp_path):
    import mechclaims_icl.expectations  # noqa: F401  (registers the post's sections)

    mc.register_section("merge_pack", {"heads": mc.Key(list), "min": mc.Key(float, 0.0, 1.0)})
    path = tmp_path / "organism.toml"
    original = (mc.__file__.rsplit("/src/", 1)[0] + "/claims/expectations/organism.toml")
    path.write_text(open(original).read())
    before = tomllib.loads(path.read_text())
    for heads in ([[1, 2]], [[3, 0]]):  # a second discovery replaces its own section only
        merge_write(path, "organism", source="test discovery", verdicts={"P.x": "supported"},
                    sections={"merge_pack": {"heads": heads, "min": 0.1}}, comment="figures")
    after = tomllib.loads(path.read_text())
    assert {k: v for k, v in after.items() if k not in ("merge_pack", "verdicts")} == \
        {k: v for k, v in before.items() if k != "verdicts"}
    assert after["verdicts"] == {**before["verdicts"], "P.x": "supported"}
    assert after["merge_pack"] == {"heads": [[3, 0]], "min": 0.1}
    text = path.read_text()
    assert text.count("# test discovery") == 1 and "# Exploration figures behind these values:" in text
    # a bad value is refused and the file is left as it was
    with pytest.raises(mc.ConfigError, match="out of range"):
        merge_write(path, "organism", source="s", verdicts={}, sections={"merge_pack": {"heads": [], "min": 2.0}})
    assert path.read_text() == text


def test_an_interval_across_the_threshold_is_inconclusive_not_refuted():
    wide, below = mc.proportion(6, 10), mc.proportion(5, 100)  # [0.31, 0.83] and [0.02, 0.11]
    assert not mc.at_least(wide, 0.5, "x").supported and not mc.at_least(wide, 0.5, "x").decided
    assert mc.at_least(below, 0.5, "x").decided  # wholly below: refuted
    assert not mc.at_most(wide, 0.5, "x").decided and mc.at_most(mc.proportion(95, 100), 0.5, "x").decided
    same = mc.Effect(0.05, mc.Interval(-0.02, 0.12, 0.9), 50)
    assert not mc.equivalent(same, 0.1, "x").decided
    assert mc.equivalent(mc.Effect(0.3, mc.Interval(0.2, 0.4, 0.9), 50), 0.1, "x").decided
    assert not mc.significant(mc.Effect(1, mc.Interval(0, 2, 0.95), 5, 0.3), "x").decided
    refuted, open_ = mc.at_least(below, 0.5, "a"), mc.at_least(wide, 0.5, "b")
    assert mc.all_of(refuted, open_).decided and not mc.all_of(mc.at_least(below, 0.01, "c"), open_).decided


def _claims_run(pytester, verdicts: str, successes: dict[str, int]):
    """A run of claims ``accuracy = k/10 (or k/100) is at least 0.5``, one per id, against ``verdicts``."""
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text(f"[registered]\nn_layers = 2\n[verdicts]\n{verdicts}")
    tests = "".join(f'''
@pytest.mark.claim(id="{cid}")
def test_{i}(target, claim):
    claim.judge(at_least(proportion({k}, {10 if k <= 10 else 100}), 0.5, "accuracy"))
''' for i, (cid, k) in enumerate(successes.items()))
    pytester.makepyfile(test_x="import pytest\nfrom mechclaims import at_least, proportion\n" + tests)
    return pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider")


def test_an_undecided_claim_is_inconclusive_and_fails_a_run_that_expected_a_verdict(pytester, as_organism):
    result = _claims_run(pytester, '"T.wide" = "supported"\n"T.known" = "inconclusive"\n', {"T.wide": 6, "T.known": 6})
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*inconclusive  T.wide [[]organism[]] (UNEXPECTED: pre-registered supported)*",
                                 "*inconclusive  T.known [[]organism[]] (expected inconclusive)*"])
    import json
    claims = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["claims"]
    assert [c["verdict"] for c in claims] == ["inconclusive", "inconclusive"] and claims[0]["statistic"] == 0.6


def test_a_claim_over_variants_holds_only_where_every_variant_supports_it():
    strong, weak, wide = mc.proportion(90, 100), mc.proportion(10, 100), mc.proportion(6, 10)
    every = mc.holds_across({"a": mc.at_least(strong, 0.5, "x"), "b": mc.at_least(strong, 0.5, "x")}, "x")
    assert every.supported and every.decided and every.figures["holds_under"] == ["a", "b"]
    some = mc.holds_across({"a": mc.at_least(strong, 0.5, "x"), "b": mc.at_least(weak, 0.5, "x")}, "x")
    assert not some.supported and some.decided and some.effect is weak  # the refuted variant's effect
    assert some.figures["refuted_under"] == ["b"] and "x is specific to a: refuted under b" in some.message
    assert some.figures["variants"]["b"] == {"verdict": "refuted", "statistic": 0.1, "ci_low": weak.ci.low,
                                             "ci_high": weak.ci.high, "level": 0.95, "n": 100,
                                             "message": mc.at_least(weak, 0.5, "x").message}
    open_ = mc.holds_across({"a": mc.at_least(strong, 0.5, "x"), "b": mc.at_least(wide, 0.5, "x")}, "x")
    assert not open_.supported and not open_.decided and "undecided under b" in open_.message
    with pytest.raises(ValueError, match="at least one variant"):
        mc.holds_across({}, "x")


def test_preregister_records_the_model_and_writes_where_the_project_says(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    target = mc.load_target("organism")
    project, pack = tmp_path / "project", tmp_path / "pack"
    project.mkdir()
    monkeypatch.chdir(project)
    path = mc.preregister(pack, target, source="test discovery", verdicts={}, sections={})
    assert path == pack / "expectations" / "organism.toml"  # no project directory: beside the claims
    written = load(path, "organism")
    assert written.sections["registered"]["weights"] == target.info.sha256_or_revision
    assert written.sections["registered"]["n_layers"] == target.info.n_layers
    (project / "pyproject.toml").write_text('[tool.mechclaims]\nexpectations = "mine"\n')
    path.unlink()
    assert mc.preregister(pack, target, source="s", verdicts={}, sections={}) == project / "mine" / "organism.toml"


def test_the_terminal_names_a_negative_control(pytester, as_organism):
    result = _claims_run(pytester, '"T.control" = "refuted"\n', {"T.control": 20, "T.plain": 99})
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*refuted  T.control [[]organism[]] (negative control: expected refuted)*",
                                 "*supported  T.plain [[]organism[]] (expected supported)*"])


def test_an_undecided_preregistration_records_any_confirmation_and_fails_only_an_error(pytester, as_organism):
    """Issue: a claim discovery could not decide on 40 pairs, confirmed on 100, came back refuted and
    failed the run. Pre-registered undecided, nothing was predicted: the refutation (and a support)
    is recorded, not judged; an errored claim still fails the run."""
    result = _claims_run(pytester, '"T.down" = "undecided"\n"T.up" = "undecided"\n', {"T.down": 20, "T.up": 99})
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*refuted  T.down [[]organism[]] (undecided at discovery: recorded, not judged)*",
                                 "*supported  T.up [[]organism[]] (undecided at discovery: recorded, not judged)*"])
    import json
    claims = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["claims"]
    assert [(c["verdict"], c["expected"], c["as_expected"]) for c in claims] == [
        ("refuted", "undecided", None), ("supported", "undecided", None)]
    pytester.makepyfile(test_x='''
import pytest

from mechclaims import at_least, proportion

@pytest.mark.claim(id="T.down")
def test_broken(target, claim):
    raise RuntimeError("the claim code broke")

@pytest.mark.claim(id="T.up")
def test_up(target, claim):
    claim.judge(at_least(proportion(99, 100), 0.5, "accuracy"))
''')
    broken = pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider")
    assert broken.ret == pytest.ExitCode.TESTS_FAILED  # control: undecided never excuses an error


def test_an_unexpected_refutation_is_one_line_of_evidence(pytester, as_organism):
    result = _claims_run(pytester, "", {"T.low": 20})
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["claim T.low [[]organism[]] refuted: *accuracy: 0.2 [[]0.127, 0.292[]]*"])
    assert "def test_0" not in result.stdout.str()  # no traceback of the test's source
