"""mechclaims ray: a claim run over a real two-node Ray cluster on this machine, one report at the end.

The cluster tests skip, saying why, without the extra (pip install '.[ray]'; make test installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mechclaims import registry
from mechclaims.errors import MechclaimsError
from mechclaims.targets import TARGETS
from mechclaims.ray_run import ShardPlan, option_values, plan, progress_line

pytestmark = pytest.mark.ray  # pytest tests/ -k ray: everything past one machine
REPO = Path(__file__).resolve().parents[1]
TWO = ["--mechclaims-target", "organism", "--mechclaims-target", "organism-control"]


def test_without_ray_the_command_says_how_to_install_it(monkeypatch, capsys):
    from mechclaims.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    assert main(["ray", "claims/", *TWO, "--out", "nowhere"]) == 2
    assert "mechclaims ray needs Ray, an extra of mechclaims: pip install 'mechclaims[ray]'" in capsys.readouterr().err


def test_a_shard_per_target_asking_for_what_its_targets_need(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.mechclaims.targets.big]
        path = "{tmp_path}"
        device = "cuda"
        n_devices = 4
    """))
    monkeypatch.chdir(tmp_path)
    try:
        _plans_for_a_gpu_target()
    finally:
        registry.unload_config(tmp_path / "pyproject.toml")
    assert "big" not in TARGETS


def _plans_for_a_gpu_target():
    shards = plan(["claims/", *TWO, "--mechclaims-target", "big", "--mechclaims-target", "llama-3-8b"])
    assert [(s.name, s.targets, s.num_cpus, s.num_gpus) for s in shards] == [
        ("1/4", ("big",), 1.0, 4.0), ("2/4", ("llama-3-8b",), 1.0, 1.0),
        ("3/4", ("organism",), 1.0, 0.0), ("4/4", ("organism-control",), 1.0, 0.0)]
    # two shards: targets dealt as --mechclaims-shard deals them; a shard asks for its largest target
    assert [(s.targets, s.num_gpus) for s in plan(["claims/", *TWO, "--mechclaims-target", "big"], shards=2)] == [
        (("big", "organism-control"), 4.0), (("organism",), 0.0)]
    # --mechclaims-device cuda puts a CPU target on a GPU
    assert plan([*TWO, "--mechclaims-device=cuda"], cpus_per_shard=3)[0].num_gpus == 1.0


@pytest.mark.parametrize("args, shards, message", [
    (["claims/"], None, "pass --mechclaims-target NAME"),
    ([*TWO, "--mechclaims-shard", "1/2"], None, "--mechclaims-shard is set by mechclaims ray"),
    ([*TWO, "--mechclaims-report-dir=x"], None, "--mechclaims-report-dir is set by mechclaims ray"),
    (TWO, 0, "invalid --shards 0"),
    (["--mechclaims-target", "no-such-model"], None, "unknown target 'no-such-model'"),
])
def test_a_run_it_cannot_plan_is_refused_in_one_line(args, shards, message):
    with pytest.raises(MechclaimsError, match=message):  # a ConfigError, or a TargetError for the name
        plan(args, shards)


def test_option_values_and_progress():
    assert option_values(["-k", "x", "--mechclaims-target", "a", "--mechclaims-target=b"], "--mechclaims-target") == ["a", "b"]
    plans = [ShardPlan(k, 3, (), 1.0, 0.0) for k in (1, 2, 3)]
    line = progress_line(plans, {1}, {1: [("n1", 5)], 2: [("n2", 6), ("n1", 7)]})
    assert line == "ray: shards 1 done, 1 running (2/3 on n1 attempt 2), 1 waiting"


# --------------------------------------------------------------------------- a real cluster

# A claim that waits for the test to open its gate: the test kills a node while the claim runs,
# with no race against its end.
GATED = '''
import time
from pathlib import Path

import pytest
from mechclaims import proportion


@pytest.mark.claim(id="T.gated")
def test_gated(target, claim):
    for _ in range(3000):
        if Path({gate!r}).exists():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the gate never opened")
    claim.record(proportion(9, 10), threshold=0.5)
'''


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install '.[ray]' (make test installs it)")
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * 2**20, "include_dashboard": False})
    yield made
    if ray.is_initialized():
        ray.shutdown()
    made.shutdown()


def _worker(cluster):
    """A fresh second node (each test may remove its own)."""
    return cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)


def _read(path: Path) -> dict:
    """A run's record: its claims.json, or the one in its directory."""
    return json.loads((path if path.suffix == ".json" else path / "claims.json").read_text())


