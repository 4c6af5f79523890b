"""--mechclaims-shard K/N and mechclaims merge: a run split over machines, one report at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mechclaims.cli import main
from mechclaims.errors import ConfigError
from mechclaims.shards import assign, exit_status, merge, parse

pytestmark = pytest.mark.ray  # pytest tests/ -k ray: everything past one machine
REPO = Path(__file__).resolve().parents[1]


def test_a_shard_spec_is_k_of_n():
    assert (parse("2/3").index, parse("2/3").count) == (2, 3)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match=rf"invalid shard '{bad}': expected K/N with 1 <= K <= N"):
            parse(bad)


def test_groups_are_dealt_round_the_shards_the_same_way_everywhere():
    groups = ["organism", "smollm2-135m", "organism-control", "organism"]
    placed = assign(groups, 2)
    assert placed == {"organism": 1, "organism-control": 2, "smollm2-135m": 1}
    assert assign(reversed(groups), 2) == placed  # the order tests were collected in does not matter
    assert set(assign(groups, 5).values()) == {1, 2, 3}  # more shards than groups: some are empty


def _shard(k: int, n: int, claims: list[tuple[str, str, str]], **run) -> dict:
    return {"schema_version": 1, "run": {
        "git_commit": "abc", "seed": 0, "settings": {"profile": "ci"}, "complete": True, "header": f"h{k}",
        "started": f"2026-01-01T00:0{k}:00", "finished": f"2026-01-01T00:1{k}:00", "shard": {"index": k, "count": n},
        "expectations": {t: {"path": f"{t}.toml", "sha256": "s-" + t} for _, t, _ in claims}, **run},
        "claims": [{"id": cid, "target": t, "verdict": v, "expected": v, "as_expected": True, "statistic": 0.5,
                    "ci": [0.4, 0.6], "n": 10} for cid, t, v in claims]}


def test_merge_joins_the_shards_of_one_run():
    a = _shard(1, 2, [("C1.onset", "organism", "supported")])
    b = _shard(2, 2, [("C1.onset", "organism-control", "refuted")])
    record = merge([("b", b), ("a", a)])
    assert [(c["id"], c["target"]) for c in record["claims"]] == [("C1.onset", "organism-control"),
                                                                   ("C1.onset", "organism")]
    assert [s["index"] for s in record["run"]["shards"]] == [1, 2] and record["run"]["complete"]
    assert set(record["run"]["expectations"]) == {"organism", "organism-control"}
    assert exit_status(record) == 0
    b["claims"][0]["as_expected"] = False  # one unexpected verdict fails the merged run, as it would one run
    assert exit_status(merge([("a", a), ("b", b)])) == 1


@pytest.mark.parametrize("change, message", [
    (lambda a, b: b["run"].update(git_commit="def"), r"b and a differ in run.git_commit \('def' != 'abc'\)"),
    (lambda a, b: b["run"].update(seed=1), r"differ in run.seed \(1 != 0\)"),
    (lambda a, b: b["claims"].append(dict(a["claims"][0])), "claim C1.onset on organism is reported twice: by a and by b"),
    (lambda a, b: b["run"]["expectations"].update(organism={"sha256": "other"}),
     "b and a judged organism against different pre-registrations"),
    (lambda a, b: b["run"].update(shard={"index": 1, "count": 2}), "shard 1/2 is given twice: a and b"),
    (lambda a, b: b["run"].update(shard={"index": 3, "count": 3}), "different splits"),
    (lambda a, b: b["run"].pop("shard"), "b: not a shard's report"),
])
def test_merge_refuses_shards_that_are_not_one_run(change, message):
    a = _shard(1, 2, [("C1.onset", "organism", "supported")])
    b = _shard(2, 2, [("C1.onset", "organism-control", "refuted")])
    change(a, b)
    with pytest.raises(ConfigError, match=message):
        merge([("a", a), ("b", b)])


def test_merge_lists_the_missing_shards():
    with pytest.raises(ConfigError, match=r"shard\(s\) 2/4, 4/4 missing: merge needs all 4 shards"):
        merge([("a", _shard(1, 4, [])), ("c", _shard(3, 4, []))])


def test_a_shard_that_failed_is_errored_in_the_merge_and_the_rest_kept():
    a = _shard(1, 3, [("C1.onset", "organism", "supported")])
    c = _shard(3, 3, [("C1.onset", "smollm2-135m", "supported")])
    failed = {"index": 2, "count": 3, "error": "shard 2/3 failed after 3 attempt(s): node died", "targets": ["organism-control"]}
    record = merge([("a", a), ("c", c)], failed=[failed])
    assert [(s["index"], s["complete"], s.get("errored")) for s in record["run"]["shards"]] == [
        (1, True, None), (2, False, failed["error"]), (3, True, None)]
    assert record["run"]["target_errors"] == {"organism-control": failed["error"]}
    assert len(record["claims"]) == 2 and not record["run"]["complete"] and exit_status(record) == 1
    with pytest.raises(ConfigError, match=r"shard\(s\) 3/3 missing"):  # a failed shard is not a missing one
        merge([("a", a)], failed=[failed])
    with pytest.raises(ConfigError, match="shard 1/3 is given twice: failed shard 1/3 and a"):
        merge([("a", a), ("c", c)], failed=[failed, {**failed, "index": 1}])


def test_a_shard_whose_pytest_failed_fails_the_merge_even_with_no_claim():
    """A shard stopped by a usage error (a target with no pre-registration) writes a complete
    report with no claim: its exit status, not its claims, says that it failed."""
    a = _shard(1, 2, [("C1.onset", "organism", "supported")], exit_status=0)
    b = _shard(2, 2, [], exit_status=4)
    record = merge([("a", a), ("b", b)])
    assert [s["exit_status"] for s in record["run"]["shards"]] == [0, 4]
    assert exit_status(record) == 1
    b["run"]["exit_status"] = 0  # control: the same shards, both exiting 0
    assert exit_status(merge([("a", a), ("b", b)])) == 0


def test_a_node_without_the_weights_is_named_in_the_targets_error(monkeypatch):
    from mechclaims.session import ClaimSession

    monkeypatch.setenv("MECHCLAIMS_NODE", "gpu-07 (10.0.0.7, node 1a2b3c4d)")
    session = ClaimSession.__new__(ClaimSession)
    session.target_errors = {}
    line = session.fail_target("llama-3-8b", "weights directory /models/llama does not exist")
    assert session.target_errors["llama-3-8b"].endswith("does not exist (on node gpu-07 (10.0.0.7, node 1a2b3c4d))")
    assert "on node gpu-07" in line


def test_the_merge_command_writes_one_report_and_exits_as_one_run(tmp_path, capsys):
    paths = []
    for k, (target, verdict) in enumerate((("organism", "supported"), ("organism-control", "refuted")), start=1):
        run = tmp_path / f"shard{k}"
        run.mkdir()
        (run / "claims.json").write_text(json.dumps(_shard(k, 2, [("C1.onset", target, verdict)])))
        paths.append(str(run))
    assert main(["merge", *paths, "--out", str(tmp_path / "merged")]) == 0
    assert "merged 2 shards, 2 claims, 0 unexpected" in capsys.readouterr().out
    merged = tmp_path / "merged" / "latest"
    assert len(json.loads((merged / "claims.json").read_text())["claims"]) == 2
    assert (merged / "claims.md").is_file() and (merged / "index.html").is_file()
    assert main(["merge", paths[0], "--out", str(tmp_path / "merged")]) == 2  # a shard missing
    assert "shard(s) 2/2 missing" in capsys.readouterr().err


def _claims(*args: str, reports: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "--mechclaims-target", "organism", "--mechclaims-target",
         "organism-control", "--mechclaims-report-dir", str(reports), "-p", "no:cacheprovider", "-q", *args],
        cwd=REPO, capture_output=True, text=True, timeout=3000, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_two_shards_merged_equal_one_run(tmp_path):
    """The post's claims on both organisms: shards 1/2 and 2/2, merged, give the verdicts and
    figures of one run; mechclaims compare finds nothing changed."""
    whole = _claims(reports=tmp_path / "whole")
    assert whole.returncode == 0, whole.stdout[-3000:]
    parts = []
    for k in (1, 2):
        part = _claims("--mechclaims-shard", f"{k}/2", reports=tmp_path / f"shard{k}")
        assert part.returncode == 0, part.stdout[-3000:]
        run = json.loads((tmp_path / f"shard{k}" / "latest" / "claims.json").read_text())
        assert {c["target"] for c in run["claims"]} == {"organism" if k == 1 else "organism-control"}
        assert run["run"]["load_counts"] == {run["claims"][0]["target"]: 1}  # each shard loads only its model
        parts.append(str(tmp_path / f"shard{k}" / "latest"))
    assert main(["merge", *parts, "--out", str(tmp_path / "merged")]) == 0
    one = json.loads((tmp_path / "whole" / "latest" / "claims.json").read_text())["claims"]
    merged = json.loads((tmp_path / "merged" / "latest" / "claims.json").read_text())["claims"]
    figures = lambda claims: {(c["id"], c["target"]): (c["verdict"], c["statistic"], c["ci"], c["n"])  # noqa: E731
                              for c in claims}
    assert figures(merged) == figures(one) and len(one) == 32
    compare = subprocess.run([sys.executable, "-m", "mechclaims.cli", "compare", str(tmp_path / "whole" / "latest"),
                              str(tmp_path / "merged" / "latest")], capture_output=True, text=True, timeout=300)
    assert compare.returncode == 0 and "0 changed, 0 regressed" in compare.stdout, compare.stdout


CLAIM = '''
import pytest
from mechclaims import at_least, proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    claim.judge(at_least(proportion(9, 10), 0.5, "accuracy"))
'''


def test_a_shard_runs_its_targets_and_an_empty_shard_still_reports(pytester, as_organism):
    pytester.makepyfile(test_x=CLAIM)
    first = pytester.runpytest("--mechclaims-target", "organism", "--mechclaims-exploratory", "--mechclaims-shard",
                               "1/2", "-p", "no:cacheprovider")
    assert first.ret == pytest.ExitCode.OK
    first.stdout.fnmatch_lines(["*shard 1/2*"])
    run = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())
    assert run["run"]["shard"] == {"index": 1, "count": 2} and [c["id"] for c in run["claims"]] == ["T.x"]
    second = pytester.runpytest("--mechclaims-target", "organism", "--mechclaims-exploratory", "--mechclaims-shard",
                                "2/2", "--mechclaims-report-dir", "other", "-p", "no:cacheprovider")
    assert second.ret == pytest.ExitCode.OK  # not pytest's "no tests collected": the shard did its part
    empty = json.loads((pytester.path / "other" / "latest" / "claims.json").read_text())
    assert empty["run"]["shard"] == {"index": 2, "count": 2} and empty["claims"] == []
    assert exit_status(merge([("1", run), ("2", empty)])) == 0


def test_a_bad_shard_option_is_a_usage_error(pytester, as_organism):
    pytester.makepyfile(test_x=CLAIM)
    result = pytester.runpytest("--mechclaims-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid shard '3/2': expected K/N with 1 <= K <= N*"])


def test_the_merge_command_names_a_shard_whose_pytest_failed(tmp_path, capsys):
    for k, status in ((1, 0), (2, 4)):
        run = tmp_path / f"s{k}"
        run.mkdir()
        claims = [("C1.onset", "organism", "supported")] if k == 1 else []
        (run / "claims.json").write_text(json.dumps(_shard(k, 2, claims, exit_status=status)))
    assert main(["merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "out")]) == 1
    assert f"FAILED shard 2/2 exited 4 (its report: {tmp_path / 's2' / 'claims.json'})" in capsys.readouterr().out
