"""The CI workflow files are valid YAML and name every step a runner needs; they pass GitHub's
workflow schema and zizmor's audit; and the GPU runner has a trust boundary."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def _load(name):
    return yaml.safe_load((WORKFLOWS / name).read_text())


def _runs(job):
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_gpu_workflow_runs_the_gpu_claims_on_a_self_hosted_a100():
    jobs = _load("gpu-claims.yml")["jobs"]
    job = jobs["claims"]
    assert job["runs-on"] == ["self-hosted", "linux", "x64", "gpu", "a100"]
    runs = _runs(job)
    assert "pytest claims/ -m gpu" in runs
    assert "hf download meta-llama/Meta-Llama-3-8B" in _runs(jobs["weights"])
    assert "mechclaims compare baseline/latest reports/latest" in runs
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact") for u in uses)


def _bin(name):
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is a test dependency (pip install -e '.[test]')")
    return found


def test_the_workflows_validate_against_githubs_schema():
    proc = subprocess.run([_bin("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, sorted(WORKFLOWS.glob("*.yml")))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _zizmor(*args):
    return subprocess.run([_bin("zizmor"), "--offline", "--no-progress", *args, str(WORKFLOWS)],
                          capture_output=True, text=True, timeout=300)


def test_zizmor_finds_nothing_at_its_default_persona():
    proc = _zizmor()
    assert proc.returncode == 0 and "No findings" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_zizmor_as_auditor_finds_only_the_self_hosted_runner_which_docs_ci_explains():
    proc = _zizmor("--persona=auditor", "--format=json")
    findings = {f["ident"] for f in __import__("json").loads(proc.stdout)}
    assert findings == {"self-hosted-runner"}, proc.stdout[-3000:]
    assert "self-hosted" in (WORKFLOWS.parents[1] / "docs" / "ci.md").read_text()


def test_every_action_is_pinned_to_a_commit_and_checkout_keeps_no_credentials():
    for path in sorted(WORKFLOWS.glob("*.yml")):
        text = path.read_text()
        for job in yaml.safe_load(text)["jobs"].values():
            for step in job["steps"]:
                if "uses" not in step:
                    continue
                ref = step["uses"].partition("@")[2]
                assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), (path.name, step["uses"])
                line = next(ln for ln in text.splitlines() if step["uses"] in ln)
                assert "# v" in line, f"{path.name}: {step['uses']} names no version in a comment"
                if step["uses"].startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False


def test_the_gpu_runner_has_a_trust_boundary():
    flow = _load("gpu-claims.yml")
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as true
    assert set(on) == {"push", "pull_request", "workflow_dispatch"} and on["push"]["branches"] == ["main"]
    assert flow["permissions"] == {} and flow["concurrency"]["cancel-in-progress"]
    weights, claims = flow["jobs"]["weights"], flow["jobs"]["claims"]
    # HF_TOKEN only inside an environment, only on main
    assert weights["environment"] == "huggingface" and "refs/heads/main" in weights["if"]
    assert "secrets." not in str(claims)
    # a fork's pull request runs only on the event of the gpu-ok label; the repository's own branches run
    assert "github.event.pull_request.head.repo.full_name == github.repository" in claims["if"]
    assert "github.event.label.name == 'gpu-ok'" in claims["if"]
    # only main writes the shared cache; every other run reads it read-only
    run = next(s for s in claims["steps"] if s.get("name") == "Run the GPU claims")
    assert run["env"]["WRITES_SHARED_CACHE"] == (
        "${{ github.ref == 'refs/heads/main' && github.event_name != 'pull_request' }}")
    assert "mode=disk-readonly" in run["run"] and '--mechclaims-cache "$mode"' in run["run"]
    assert claims["permissions"] == {"contents": "read", "actions": "read"}


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
