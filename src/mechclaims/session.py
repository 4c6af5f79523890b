"""The state of one claim run: settings, loaded targets and collected results.

The plugin keeps one :class:`ClaimSession` in ``config.stash``; nothing here
knows pytest.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codeprint
from .results import SCHEMA_VERSION, ClaimResult
from .settings import PROFILES, Settings
from .cachedir import DISK_MODES
from .errors import TargetError
from .registry import get_spec
from .loading import load_target, worker_device
from .targets.spec import LoadedTarget

if TYPE_CHECKING:
    from .store import ActivationStore

VERSIONED_PACKAGES = ("mechclaims", "torch", "transformers", "transformer-lens", "numpy", "scipy")
# Counters summed over processes (pytest-xdist workers), not provenance.
_COUNTED = ("name", "load_count", "boots", "forwards", "store", "needed")
# The packages whose versions stand for their code in a disk-cache key (mechclaims' own code is
# fingerprinted instead: its version does not change with a commit).
_NUMERIC_PACKAGES = tuple(codeprint.VERSIONED)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cache_version() -> str:
    """Versions of the packages that compute a forward pass (part of every disk-cache key)."""
    versions = []
    for name in _NUMERIC_PACKAGES:
        try:
            versions.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}=None")
    return ",".join(versions)


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_dirty(root: Path) -> bool | None:
    """Whether tracked files differ from the commit (an edit after the data leaves a trace);
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _peak_gpu_bytes(devices: list[str]) -> dict[str, int] | None:
    """Peak memory torch allocated on each GPU a target's weights lie on (None on the CPU); the
    figure the memory plan of a bigger model starts from (docs/targets.md)."""
    gpus = [d for d in devices if d.startswith("cuda")]
    if not gpus:
        return None
    import torch

    return {d: int(torch.cuda.max_memory_allocated(d)) for d in gpus}


