"""The state of one claim run: settings, loaded targets and collected results.

The plugin keeps one :class:`ClaimSession` in ``config.stash``; nothing here
knows pytest.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .results import SCHEMA_VERSION, ClaimResult
from .settings import Settings
from .targets import LoadedTarget, TargetInfo, load_target

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
    results: list[ClaimResult] = field(default_factory=list)
    loaded: dict[str, LoadedTarget] = field(default_factory=dict)
    load_counts: Counter = field(default_factory=Counter)

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

    def record(self, result: ClaimResult) -> None:
        self.results.append(result)

    @property
    def targets_info(self) -> dict[str, TargetInfo]:
        return {name: loaded.info for name, loaded in self.loaded.items()}

    def header(self) -> str:
        """One line naming models, fingerprints, dtypes, devices, versions and seed."""
        v = package_versions()
        models = "; ".join(
            f"{i.name} {i.sha256_or_revision[:23]} {i.dtype} {i.device}"
            for i in self.targets_info.values()
        ) or "no model loaded"
        return (
            f"mechclaims {v['mechclaims']} | {models} | torch {v['torch']}, "
            f"transformers {v['transformers']}, transformer-lens {v['transformer-lens']} | "
            f"seed {self.settings.seed}, profile {self.settings.profile}"
        )

    def to_json(self) -> dict[str, Any]:
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
                    name: {
                        "source": info.source,
                        "sha256_or_revision": info.sha256_or_revision,
                        "dtype": info.dtype,
                        "device": info.device,
                        "n_layers": info.n_layers,
                        "n_heads": info.n_heads,
                        "load_seconds": info.load_seconds,
                    }
                    for name, info in self.targets_info.items()
                },
                "load_counts": dict(self.load_counts),
                "forwards": {
                    name: {"calls": t.forwards.calls, "tokens": t.forwards.tokens}
                    for name, t in self.loaded.items()
                },
            },
            "claims": [r.to_json() for r in self.results],
        }
