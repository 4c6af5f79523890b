"""A claim run is deterministic and stays offline."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest


CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"


def _claim_run(pytester, *args):
    shutil.copy(CLAIMS_DIR / "test_claim0.py", pytester.path / "test_claim0.py")
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:cacheprovider", *args)
    record = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())
    return result, record


def _figures(record):
    # every figure but the wall time, which no two runs share
    return [(c["id"], c["verdict"], c["statistic"], c["ci"], c["n"],
             {k: v for k, v in c["figures"].items() if k != "wall_seconds"}) for c in record["claims"]]


def test_same_seed_same_figures_and_the_seed_is_recorded(pytester, as_organism):
    _, first = _claim_run(pytester, "--mechclaims-seed", "3")
    _, second = _claim_run(pytester, "--mechclaims-seed", "3")
    assert _figures(first) == _figures(second)
    _, other = _claim_run(pytester, "--mechclaims-seed", "4")
    assert (first["run"]["seed"], other["run"]["seed"]) == (3, 4)


def test_a_cpu_claim_run_opens_no_network_connection(pytester, as_organism, monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    result, record = _claim_run(pytester)
    assert attempts == []
    # the run went all the way, offline: the tiny random model does not do the task (accuracy 0 of 100,
    # far from C0's bound on any processor), so C0 is refuted and the exploratory run exits 1
    assert record["run"]["complete"] and [c["verdict"] for c in record["claims"]] == ["refuted"]
    assert record["claims"][0]["statistic"] == 0.0 and result.ret == pytest.ExitCode.TESTS_FAILED


def test_loading_is_offline_unless_the_environment_says_otherwise():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    # importing mechclaims sets nothing; booting a model sets it before transformers is imported
    probe = ("import os, sys, pathlib, mechclaims.targets as t\n"
             "before = os.environ.get('HF_HUB_OFFLINE')\n"
             "try:\n    t.boot(pathlib.Path('/nonexistent'), device='cpu', dtype=None)\nexcept Exception:\n    pass\n"
             "import huggingface_hub.constants as c\n"
             "print(before, os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "1", "True"]
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["0", "0", "False"]  # the environment's own choice is kept


SOURCES = [p for d in ("src", "claims", "benchmarks") for p in (CLAIMS_DIR.parent / d).rglob("*.py")]


def _unsafe_calls(tree):
    """torch.load without weights_only=True, and any trust_remote_code=True, in one module's AST."""
    import ast

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        kwargs = {k.arg: k.value for k in node.keywords}
        name = ast.unparse(node.func)
        if name.endswith(("torch.load", "torch.serialization.load")):
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{name} without weights_only=True at line {node.lineno}")
        remote = kwargs.get("trust_remote_code")
        if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
            found.append(f"trust_remote_code={ast.unparse(remote)} at line {node.lineno}")
    return found


def test_the_scan_catches_unsafe_loading():
    import ast

    bad = "import torch\ntorch.load('w.pt')\ntorch.load('w.pt', weights_only=False)\nf(trust_remote_code=True)\n"
    assert len(_unsafe_calls(ast.parse(bad))) == 3
    assert _unsafe_calls(ast.parse("torch.load('w.pt', weights_only=True)\nf(trust_remote_code=False)\n")) == []


def test_no_code_unpickles_or_enables_remote_code():
    import ast

    assert len(SOURCES) > 20
    problems = [f"{p}: {what}" for p in SOURCES for what in _unsafe_calls(ast.parse(p.read_text()))]
    assert problems == []


@pytest.mark.slow
def test_two_xdist_workers_run_the_claim_suite_on_one_cache_like_one_process(pytester, tmp_path):
    """The real claim suite on the shipped organism: -n 2 with a shared disk cache gives
    the verdicts and figures of a single process, and leaves every cache file intact."""
    for path in CLAIMS_DIR.rglob("*"):
        dest = pytester.path / "claims" / path.relative_to(CLAIMS_DIR)
        if path.is_dir() or "__pycache__" in path.parts:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    cache = tmp_path / "acts"

    def run(report, *args):
        pytester.runpytest_subprocess("--mechclaims-exploratory", 
            "claims/", "--mechclaims-target", "organism", "-p", "no:cacheprovider", "--mechclaims-report-dir",
            str(tmp_path / report), *args,
        )
        record = json.loads((tmp_path / report / "latest" / "claims.json").read_text())
        return sorted((c["id"], c["verdict"], c["n"], c["statistic"], *c["ci"]) for c in record["claims"]), record

    single, _ = run("solo", "--mechclaims-cache", "off")
    parallel, _ = run("par", "-n", "2", "--dist", "load", "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(cache))
    # verdicts and n exactly; figures to fp32 rounding (workers may shape a shared pass differently)
    assert single and [c[:3] for c in single] == [c[:3] for c in parallel]
    for one, two in zip(single, parallel):
        assert two[3:] == pytest.approx(one[3:], rel=1e-6, abs=1e-9)
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no temporary files left
    again, record = run("again", "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(cache))
    stats = record["run"]["activation_cache"]["stats"]["organism"]
    # served from the cache the parallel run wrote: its figures, bit for bit by construction
    assert again == parallel and stats["corrupt_entries"] == 0 and stats["computed"] == 0
    # served entirely from the cache, the model was never booted (no weights loaded, no forward)
    organism = record["run"]["targets"]["organism"]
    assert organism["boot_seconds"] is None and record["run"]["forwards"]["organism"] == {
        "calls": 0, "tokens": 0, "layer_tokens": 0, "logit_positions": 0, "attention_pairs": 0, "seconds": 0.0}
