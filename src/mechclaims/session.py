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
from typing import Any

from .results import SCHEMA_VERSION, ClaimResult
from .settings import Settings
from .targets import LoadedTarget, load_target

VERSIONED_PACKAGES = ("mechclaims", "torch", "transformers", "transformer-lens", "numpy", "scipy")


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


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class ClaimSession:
    """Everything a claim run accumulates; serialised by :meth:`to_json`."""

    settings: Settings
    root: Path
    device: str | None = None
    dtype: str | None = None
    cache_dir: Path | None = None
    fixtures_dir: Path | None = None
    started: str = field(default_factory=utc_now)
    finished: str | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)
    loaded: dict[str, LoadedTarget] = field(default_factory=dict)
    load_counts: Counter = field(default_factory=Counter)
    # What each process (pytest-xdist worker, or "main") reported about its targets.
    target_records: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def target(self, name: str) -> LoadedTarget:
        """The loaded target ``name``; loaded on first use, then shared."""
        if name not in self.loaded:
            self.load_counts[name] += 1
            self.loaded[name] = load_target(
                name,
                device=self.device,
                dtype=self.dtype,
                cache_dir=self.cache_dir,
                fixtures_dir=self.fixtures_dir,
            )
        return self.loaded[name]

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
            "targets": {
                name: {
                    **t.info.to_json(),
                    "load_count": self.load_counts[name],
                    "forwards": {"calls": t.forwards.calls, "tokens": t.forwards.tokens},
                }
                for name, t in self.loaded.items()
            },
        }

    def record(self, payload: dict[str, Any]) -> None:
        """Collect one claim's payload (from this process or an xdist worker)."""
        self.claims.append(payload["claim"])
        for name, record in payload["targets"].items():
            self.target_records[payload["worker"], name] = record

    def targets(self) -> dict[str, dict[str, Any]]:
        """Per target: provenance, and load counts and forwards summed over processes."""
        merged: dict[str, dict[str, Any]] = {}
        for (_, name), rec in sorted(self.target_records.items()):
            info = {k: v for k, v in rec.items() if k not in ("name", "load_count", "forwards")}
            entry = merged.setdefault(name, {**info, "load_count": 0, "forwards": {"calls": 0, "tokens": 0}})
            entry["load_count"] += rec["load_count"]
            entry["forwards"]["calls"] += rec["forwards"]["calls"]
            entry["forwards"]["tokens"] += rec["forwards"]["tokens"]
        return merged

    def header(self) -> str:
        """One line naming models, fingerprints, dtypes, devices, versions and seed."""
        v = package_versions()
        models = "; ".join(
            f"{name} {t['sha256_or_revision'][:23]} {t['dtype']} {t['device']}"
            for name, t in self.targets().items()
        ) or "no model loaded"
        return (
            f"mechclaims {v['mechclaims']} | {models} | torch {v['torch']}, "
            f"transformers {v['transformers']}, transformer-lens {v['transformer-lens']} | "
            f"seed {self.settings.seed}, profile {self.settings.profile}"
        )

    def to_json(self) -> dict[str, Any]:
        targets = self.targets()
        return {
            "schema_version": SCHEMA_VERSION,
            "run": {
                "started": self.started,
                "finished": self.finished,
                "complete": self.finished is not None,
                "git_commit": git_commit(self.root),
                "seed": self.settings.seed,
                "settings": dict(self.settings.__dict__),
                "versions": package_versions(),
                "header": self.header(),
                "targets": {
                    name: {k: v for k, v in t.items() if k not in ("load_count", "forwards")}
                    for name, t in targets.items()
                },
                "load_counts": {name: t["load_count"] for name, t in targets.items()},
                "forwards": {name: t["forwards"] for name, t in targets.items()},
            },
            "claims": list(self.claims),
        }