@pytest.mark.slow
def test_two_nodes_run_two_organisms_as_two_shards_equal_to_one_run(cluster, tmp_path):
    from mechclaims.cli import main
    from mechclaims.ray_run import run

    worker = _worker(cluster)
    args = ["claims/", *TWO, "--mechclaims-cache", "off"]
    lines: list[str] = []
    status, merged = run(args, tmp_path / "ray", address=cluster.address, working_dir=REPO, echo=lines.append)
    single = subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-q",
                             "--mechclaims-report-dir", str(tmp_path / "one")], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert status == single.returncode == 0, "\n".join(lines) + single.stdout[-3000:]
    record, one = _read(merged), _read(tmp_path / "one" / "latest")
    keys = ("verdict", "expected", "statistic", "ci", "n", "pvalue", "rules", "plots")

    def by_claim(r):  # everything but the claim's seconds, which no two runs share
        return {(c["id"], c["target"]): {**{k: c.get(k) for k in keys}, "figures": {
            k: v for k, v in c["figures"].items() if k != "wall_seconds"}} for c in r["claims"]}

    assert by_claim(record) == by_claim(one) and len(record["claims"]) == 32
    shards = record["run"]["shards"]
    assert [(s["index"], s["attempts"], s["complete"]) for s in shards] == [(1, 1, True), (2, 1, True)]
    assert len({s["node"] for s in shards}) == 2  # one CPU per node: each shard ran on its own node
    assert record["run"]["git_commit"] == one["run"]["git_commit"]
    assert main(["compare", str(tmp_path / "one" / "latest"), str(merged)]) == 0
    assert any(line.startswith("ray: shards 2 done, 0 running") for line in lines)
    cluster.remove_node(worker)


def _gated_project(tmp_path: Path) -> tuple[Path, Path]:
    project, gate = tmp_path / "project", tmp_path / "gate"
    project.mkdir()
    (project / "test_gated.py").write_text(GATED.format(gate=str(gate)))
    return project, gate


def _kill_when_running_on(worker, cluster, gate: Path):
    """A progress callback: once a shard has started on ``worker``, remove that node, then open the gate."""
    killed: list[int] = []

    def watch(started: dict[int, list]) -> None:
        if killed:
            return
        for index, starts in started.items():
            if f"node {worker.node_id[:8]}" in starts[-1][0]:
                cluster.remove_node(worker)
                killed.append(index)
                gate.touch()

    return watch, killed


def _run_killing_a_node(cluster, tmp_path: Path, retries: int) -> tuple[int, Path, int, list[str]]:
    """Two gated shards on two nodes; the node that runs one of them is removed while it runs.
    The exit status, the merged claims.json, the killed shard's index and the progress lines."""
    from mechclaims.ray_run import run

    project, gate = _gated_project(tmp_path)
    worker = _worker(cluster)
    watch, killed = _kill_when_running_on(worker, cluster, gate)
    lines: list[str] = []
    status, merged = run([*TWO, "--mechclaims-exploratory"], tmp_path / "out", address=cluster.address,
                         working_dir=project, retries=retries, echo=lines.append, on_progress=watch)
    assert killed and merged is not None, "\n".join(lines)
    return status, merged, killed[0], lines


def test_a_shard_whose_node_dies_is_retried_and_nothing_is_lost(cluster, tmp_path):
    status, merged, killed, lines = _run_killing_a_node(cluster, tmp_path, retries=2)
    record = _read(merged)
    assert status == 0 and record["run"]["complete"], "\n".join(lines)
    assert sorted((c["target"], c["verdict"]) for c in record["claims"]) == [
        ("organism", "supported"), ("organism-control", "supported")]
    attempts = {s["index"]: s["attempts"] for s in record["run"]["shards"]}
    assert attempts[killed] == 2 and sum(attempts.values()) == 3, "\n".join(lines)  # the killed one ran twice


def test_a_shard_that_fails_for_good_is_errored_and_the_rest_are_kept(cluster, tmp_path):
    status, merged, killed, lines = _run_killing_a_node(cluster, tmp_path, retries=0)
    assert status == 1, "\n".join(lines)
    record = _read(merged)
    assert not record["run"]["complete"]
    failed = next(s for s in record["run"]["shards"] if s["index"] == killed)
    kept = next(s for s in record["run"]["shards"] if s["index"] != killed)
    assert failed["report"] is None and f"shard {killed}/2 failed after 1 attempt(s)" in failed["errored"]
    assert kept["complete"] and [c["verdict"] for c in record["claims"]] == ["supported"]
    lost = {"organism": 1, "organism-control": 2}
    dead_target = next(t for t, k in lost.items() if k == killed)
    assert record["run"]["target_errors"][dead_target] == failed["errored"]
    assert any(line.startswith(f"ray: ERRORED shard {killed}/2 failed") for line in lines)



