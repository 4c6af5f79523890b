"""Claim 1 findings: known answers on synthetic studies (each claim shown able to
fail), and the full experiment and discovery path on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from mechclaims_icl import claim1
from mechclaims_icl.discover import discover, write
from mechclaims.errors import ConfigError
from mechclaims.expectations import load
from mechclaims_icl.experiments import AblationStudy, Condition, ablation_study
from mechclaims_icl.patching import Sweep
from mechclaims_icl.scores import HeadScores
from mechclaims_icl.tasks import CANONICAL, make_patch_pairs

N, LAYERS, HEADS = 200, 8, 4
PARAMS = claim1.C1Params(onset=2, stages=((0, 1), (3,), (5,)), backup_layers=(3, 5), read_layer=7)


def _condition(onset, *, accuracy=0.95, copy_from=6, exact_from=None, backup=None, seed=0, name="c"):
    """Patched answers: none before ``onset``, approx from it, copy from ``copy_from``."""
    rng = np.random.default_rng(seed)
    outcomes = np.zeros((LAYERS, N), dtype=np.int8)
    for layer in range(LAYERS):
        if onset is not None and layer >= onset:
            outcomes[layer] = np.where(rng.random(N) < 0.9, 1, 0)
        if exact_from is not None and layer >= exact_from:
            outcomes[layer] = np.where(rng.random(N) < 0.9, 2, outcomes[layer])
        if layer >= copy_from:
            outcomes[layer] = np.where(rng.random(N) < 0.9, 3, 0)
    dla = rng.normal(size=(N, LAYERS, HEADS))
    if backup is not None:
        dla[:, backup, 1] += 1.0
    return Condition(
        name=name, layers=(),
        # one draw per prompt seed, so conditions on the same prompts are paired in correctness too
        correct=np.random.default_rng(seed + 1000).random(N) < accuracy,
        sweep=Sweep(tuple(range(LAYERS)), np.zeros((LAYERS, N), dtype=np.int64), outcomes),
        scores=HeadScores(dla=dla, dot=dla, read_layer=7),
    )


def _study(*conditions):
    return AblationStudy(pairs=None, conditions=conditions)


REDUNDANT = _study(
    _condition(2, exact_from=4, seed=1),
    _condition(4, backup=3, seed=1),  # same prompts (seed) so paired tests see the change
    _condition(5, backup=5, seed=1),
    _condition(None, copy_from=6, seed=1),
)
FRAGILE = _study(
    _condition(2, exact_from=4, seed=1),
    _condition(None, accuracy=0.3, seed=1),
    _condition(None, accuracy=0.2, seed=1),
    _condition(None, accuracy=0.1, seed=1),
)


def test_a_redundant_model_supports_every_finding():
    findings = {
        "onset": claim1.task_onset(REDUNDANT, PARAMS),
        "ablate-1": claim1.ablate(REDUNDANT, 0, PARAMS),
        "backup-1": claim1.backup(REDUNDANT, 0, PARAMS),
        "ablate-2": claim1.ablate(REDUNDANT, 1, PARAMS),
        "backup-2": claim1.backup(REDUNDANT, 1, PARAMS),
        "ablate-3": claim1.no_task_stage(REDUNDANT, 2, PARAMS),
        "parity": claim1.parity_late(REDUNDANT, PARAMS),
        "redundancy": claim1.redundancy(REDUNDANT, PARAMS),
    }
    assert {k: f.supported for k, f in findings.items()} == dict.fromkeys(findings, True), {
        k: f.message for k, f in findings.items()
    }


def test_patching_rates_carry_their_intervals():
    rates = claim1.task_onset(REDUNDANT, PARAMS).figures["rates"]
    approx = rates["approx"]
    assert len(approx["rate"]) == LAYERS and approx["n"] == N
    assert all(lo <= r <= hi for lo, r, hi in zip(approx["ci_low"], approx["rate"], approx["ci_high"]))


def test_a_model_without_redundancy_refutes_them():
    assert not claim1.ablate(FRAGILE, 0, PARAMS).supported
    assert not claim1.no_task_stage(FRAGILE, 2, PARAMS).supported
    assert not claim1.redundancy(FRAGILE, PARAMS).supported


def test_onset_at_another_layer_refutes_the_onset_claim():
    wrong = claim1.C1Params(**{**PARAMS.__dict__, "onset": 5})
    assert not claim1.task_onset(REDUNDANT, wrong).supported


def test_no_task_stage_never_supports_the_onset_claim():
    none = _study(_condition(None, seed=1))
    late = claim1.C1Params(**{**PARAMS.__dict__, "onset": LAYERS - 1})
    assert not claim1.task_onset(none, late).supported


def test_no_backup_without_a_real_increase():
    flat = _study(_condition(2, seed=1), _condition(4, seed=1))
    assert not claim1.backup(flat, 0, PARAMS).supported


def test_the_backup_head_is_the_largest_significant_increase_not_the_first_smallest_p():
    clean, after = _condition(2, seed=1), _condition(4, backup=3, seed=1)
    dla = after.scores.dla.copy()
    dla[:, 3, 0] = clean.scores.dla[:, 3, 0] + 0.01  # head 0 rises on every prompt, but by little
    small_first = Condition(after.name, (), after.correct, after.sweep, HeadScores(dla, dla, 7))
    found = claim1.backup(_study(clean, small_first), 0, PARAMS)
    assert "L3H1" in found.message and found.effect.statistic > 0.5
    assert found.supported


def test_no_backup_when_the_increase_is_negligible():
    clean, after = _condition(2, seed=1), _condition(4, backup=3, seed=1)
    dla = clean.scores.dla.copy()
    dla[:, [0, 1]] += 20.0  # the ablated heads carried a lot; +1.0 on one head is under 10% of it
    heavy = Condition(clean.name, (), clean.correct, clean.sweep, HeadScores(dla, dla, 7))
    assert not claim1.backup(_study(heavy, after), 0, PARAMS).supported


def test_parity_is_not_late_when_exact_comes_with_the_task_stage():
    early = _study(_condition(2, exact_from=2, seed=1))
    assert not claim1.parity_late(early, PARAMS).supported


@pytest.fixture
def tiny(tiny_model):
    return tiny_model


@pytest.fixture
def organism(as_organism):
    """The tiny checkpoint as the loaded target ``organism``, whose weights a pre-registration records."""
    from mechclaims import load_target

    return load_target("organism")


def test_the_full_experiment_runs_on_a_model(tiny):
    pairs = make_patch_pairs(CANONICAL, n_pairs=12, n_examples=6, seed=0)
    params = claim1.C1Params(onset=0, stages=((0,), (1,), ()), backup_layers=(1, 1), read_layer=1)
    study = ablation_study(tiny, pairs, params.stages, read_layer=1)
    assert [c.name for c in study.conditions] == ["clean", "ablate 0", "ablate 0+1", "ablate 0+1"]
    for finding in (
        claim1.task_onset(study, params), claim1.ablate(study, 0, params), claim1.backup(study, 0, params),
        claim1.no_task_stage(study, 2, params), claim1.parity_late(study, params), claim1.redundancy(study, params),
    ):
        assert isinstance(finding.supported, bool) and finding.message
    assert tiny.list_hooks() == {}


def test_discovery_output_reads_back_as_expectations(tiny, organism, tmp_path, monkeypatch):
    monkeypatch.setattr(claim1, "MIN_ACCURACY", -1.0)  # claim1 binds C0's threshold at import  # a random model: force the full procedure
    lines: list[str] = []
    found = discover(tiny, n_pairs=10, seed=0, threshold=0.5, margin=0.1, log=lines.append)
    path = tmp_path / "organism.toml"
    write(path, organism, found, "python -m mechclaims_icl.discover --target organism")
    exp = load(path, "organism")
    # the log says what the file pre-registers (an undecided finding is inconclusive there and here)
    logged = {line.split(": ")[0]: line.split(": ")[1] for line in lines if line.startswith("C1.")}
    assert logged and all(logged[cid] == exp.verdicts[cid] for cid in logged), (logged, exp.verdicts)
    params = claim1.params_from(exp, n_layers=2)
    assert params.read_layer == 1 and len(params.stages) == 3
    assert claim1.confirmation_pairs(exp, 4) == 10 and claim1.confirmation_pairs(exp, 100) == 100
    assert set(exp.verdicts) == {
        "C0.in-context", "C1.onset", "C1.ablate-10-11", "C1.backup-13", "C1.ablate-13",
        "C1.backup-15", "C1.ablate-15", "C1.parity-late", "C1.redundancy", "C1.onset-robust",
    }
    assert params.probe == "post" and params.probe_variants == ("post", "newline", "neutral-line")


def test_a_target_that_fails_the_precondition_is_preregistered_so_that_it_confirms(tiny, organism, tmp_path):
    """A model that cannot do the task: discovery registers Claim 1 not applicable, with the probe
    and size the confirmation needs to check the precondition again (it errored with "[c1] probe
    is missing")."""
    found = discover(tiny, n_pairs=10, seed=0, threshold=0.5, margin=0.1, log=lambda m: None)
    assert {found["verdicts"][cid] for cid in found["verdicts"] if cid.startswith("C1.")} == {"not-applicable"}
    path = tmp_path / "organism.toml"
    write(path, organism, found, "python -m mechclaims_icl.discover --target organism")
    exp = load(path, "organism")
    assert claim1.probes_from(exp)[0] == "post" and claim1.confirmation_pairs(exp, 4) == 10


def test_discovery_warns_of_an_onset_at_layer_0(tiny, monkeypatch):
    """A model whose prompt B answers by itself (the onset is layer 0) was pre-registered silently."""
    import mechclaims_icl.discover as discovery

    monkeypatch.setattr(claim1, "MIN_ACCURACY", -1.0)
    for onset, warned in ((0, True), (1, False)):  # layer 1: a real onset (negative control)
        monkeypatch.setattr(discovery, "onset_layer", lambda flags, threshold, onset=onset: onset)
        lines: list[str] = []
        found = discover(tiny, n_pairs=10, seed=0, threshold=0.5, margin=0.1, log=lines.append)
        said = [line for line in lines if line.startswith("WARNING: the onset is layer 0")]
        assert bool(said) is warned and ("C1 onset" in found["figures"]) is warned


@pytest.mark.slow
def test_a_discovery_file_of_a_model_that_cannot_do_the_task_confirms_with_exit_0(tiny_llama, pytester, monkeypatch):
    """The documented workflow on a model that fails C0 (a random tiny Llama as the organism):
    discover, then confirm: every claim not applicable, as pre-registered, and the run passes."""
    import json
    import shutil
    from pathlib import Path

    from mechclaims import expectations_path, load_target
    from mechclaims_icl.discover import discover_sequences

    claims = Path(__file__).resolve().parents[1] / "claims"
    shutil.copytree(claims, pytester.path / "claims", ignore=shutil.ignore_patterns("*.toml", "__pycache__"))
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    loaded = load_target("organism")
    found = discover(loaded.model, n_pairs=20, seed=0, threshold=0.5, margin=0.1, log=lambda m: None)
    more = discover_sequences(loaded.model, CANONICAL, n_prompts=20, seed=0, log=lambda m: None)
    found = {**found, **{k: more[k] for k in ("task", "c2", "c3")}, "verdicts": {**found["verdicts"], **more["verdicts"]},
             "figures": {**found["figures"], **more["figures"]}}
    out = expectations_path(pytester.path / "claims", "organism")
    write(out, loaded, found, "python -m mechclaims_icl.discover --target organism")
    result = pytester.runpytest_subprocess("claims/", "--mechclaims-target", "organism", "--mechclaims-n-prompts",
                                           "20", "-p", "no:cacheprovider")  # its own process: claims/ has a test_claim1
    claims_run = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["claims"]
    verdicts = {c["id"]: c["verdict"] for c in claims_run}
    assert result.ret == 0, verdicts
    assert set(verdicts.values()) <= {"not-applicable", "refuted"} and all(c["as_expected"] for c in claims_run)
    assert {v for k, v in verdicts.items() if not k.startswith("C0")} == {"not-applicable"}


def test_one_a_forward_per_condition_gives_the_same_measurements(tiny, tiny_llama, monkeypatch):
    from mechclaims_icl.answers import greedy_is
    from mechclaims_icl.experiments import measure
    from mechclaims.interventions import AblateHeads
    from mechclaims_icl.patching import patch_sweep
    from mechclaims_icl.scores import head_scores

    pairs = make_patch_pairs(CANONICAL, n_pairs=10, n_examples=6, seed=3)
    answers = [p.a.answer for p in pairs.pairs]
    ivs = [AblateHeads.layers([0], tiny.cfg.n_heads)]
    got = measure(tiny, pairs, [0], read_layer=1)
    assert np.array_equal(got.correct, greedy_is(tiny, pairs.a_texts, answers, interventions=ivs))
    assert np.array_equal(got.sweep.answers, patch_sweep(tiny, pairs, a_interventions=ivs).answers)
    separate = head_scores(tiny, pairs.a_texts, answers, read_layer=1, interventions=ivs)
    assert np.allclose(got.scores.dla, separate.dla) and np.allclose(got.scores.dot, separate.dot)


@pytest.mark.slow
def test_one_teacher_forced_pass_of_a_reads_what_separate_passes_read(digit_model):
    """Digit-by-digit answers: A's correctness and last-position residual come from
    one forward over prompt + answer, equal to greedy checking and a prompt-only pass."""
    from mechclaims_icl.answers import MAX_NUMBER_TOKENS, greedy_is, greedy_numbers
    from mechclaims_icl.experiments import measure
    from mechclaims.interventions import AblateHeads
    from mechclaims_icl.patching import patch_sweep

    pairs = make_patch_pairs(CANONICAL, n_pairs=8, n_examples=4, seed=2)
    answers = [p.a.answer for p in pairs.pairs]
    for ablated in ((), (1,)):
        ivs = [AblateHeads.layers(ablated, digit_model.cfg.n_heads)] if ablated else []
        got = measure(digit_model, pairs, ablated, read_layer=digit_model.cfg.n_layers - 1)
        assert np.array_equal(got.correct, greedy_is(digit_model, pairs.a_texts, answers, interventions=ivs))
        assert np.array_equal(got.sweep.answers, patch_sweep(digit_model, pairs, a_interventions=ivs).answers)
    # the teacher-forced check agrees with decoding, answer by answer
    # (where the decoded number ended within MAX_NUMBER_TOKENS, as real answers do)
    decoded = greedy_numbers(digit_model, pairs.a_texts)
    ended = decoded < 10 ** (MAX_NUMBER_TOKENS - 1)
    texts = [t for t, keep in zip(pairs.a_texts, ended) if keep]
    decoded = decoded[ended]
    assert greedy_is(digit_model, texts, decoded).all()
    assert not greedy_is(digit_model, texts, decoded + 1).any()
    multi = decoded >= 10
    assert multi.any()
    prefixes = [t for t, m in zip(texts, multi) if m]
    assert not greedy_is(digit_model, prefixes, decoded[multi] // 10).any()  # a prefix of the answer is not the answer


@pytest.mark.parametrize("line, pairs", [("", 100), ("min_pairs = 200", 200), ("min_pairs = 50", 100)])
def test_the_confirmation_uses_at_least_the_pre_registered_pairs(tmp_path, line, pairs):
    path = tmp_path / "organism.toml"
    path.write_text(f"[c1]\n{line}\n")
    assert claim1.confirmation_pairs(load(path, "organism"), 100) == pairs


def test_a_pre_registered_confirmation_of_no_pairs_is_rejected_with_the_fix(tmp_path):
    path = tmp_path / "organism.toml"
    path.write_text("[c1]\nmin_pairs = 0\n")
    with pytest.raises(ConfigError, match=r"\[c1\] min_pairs = 0 is out of range; expected 1 to 20000"):
        claim1.confirmation_pairs(load(path, "organism"), 100)


def test_an_onset_placed_on_too_few_pairs_is_inconclusive_not_a_negative_control():
    """Eight pairs whose rates hover near the threshold cannot place the onset within ±1 layer:
    discovery pre-registers that inconclusive; a clean, well-powered onset elsewhere is refuted."""
    from mechclaims_icl.discover import verdict_of

    rng = np.random.default_rng(0)
    outcomes = (rng.random((LAYERS, 8)) < np.linspace(0.2, 0.8, LAYERS)[:, None]).astype(np.int8)
    few = AblationStudy(pairs=None, conditions=(Condition(
        name="c", layers=(), correct=np.ones(8, bool),
        sweep=Sweep(tuple(range(LAYERS)), np.zeros((LAYERS, 8), dtype=np.int64), outcomes),
        scores=HeadScores(dla=np.zeros((8, LAYERS, HEADS)), dot=np.zeros((8, LAYERS, HEADS)), read_layer=7)),))
    finding = claim1.task_onset(few, PARAMS)
    assert not finding.supported and not finding.decided and "too few pairs" in finding.message
    assert verdict_of(finding) == "undecided"
    wrong = claim1.task_onset(REDUNDANT, claim1.C1Params(**{**PARAMS.__dict__, "onset": 5}))
    assert not wrong.supported and wrong.decided and verdict_of(wrong) == "refuted"


def test_an_onset_interval_across_the_windows_edge_is_inconclusive_and_one_outside_it_refuted():
    """Equivalence logic: an onset interval reaching into the window and past it is neither a
    verdict for nor against; one wholly outside the window refutes, one inside supports."""
    from mechclaims_icl.discover import verdict_of

    rng = np.random.default_rng(0)
    rate = np.r_[0.0, 0.0, 0.0, PARAMS.threshold, 0.9, 0.9, 0.9, 0.9]  # layer 3 sits on the threshold
    outcomes = (rng.random((LAYERS, 400)) < rate[:, None]).astype(np.int8)
    sweep = Sweep(tuple(range(LAYERS)), np.zeros((LAYERS, 400), dtype=np.int64), outcomes)
    at = lambda onset: claim1._onset(sweep, claim1.C1Params(**{**PARAMS.__dict__, "onset": onset}), seed=0)  # noqa: E731
    assert (at(4).effect.ci.low, at(4).effect.ci.high) == (3, 4)
    assert verdict_of(at(4)) == "supported"  # window [3, 5]
    assert verdict_of(at(2)) == "undecided" and "straddles the window's edge" in at(2).message  # [1, 3]
    assert verdict_of(at(6)) == "refuted"  # window [5, 7]
    assert verdict_of(at(0)) == "refuted"  # window [-1, 1]


# ------------------------------------------------------------------ the probe: B's format

def _sweep(onset, seed=1):
    return _condition(onset, seed=seed).sweep


def test_the_onset_is_robust_when_every_format_of_b_shows_it():
    sweeps = {"post": _sweep(2), "newline": _sweep(2, seed=2), "neutral-line": _sweep(3, seed=3)}
    finding = claim1.onset_robust(sweeps, PARAMS)
    assert finding.supported and finding.decided
    assert finding.figures["holds_under"] == ["post", "newline", "neutral-line"]
    assert set(finding.figures["rates_by_variant"]) == set(sweeps)
    assert {v["verdict"] for v in finding.figures["variants"].values()} == {"supported"}


def test_an_onset_that_needs_one_format_of_b_is_refuted_as_format_specific():
    """The organism's case: the stage shows with a leading newline only."""
    sweeps = {"post": _sweep(None), "newline": _sweep(2), "neutral-line": _sweep(None, seed=3)}
    finding = claim1.onset_robust(sweeps, PARAMS)
    assert not finding.supported and finding.decided
    assert finding.figures["holds_under"] == ["newline"]
    assert finding.figures["refuted_under"] == ["post", "neutral-line"]
    assert "specific to newline" in finding.message
    assert finding.effect.statistic == LAYERS  # the first refuted format's onset: none
    # the pre-registered probe alone would have supported C1.onset
    assert claim1.task_onset(_study(_condition(2)), PARAMS).supported


def test_an_undecided_format_makes_robustness_inconclusive():
    rng = np.random.default_rng(0)
    outcomes = (rng.random((LAYERS, 8)) < np.linspace(0.2, 0.8, LAYERS)[:, None]).astype(np.int8)
    few = Sweep(tuple(range(LAYERS)), np.zeros((LAYERS, 8), dtype=np.int64), outcomes)
    params = claim1.C1Params(**{**PARAMS.__dict__, "probe_variants": ("post", "newline")})
    finding = claim1.onset_robust({"post": _sweep(2), "newline": few}, params)
    assert not finding.supported and not finding.decided
    assert finding.figures["variants"]["newline"]["verdict"] == "inconclusive"


def test_b_in_each_format_and_the_draw_does_not_depend_on_it():
    from mechclaims_icl.tasks import PROBES

    post = make_patch_pairs(CANONICAL, n_pairs=5, n_examples=4, seed=0)
    assert post.probe == "post" and post.b_texts[0] == f"({post.p[0]}, "
    newline = post.with_probe("newline")
    assert newline.b_texts[0] == f"\n({post.p[0]}, " and newline.a_texts == post.a_texts
    assert (newline.p == post.p).all()
    assert make_patch_pairs(CANONICAL, n_pairs=5, n_examples=4, seed=0, probe="neutral-line").b_texts[0] == (
        f"(x, y)\n({post.p[0]}, ")
    assert set(PROBES) == {"post", "newline", "neutral-line"}
    with pytest.raises(ConfigError, match="unknown probe 'tab'.*post, newline, neutral-line"):
        post.with_probe("tab")


def test_probe_sweeps_reuse_a_and_match_a_fresh_sweep(tiny):
    from mechclaims_icl.experiments import probe_sweeps
    from mechclaims_icl.patching import patch_sweep

    pairs = make_patch_pairs(CANONICAL, n_pairs=6, n_examples=4, seed=1, probe="newline")
    study = ablation_study(tiny, pairs, (), read_layer=1)
    sweeps = probe_sweeps(tiny, study, ("post", "newline"))
    assert sweeps["newline"] is study.clean.sweep
    assert np.array_equal(sweeps["post"].answers, patch_sweep(tiny, pairs.with_probe("post")).answers)


@pytest.mark.parametrize("c1, message", [
    ({}, "probe is missing; pre-register B's format, one of post, newline, neutral-line"),
    ({"probe": "tab"}, "probe 'tab' is not a known format; valid: post, newline, neutral-line"),
    ({"probe": "post", "probe_variants": ["newline"]}, "must list distinct formats and include the pre-registered"),
])
def test_a_bad_probe_names_the_formats(tmp_path, c1, message):
    from mechclaims.expectations import _toml_value

    lines = "".join(f"{k} = {_toml_value(v)}\n" for k, v in c1.items())
    path = tmp_path / "organism.toml"
    path.write_text(f"[c1]\nonset = 1\n{lines}")
    with pytest.raises(ConfigError, match=message):
        claim1.probes_from(load(path, "organism"))


def test_probe_variants_are_added_to_a_pre_registration_without_redoing_discovery(tiny, tmp_path, monkeypatch):
    from mechclaims.expectations import merge_write
    from mechclaims_icl.discover import discover_probes

    monkeypatch.setattr(claim1, "MIN_ACCURACY", -1.0)  # a random model: force the study
    path = tmp_path / "organism.toml"
    merge_write(path, "organism", source="by hand", verdicts={"C1.onset": "supported"},
                sections={"c1": {"onset": 1, "stage1": [0], "read_layer": 1, "probe": "newline"}})
    found = discover_probes(tiny, load(path, "organism"), seed=0, probe=None, n_pairs=6, log=lambda m: None)
    assert set(found["verdicts"]) == {"C1.onset-robust"}
    assert found["verdicts"]["C1.onset-robust"] in ("supported", "refuted", "undecided")
    assert found["c1"] == {"onset": 1, "stage1": [0], "read_layer": 1, "probe": "newline",
                           "probe_variants": ["post", "newline", "neutral-line"], "min_pairs": 6}
    assert "[post]" in found["figures"]["C1.onset-robust"] and "6 exploration pairs" in found["figures"]["C1.onset-robust"]
    merge_write(path, "organism", source="by hand", verdicts=found["verdicts"], sections={"c1": found["c1"]})
    exp = load(path, "organism")
    assert exp.verdicts["C1.onset"] == "supported" and claim1.probes_from(exp)[0] == "newline"
