"""The CI workflow files are valid YAML and name every step a runner needs."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def _load(name):
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _runs(job):
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_gpu_workflow_runs_the_gpu_claims_on_a_self_hosted_a100():
    job = _load("gpu-claims.yml")["jobs"]["claims"]
    assert job["runs-on"] == ["self-hosted", "linux", "x64", "gpu", "a100"]
    runs = _runs(job)
    assert "pytest claims/ -m gpu" in runs
    assert "hf download meta-llama/Meta-Llama-3-8B" in runs
    assert "mechclaims compare baseline/latest reports/latest" in runs
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    assert "secrets.HF_TOKEN" in str(job)


def test_cpu_workflow_runs_the_readme_commands():
    job = _load("cpu-tests.yml")["jobs"]["test"]
    runs = _runs(job)
    assert "make test" in runs and "make claims" in runs


def test_the_gpu_workflow_installs_the_makefiles_pins_and_names_no_version_itself():
    """One source of pins: the Makefile's env target (ranges from pyproject.toml)."""
    runs = _runs(_load("gpu-claims.yml")["jobs"]["claims"])
    assert "make env TORCH=" in runs
    assert "pip install" not in runs and "==" not in runs and "<2." not in runs
    makefile = (WORKFLOWS.parents[1] / "Makefile").read_text()
    assert "TORCH   ?= torch==2.13.0" in makefile and "$(if $(TORCH)," in makefile
