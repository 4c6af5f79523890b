"""No verdict without the evidence for it: an interval across its rule is inconclusive.

Every finding states whether it decides and the rules it rests on; a rule's verdict must be
what its interval reads, and a claim's verdict must follow from its rules. The end-to-end
test reads the rules back from ``claims.json`` and re-reads each interval here, with its own
arithmetic, so a wrong reading in the framework cannot also pass the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mechclaims as mc
from mechclaims.results import Rule

ROOT = Path(__file__).resolve().parents[1]


def _effect(low: float, high: float, p: float | None = None) -> mc.Effect:
    return mc.Effect((low + high) / 2, mc.Interval(low, high), 20, p)


# ------------------------------------------------------------------ the type


def test_a_finding_must_say_whether_it_decides():
    with pytest.raises(TypeError, match="decided"):
        mc.Finding(_effect(0.76, 0.99), False, "accuracy")  # the construction that made C0 refuted


def test_a_supported_finding_that_decides_nothing_is_refused():
    with pytest.raises(ValueError, match="supported finding is decided"):
        mc.Finding(_effect(0.9, 0.99), True, "accuracy", decided=False)


@pytest.mark.parametrize("kind, bound, low, high", [
    ("at_least", 0.8, 0.76, 0.99), ("at_most", 0.2, 0.1, 0.3), ("within", 0.1, -0.05, 0.15)])
def test_a_rule_refuses_a_verdict_its_interval_does_not_earn(kind, bound, low, high):
    effect = _effect(low, high)
    bound_low = -0.1 if kind == "within" else None
    for verdict in ("supported", "refuted"):
        with pytest.raises(ValueError, match="does not earn"):
            Rule("x", kind, bound, effect, verdict, bound_low)
    assert Rule("x", kind, bound, effect, "inconclusive", bound_low).reading() == "inconclusive"


def test_a_p_value_rule_is_never_refuted():
    with pytest.raises(ValueError, match="does not earn"):
        Rule("x", "p_below", 0.05, _effect(0.1, 0.2, p=0.9), "refuted")


def test_a_finding_whose_verdict_does_not_follow_from_its_rules_is_refused():
    crossing = mc.at_least(_effect(0.76, 0.99), 0.8, "accuracy")
    with pytest.raises(ValueError, match="rules imply inconclusive"):
        mc.Finding(crossing.effect, False, "accuracy", decided=True, rules=crossing.rules)


@pytest.mark.parametrize("check, low, high, verdict", [
    (lambda e: mc.at_least(e, 0.8, "a"), 0.76, 0.99, "inconclusive"),
    (lambda e: mc.at_least(e, 0.8, "a"), 0.5, 0.79, "refuted"),
    (lambda e: mc.at_least(e, 0.8, "a"), 0.8, 0.9, "inconclusive"),  # a bound on the threshold: a tie
    (lambda e: mc.at_least(e, 0.8, "a", inclusive=True), 0.8, 0.9, "supported"),  # ...that an integer rule decides
    (lambda e: mc.at_least(e, 0.8, "a"), 0.81, 0.9, "supported"),
    (lambda e: mc.at_most(e, 0.2, "a"), 0.1, 0.3, "inconclusive"),
    (lambda e: mc.at_most(e, 0.2, "a"), 0.21, 0.3, "refuted"),
    (lambda e: mc.equivalent(e, 0.1, "a"), 0.05, 0.15, "inconclusive"),
    (lambda e: mc.equivalent(e, 0.1, "a"), 0.11, 0.15, "refuted"),
    (lambda e: mc.equivalent(e, 0.1, "a", center=0.5), 0.45, 0.55, "supported"),
    (lambda e: mc.equivalent(e, 0.1, "a", center=0.5), 0.3, 0.39, "refuted"),
])
def test_each_check_reads_the_interval(check, low, high, verdict):
    finding = check(_effect(low, high))
    assert finding.verdict == verdict and [r.verdict for r in finding.rules] == [verdict]


def test_all_of_is_refuted_by_one_decided_part_and_undecided_by_a_crossing_one():
    crossing = mc.at_least(_effect(0.76, 0.99), 0.8, "accuracy")
    fine = mc.at_most(_effect(0.0, 0.1), 0.2, "baseline")
    wrong = mc.at_most(_effect(0.3, 0.4), 0.2, "baseline")
    assert mc.all_of(crossing, fine).verdict == "inconclusive"
    assert mc.all_of(crossing, wrong).verdict == "refuted"
    assert mc.all_of(fine, mc.at_least(_effect(0.85, 0.9), 0.8, "a")).verdict == "supported"
    assert len(mc.all_of(crossing, fine, wrong).rules) == 3


def test_c0_at_twenty_prompts_is_inconclusive_not_refuted():
    """The issue's case: 0.95 [0.764, 0.991] against 0.8 was called refuted."""
    import numpy as np

    from mechclaims_icl.claim0 import in_context

    with_context = np.array([True] * 19 + [False])
    finding = in_context(with_context, np.zeros(20, dtype=bool), "2x+3")
    assert finding.effect.ci.low < 0.8 < finding.effect.ci.high
    assert finding.verdict == "inconclusive"