@dataclass
class ClaimSession:
    """Everything a claim run accumulates; serialised by :meth:`to_json`."""

    settings: Settings
    root: Path
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    cache_dir: Path | None = None
    fixtures_dir: Path | None = None
    cache_mode: str = "memory"
    activation_dir: Path | None = None
    cache_max_size: int | None = None  # [tool.mechclaims] cache-max-size, enforced at the run's end
    cache_pruned: dict[str, int] | None = None  # what enforcing it removed
    started: str = field(default_factory=utc_now)
    finished: str | None = None
    exit_status: int | None = None  # pytest's, as the run ends (a merge of shards reads each one's)
    claims: list[dict[str, Any]] = field(default_factory=list)
    loaded: dict[str, LoadedTarget] = field(default_factory=dict)
    load_counts: Counter = field(default_factory=Counter)
    stores: dict[str, ActivationStore] = field(default_factory=dict)
    # What each process (pytest-xdist worker, or "main") reported about its targets.
    target_records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    expectation_overrides: dict[str, str] = field(default_factory=dict)  # target -> how its model differs
    expectation_files: dict[str, dict[str, str]] = field(default_factory=dict)  # target -> path, sha256
    # target -> why it could not run (pre-registration refused, weights unreadable, boot failed, NaN):
    # reported once for the target; its claims are errored and point here
    target_errors: dict[str, str] = field(default_factory=dict)
    parallel: list[str] = field(default_factory=list)  # what -n does for this run (said in the header)
    shard: Any = None  # mechclaims.shards.Shard of a --mechclaims-shard run
    shard_empty: bool = False  # the shard drew none of the run's tests (it still writes its report)
    threads: Any = None  # this process's mechclaims.threads.Plan, once its tests are collected
    # process ("main", "gw0", ...) -> its thread plan, as each process reported it
    thread_records: dict[str, dict[str, Any]] = field(default_factory=dict)
    # plots pytest-xdist workers drew for the claims they ran (mechclaims.report.plots.plots_for)
    drawn: dict[str, list[list[str]]] = field(default_factory=dict)

    def fail_target(self, name: str, message: str) -> str:
        """Record that target ``name`` cannot run (the first cause is kept); the line its claims carry."""
        node = os.environ.get("MECHCLAIMS_NODE")  # a run spread over machines names the one that failed
        if node and node not in message:
            message = f"{message} (on node {node})"
        self.target_errors.setdefault(name, message)
        return f"target {name} cannot run (reported once for the target, at the top of the report): {_head(message)}"

    def target(self, name: str) -> LoadedTarget:
        """The loaded target ``name``; loaded on first use, then shared."""
        if name not in self.loaded:
            self.load_counts[name] += 1
            self.loaded[name] = load_target(
                name,
                device=self._device_for(name),
                dtype=self.dtype,
                device_map=self.device_map,
                cache_dir=self.cache_dir,
                fixtures_dir=self.fixtures_dir,
            )
            self.stores[name] = self._store_for(self.loaded[name])
        return self.loaded[name]

    def _device_for(self, name: str) -> str | None:
        """The run's device for target ``name``; under pytest-xdist, worker K takes ``cuda:K``."""
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        spec = get_spec(name)
        device = self.device or spec.device
        if worker is None or device != "cuda":
            return self.device
        if self.device_map or "device_map" in spec.boot_options or spec.boot_options.get("n_devices", 1) > 1:
            raise TargetError(
                f"target {name} is spread over GPUs by a device map, and pytest-xdist worker {worker} takes "
                "one GPU of its own: run a spread target without -n, or drop its device map to run one "
                "model per worker")
        import torch

        chosen = worker_device(device, worker, torch.cuda.device_count())
        torch.cuda.set_device(chosen)  # tensors made on plain "cuda" land on this worker's GPU too
        return chosen

    def _store_for(self, loaded: LoadedTarget) -> ActivationStore:
        """The activation store of one loaded target, attached to its model."""
        from .store import ActivationStore, attach  # torch: imported once a target loads

        info = loaded.info
        # the resolver's code too: a package's own resolver may convert or patch the weights it finds
        setup = codeprint.fingerprint(get_spec(info.name).resolve)
        store = ActivationStore(
            model_key=f"{info.sha256_or_revision}|files:{info.files_sha256}|{info.dtype}|{info.device}|setup:{setup}",
            mode=self.cache_mode,
            directory=self.activation_dir,
            version=cache_version(),
            label=info.name,
        )
        attach(loaded.model, store)
        return store

    def enforce_cache_cap(self) -> None:
        """Prune the disk cache, least recently used first, down to ``cache_max_size`` (a writing run only)."""
        if self.cache_max_size is None or self.cache_mode != "disk" or self.activation_dir is None:
            return
        from .cachedir import prune

        done = prune(self.activation_dir, max_size=self.cache_max_size)
        self.cache_pruned = {"max_size": self.cache_max_size, "removed": done.removed, "freed": done.freed,
                             "size": done.size}

    def forward_totals(self) -> tuple[int, int]:
        """Forward calls and tokens so far, over every loaded target."""
        return (
            sum(t.forwards.calls for t in self.loaded.values()),
            sum(t.forwards.tokens for t in self.loaded.values()),
        )

    def payload(self, result: ClaimResult) -> dict[str, Any]:
        """What a finished claim test sends to the process that writes the report."""
        return {
            "claim": result.to_json(),
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
            "overrides": dict(self.expectation_overrides),
            "expectation_files": dict(self.expectation_files),
            "target_errors": dict(self.target_errors),
            "threads": self.threads.to_json() if self.threads is not None else None,
            "targets": {
                name: {
                    **t.info.to_json(),
                    "boot_seconds": t.boot_seconds,
                    "boots": t.boots,
                    "devices": list(t.devices),
                    "peak_gpu_bytes": _peak_gpu_bytes(t.devices),
                    "load_count": self.load_counts[name],
                    "forwards": t.forwards.to_json(),
                    "store": self.stores[name].stats.to_json() if name in self.stores else _no_store(),
                    # the distinct work this process needed, so that work needed by two xdist
                    # workers counts once in tokens_needed
                    "needed": dict(self.stores[name].needed) if name in self.stores else {},
                }
                for name, t in self.loaded.items()
            },
        }

    def note_expectations(self, target: str, entry: dict[str, Any]) -> None:
        """Record the pre-registration a target's verdicts were judged against. A second file for
        the same target (claims from two directories in one run) goes under the first's ``also``."""
        entry = {k: v for k, v in entry.items() if k != "also"}
        first = self.expectation_files.setdefault(target, entry)
        if first is not entry and first.get("path") != entry.get("path"):
            also = first.setdefault("also", [])
            if entry not in also:
                also.append(entry)

    def record(self, payload: dict[str, Any]) -> None:
        """Collect one claim's payload (from this process or an xdist worker)."""
        self.claims.append(payload["claim"])
        self.expectation_overrides.update(payload.get("overrides", {}))
        for name, message in payload.get("target_errors", {}).items():
            self.target_errors.setdefault(name, message)
        for target, entry in payload.get("expectation_files", {}).items():
            self.note_expectations(target, entry)
            for more in entry.get("also", ()):
                self.note_expectations(target, more)
        for name, record in payload["targets"].items():
            self.target_records[payload["worker"], name] = record
        self.drawn.update(payload.get("plots") or {})
        if payload.get("threads") is not None:
            self.thread_records[payload["worker"]] = payload["threads"]

    def threads_line(self) -> str | None:
        """The torch threads of the processes that ran claims, for the header."""
        if not self.thread_records:
            return None
        plans = sorted(self.thread_records.items())
        first = plans[0][1]
        if len(plans) == 1 and plans[0][0] == "main":
            return f"{first['threads']} torch thread(s) ({first['source']})"
        per = ", ".join(f"{worker} {plan['threads']}" for worker, plan in plans)
        sources = sorted({plan["source"] for _, plan in plans})
        return f"torch threads per worker: {per} ({'; '.join(sources)}; {first['cores']} cores, {first['workers']} workers)"

    def targets(self) -> dict[str, dict[str, Any]]:
        """Per target: provenance, and load counts and forwards summed over processes."""
        merged: dict[str, dict[str, Any]] = {}
        needed: dict[str, dict[str, int]] = {}
        for (worker, name), rec in sorted(self.target_records.items()):
            info = {k: v for k, v in rec.items() if k not in _COUNTED}
            entry = merged.setdefault(
                name, {**info, "load_count": 0, "boots": 0, "forwards": {"calls": 0, "tokens": 0},
                       "store": _no_store()}
            )
            entry["load_count"] += rec["load_count"]
            if rec["load_count"]:  # the processes that loaded the target
                entry.setdefault("workers", []).append(worker)
            # forward passes per process: with targets grouped, one process per target
            entry.setdefault("forwards_by_process", {})[worker] = dict(rec["forwards"])
            entry["boots"] += rec.get("boots", 0)
            for key, value in rec["forwards"].items():
                entry["forwards"][key] = entry["forwards"].get(key, 0) + value
            for key, value in rec.get("store", {}).items():
                entry["store"][key] = entry["store"].get(key, 0) + value
            needed.setdefault(name, {}).update(rec.get("needed", {}))
        for name, entry in merged.items():
            entry["store"]["tokens_needed"] = sum(needed[name].values())
        return merged

    def header(self) -> str:
        """One line naming models, fingerprints, dtypes, devices, versions and seed."""
        v = package_versions()
        models = "; ".join(
            f"{name}{' (STAND-IN)' if t.get('stand_in') else ''} {t['sha256_or_revision'][:23]} {t['dtype']} {t['device']}"
            for name, t in self.targets().items()
        ) or "no model loaded"
        return (
            f"mechclaims {v['mechclaims']} | {models} | torch {v['torch']}, "
            f"transformers {v['transformers']}, transformer-lens {v['transformer-lens']} | "
            f"seed {self.settings.seed}, profile {self.settings.profile}"
            + (f", shard {self.shard.index}/{self.shard.count}" if self.shard is not None else "")
            + (f", {self.settings.n_prompts} prompts" if self.settings.n_prompts != PROFILES[self.settings.profile].n_prompts
               else "")
            + "".join(f" | {name} EXPLORATORY (no pre-registration)"
                      for name, e in self.expectation_files.items() if e.get("exploratory"))
            + (f" | {line}" if (line := self.threads_line()) else "")
            + "".join(f" | {note}" for note in self.parallel)
        )

    def plot_cache(self) -> Path | None:
        """With the disk cache, the report's plots are kept beside the activations (a warm run redraws
        nothing); never with disk-readonly."""
        return self.activation_dir / "plots" if self.cache_mode == "disk" and self.activation_dir else None

    def write_report(self, report_dir: Path) -> Path:
        """Enforce the cache's size cap, then write this run's report under ``report_dir`` (claims.json,
        claims.md, index.html, plots); its directory. OSError when it cannot be written."""
        from .report import write_run
        from .report.claims_json import new_run_id

        self.enforce_cache_cap()
        return write_run(report_dir, new_run_id(), self.to_json(), self.plot_cache(), self.drawn)

    def summary_lines(self) -> list[tuple[str, dict[str, bool]]]:
        """The terminal summary: ``(line, markup)`` pairs (``red=True``, ``yellow=True``): the header,
        what stopped a target, each claim's verdict with its figure, and how to reproduce a failure."""
        from .report import reproduce
        from .report.reading import NEGATIVE_CONTROL
        from .results import INCONCLUSIVE, NOT_APPLICABLE, REFUTED, UNDECIDED

        out: list[tuple[str, dict[str, bool]]] = [(self.header(), {})]
        for name, why in self.target_errors.items():
            out.append((f"TARGET ERROR: {name} cannot run, so its claims errored: {why}", {"red": True}))
        if self.cache_pruned is not None and self.cache_pruned["removed"]:
            p = self.cache_pruned
            out.append((f"activation cache: removed {p['removed']} least recently used entries ({p['freed']} bytes) "
                        f"to stay under [tool.mechclaims] cache-max-size ({p['max_size']} bytes)", {}))
        for name, t in self.targets().items():
            if t.get("stand_in"):
                out.append((f"WARNING: {name} is a stand-in, not the model it names: {t['stand_in']}", {"yellow": True}))
        for name, why in self.expectation_overrides.items():
            out.append((f"WARNING: {name} runs on another model than its pre-registration (allowed): {why}",
                        {"yellow": True}))
        for name, entry in self.expectation_files.items():
            if entry.get("exploratory"):
                out.append((f"EXPLORATORY: {name} has no pre-registration; its verdicts were judged against none",
                            {"yellow": True}))
        for c in self.claims:
            figure = "-" if c["statistic"] is None else f"{c['statistic']:.3g}"
            if c["ci"]:
                figure += f" [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] n={c['n']}"
            expected = "" if c["expected"] is None else f" (expected {c['expected']})"
            if c["expected"] == REFUTED:
                expected = f" ({NEGATIVE_CONTROL}: expected {REFUTED})"
            elif c["expected"] == UNDECIDED:
                expected = f" ({UNDECIDED} at discovery: recorded, not judged)"
            if c["as_expected"] is False:
                expected = f" (UNEXPECTED: pre-registered {c['expected']})"
            out.append((f"{c['verdict']:>14}  {c['id']} [{c['target']}]{expected}  {figure}", {}))
            if c["verdict"] in reproduce.SHOWN_FOR:
                run = {"seed": self.settings.seed, "settings": dict(self.settings.__dict__)}
                out.append((f"{'':>16}reproduce: {reproduce.command(c, run)}", {}))
            elif c["verdict"] in (INCONCLUSIVE, NOT_APPLICABLE) and c.get("message"):
                out.append((f"{'':>16}why: {_first_line(c['message'])[:200]}", {}))
        skipped = Counter(c["verdict"] for c in self.claims if c["verdict"] in (INCONCLUSIVE, NOT_APPLICABLE))
        if skipped:
            out.append(("pytest counts these claims as skipped: " + ", ".join(
                f"{n} {verdict}" for verdict, n in sorted(skipped.items())) + " (each with its reason above)", {}))
        return out

    def to_json(self) -> dict[str, Any]:
        targets = self.targets()
        return {
            "schema_version": SCHEMA_VERSION,
            "run": {
                "started": self.started,
                "finished": self.finished,
                "complete": self.finished is not None,
                "exit_status": self.exit_status,
                "git_commit": git_commit(self.root),
                "git_dirty": git_dirty(self.root),
                # the forward-pass code every cached entry of this run was keyed by (mechclaims.codeprint)
                "code_fingerprint": codeprint.framework(),
                # the pre-registration each target's verdicts were judged against, byte for byte
                "expectations": dict(self.expectation_files),
                "seed": self.settings.seed,
                "settings": dict(self.settings.__dict__),
                "versions": package_versions(),
                "header": self.header(),
                # torch intra-op threads of each process that ran claims, and why (mechclaims.threads)
                "threads": dict(sorted(self.thread_records.items())),
                # what -n did for this run: the cost of a --dist that splits targets, or why it cannot help
                "parallel": list(self.parallel),
                # --mechclaims-shard K/N: which shard of a run this report is (mechclaims merge joins them)
                "shard": self.shard.to_json() if self.shard is not None else None,
                # targets run on another model than their pre-registration, allowed by the user
                "expectation_overrides": dict(self.expectation_overrides),
                # targets that could not run at all, each with its cause and fix, once
                "target_errors": dict(self.target_errors),
                "targets": {
                    name: {k: v for k, v in t.items() if k not in _COUNTED}
                    for name, t in targets.items()
                },
                "load_counts": {name: t["load_count"] for name, t in targets.items()},
                "boots": {name: t["boots"] for name, t in targets.items()},
                "forwards": {name: t["forwards"] for name, t in targets.items()},
                "activation_cache": {
                    "mode": self.cache_mode,
                    "directory": str(self.activation_dir) if self.cache_mode in DISK_MODES else None,
                    # seconds this process spent fingerprinting code for cache keys
                    "code_fingerprint_seconds": round(codeprint.spent(), 4),
                    # [tool.mechclaims] cache-max-size and what enforcing it at the end removed
                    "max_size": self.cache_max_size,
                    "pruned": self.cache_pruned,
                    "stats": {name: t["store"] for name, t in targets.items()},
                },
            },
            "claims": list(self.claims),
        }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


def _head(message: str, width: int = 100) -> str:
    """The start of a long message, for the line each claim of a failed target carries."""
    return message if len(message) <= width else message[: width - 3].rstrip() + "..."


def _no_store() -> dict[str, int]:
    """The store figures of a target that never loaded in this process."""
    from .store import StoreStats

    return StoreStats().to_json()
