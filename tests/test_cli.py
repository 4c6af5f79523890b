"""The mechclaims command: report and compare, with clear errors for bad files."""

from __future__ import annotations

import json

import pytest

from mechclaims.cli import main


def _run(tmp_path, name, verdicts, schema=1):
    run = tmp_path / name
    run.mkdir()
    record = {
        "schema_version": schema,
        "run": {"header": "h", "seed": 0, "targets": {}},
        "claims": [
            {"id": cid, "target": "organism", "verdict": v, "statistic": s, "ci": [0.0, 1.0], "n": 10}
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
    a = _run(tmp_path, "a", {"C1.onset": ("refuted", 5.0)})
    b = _run(tmp_path, "b", {"C1.onset": ("supported", 3.0)})
    assert main(["compare", str(a), str(b / "claims.json")]) == 0
    assert "1 changed, 0 regressed" in capsys.readouterr().out


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
         "claims[0] figures must be an object, got list"),
        (json.dumps({"run": {}, "claims": []}), "schema_version None is not supported"),
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
