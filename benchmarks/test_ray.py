"""`mechclaims ray` on a two-node local Ray cluster against one process (docs/distributed.md).

Both run the post's claims on organism and organism-control with the activation cache off. The
cluster (two nodes of one CPU each, on this machine) is started once, outside the timing; each
Ray round includes connecting, uploading the working directory, both shards' pytest sessions and
the merge. Recorded in extra_info: the verdicts' digest (the same in both modes) and, for Ray,
the node and attempts of each shard.

    pytest benchmarks/test_ray.py --benchmark-json reports/ray.json
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 2
ARGS = ["claims/", "--mechclaims-target", "organism", "--mechclaims-target", "organism-control",
        "--mechclaims-cache", "off"]


def _digest(claims: list[dict]) -> str:
    keep = sorted((c["id"], c["target"], c["verdict"], c["statistic"], c["ci"], c["n"]) for c in claims)
    return hashlib.sha256(json.dumps(keep).encode()).hexdigest()


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]'")
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    made = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * 2**20, "include_dashboard": False})
    made.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    made.wait_for_nodes()
    made.start_seconds = time.perf_counter() - started
    yield made
    if ray.is_initialized():
        ray.shutdown()
    made.shutdown()


def test_one_process(benchmark, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pytest", *ARGS, "-q", "-p", "no:cacheprovider", "--mechclaims-report-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}

    def run() -> None:
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout[-3000:]

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    benchmark.extra_info["digest"] = _digest(json.loads((tmp_path / "latest" / "claims.json").read_text())["claims"])


def test_two_ray_nodes(benchmark, tmp_path: Path, cluster) -> None:
    from mechclaims.ray_run import run

    merged: list[Path] = []

    def once() -> None:
        status, path = run(ARGS, tmp_path, address=cluster.address, working_dir=ROOT, echo=lambda line: None)
        assert status == 0
        merged.append(path)

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    record = json.loads(merged[-1].read_text())
    benchmark.extra_info.update(digest=_digest(record["claims"]), cluster_start_seconds=round(cluster.start_seconds, 1),
                                shards=[{k: s.get(k) for k in ("index", "node", "attempts")} for s in record["run"]["shards"]])
