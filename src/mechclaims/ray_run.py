"""``mechclaims ray``: one claim run over a Ray cluster, a Ray task per shard, one merged report.

The driver plans the shards as ``--mechclaims-shard K/N`` deals them (a target's claims stay in one
shard), submits one task per shard that asks for what its targets need (``num_gpus`` for a GPU
target, its ``n_devices`` when it spans several; CPUs otherwise), and merges the shards' reports as
``mechclaims merge`` does. A task runs the ordinary pytest session of its shard, in a subprocess on
its node, in the working directory Ray's ``runtime_env`` carries there (the project's ``src/`` first
on the path when it has one, so the nodes run the driver's code). A task whose worker or node dies
is retried (Ray's ``max_retries``); a shard that still fails, or that writes no report, is errored in
the merged report, and the other shards are kept. Ray is an extra: ``pip install 'mechclaims[ray]'``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import ConfigError
from .shards import assign

# What the working directory leaves behind on its way to the nodes (besides what .gitignore names).
EXCLUDES = [".git", ".venv", "reports", "__pycache__", ".pytest_cache", ".benchmarks"]
POLL_SECONDS = 2.0
HEAD_RESOURCE = "node:__internal_head__"  # the resource only Ray's head node has
_TAIL = 4000  # characters of a failed shard's output kept in its error


def import_ray() -> Any:
    """Ray, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("mechclaims ray needs Ray, an extra of mechclaims: pip install 'mechclaims[ray]' "
                          "(or pip install 'ray>=2.60'), then run it again") from None
    return ray


@dataclass(frozen=True)
class ShardPlan:
    """One shard of the run and what its task asks Ray for."""

    index: int  # 1..count
    count: int
    targets: tuple[str, ...]
    num_cpus: float
    num_gpus: float

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"


def option_values(args: Sequence[str], option: str) -> list[str]:
    """Every value of ``option`` in pytest arguments (``--opt V`` and ``--opt=V``)."""
    values = []
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
    return values


def plan(pytest_args: Sequence[str], shards: int | None = None, cpus_per_shard: float = 1.0) -> list[ShardPlan]:
    """The shards of the run ``pytest_args`` describes: ``shards`` of them (default one per
    target), each with the targets ``--mechclaims-shard`` deals it and the resources they need."""
    for option in ("--mechclaims-shard", "--mechclaims-report-dir"):
        if option_values(pytest_args, option):
            raise ConfigError(f"{option} is set by mechclaims ray for each shard; leave it out of the pytest arguments")
    targets = sorted(set(option_values(pytest_args, "--mechclaims-target")))
    if shards is None and not targets:
        raise ConfigError("mechclaims ray plans its shards from the targets: pass --mechclaims-target NAME "
                          "(repeatable), or --shards N")
    count = shards if shards is not None else len(targets)
    if count < 1:
        raise ConfigError(f"invalid --shards {count}: expected 1 or more")
    if cpus_per_shard <= 0:
        raise ConfigError(f"invalid --cpus-per-shard {cpus_per_shard}: expected a positive number of CPUs")
    placed = assign(targets, count)
    forced = option_values(pytest_args, "--mechclaims-device")
    return [ShardPlan(k, count, tuple(t for t in targets if placed[t] == k), float(cpus_per_shard),
                      max((gpus_of(t, forced) for t in targets if placed[t] == k), default=0.0))
            for k in range(1, count + 1)]


def gpus_of(name: str, forced_device: Sequence[str] = ()) -> float:
    """The GPUs target ``name`` needs: 0 on the CPU, else its ``n_devices`` (1 when unset)."""
    from .registry import get_spec

    spec = get_spec(name)
    device = forced_device[-1] if forced_device else spec.device
    if not (spec.gpu or str(device).startswith("cuda")):
        return 0.0
    return float(spec.boot_options.get("n_devices") or 1)


def weights_inside(root: Path, targets: Sequence[str]) -> list[str]:
    """The weights of ``targets`` (a configured ``path`` or ``gguf``) that lie inside the project
    ``root``, relative to it: they do not travel with the working directory (gigabytes); the
    nodes read them where they are (``MECHCLAIMS_PROJECT_DIR``)."""
    from .registry import get_spec

    inside = []
    for name in targets:
        spec = get_spec(name)
        for path in (spec.location, spec.gguf):
            if path is not None and Path(path).resolve().is_relative_to(root):
                inside.append(Path(path).resolve().relative_to(root).as_posix())
    return sorted(set(inside))


# --------------------------------------------------------------------------- on the nodes


def node_name() -> str:
    """This node as messages name it: host, IP and the start of Ray's node id."""
    import ray

    return (f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, "
            f"node {ray.get_runtime_context().get_node_id()[:8]})")


