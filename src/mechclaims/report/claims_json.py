"""``reports/<run-id>/claims.json`` (with ``claims.md`` and ``index.html`` rendered from it)
and the ``reports/latest`` link, all written atomically."""

from __future__ import annotations

import json
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def point_latest(report_dir: Path, run_dir: Path) -> Path:
    """Atomically repoint ``report_dir/latest`` at ``run_dir`` (a relative symlink)."""
    latest = report_dir / "latest"
    tmp = report_dir / f".latest.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
    return latest


def render_views(run_dir: Path, record: dict[str, Any], plot_cache: Path | None = None) -> list[Path]:
    """(Re)write the views people read, ``claims.md`` and ``index.html``, from a run record
    (plots kept in ``plot_cache`` are reused)."""
    from . import html, markdown

    atomic_write_text(run_dir / "claims.md", markdown.render(record))
    atomic_write_text(run_dir / "index.html", html.render(record, plot_cache))
    return [run_dir / "claims.md", run_dir / "index.html"]


def write_run(report_dir: Path, run_id: str, record: dict[str, Any], plot_cache: Path | None = None) -> Path:
    """Write ``claims.json``, ``claims.md`` and ``index.html`` for one run; repoint
    ``latest`` only at a complete run."""
    run_dir = report_dir / run_id
    path = run_dir / "claims.json"
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    render_views(run_dir, json.loads(text), plot_cache)  # the views show exactly what claims.json holds
    if record.get("run", {}).get("complete"):
        point_latest(report_dir, run_dir)
    return path
