"""The llama-3-8b claim code, end to end on the CPU, against a tiny random 32-layer
Llama stand-in loaded through the same loader (so the GPU path is never untested)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tiny import write_tiny_llama

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama32") / "llama", n_layers=32)


@pytest.fixture
def gpu_claims(pytester, stand_in, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_LLAMA_3_8B_DIR", str(stand_in))
    # Copied under new names: tests/ has a test_claim1.py of its own.
    for name in ("conftest.py", "test_claim1.py", "test_claim0.py"):
        shutil.copy(CLAIMS_DIR / name, pytester.path / name.replace("test_", "test_pack_"))
    shutil.copytree(CLAIMS_DIR / "expectations", pytester.path / "expectations")
    return pytester


def _run(pytester):
    result = pytester.runpytest(
        "-m", "gpu", "--mechclaims-device", "cpu", "--mechclaims-dtype", "float32", "-p", "no:cacheprovider"
    )
    return result, json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())


def test_gpu_claims_run_on_the_stand_in_and_are_not_applicable(gpu_claims):
    result, report = _run(gpu_claims)
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert set(verdicts) >= {"C0.in-context", "C1.onset", "C1.redundancy"}
    assert all(v == "not-applicable" for k, v in verdicts.items() if k.startswith("C1."))
    assert report["run"]["targets"]["llama-3-8b"]["n_layers"] == 32


def test_the_post_layers_drive_the_full_study_on_the_stand_in(gpu_claims, monkeypatch):
    from mechclaims import claim1

    monkeypatch.setattr(claim1, "MIN_ACCURACY", -1.0)  # claim1 binds C0's threshold at import  # a random model: run past the precondition
    result, report = _run(gpu_claims)
    c1 = {c["id"]: c for c in report["claims"] if c["id"].startswith("C1.")}
    assert len(c1) == 8
    assert all(c["verdict"] in ("supported", "refuted") for c in c1.values()), {k: c["message"] for k, c in c1.items()}
    assert c1["C1.backup-13"]["figures"]["layer"] == 13 and c1["C1.backup-15"]["figures"]["layer"] == 15
    assert "ablate 10+11" in c1["C1.ablate-10-11"]["message"]
