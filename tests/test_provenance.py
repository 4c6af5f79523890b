"""What a report records about how its verdicts were reached: the pre-registration's bytes, an
uncommitted tree, each claim's wall time and statistics seed; and which targets a claim runs on."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ONE_CLAIM = '''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)

@pytest.mark.claim(id="T.only", targets=["organism"])
def test_only(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)
'''


def _report(pytester) -> dict:
    return json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())


def test_the_report_records_the_expectations_file_bytes_and_each_claims_wall_time(pytester, as_organism):
    (pytester.path / "expectations").mkdir()
    toml = pytester.path / "expectations" / "organism.toml"
    toml.write_text('target = "organism"\n[verdicts]\n"T.x" = "supported"\n')
    pytester.makepyfile(test_x=ONE_CLAIM)
    assert pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:cacheprovider").ret == 0
    run = _report(pytester)["run"]
    assert run["expectations"]["organism"] == {"path": str(toml), "sha256": hashlib.sha256(toml.read_bytes()).hexdigest()}
    shown = f"sha256 {hashlib.sha256(toml.read_bytes()).hexdigest()[:16]}"  # in the views people read too
    latest = pytester.path / "reports" / "latest"
    assert shown in (latest / "index.html").read_text() and shown in (latest / "claims.md").read_text()
    assert "git_dirty" in run and run["git_dirty"] is None  # not a git checkout here
    seconds = [c["figures"]["wall_seconds"] for c in _report(pytester)["claims"]]
    assert seconds and all(isinstance(s, float) and s >= 0 for s in seconds)


def test_git_dirty_says_whether_tracked_files_changed(tmp_path):
    from mechclaims.session import git_dirty

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                            "GIT_COMMITTER_EMAIL": "t@t"})

    git("init", "-q")
    (tmp_path / "a.toml").write_text("x = 1\n")
    git("add", "a.toml")
    git("commit", "-q", "-m", "a")
    assert git_dirty(tmp_path) is False
    (tmp_path / "a.toml").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True


def test_a_claim_limited_to_some_targets_runs_only_on_them(pytester, as_organism, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_CONTROL_DIR", str(as_organism))
    pytester.makepyfile(test_x=ONE_CLAIM)
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "--mechclaims-target", "organism-control",
                                "-p", "no:cacheprovider")
    assert result.ret == 0
    ran = sorted((c["id"], c["target"]) for c in _report(pytester)["claims"])
    assert ran == [("T.only", "organism"), ("T.x", "organism"), ("T.x", "organism-control")]
    result.stdout.fnmatch_lines(["*1 deselected*"])


def test_a_bad_targets_list_is_a_usage_error(pytester, as_organism):
    pytester.makepyfile(test_x='''
import pytest

@pytest.mark.claim(id="T.x", targets="organism")
def test_x(target, claim):
    pass
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*targets='organism'; expected a list of target names*"])


@pytest.mark.slow
def test_resampling_statistics_are_seeded_by_the_run_seed_and_record_it(tmp_path):
    """Claim 1's bootstrap on the shipped organism takes --mechclaims-seed, and the report says so."""
    work = tmp_path / "w"
    shutil.copytree(REPO / "claims", work / "claims", ignore=shutil.ignore_patterns("__pycache__"))
    records = {}
    for seed in (0, 3):
        reports = tmp_path / f"r{seed}"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "claims/test_claim1.py", "--mechclaims-target", "organism", "-k",
             "C1.onset", "--mechclaims-seed", str(seed), "-p", "no:cacheprovider", "--mechclaims-report-dir",
             str(reports)],
            cwd=work, capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_CACHE_DIR": str(tmp_path / "cache")},
        )
        records[seed] = json.loads((reports / "latest" / "claims.json").read_text())
        assert records[seed]["claims"], proc.stdout[-2000:]
    for seed, record in records.items():
        (onset,) = [c for c in record["claims"] if c["id"] == "C1.onset"]
        assert onset["figures"]["statistics_seed"] == seed and record["run"]["seed"] == seed


def test_two_pre_registrations_of_one_target_are_both_recorded(tmp_path):
    """Claims from two directories judged against two files for one target: the report keeps
    both (the second under ``also``), also when an xdist worker reports them."""
    from mechclaims.session import ClaimSession
    from mechclaims.settings import Settings

    first, second = {"path": "claims/expectations/organism.toml", "sha256": "a"}, {"path": "ex/organism.toml", "sha256": "b"}
    session = ClaimSession(Settings(), tmp_path)
    session.note_expectations("organism", first)
    session.note_expectations("organism", dict(first))
    session.note_expectations("organism", second)
    assert session.expectation_files == {"organism": {**first, "also": [second]}}
    controller = ClaimSession(Settings(), tmp_path)
    controller.record({"claim": {}, "targets": {}, "worker": "gw0", "expectation_files": session.expectation_files})
    assert controller.expectation_files == {"organism": {**first, "also": [second]}}
