"""The pytest plugin: verdicts, report, parametrisation, loading once, hooks, bad input."""

from __future__ import annotations

import json

import pytest

CLAIMS = '''
import math
import pytest
from mechclaims import proportion


@pytest.mark.claim(id="T.supported", source="test")
def test_supported(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)
    assert True


@pytest.mark.claim(id="T.refuted")
def test_refuted(target, claim):
    effect = claim.record(proportion(1, 10), threshold=0.5)
    assert effect.ci.low >= 0.5, claim.evidence()


@pytest.mark.claim(id="T.not-applicable")
def test_not_applicable(target, claim):
    claim.not_applicable("the target cannot do the task", proportion(0, 10))


@pytest.mark.claim(id="T.errored")
def test_errored(target, claim):
    raise RuntimeError("boom")


@pytest.mark.claim(id="T.silent")
def test_silent(target, claim):
    pass


@pytest.mark.claim(id="T.nan")
def test_nan(target, claim):
    from mechclaims import Effect, Interval
    claim.record(Effect(math.nan, Interval(0.0, 1.0), n=3))
'''


def _report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())


def test_outcomes_become_verdicts_and_the_report_is_written(pytester, as_organism):
    pytester.makepyfile(test_claims=CLAIMS)
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "--mechclaims-seed", "7")
    result.assert_outcomes(passed=1, failed=4, skipped=1)
    report = _report(pytester)
    assert report["schema_version"] == 1
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert verdicts == {
        "T.supported": "supported",
        "T.refuted": "refuted",
        "T.not-applicable": "not-applicable",
        "T.errored": "errored",
        "T.silent": "errored",
        "T.nan": "errored",
    }
    supported = next(c for c in report["claims"] if c["id"] == "T.supported")
    for key in ("nodeid", "id", "target", "verdict", "statistic", "ci", "threshold", "n", "pvalue", "message"):
        assert key in supported
    assert supported["target"] == "organism" and supported["n"] == 10
    assert supported["ci"][0] < 0.9 < supported["ci"][1]
    refuted = next(c for c in report["claims"] if c["id"] == "T.refuted")
    assert "T.refuted on organism: 0.1" in refuted["message"]
    run = report["run"]
    assert run["seed"] == 7 and run["complete"] and run["finished"]
    assert set(run["targets"]["organism"]) >= {"source", "sha256_or_revision", "dtype", "device"}
    assert {"torch", "transformers", "transformer-lens"} <= set(run["versions"])
    result.stdout.fnmatch_lines(["*mechclaims 0.1.0 | organism (STAND-IN) sha256:* float32 cpu | torch *transformer-lens * | seed 7*"])
    result.stdout.fnmatch_lines(["claim report: *claims.json"])
    # pytest's "skipped" is a claim verdict with its reason; failures print the command that reruns them
    result.stdout.fnmatch_lines(["*not-applicable  T.not-applicable [[]organism[]]*", "*why: the target cannot do the task*"])
    result.stdout.fnmatch_lines(["pytest counts these claims as skipped: 1 not-applicable (each with its reason above)"])
    result.stdout.fnmatch_lines(["*refuted  T.refuted [[]organism[]]*",
                                 "*reproduce: pytest 'test_claims.py::test_refuted[[]organism[]]' --mechclaims-target organism "
                                 "--mechclaims-seed 7 --mechclaims-profile ci -k T.refuted"])
    result.stdout.fnmatch_lines(["[[]mechclaims[]] loading organism ..."])


def test_each_model_is_loaded_once_per_session(pytester, as_organism):
    tests = "\n".join(
        f'''
@pytest.mark.claim(id="T.{i}")
def test_{i}(target, claim):
    claim.record(proportion(1, 1))
'''
        for i in range(5)
    )
    pytester.makepyfile(test_many=f"import pytest\nfrom mechclaims import proportion\n{tests}")
    pytester.makepyfile(test_more=f"import pytest\nfrom mechclaims import proportion\n{tests.replace('T.', 'U.')}")
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    result.assert_outcomes(passed=10)
    assert _report(pytester)["run"]["load_counts"] == {"organism": 1}


TWO_TARGETS = '''
import pytest, torch
from mechclaims import proportion

@pytest.mark.claim(id="T.first")
def test_first(target, claim, mechclaims_session):
    with torch.no_grad():
        target.model(torch.ones(1, 3, dtype=torch.long))
    booted = sorted(name for name, t in mechclaims_session.loaded.items() if t.model.booted)
    assert booted == [target.name], booted
    claim.record(proportion(1, 1))

@pytest.mark.claim(id="T.second")
def test_second(target, claim):
    with torch.no_grad():
        target.model(torch.ones(1, 4, dtype=torch.long))
    claim.record(proportion(1, 1))
'''


