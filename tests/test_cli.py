"""The mechclaims command: report and compare, with clear errors for bad files."""

from __future__ import annotations

import json

import pytest

from mechclaims.cli import main


def _run(tmp_path, name, verdicts, schema=1, complete=True, expected=None):
    run = tmp_path / name
    run.mkdir()
    record = {
        "schema_version": schema,
        "run": {"header": "h", "seed": 0, "targets": {}, "complete": complete},
        "claims": [
            {"id": cid, "target": "organism", "verdict": v, "statistic": s, "ci": [0.0, 1.0], "n": 10,
             "expected": (expected or {}).get(cid)}
            for cid, (v, s) in verdicts.items()
        ],
    }
    (run / "claims.json").write_text(json.dumps(record))
    return run


def test_compare_exits_nonzero_on_a_regression(tmp_path, capsys):
    a = _run(tmp_path, "a", {"C1.onset": ("supported", 3.0), "C1.redundancy": ("supported", 0.0)})
    b = _run(tmp_path, "b", {"C1.onset": ("refuted", 5.0), "C1.redundancy": ("supported", 0.0)})
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION C1.onset [organism]: supported -> refuted; statistic 3.0 -> 5.0" in out
    assert "1 changed, 1 regressed" in out


def test_compare_exits_zero_without_a_regression(tmp_path, capsys):
    a = _run(tmp_path, "a", {"C1.onset": ("supported", 5.0)})
    b = _run(tmp_path, "b", {"C1.onset": ("supported", 3.0)})  # a figure moved, the verdict did not
    assert main(["compare", str(a), str(b / "claims.json")]) == 0
    assert "1 changed, 0 regressed" in capsys.readouterr().out


@pytest.mark.parametrize("registered_in", ["both", "old", "new"])
def test_compare_fails_on_a_negative_control_turning_supported(tmp_path, capsys, registered_in):
    """The CI gate's worst miss: a control pre-registered refuted that starts passing."""
    control = {"C3.y-to-prey": "refuted"}
    a = _run(tmp_path, "a", {"C3.y-to-prey": ("refuted", -0.1)}, expected=control if registered_in != "new" else None)
    b = _run(tmp_path, "b", {"C3.y-to-prey": ("supported", 0.4)}, expected=control if registered_in != "old" else None)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION C3.y-to-prey [organism]: refuted -> supported (pre-registered refuted)" in out


def test_without_a_preregistration_any_change_of_verdict_fails_the_gate(tmp_path, capsys):
    a = _run(tmp_path, "a", {"C1.onset": ("refuted", 5.0)})
    b = _run(tmp_path, "b", {"C1.onset": ("supported", 3.0)})  # a control nobody registered looks the same
    assert main(["compare", str(a), str(b)]) == 1
    assert "REGRESSION C1.onset [organism]: refuted -> supported" in capsys.readouterr().out


