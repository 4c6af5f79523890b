"""Installing mechclaims changes nothing for a pytest run that collects no claim: no torch, no
scipy, no environment variable, and no pack option in ``pytest --help``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import os, sys

def test_nothing_heavy_is_imported_and_the_environment_is_untouched():
    heavy = sorted({"torch", "scipy", "transformers", "transformer_lens"} & set(sys.modules))
    assert not heavy, heavy
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert "mechclaims.plugin" in sys.modules  # the plugin did load: the test checks something
'''


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=project,
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_plain.py").write_text(PROBE)
    return tmp_path


def test_a_project_without_claims_runs_without_torch(project):
    proc = _pytest(project, "-q")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_the_probe_fails_when_torch_is_imported(project):
    """Negative control: the same probe, in a project whose conftest imports torch, fails."""
    (project / "conftest.py").write_text("import torch\n")
    proc = _pytest(project, "-q")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED and "torch" in proc.stdout


def test_the_pack_option_appears_only_where_the_pack_is_used(project):
    assert "--mechclaims-task" not in _pytest(project, "--help").stdout
    assert "--mechclaims-target" in _pytest(project, "--help").stdout  # the core's options are there
    assert "--mechclaims-task" in _pytest(REPO, "claims/", "--help").stdout
    assert "--mechclaims-task" in _pytest(project, "-p", "mechclaims_icl.plugin", "--help").stdout


def test_import_mechclaims_is_light_and_names_resolve_on_use():
    code = ("import sys, mechclaims; assert 'torch' not in sys.modules and 'scipy' not in sys.modules; "
            "mechclaims.proportion; assert 'scipy' in sys.modules; "
            "assert sorted(mechclaims.__all__) == sorted(n for n in dir(mechclaims) if n in mechclaims.__all__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
