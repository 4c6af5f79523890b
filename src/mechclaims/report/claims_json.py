"""``reports/<run-id>/claims.json`` (with ``claims.md`` and ``index.html`` rendered from it)
and the ``reports/latest`` link, all written atomically."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..files import remove_stale_temporaries, write_text_atomic


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def atomic_write_text(path: Path, text: str, root: Path | None = None) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one
    (:func:`mechclaims.files.write_atomic`)."""
    write_text_atomic(path, text, root)


def point_latest(report_dir: Path, run_dir: Path) -> Path:
    """Atomically repoint ``report_dir/latest`` at ``run_dir`` (a relative symlink). The new link
    is made under a fresh random name (``symlink`` never follows or replaces what is there), then
    renamed over ``latest``, which replaces a planted link rather than following it."""
    latest = report_dir / "latest"
    tmp = report_dir / f".latest.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.symlink_to(run_dir.name)
    try:
        os.replace(tmp, latest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return latest


def render_views(run_dir: Path, record: dict[str, Any], plot_cache: Path | None = None,
                 drawn: dict | None = None) -> list[Path]:
    """(Re)write the views people read, ``claims.md`` and ``index.html``, from a run record
    (plots kept in ``plot_cache``, or already drawn by the processes that ran the claims, are reused)."""
    from . import html, markdown

    atomic_write_text(run_dir / "claims.md", markdown.render(record), root=run_dir)
    atomic_write_text(run_dir / "index.html", html.render(record, plot_cache, drawn), root=run_dir)
    return [run_dir / "claims.md", run_dir / "index.html"]


def write_run(report_dir: Path, run_id: str, record: dict[str, Any], plot_cache: Path | None = None,
              drawn: dict | None = None) -> Path:
    """Write ``claims.json``, ``claims.md`` and ``index.html`` for one run; repoint
    ``latest`` only at a complete run.

    The three files are written into a hidden staging directory that is renamed into place
    whole, so ``reports/<run-id>`` appears complete or not at all (a crash or a full disk leaves
    at most a ``.<run-id>.tmp`` directory, removed here an hour later). On an error nothing is
    renamed, ``latest`` is untouched and the error propagates."""
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(report_dir, ".*.tmp")
    run_dir = report_dir / run_id
    stage = report_dir / f".{run_id}.tmp"
    stage.mkdir()  # exclusive: never an existing directory or a planted link
    try:
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
        atomic_write_text(stage / "claims.json", text, root=stage)
        render_views(stage, json.loads(text), plot_cache, drawn)  # the views show exactly what claims.json holds
        os.rename(stage, run_dir)  # fails rather than merge into an existing run directory
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if record.get("run", {}).get("complete"):
        point_latest(report_dir, run_dir)
    return run_dir / "claims.json"
