"""The induction example pack, in a reduced form (20 prompts per split): its pre-registration
on SmolLM2-135M confirms, and the same claims refute when the pre-registered heads are wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end claim runs: the quick tier (make test-quick) leaves them out

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "examples" / "induction"


def _run(pack: Path, reports: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(pack), "--mechclaims-target", "smollm2-135m", "--mechclaims-n-prompts",
         "20", "--mechclaims-report-dir", str(reports), "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    report = reports / "latest" / "claims.json"
    claims = json.loads(report.read_text())["claims"] if report.exists() else []
    return proc, {c["id"]: c for c in claims}


def test_the_induction_pack_confirms_its_preregistration_and_its_negative_control_refutes(tmp_path):
    proc, claims = _run(PACK, tmp_path / "reports")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert {cid: c["verdict"] for cid, c in claims.items()} == {
        "I.attention": "supported", "I.attention-without-repeats": "refuted", "I.ablation": "supported"}
    assert all(c["as_expected"] for c in claims.values()) and all(c["n"] == 20 for c in claims.values())


def test_the_induction_claims_refute_with_heads_that_are_not_induction_heads(tmp_path):
    """Negative control of the claim code itself: the first heads of layer 0 pre-registered instead."""
    pack = tmp_path / "induction"
    shutil.copytree(PACK, pack, ignore=shutil.ignore_patterns("__pycache__"))
    toml = pack / "expectations" / "smollm2-135m.toml"
    text = toml.read_text()
    start = text.index("heads = ")
    toml.write_text(text[:start] + "heads = [[0, 0], [0, 1], [0, 2], [0, 3]]" + text[text.index("\n", start):])
    proc, claims = _run(pack, tmp_path / "reports", "-k", "not without")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert claims["I.attention"]["verdict"] == "refuted" and claims["I.ablation"]["verdict"] == "refuted"
    assert "UNEXPECTED" in proc.stdout