def test_a_configured_model_inside_the_project_stays_behind_and_is_read_where_it_is(cluster, tmp_path, tiny_llama):
    """Weights under the project (path = "models/tiny") would be gigabytes of upload: they stay
    behind, and each node reads them at the driver's path (MECHCLAIMS_PROJECT_DIR)."""
    import shutil

    from mechclaims.ray_run import run

    project = tmp_path / "project"
    shutil.copytree(tiny_llama, project / "models" / "tiny")
    (project / "pyproject.toml").write_text('[tool.mechclaims.targets.tiny-local]\npath = "models/tiny"\n')
    (project / "test_local.py").write_text(textwrap.dedent('''
        from pathlib import Path

        import pytest
        from mechclaims import proportion


        @pytest.mark.claim(id="T.local")
        def test_local(target, claim):
            assert not Path("models").exists(), "the weights travelled with the working directory"
            assert target.model.cfg.n_layers == 2
            claim.record(proportion(9, 10), threshold=0.5)
    '''))
    worker = _worker(cluster)
    lines: list[str] = []
    status, merged = run(["--mechclaims-target", "tiny-local", "--mechclaims-exploratory"], tmp_path / "out",
                         address=cluster.address, working_dir=project, echo=lines.append)
    cluster.remove_node(worker)
    assert status == 0, "\n".join(lines)
    record = _read(merged)
    assert [(c["id"], c["verdict"]) for c in record["claims"]] == [("T.local", "supported")]
    assert str(project / "models" / "tiny") in record["run"]["targets"]["tiny-local"]["source"]
    assert any("weights inside the project stay behind (models/tiny)" in line for line in lines)
    assert "tiny-local" not in TARGETS  # the driver forgets the project's targets when it is done


def test_a_shard_that_writes_no_report_is_errored_with_its_output_kept(cluster, tmp_path):
    from mechclaims.ray_run import run

    project, gate = _gated_project(tmp_path)
    gate.touch()
    (project / "conftest.py").write_text(textwrap.dedent('''
        import pytest


        def pytest_configure(config):
            if "2/2" in config.invocation_params.args:
                raise pytest.UsageError("shard two cannot start here")
    '''))
    worker = _worker(cluster)
    lines: list[str] = []
    status, merged = run([*TWO, "--mechclaims-exploratory"], tmp_path / "out", address=cluster.address,
                         working_dir=project, echo=lines.append)
    cluster.remove_node(worker)
    assert status == 1, "\n".join(lines)
    record = _read(merged)
    failed = record["run"]["shards"][1]
    assert "shard 2/2 on " in failed["errored"] and "wrote no report (pytest exit 4" in failed["errored"]
    assert "shard two cannot start here" in failed["errored"]  # the end of its output
    kept = Path(failed["errored"].split("its output: ")[1].split(")")[0])
    assert "shard two cannot start here" in kept.read_text()
    assert [c["target"] for c in record["claims"]] == ["organism"]
    assert (Path(record["run"]["shards"][0]["report"]) / "output.txt").is_file()



def test_a_gpu_targets_shard_runs_only_on_a_node_with_a_gpu(cluster, tmp_path):
    """The task asks Ray for the target's GPU: it runs on the one node that has one (a logical GPU
    here), and a shard whose pytest cannot run fails the merged run."""
    from mechclaims.ray_run import run

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f'[tool.mechclaims.targets.gpu-model]\npath = "{tmp_path / "absent"}"\ndevice = "cuda"\n')
    (project / "test_gpu.py").write_text(GATED.format(gate=str(tmp_path)))
    cpu_node = _worker(cluster)
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 * 2**20)
    lines: list[str] = []
    status, merged = run(["--mechclaims-target", "gpu-model", "--mechclaims-exploratory"], tmp_path / "out",
                         address=cluster.address, working_dir=project, echo=lines.append)
    cluster.remove_node(gpu_node)
    cluster.remove_node(cpu_node)
    assert status == 1 and "1/1 gpu-model [1 GPU]" in lines[0], "\n".join(lines)
    record = _read(merged)
    (shard,) = record["run"]["shards"]
    assert f"node {gpu_node.node_id[:8]}" in shard["node"]  # of the three nodes, the one with a GPU
    # Ray's GPU is logical here and torch sees none: the shard's pytest refuses to run (exit 4) and
    # reports no claim; the merge fails on its exit status, not on claims it never had
    assert shard["exit_status"] == 4 and record["claims"] == []
    assert "needs CUDA but torch" in (Path(shard["report"]) / "output.txt").read_text()
