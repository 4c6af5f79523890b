"""``--mechclaims-task A,B``: the post's claims on another task, judged against that task's own
pre-registration (``expectations/<target>@<task>.toml``), which discovery writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "claims/test_claim0.py", "--mechclaims-target", "organism", "-p",
         "no:cacheprovider", *args], cwd=project, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_ORGANISM_DIR": str(REPO / "fixtures" / "organism")},
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "claims", tmp_path / "claims", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pyproject.toml").write_text("")
    return tmp_path


def test_a_task_without_its_own_preregistration_is_one_line(project):
    proc = _run(project, "--mechclaims-task", "4,17")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "organism@4x+17.toml: no pre-registration for target 'organism'" in errors[0]


@pytest.mark.slow
def test_each_task_is_judged_against_its_own_file(project):
    default = project / "claims" / "expectations" / "organism.toml"
    own = default.with_name("organism@4x+17.toml")
    own.write_text(default.read_text().replace("[task]\na = 2\nb = 3", "[task]\na = 4\nb = 17"))
    for task, path in (("2,3", default), ("4,17", own)):
        proc = _run(project, "--mechclaims-task", task)
        assert proc.returncode == 0, proc.stdout[-2000:]
        run = json.loads((project / "reports" / "latest" / "claims.json").read_text())["run"]
        assert run["expectations"]["organism"]["path"] == str(path)


@pytest.mark.parametrize("value", ["0,1", "2", "a,b"])
def test_a_bad_task_is_a_usage_error(project, value):
    proc = _run(project, "--mechclaims-task", value)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR and f"invalid task {value!r}" in proc.stderr
