"""`pytest -n 2` against a serial run, on one CPU target and on two (docs/performance.md).

Each round is a fresh process with the activation cache off, so a round computes every forward
pass its claims need. Recorded in each benchmark's extra_info: the torch threads of each process
that ran claims, the forward passes of each process, the model loads per target and the
per-claim figures' digest (the same in every mode: -n changes where claims run, never what
they find).

    pytest benchmarks/test_xdist.py --benchmark-json reports/xdist.json
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
TARGETS = {"one target": ["organism"], "two targets": ["organism", "organism-control"]}
MODES = {"serial": [], "-n 2": ["-n", "2"]}
_digests: dict[str, set[str]] = {}
_verdicts: dict[str, dict] = {}


def _figures_digest(claims: list[dict]) -> str:
    """What the claims found, independent of where and when they ran."""
    keep = [{k: c.get(k) for k in ("id", "target", "verdict", "statistic", "ci_low", "ci_high", "n", "pvalue")}
            | {"figures": {k: v for k, v in (c.get("figures") or {}).items()
                           if k not in ("wall_seconds", "forward_calls", "forward_tokens")}}
            for c in claims]
    return hashlib.sha256(json.dumps(sorted(keep, key=lambda c: (c["id"], c["target"])), sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("targets", TARGETS)
def test_xdist_against_serial(benchmark, tmp_path: Path, targets: str, mode: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS")}
    argv = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "--mechclaims-cache", "off",
            "--mechclaims-report-dir", str(tmp_path)] + MODES[mode]
    for name in TARGETS[targets]:
        argv += ["--mechclaims-target", name]

    def run() -> None:
        out = subprocess.run(argv, cwd=ROOT, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    record = json.loads((tmp_path / "latest" / "claims.json").read_text())
    run_info = record["run"]
    digest = _figures_digest(record["claims"])
    benchmark.extra_info.update({
        "threads": {proc: plan["threads"] for proc, plan in run_info["threads"].items()},
        "thread_source": sorted({plan["source"] for plan in run_info["threads"].values()}),
        "forward_calls_by_process": {name: {proc: f["calls"] for proc, f in t["forwards_by_process"].items()}
                                     for name, t in run_info["targets"].items()},
        "load_counts": run_info["load_counts"],
        "figures_sha256": digest[:16],
    })
    # -n runs each worker with fewer torch threads, and torch promises no bitwise equality across
    # thread counts: verdicts and n must match exactly, statistics to float rounding; whether the
    # figures were also identical bit for bit is recorded (the digest), not required
    _digests.setdefault(targets, set()).add(digest)
    benchmark.extra_info["figures_identical_so_far"] = len(_digests[targets]) == 1
    found = {(c["id"], c["target"]): (c["verdict"], c["n"], c["statistic"]) for c in record["claims"]}
    first = _verdicts.setdefault(targets, found)
    assert {k: v[:2] for k, v in found.items()} == {k: v[:2] for k, v in first.items()}, f"{targets}: verdicts moved"
    for key, (_, _, statistic) in found.items():
        assert statistic == pytest.approx(first[key][2], rel=1e-6, abs=1e-9), key
    assert all(count == 1 for count in run_info["load_counts"].values()), run_info["load_counts"]