def _die_with_parent() -> None:
    """The shard's pytest ends when its Ray worker does (Linux), so a retry never runs beside it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_shard(shard: ShardPlan, pytest_args: Sequence[str], board: Any = None) -> dict[str, Any]:
    """Run shard ``shard``'s pytest session here; its report's ``claims.json`` text (None when it
    wrote none), with the node, the attempt and the end of its output."""
    import ray

    node = node_name()
    attempt = 1
    if board is not None:
        try:
            attempt = ray.get(board.start.remote(shard.index, node, os.getpid()))
        except ray.exceptions.RayError:  # the progress board is lost: the shard still runs
            pass
    out = Path(tempfile.mkdtemp(prefix=f"mechclaims-shard-{shard.index}-"))
    env = {**os.environ, "MECHCLAIMS_NODE": node}
    if Path("src", "mechclaims").is_dir():  # the driver's code, carried here, before any installed copy
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path("src").resolve()), env.get("PYTHONPATH")) if p)
    if not shard.num_gpus:
        env["OMP_NUM_THREADS"] = str(max(1, int(shard.num_cpus)))
    command = [sys.executable, "-m", "pytest", *pytest_args, "--mechclaims-shard", shard.name,
               "--mechclaims-report-dir", str(out), "-p", "no:cacheprovider"]
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=_die_with_parent)
    runs = sorted((p for p in out.glob("*/claims.json") if not p.parent.is_symlink()), key=lambda p: p.stat().st_mtime)
    return {"index": shard.index, "node": node, "attempt": attempt, "returncode": proc.returncode,
            "claims_json": runs[-1].read_text(encoding="utf-8") if runs else None, "output": proc.stdout}


class Board:
    """Where each shard runs and how many times it started (a Ray actor on the head node)."""

    def __init__(self) -> None:
        self.started: dict[int, list[tuple[str, int]]] = {}

    def start(self, index: int, node: str, pid: int) -> int:
        self.started.setdefault(index, []).append((node, pid))
        return len(self.started[index])

    def state(self) -> dict[int, list[tuple[str, int]]]:
        return self.started


# --------------------------------------------------------------------------- the driver


@dataclass
class ShardOutcome:
    """What became of one shard: its record, or why it has none."""

    plan: ShardPlan
    record: dict[str, Any] | None = None
    where: Path | None = None  # the directory its report and output are kept in
    error: str | None = None
    node: str | None = None
    attempts: int = 0


def progress_line(plans: Sequence[ShardPlan], done: set[int], started: dict[int, list]) -> str:
    """``ray: shards 1 done, 1 running (2/2 on NODE), 0 waiting``."""
    running = [p for p in plans if p.index not in done and p.index in started]
    waiting = [p for p in plans if p.index not in done and p.index not in started]
    where = ", ".join(f"{p.name} on {started[p.index][-1][0]}"
                      + (f" attempt {len(started[p.index])}" if len(started[p.index]) > 1 else "") for p in running)
    return (f"ray: shards {len(done)} done, {len(running)} running" + (f" ({where})" if where else "")
            + f", {len(waiting)} waiting")


def run(pytest_args: Sequence[str], out: Path, *, address: str | None = None, shards: int | None = None,
        retries: int = 2, cpus_per_shard: float = 1.0, working_dir: Path | None = None,
        echo: Callable[[str], None] = print,
        on_progress: Callable[[dict[int, list]], None] | None = None) -> tuple[int, Path | None]:
    """Run the claims ``pytest_args`` select over the Ray cluster at ``address`` (None: a local Ray)
    and write the merged report under ``out``. Returns the exit status a single run would give and
    the merged run's ``claims.json`` (None when no shard wrote a report). ``on_progress`` sees, at each
    poll, the node and pid of every start of every shard (tests kill them)."""
    from .registry import configure_project, unload_config

    ray = import_ray()
    if retries < 0:
        raise ConfigError(f"invalid --retries {retries}: expected 0 or more (Ray retries a task whose node dies)")
    root = (working_dir or Path.cwd()).resolve()
    pyproject = configure_project(root)  # the targets the shards will see
    try:
        return _run(ray, list(pytest_args), out, root, address, shards, retries, cpus_per_shard, echo, on_progress)
    finally:
        unload_config(pyproject)


def _run(ray: Any, pytest_args: list[str], out: Path, root: Path, address: str | None, shards: int | None,
         retries: int, cpus_per_shard: float, echo: Callable[[str], None],
         on_progress: Callable | None) -> tuple[int, Path | None]:
    plans = plan(pytest_args, shards, cpus_per_shard)
    echo(f"ray: {len(plans)} shard(s): " + "; ".join(
        f"{p.name} {', '.join(p.targets) or '(no target)'} [{_resources(p)}]" for p in plans))
    behind = weights_inside(root, [t for p in plans for t in p.targets])
    if behind:
        echo("ray: weights inside the project stay behind (" + ", ".join(behind) + f"); each node reads them "
             f"under {root}, so every node must see that path (a shared filesystem)")
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES + [f"/{path}" for path in behind],
                   "env_vars": {"MECHCLAIMS_PROJECT_DIR": str(root)}}
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot start the run on the Ray cluster at {address or '(a local Ray)'}: "
                          f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; "
                          "pass --address of a running cluster (ray start --head prints it), or none for a "
                          "Ray on this machine") from None
    keep = Path(out) / f"ray-shards-{time.strftime('%Y%m%dT%H%M%S')}"  # each shard's report and output
    try:
        outcomes = _submit_and_wait(ray, plans, pytest_args, retries, keep, echo, on_progress)
    except KeyboardInterrupt:
        echo(f"ray: interrupted; the reports of the shards that finished are kept under {keep} "
             "(mechclaims merge joins them once every shard has one)")
        return 130, None
    finally:
        ray.shutdown()
    return _merge_outcomes(outcomes, Path(out), root, echo)


def _resources(shard: ShardPlan) -> str:
    return f"{shard.num_gpus:g} GPU" if shard.num_gpus else f"{shard.num_cpus:g} CPU"


def _submit_and_wait(ray: Any, plans: list[ShardPlan], pytest_args: list[str], retries: int, keep: Path,
                     echo: Callable[[str], None], on_progress: Callable | None) -> list[ShardOutcome]:
    # the board lives on the head node, which holds the cluster itself: a worker node's death, the
    # fault retries are for, cannot take the count of attempts with it
    board = ray.remote(Board).options(num_cpus=0, resources={HEAD_RESOURCE: 0.001}).remote()
    task = ray.remote(run_shard)
    refs = {task.options(num_cpus=p.num_cpus, num_gpus=p.num_gpus, max_retries=retries,
                         name=f"mechclaims shard {p.name}").remote(p, pytest_args, board): p for p in plans}
    outcomes = {p.index: ShardOutcome(p) for p in plans}
    pending, last, started = list(refs), "", {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS, fetch_local=False)
        try:
            started = ray.get(board.state.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError):
            pass
        for ref in ready:
            _collect(ray, ref, outcomes[refs[ref].index], started, keep)
        if on_progress is not None:
            on_progress(started)
        line = progress_line(plans, {k for k, o in outcomes.items() if o.attempts or o.error or o.record}, started)
        if line != last:
            echo(line)
            last = line
    return [outcomes[p.index] for p in plans]


def _collect(ray: Any, ref: Any, outcome: ShardOutcome, started: dict[int, list], keep: Path) -> None:
    """What shard ``outcome.plan`` came back with, kept at once under ``keep`` (its claims.json and
    its pytest output), so an interrupted driver loses no shard that finished."""
    from .files import write_text_atomic

    starts = started.get(outcome.plan.index, [])
    outcome.attempts, outcome.node = len(starts), (starts[-1][0] if starts else None)
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # its node or worker died more times than it may be retried
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        outcome.error = (f"shard {outcome.plan.name} failed after {outcome.attempts} attempt(s)"
                         + (f", last on {outcome.node}" if outcome.node else "") + f": {type(exc).__name__}: {first}")
        return
    outcome.node, outcome.attempts = result["node"], max(outcome.attempts, result["attempt"])
    outcome.where = keep / f"shard-{outcome.plan.index}"
    outcome.where.mkdir(parents=True, exist_ok=True)
    write_text_atomic(outcome.where / "output.txt", result["output"], root=keep.parent)
    if result["claims_json"] is None:
        outcome.error = (f"shard {outcome.plan.name} on {result['node']} wrote no report (pytest exit "
                         f"{result['returncode']}; its output: {outcome.where / 'output.txt'}); its end:\n"
                         f"{result['output'][-_TAIL:]}")
        return
    try:
        outcome.record = json.loads(result["claims_json"])
    except ValueError as exc:
        outcome.error = f"shard {outcome.plan.name} on {result['node']} returned an unreadable claims.json: {exc}"
        return
    write_text_atomic(outcome.where / "claims.json", result["claims_json"], root=keep.parent)


def _merge_outcomes(outcomes: list[ShardOutcome], out: Path, root: Path,
                    echo: Callable[[str], None]) -> tuple[int, Path | None]:
    from .report.claims_json import new_run_id, write_run
    from .session import git_commit, git_dirty
    from .shards import exit_status, merge, problems

    records = []
    for o in outcomes:
        if o.record is None:
            echo(f"ray: ERRORED {o.error}")
            continue
        records.append((str(o.where), o.record))
    if not records:
        echo("ray: no shard wrote a report; nothing to merge")
        return 1, None
    failed = [{"index": o.plan.index, "count": o.plan.count, "error": o.error, "targets": list(o.plan.targets)}
              for o in outcomes if o.record is None]
    record = merge(records, failed=failed)
    by_index = {o.plan.index: o for o in outcomes}
    for entry in record["run"]["shards"]:
        o = by_index[entry["index"]]
        entry.update(attempts=o.attempts, node=o.node)
    # the shards ran a copy of this checkout (no .git travels): its commit is the run's
    record["run"].update(git_commit=git_commit(root), git_dirty=git_dirty(root))
    written = write_run(out, new_run_id(), record)
    status = exit_status(record)
    lines = problems(record)
    for line in lines:
        echo(f"ray: {line}")
    echo(f"ray: merged {len(records)} of {len(outcomes)} shards, {len(record['claims'])} claims, "
         f"{sum(line.startswith('UNEXPECTED') for line in lines)} unexpected, {len(failed)} shard(s) errored: {written}")
    return status, written
