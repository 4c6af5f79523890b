"""Under pytest-xdist a run is never the slow way: each worker takes a share of the cores, a
target's claims stay on one worker, a user's own thread setting wins, and an explicitly asked
``--dist`` is kept with a line on what it costs (mechclaims.threads, mechclaims.scheduling)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mechclaims import scheduling, threads

ROOT = Path(__file__).resolve().parents[1]
TWO = ["--mechclaims-target", "organism", "--mechclaims-target", "organism-control"]


# --------------------------------------------------------------------------- the rule, pure


def test_workers_share_the_cores_among_those_that_have_work():
    rule = dict(current=16, omp=None, preset=False)
    assert threads.plan(cores=16, workers=16, busy=16, **rule).threads == 1
    assert threads.plan(cores=16, workers=4, busy=4, **rule).threads == 4
    assert threads.plan(cores=16, workers=4, busy=2, **rule).threads == 8  # two targets on four workers
    assert threads.plan(cores=2, workers=4, busy=4, **rule).threads == 1  # never below one
    serial = threads.plan(cores=16, workers=1, busy=1, **rule)
    assert (serial.threads, serial.source) == (16, threads.DEFAULT)  # a serial run keeps torch's default


@pytest.mark.parametrize("setting, source", [
    ({"asked": 3}, threads.ASKED), ({"omp": "3"}, threads.OMP), ({"preset": True}, threads.PRESET)])
def test_a_users_own_setting_wins_over_the_rule(setting, source):
    kwargs = {"current": 3, "omp": None, "preset": False} | setting
    chosen = threads.plan(cores=16, workers=8, busy=8, **kwargs)
    assert (chosen.threads, chosen.source) == (3, source)


def _config(dist, asked, workers=2):
    options = {"dist": dist, "numprocesses": workers}
    return SimpleNamespace(getoption=lambda name, default=None: options.get(name, default),
                           known_args_namespace=SimpleNamespace(dist=asked))


def test_grouping_by_target_is_the_default_under_n_and_an_asked_dist_is_kept():
    assert scheduling.by_target(_config("load", "no"))  # -n 2: xdist says load, the user said nothing
    assert scheduling.by_target(_config("loadgroup", "loadgroup"))
    assert not scheduling.by_target(_config("load", "load"))  # asked for: kept
    assert not scheduling.by_target(_config("worksteal", "worksteal"))
    assert not scheduling.by_target(_config("no", "no", workers=None))  # no xdist
    assert scheduling.cost_of_dist(_config("load", "no")) is None
    assert "--dist load spreads each target's claims" in scheduling.cost_of_dist(_config("load", "load"))
    assert scheduling.cost_of_dist(_config("no", "no", workers=None)) is None


# --------------------------------------------------------------------------- real runs, -n 2


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, dict]:
    """A claim run of C0 with few prompts (the rule, not the claim, is under test here)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTEST_XDIST_WORKER",
                                                               "PYTEST_XDIST_WORKER_COUNT")}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/test_claim0.py", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
         "--mechclaims-cache", "off", "--mechclaims-n-prompts", "40", "--mechclaims-report-dir", str(tmp_path / "r"),
         *args],
        cwd=ROOT, env=base | {"HF_HUB_OFFLINE": "1"} | (env or {}), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    return out.stdout, json.loads((tmp_path / "r" / "latest" / "claims.json").read_text())["run"]


@pytest.mark.slow
def test_two_targets_on_two_workers_each_stay_on_one_worker_with_a_share_of_the_cores(tmp_path):
    stdout, run = _run(tmp_path, "-n", "2", *TWO)
    assert run["load_counts"] == {"organism": 1, "organism-control": 1}
    assert sorted(w for t in run["targets"].values() for w in t["workers"]) == ["gw0", "gw1"]
    cores = threads.available_cores()
    share = {"threads": max(1, cores // 2), "source": threads.SHARED, "cores": cores, "workers": 2, "busy": 2}
    assert run["threads"] == {"gw0": share, "gw1": share}
    assert "torch threads per worker: gw0" in run["header"] and run["parallel"] == []


@pytest.mark.slow
def test_one_cpu_target_takes_one_worker_with_every_core_and_the_header_says_why(tmp_path):
    stdout, run = _run(tmp_path, "-n", "2", "--mechclaims-target", "organism")
    cores = threads.available_cores()
    [(worker, plan)] = run["threads"].items()
    assert (plan["threads"], plan["busy"], run["load_counts"]) == (cores, 1, {"organism": 1})
    [note] = run["parallel"]
    assert "cannot make one CPU target faster" in note and note in run["header"]
    assert f"mechclaims: {note}" in stdout  # said once, at the start


@pytest.mark.slow
@pytest.mark.parametrize("how", ["OMP_NUM_THREADS", "--mechclaims-threads", "conftest"])
def test_a_users_thread_setting_wins_over_the_rule(tmp_path, how):
    # one target: the rule would give its worker every core; each setting asks for another count
    # (torch caps OMP_NUM_THREADS at the cores, so that one asks for 1)
    args, env = ["-n", "2", "--mechclaims-target", "organism"], {}
    if how == "OMP_NUM_THREADS":
        env["OMP_NUM_THREADS"] = "1"
    elif how == "--mechclaims-threads":
        args += ["--mechclaims-threads", "3"]
    else:  # a project's conftest.py sets torch's threads itself
        (tmp_path / "own").mkdir()
        (tmp_path / "own" / "conftest.py").write_text("import torch\ntorch.set_num_threads(3)\n")
        args.append(str(tmp_path / "own"))
    _, run = _run(tmp_path, *args, env=env)
    expected = {"OMP_NUM_THREADS": (1, threads.OMP), "--mechclaims-threads": (3, threads.ASKED),
                "conftest": (3, threads.PRESET)}[how]
    assert [(p["threads"], p["source"]) for p in run["threads"].values()] == [expected]


@pytest.mark.slow
def test_an_asked_dist_is_kept_and_the_header_says_what_it_costs(tmp_path):
    stdout, run = _run(tmp_path, "-n", "2", "--dist", "load", "--mechclaims-target", "organism")
    [note] = run["parallel"]
    assert note.startswith("--dist load spreads each target's claims over the workers") and f"mechclaims: {note}" in stdout