# ------------------------------------------------------------------ end to end


def _read(rule: dict) -> str:
    """A rule's reading, recomputed from its JSON fields alone (independent of mechclaims)."""
    low, high = rule["ci"] if rule["ci"] else (None, None)
    bound = rule["bound"]
    if rule["kind"] == "holds":
        return rule["verdict"]
    if low is None or bound is None:
        return "inconclusive"
    if rule["kind"] == "at_least":
        return "supported" if low >= bound else "refuted" if high < bound else "inconclusive"
    if rule["kind"] == "at_most":
        return "supported" if high <= bound else "refuted" if low > bound else "inconclusive"
    if rule["kind"] == "within":
        floor = rule["bound_low"]
        return ("supported" if floor <= low and high <= bound
                else "refuted" if low > bound or high < floor else "inconclusive")
    if rule["kind"] == "p_below":
        return "supported" if rule["pvalue"] is not None and rule["pvalue"] < bound else "inconclusive"
    raise AssertionError(f"unknown rule kind {rule['kind']!r}")


def unearned(claims: list[dict]) -> list[str]:
    """Every verdict that its rules, re-read here, do not earn."""
    wrong = []
    for c in claims:
        if c["verdict"] not in ("supported", "refuted"):
            continue
        if not c["rules"]:
            wrong.append(f"{c['id']} on {c['target']}: {c['verdict']} with no rules")
            continue
        readings = [_read(r) for r in c["rules"]]
        for rule, reading in zip(c["rules"], readings):
            if rule["verdict"] != "inconclusive" and rule["verdict"] != reading:
                wrong.append(f"{c['id']}: rule {rule['what']!r} says {rule['verdict']}, its interval reads {reading}")
        if c["verdict"] == "supported" and any(r != "supported" for r in readings):
            wrong.append(f"{c['id']} on {c['target']}: supported but reads {readings}")
        if c["verdict"] == "refuted" and "refuted" not in readings:
            wrong.append(f"{c['id']} on {c['target']}: refuted but reads {readings}")
    return wrong


def test_the_checker_catches_a_forged_verdict():
    """Negative control of ``unearned``: an interval across its rule, reported refuted."""
    rule = {"what": "accuracy", "kind": "at_least", "bound": 0.8, "bound_low": None, "verdict": "refuted",
            "statistic": 0.95, "ci": [0.764, 0.991], "n": 20, "pvalue": None}
    forged = {"id": "C0.in-context", "target": "organism", "verdict": "refuted", "rules": [rule]}
    assert len(unearned([forged])) == 2
    assert unearned([{**forged, "rules": []}])
    assert not unearned([{**forged, "verdict": "inconclusive", "rules": [{**rule, "verdict": "inconclusive"}]}])


@pytest.mark.slow
def test_a_quick_run_of_the_pack_on_the_organism_earns_every_verdict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "--mechclaims-target", "organism", "--mechclaims-n-prompts", "20",
         "--mechclaims-cache", "off", "--mechclaims-report-dir", str(tmp_path), "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True,
    )
    claims = json.loads((tmp_path / "latest" / "claims.json").read_text())["claims"]
    by_id = {c["id"]: c for c in claims}
    assert by_id["C0.in-context"]["verdict"] == "inconclusive", proc.stdout[-3000:]
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED  # inconclusive where supported was pre-registered
    assert sum(c["verdict"] in ("supported", "refuted") for c in claims) >= 8
    assert unearned(claims) == []
