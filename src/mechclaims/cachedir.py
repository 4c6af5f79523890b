"""The disk activation cache as a whole: what it holds, and keeping it in bounds.

The cache directory holds one safetensors file per entry (``<2 hex>/<sha256>.safetensors``,
written by :mod:`mechclaims.store`; each names its target and creation time in its metadata)
and the report's drawn plots (``plots/<sha256>.json``). Nothing else in the directory is
read, removed or followed (links are left alone), so a prune cannot reach outside it.

A hit touches its entry, so an entry's modification time is when it was last used:
:func:`prune` removes the least recently used first. A prune during a run loses nothing the
run needs: an entry it removes is recomputed (a missing file is a miss, not an error).
Sizes are bytes or a number with a unit (``500MB``, ``2 GiB``), ages a number with ``s``,
``m``, ``h`` or ``d``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_ENTRY = re.compile(r"[0-9a-f]{64}\.safetensors")
_SHARD = re.compile(r"[0-9a-f]{2}")
_PLOT = re.compile(r"[0-9a-f]{64}\.json")
PLOTS = "(plots)"  # the target name the report's drawn plots are listed under
UNNAMED = "(unnamed)"  # an entry written before entries named their target
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CONFIG_KEY = "cache-max-size"
# --mechclaims-cache: off, memory (each forward pass once per run), disk (reused across runs), or
# disk-readonly (reads the disk cache, writes nothing)
STORE_MODES = ("off", "memory", "disk", "disk-readonly")
DISK_MODES = ("disk", "disk-readonly")


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    last_used: float  # modification time: a hit touches the file
    created: float
    target: str


@dataclass(frozen=True)
class TargetUsage:
    entries: int
    size: int
    oldest: float
    newest: float


@dataclass(frozen=True)
class Inventory:
    directory: Path
    entries: int
    size: int
    targets: dict[str, TargetUsage] = field(default_factory=dict)


@dataclass(frozen=True)
class Pruned:
    removed: int
    freed: int
    kept: int  # entries left
    size: int  # bytes left


def parse_size(text: object, where: str = "size") -> int:
    """Bytes from ``1000000``, ``"500MB"`` or ``"2 GiB"``; a ConfigError naming the value otherwise."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text)) if isinstance(text, str) else None
    if match is None or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"{where}: {text!r} is not a size; write bytes or a number with a unit "
                          "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as \"2 GiB\"")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_age(text: str, where: str = "age") -> float:
    """Seconds from ``"90s"``, ``"30m"``, ``"12h"`` or ``"7d"``."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*", text)
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not an age; write a number with s, m, h or d, such as \"7d\"")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


def human_size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def configured_cap(pyproject: Path | None) -> int | None:
    """``[tool.mechclaims] cache-max-size`` of ``pyproject`` in bytes (None when unset)."""
    from .registry import tool_table

    value = tool_table(pyproject).get(CONFIG_KEY)
    return None if value is None else parse_size(value, f"{pyproject}: [tool.mechclaims] {CONFIG_KEY}")


def entries(directory: Path) -> list[Entry]:
    """Every entry and drawn plot in the cache ``directory`` (none when it does not exist)."""
    directory = Path(directory)
    found: list[Entry] = []
    if not directory.is_dir():
        return found
    for shard in sorted(directory.iterdir()):
        if shard.is_symlink() or not shard.is_dir():
            continue
        is_plots = shard.name == "plots"
        if not is_plots and not _SHARD.fullmatch(shard.name):
            continue
        for path in sorted(shard.iterdir()):
            if not (_PLOT if is_plots else _ENTRY).fullmatch(path.name):
                continue
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed meanwhile
                continue
            if not path.is_file() or path.is_symlink():
                continue
            target, created = (PLOTS, st.st_mtime) if is_plots else _identity(path, st.st_mtime)
            found.append(Entry(path, st.st_size, st.st_mtime, created, target))
    return found


def _identity(path: Path, fallback: float) -> tuple[str, float]:
    """An entry's target and creation time, from its safetensors header (no tensor is read)."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * 2**20:
                raise ValueError("header too long")
            meta = json.loads(fh.read(length)).get("__metadata__") or {}
        return meta.get("target") or UNNAMED, float(meta.get("created", fallback))
    except (OSError, ValueError, struct.error, AttributeError):
        return UNNAMED, fallback


def inventory(directory: Path) -> Inventory:
    """Where the cache is, its size and entries, and per target the oldest and newest entry."""
    found = entries(directory)
    by_target: dict[str, list[Entry]] = {}
    for entry in found:
        by_target.setdefault(entry.target, []).append(entry)
    targets = {
        name: TargetUsage(len(group), sum(e.size for e in group), min(e.created for e in group),
                          max(e.created for e in group))
        for name, group in sorted(by_target.items())
    }
    return Inventory(Path(directory), len(found), sum(e.size for e in found), targets)


def prune(directory: Path, *, older_than: float | None = None, max_size: int | None = None,
          now: float | None = None) -> Pruned:
    """Remove entries unused for more than ``older_than`` seconds, then the least recently used
    until the cache holds at most ``max_size`` bytes."""
    if older_than is None and max_size is None:
        raise ConfigError("prune needs --older-than AGE or --max-size SIZE (or both); `clear` removes everything")
    now = time.time() if now is None else now
    found = sorted(entries(directory), key=lambda e: (e.last_used, e.path.name))  # least recently used first
    total = sum(e.size for e in found)
    removed = freed = 0
    for entry in found:
        stale = older_than is not None and now - entry.last_used > older_than
        too_big = max_size is not None and total - freed > max_size
        if not (stale or too_big):
            continue
        if _remove(entry.path):
            removed += 1
            freed += entry.size
    return Pruned(removed, freed, len(found) - removed, total - freed)


def clear(directory: Path) -> Pruned:
    """Remove every entry and drawn plot."""
    found = entries(directory)
    removed = [e for e in found if _remove(e.path)]
    return Pruned(len(removed), sum(e.size for e in removed), len(found) - len(removed),
                  sum(e.size for e in found) - sum(e.size for e in removed))


def _remove(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:  # a concurrent prune got there first
        return False
    return True
