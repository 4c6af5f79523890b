"""The disk cache serves only what the code that runs would compute (issue: an edited
intervention was answered from the old code's entries), and a read-only run changes nothing."""

from __future__ import annotations

import pytest

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from mechclaims.interventions import AblateHeads, forward, resid_pre
from mechclaims.store import ActivationStore, attach

REPO = Path(__file__).resolve().parents[1]
# The ablation claims of Claim 1 on the shipped organism: what a disabled ablation changes.
ABLATION_CLAIMS = "C1.ablate-10-11 or C1.backup-13 or C1.redundancy"


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``directory``: its SHA-256 and modification time (ns)."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_a_read_only_store_reads_entries_and_writes_or_touches_nothing(tiny_model, tmp_path):
    tokens = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    heads = AblateHeads(((0, 0),), position=None)
    writer = ActivationStore(model_key="m", mode="disk", directory=tmp_path, version="v")
    attach(tiny_model, writer)
    try:
        warm = forward(tiny_model, tokens, names=[resid_pre(1)], interventions=[heads]).acts[resid_pre(1)]
        before = snapshot(tmp_path)
        reader = ActivationStore(model_key="m", mode="disk-readonly", directory=tmp_path, version="v")
        attach(tiny_model, reader)
        served = forward(tiny_model, tokens, names=[resid_pre(1)], interventions=[heads]).acts[resid_pre(1)]
        forward(tiny_model, tokens[:1], names=[resid_pre(1)])  # a miss: computed, not written
        reader.derived("kind", "key", 0, lambda: {"a": torch.ones(2).numpy()})
    finally:
        attach(tiny_model, None)
    assert torch.equal(served, warm) and reader.stats.disk_hits == 1
    assert reader.stats.computed == 2 and reader.stats.disk_writes == 0
    assert snapshot(tmp_path) == before


def _project(tmp_path: Path) -> Path:
    """A copy of the project whose own ``src`` is the code that runs."""
    project = tmp_path / "project"
    for name in ("src", "claims"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "conftest.py"):
        shutil.copy(REPO / name, project / name)
    return project


def _run(project: Path, cache: Path, mode: str, reports: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_FIXTURES_DIR": str(REPO / "fixtures"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(project / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/test_claim1.py", "--mechclaims-target", "organism",
         "-k", ABLATION_CLAIMS, "--mechclaims-cache", mode, "--mechclaims-cache-dir", str(cache),
         "--mechclaims-report-dir", str(reports), "-p", "no:cacheprovider", "-q"],
        cwd=project, env=env, capture_output=True, text=True, timeout=1800,  # a hang guard: ~20 s unloaded
    )
    path = reports / "latest" / "claims.json"
    assert path.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(path.read_text())
    assert record["claims"], proc.stdout[-3000:]
    return record


def _figures(record: dict) -> dict[str, tuple]:
    return {c["id"]: (c["verdict"], c["statistic"], tuple(c["ci"])) for c in record["claims"]}


@pytest.mark.slow
def test_an_edited_intervention_is_recomputed_not_served_from_the_old_codes_cache(tmp_path):
    project, cache = _project(tmp_path), tmp_path / "cache"
    original = _run(project, cache, "disk", tmp_path / "r-warm")
    assert original["run"]["activation_cache"]["stats"]["organism"]["disk_writes"] > 0

    # An untrusted run reads the warm cache: the same figures, and the cache is byte for byte as it was.
    before = snapshot(cache)
    readonly = _run(project, cache, "disk-readonly", tmp_path / "r-readonly")
    assert _figures(readonly) == _figures(original)
    assert readonly["run"]["activation_cache"]["stats"]["organism"]["disk_hits"] > 0
    assert snapshot(cache) == before

    # Disable head ablation, as a researcher editing the framework might.
    source = project / "src" / "mechclaims" / "interventions.py"
    text = source.read_text()
    assert text.count("z[:, pos, index] = 0.0") == 1
    source.write_text(text.replace("z[:, pos, index] = 0.0", "pass"))
    edited = _run(project, cache, "disk", tmp_path / "r-edited")
    uncached = _run(project, cache, "off", tmp_path / "r-off")

    assert _figures(edited) == _figures(uncached)
    assert _figures(edited) != _figures(original)
    assert _figures(edited)["C1.ablate-10-11"][1] == 0.0  # nothing ablated: no onset shift
    assert edited["run"]["code_fingerprint"] != original["run"]["code_fingerprint"]