def test_one_model_is_booted_at_a_time_and_each_boots_once(pytester, tiny_llama, monkeypatch):
    """Items run target by target; moving on releases the previous target's weights."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_CONTROL_DIR", str(tiny_llama))
    pytester.makepyfile(test_two=TWO_TARGETS)
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "--mechclaims-target", "organism-control")
    result.assert_outcomes(passed=4)
    run = _report(pytester)["run"]
    assert run["boots"] == {"organism": 1, "organism-control": 1}
    # passes of 1 x 3 and 1 x 4 tokens through 2 layers: every logit computed, 6 + 10 causal
    # (query, key) pairs per layer
    organism = run["forwards"]["organism"]
    assert organism.pop("seconds") > 0
    assert organism == {"calls": 2, "tokens": 7, "layer_tokens": 14, "logit_positions": 7, "attention_pairs": 32}


def test_a_test_that_leaves_a_hook_fails(pytester, as_organism):
    pytester.makepyfile(
        test_hooks='''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.leaky")
def test_leaky(target, claim):
    target.model.blocks[0].hook_resid_pre.add_hook(lambda act, hook: act)
    claim.record(proportion(1, 1))

@pytest.mark.claim(id="T.after")
def test_after(target, claim):
    assert not target.model.list_hooks()
    claim.record(proportion(1, 1))
'''
    )
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    result.stdout.fnmatch_lines(["*test left hooks on organism: blocks.0.hook_in (1)*remove hooks in a finally block*"])
    result.assert_outcomes(passed=2, errors=1)
    verdicts = {c["id"]: c["verdict"] for c in _report(pytester)["claims"]}
    assert verdicts == {"T.leaky": "errored", "T.after": "supported"}


def test_unknown_target_is_one_line_without_traceback(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "gpt-9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: unknown target 'gpt-9' (*); valid targets: llama-3-8b, smollm2-135m, organism, organism-control; add your own model as a [[]tool.mechclaims.targets.gpt-9[]] table*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_missing_weights_fail_the_claims_in_one_line(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tmp_path / "missing"))
    pytester.makepyfile(test_claims=CLAIMS)
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-k", "supported or refuted")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*weights directory *missing does not exist; point to an HF model directory"])
    assert "Traceback" not in result.stdout.str()
    assert {c["verdict"] for c in _report(pytester)["claims"]} == {"errored"}


GPU_CLAIM = '''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.any")
def test_any(target, claim):
    claim.record(proportion(1, 1))
'''


@pytest.mark.slow
def test_plain_run_deselects_gpu_targets(pytester, as_organism, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_CONTROL_DIR", str(as_organism))
    pytester.makepyfile(test_gpu=GPU_CLAIM)
    result = pytester.runpytest("--mechclaims-exploratory", "-v")
    result.assert_outcomes(passed=3, deselected=1)
    result.stdout.fnmatch_lines(["*test_any?smollm2-135m? PASSED*", "*test_any?organism-control? PASSED*"])
    assert "test_any[llama-3-8b]" not in result.stdout.str()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA failure")
def test_explicit_gpu_run_fails_loudly_without_cuda(pytester):
    pytester.makepyfile(test_gpu=GPU_CLAIM)
    result = pytester.runpytest("--mechclaims-exploratory", "-m", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: -m gpu cannot run: target llama-3-8b needs CUDA*--mechclaims-device cpu"])


def test_explicit_gpu_run_fails_loudly_without_weights(pytester, monkeypatch, tmp_path):
    monkeypatch.delenv("MECHCLAIMS_LLAMA_3_8B_DIR", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    pytester.makepyfile(test_gpu=GPU_CLAIM)
    result = pytester.runpytest("--mechclaims-exploratory", "-m", "gpu", "--mechclaims-device", "cpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: -m gpu cannot run: llama-3-8b: meta-llama/Meta-Llama-3-8B (revision main) is not in the HF cache*MECHCLAIMS_LLAMA_3_8B_DIR*"])


def test_gpu_claims_run_on_a_stand_in_through_the_same_loader(pytester, tiny_llama, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_LLAMA_3_8B_DIR", str(tiny_llama))
    pytester.makepyfile(test_gpu=GPU_CLAIM)
    result = pytester.runpytest("--mechclaims-exploratory", "-m", "gpu", "--mechclaims-device", "cpu", "--mechclaims-dtype", "float32", "-v")
    result.stdout.fnmatch_lines(["*test_any?llama-3-8b? PASSED*"])
    assert _report(pytester)["run"]["targets"]["llama-3-8b"]["dtype"] == "float32"


def test_claim_marker_needs_an_id(pytester, as_organism):
    pytester.makepyfile(test_x='''
import pytest

@pytest.mark.claim(source="x")
def test_x(target, claim):
    pass
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *test_x*needs id=*"])


def test_a_claim_id_used_twice_on_one_target_is_refused_with_both_places(pytester, as_organism):
    pytester.makepyfile(test_dup='''
import pytest

@pytest.mark.claim(id="D.same", targets=["organism"])
def test_first(target, claim):
    pass

@pytest.mark.claim(id="D.same", targets=["organism"])
def test_second(target, claim):
    pass
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: claim id 'D.same' is used twice on target 'organism': "
                                 "test_dup.py:3 (test_first[[]organism[]]) and test_dup.py:7 (test_second[[]organism[]]); *"])


def test_one_id_on_two_targets_is_one_claim_each(pytester, as_organism, tiny_llama, monkeypatch):
    """Negative control of the duplicate check: the same test over two targets is two claims."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_CONTROL_DIR", str(tiny_llama))
    pytester.makepyfile(test_one='''
import pytest

@pytest.mark.claim(id="D.same")
def test_first(target, claim):
    pass
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism",
                                "--mechclaims-target", "organism-control", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()


def test_markers_are_registered_for_strict_runs(pytester):
    pytester.makepyfile(test_x='''
import pytest

@pytest.mark.gpu
def test_x(): pass
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--strict-markers", "-m", "not gpu")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED or result.ret == 0
    assert "not found in `markers`" not in result.stdout.str() + result.stderr.str()


def test_no_report_without_claims(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    pytester.runpytest("--mechclaims-exploratory").assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


NEGATIVE_CONTROL = '''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.control")
def test_control(target, claim, expectations):
    effect = claim.record(proportion(1, 10), threshold=0.5)
    assert effect.ci.low >= 0.5, claim.evidence()
'''


def test_a_preregistered_refutation_is_a_strict_xfail(pytester, as_organism):
    pytester.makepyfile(test_control=NEGATIVE_CONTROL)
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text(
        'target = "organism"\nsource = "test"\n[verdicts]\n"T.control" = "refuted"\n'
    )
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    result.assert_outcomes(xfailed=1)
    assert result.ret == 0
    (claim,) = _report(pytester)["claims"]
    assert (claim["verdict"], claim["expected"], claim["as_expected"]) == ("refuted", "refuted", True)


def test_an_unexpected_support_of_a_negative_control_fails_the_run(pytester, as_organism):
    pytester.makepyfile(test_control=NEGATIVE_CONTROL.replace("proportion(1, 10)", "proportion(10, 10)"))
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text('[verdicts]\n"T.control" = "refuted"\n')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == 1
    (claim,) = _report(pytester)["claims"]
    assert (claim["verdict"], claim["as_expected"]) == ("supported", False)


def test_a_bad_expectations_file_is_a_one_line_usage_error(pytester, as_organism):
    pytester.makepyfile(test_control=NEGATIVE_CONTROL)
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text('[verdicts]\n"T.control" = "maybe"\n')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *organism.toml: [[]verdicts[]] 'T.control' = 'maybe'; valid expected verdicts: supported, refuted, inconclusive, not-applicable, undecided"])


SLOW_CLAIMS = '''
import pathlib, time
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.first")
def test_first(target, claim):
    claim.record(proportion(1, 1))

@pytest.mark.claim(id="T.slow")
def test_slow(target, claim):
    pathlib.Path("started").write_text("1")
    time.sleep(60)
    claim.record(proportion(1, 1))
'''


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_writes_a_partial_report_and_keeps_latest_complete(pytester, as_organism, signum):
    import os
    import signal
    import subprocess
    import sys
    import time

    pytester.makepyfile(test_fast=GPU_CLAIM)
    pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism").assert_outcomes(passed=1)
    complete = (pytester.path / "reports" / "latest").resolve()

    pytester.makepyfile(test_slow=SLOW_CLAIMS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_slow.py", "--mechclaims-target", "organism", "-p", "no:cacheprovider"],
        cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ),
        # a shell's background job inherits SIGINT ignored; the run under test must see it as a user would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (pytester.path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signum))
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out

    runs = [p for p in (pytester.path / "reports").iterdir() if p.is_dir() and not p.is_symlink()]
    partial = [json.loads((p / "claims.json").read_text()) for p in runs if p != complete]
    assert len(partial) == 1
    assert partial[0]["run"]["complete"] is False and partial[0]["run"]["finished"] is None
    assert [c["id"] for c in partial[0]["claims"]] == ["T.first"]
    assert (pytester.path / "reports" / "latest").resolve() == complete


def test_forward_passes_are_counted_per_claim_and_per_run(pytester, as_organism):
    pytester.makepyfile(test_fw='''
import pytest, torch
from mechclaims import proportion

@pytest.mark.claim(id="T.two")
def test_two(target, claim):
    with torch.no_grad():
        target.model(torch.ones(3, 5, dtype=torch.long))
        target.model(torch.ones(1, 4, dtype=torch.long))
    claim.record(proportion(1, 1))

@pytest.mark.claim(id="T.none")
def test_none(target, claim):
    claim.record(proportion(1, 1))
''')
    pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism").assert_outcomes(passed=2)
    report = _report(pytester)
    figures = {c["id"]: (c["figures"]["forward_calls"], c["figures"]["forward_tokens"]) for c in report["claims"]}
    assert figures == {"T.two": (2, 19), "T.none": (0, 0)}
    forwards = report["run"]["forwards"]["organism"]
    assert forwards.pop("seconds") > 0
    assert forwards == {"calls": 2, "tokens": 19, "layer_tokens": 2 * 19, "logit_positions": 19,
                        "attention_pairs": 2 * (3 * 15 + 10)}


def test_claim_properties_land_in_junit_xml(pytester, as_organism):
    import xml.etree.ElementTree as ET

    pytester.makepyfile(test_claims=CLAIMS)
    pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-k", "supported or refuted", "--junitxml", "junit.xml")
    cases = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in ET.parse(pytester.path / "junit.xml").iter("testcase")
    }
    assert cases["test_supported[organism]"]["claim_verdict"] == "supported"
    assert cases["test_supported[organism]"]["claim_n"] == "10"
    assert cases["test_refuted[organism]"]["claim_verdict"] == "refuted"
    assert cases["test_refuted[organism]"]["claim_id"] == "T.refuted"


@pytest.mark.slow
def test_xdist_workers_report_through_the_controller(pytester, as_organism):
    pytester.makepyfile(test_claims=CLAIMS)
    pytester.makepyfile(test_many="import pytest\nfrom mechclaims import proportion\n" + "\n".join(
        f'''
@pytest.mark.claim(id="T.{i}")
def test_{i}(target, claim):
    claim.record(proportion({i}, 10))
''' for i in range(6)))
    single = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:randomly")
    first = _report(pytester)
    parallel = pytester.runpytest_subprocess("--mechclaims-exploratory", "--mechclaims-target", "organism", "-n", "2",
                                                   "--dist", "load")
    second = _report(pytester)
    assert single.ret == parallel.ret == 1
    verdicts = lambda r: sorted((c["id"], c["verdict"], c["statistic"]) for c in r["claims"])  # noqa: E731
    assert verdicts(first) == verdicts(second) and len(second["claims"]) == 12
    assert 1 <= second["run"]["load_counts"]["organism"] <= 2
    assert len([p for p in (pytester.path / "reports").iterdir() if not p.is_symlink()]) == 2


def test_an_expectation_for_an_unknown_claim_id_is_a_usage_error(pytester, as_organism):
    pytester.makepyfile(test_control=NEGATIVE_CONTROL)
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text('[verdicts]\n"T.contrl" = "refuted"\n')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *organism.toml: [[]verdicts[]] names unknown claim ids T.contrl; claims defined in *: T.control"])


def test_minus_k_selects_claims_by_their_id(pytester, as_organism):
    pytester.makepyfile(test_ids="""
import pytest

@pytest.mark.claim(id="Q7.alpha")
def test_one(target, claim):
    pass

@pytest.mark.claim(id="Q8.beta")
def test_two(target, claim):
    pass
""")
    for expression in ("Q7", "alpha", "Q7 and not beta"):
        result = pytester.runpytest("--mechclaims-exploratory", "-k", expression, "--collect-only", "-q")
        out = result.stdout.str()
        assert "test_one" in out and "test_two" not in out, (expression, out)