def test_report_renders_markdown_and_html(tmp_path):
    run = _run(tmp_path, "a", {"C1.onset": ("supported", 3.0)})
    assert main(["report", str(run)]) == 0
    text = (run / "claims.md").read_text()
    assert "## C1.onset" in text and "| organism | supported |" in text
    page = (run / "index.html").read_text()
    assert '<a href="#claim-C1.onset--organism">C1.onset</a>' in page and "badge v-supported" in page


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"schema_version": 0, "run": {}, "claims": []}), "schema_version 0 is not supported; this mechclaims reads version 1"),
        (json.dumps({"schema_version": 1, "claims": []}), "missing key 'run'"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": "t", "verdict": "maybe"}]}), "verdict 'maybe' is not one of"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": {"id": "x"}}), "'claims' must be a list, got dict"),
        (json.dumps({"schema_version": 1, "run": [], "claims": []}), "'run' must be an object, got list"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": ["x"]}), "claims[0] must be an object, got str"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": "t", "verdict": "refuted", "figures": [1]}]}),
         "claims[0].figures must be an object, got list"),
        (json.dumps({"run": {}, "claims": []}), "schema_version None is not supported"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": ["x"], "target": "t", "verdict": "refuted"}]}),
         "claims[0].id must be a non-empty string, got ['x']"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": 3, "verdict": "refuted"}]}),
         "claims[0].target must be a string or null, got 3"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": "t", "verdict": "refuted",
                                                                "statistic": "big"}]}),
         "claims[0].statistic must be a number or null, got 'big'"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": "t", "verdict": "refuted",
                                                                "expected": "yes"}]}),
         "claims[0].expected 'yes' is not one of"),
        (json.dumps({"schema_version": 1, "run": {}, "claims": [{"id": "x", "target": "t", "verdict": "refuted"},
                                                               {"id": "x", "target": "t", "verdict": "supported"}]}),
         "claims[1] repeats claim id 'x' on target 't' (also claims[0])"),
    ],
)
def test_broken_files_get_one_clear_error(tmp_path, capsys, content, message):
    bad = tmp_path / "claims.json"
    bad.write_text(content)
    good = _run(tmp_path, "good", {"C1.onset": ("supported", 3.0)})
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and err.count("\n") == 1
    assert main(["report", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err and err.count("\n") == 1
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "claims.md").exists()


def test_compare_regresses_on_a_move_to_errored_from_refuted(tmp_path, capsys):
    """A negative control that starts erroring is no improvement: refuted -> errored regressed."""
    a = _run(tmp_path, "a", {"C3.y-to-prey": ("refuted", -0.1)}, expected={"C3.y-to-prey": "refuted"})
    b = _run(tmp_path, "b", {"C3.y-to-prey": ("errored", None)}, expected={"C3.y-to-prey": "refuted"})
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION C3.y-to-prey [organism]: refuted -> errored (pre-registered refuted)" in out
    c = _run(tmp_path, "c", {"C3.y-to-prey": ("errored", None)})  # no pre-registration: errored still regresses
    assert main(["compare", str(_run(tmp_path, "d", {"C3.y-to-prey": ("refuted", -0.1)})), str(c)]) == 1


def test_compare_regresses_on_any_move_away_from_the_preregistration(tmp_path, capsys):
    a = _run(tmp_path, "a", {"C1.parity-late": ("refuted", 0.0)}, expected={"C1.parity-late": "refuted"})
    b = _run(tmp_path, "b", {"C1.parity-late": ("inconclusive", 0.0)}, expected={"C1.parity-late": "refuted"})
    assert main(["compare", str(a), str(b)]) == 1
    # negative control: a move towards the pre-registration is no regression
    assert main(["compare", str(b), str(a)]) == 0
    assert "1 changed, 0 regressed" in capsys.readouterr().out.splitlines()[-1]


def test_a_verdict_already_off_its_preregistration_regresses_only_when_it_moves(tmp_path, capsys):
    """A stand-in refutes what the real model supports, in both runs: a last-digit change of its
    statistic is listed, not a regression; its verdict moving further (to errored) is one."""
    expected = {"C2.log-additive": "supported"}
    a = _run(tmp_path, "a", {"C2.log-additive": ("refuted", 0.0013163689712885048)}, expected=expected)
    b = _run(tmp_path, "b", {"C2.log-additive": ("refuted", 0.0013163689712883298)}, expected=expected)
    assert main(["compare", str(a), str(b)]) == 0
    assert "1 changed, 0 regressed" in capsys.readouterr().out.splitlines()[-1]
    c = _run(tmp_path, "c", {"C2.log-additive": ("errored", None)}, expected=expected)
    assert main(["compare", str(a), str(c)]) == 1
    assert "REGRESSION C2.log-additive [organism]: refuted -> errored (pre-registered supported)" in capsys.readouterr().out


def test_compare_fails_on_an_incomplete_run(tmp_path, capsys):
    a = _run(tmp_path, "a", {"C1.onset": ("supported", 3.0)})
    b = _run(tmp_path, "b", {"C1.onset": ("supported", 3.0)}, complete=False)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"INCOMPLETE run B: {b / 'claims.json'} stopped before every claim had a verdict" in out
    assert out.splitlines()[-1] == "0 changed, 0 regressed, 1 incomplete"
    assert main(["compare", str(a), str(_run(tmp_path, "c", {"C1.onset": ("supported", 3.0)}))]) == 0


def test_compare_holds_an_undecided_claim_to_the_old_run(tmp_path, capsys):
    """Undecided at discovery predicts nothing: the old run is the baseline, as without one."""
    undecided = {"C1.onset-robust": "undecided"}
    a = _run(tmp_path, "a", {"C1.onset-robust": ("refuted", 5.0)}, expected=undecided)
    same = _run(tmp_path, "same", {"C1.onset-robust": ("refuted", 4.0)}, expected=undecided)
    moved = _run(tmp_path, "moved", {"C1.onset-robust": ("supported", 3.0)}, expected=undecided)
    assert main(["compare", str(a), str(same)]) == 0  # refuted twice: not a move away from "undecided"
    assert main(["compare", str(a), str(moved)]) == 1
    assert "REGRESSION C1.onset-robust [organism]: refuted -> supported (pre-registered undecided)" in capsys.readouterr().out
