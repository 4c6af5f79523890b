"""Writes that a crash, a full disk or a planted symlink cannot turn into a torn or stray file.

Every file mechclaims writes (report, activation cache, plot cache, checksum memo) goes through
:func:`write_atomic`:

- the bytes go to a fresh temporary beside the target, created exclusively (``O_EXCL``: a file
  or symlink already at that name is never opened), then fsync'd and renamed over the target,
  so a reader sees the old file or the new one, never a part of either, even after SIGKILL;
- with ``root``, the target's directory must resolve inside ``root``: a symlinked directory
  planted inside a cache or report directory cannot carry a write outside it;
- on any error (``ENOSPC`` among them) the temporary is removed and nothing is renamed.

A process killed between creating and renaming a temporary leaves a ``.<name>.*.tmp`` file;
nothing reads those names, and :func:`remove_stale_temporaries` clears them an hour later.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

__all__ = ["UnsafePathError", "write_atomic", "write_text_atomic", "describe_os_error", "remove_stale_temporaries"]

# A temporary older than this belongs to a dead writer (writes take milliseconds to seconds).
STALE_SECONDS = 3600.0


class UnsafePathError(OSError):
    """A write whose directory resolves outside the directory it must stay in."""


def _confined(directory: Path, root: Path) -> None:
    try:
        real, real_root = directory.resolve(), root.resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13 raises RuntimeError for a symlink loop
        raise UnsafePathError(f"refusing to write into {directory}: a symlink loop on its path ({exc}); "
                              "remove the looping link") from None
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f"refusing to write into {directory}: it resolves to {real}, outside {real_root} "
            "(a symlink inside the directory points out of it); remove the symlink"
        )


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` atomically; with ``root``, only inside ``root``."""
    path = Path(path)
    if root is not None:  # before mkdir, which would follow a planted link and create directories past it
        _confined(path.parent, Path(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give it
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: name it
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    _fsync_directory(path.parent)


def write_text_atomic(path: Path, text: str, root: Path | None = None) -> None:
    write_atomic(path, text.encode("utf-8"), root)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(exc: OSError, what: str, fix: str) -> str:
    """One line: what could not be written, the system's reason, and the fix."""
    if isinstance(exc, UnsafePathError):
        return f"{what}: {exc}"
    where = f" {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    code = f" (errno {exc.errno})" if exc.errno else ""
    return f"{what}: cannot write{where}: {reason}{code}; {fix}"


def remove_stale_temporaries(directory: Path, pattern: str, older_than: float = STALE_SECONDS) -> int:
    """Remove what killed writers left in ``directory``: entries matching ``pattern`` (a glob of
    this module's temporary names, such as ``".*.tmp"``) older than ``older_than`` seconds.
    Links are never followed or removed. Returns how many were removed."""
    import shutil

    directory = Path(directory)
    if not directory.is_dir():
        return 0
    cutoff, removed = time.time() - older_than, 0
    for path in directory.glob(pattern):
        try:
            if not path.name.endswith(".tmp") or path.is_symlink() or path.lstat().st_mtime > cutoff:
                continue
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
        except OSError:
            continue
    return removed
