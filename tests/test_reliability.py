"""A claim run is deterministic and stays offline."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path


CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"


def _claim_run(pytester, *args):
    shutil.copy(CLAIMS_DIR / "test_claim0.py", pytester.path / "test_claim0.py")
    result = pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider", *args)
    record = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())
    return result, record


def _figures(record):
    return [(c["id"], c["verdict"], c["statistic"], c["ci"], c["n"], c["figures"]) for c in record["claims"]]


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
    assert [c["verdict"] for c in record["claims"]] in (["refuted"], ["supported"])
    assert result.ret in (0, 1)


def test_loading_is_offline_unless_the_environment_says_otherwise():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    probe = "import mechclaims.targets, os; print(os.environ['HF_HUB_OFFLINE'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
