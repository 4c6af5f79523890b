"""Checks and fingerprints of weight files on disk.

Weights are read only from safetensors (or GGUF through transformers); nothing
here unpickles.  Hashing a large checkpoint is slow, so digests are memoised in
the cache directory keyed by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import TargetError
from .files import write_text_atomic

_CHUNK = 1 << 22


def safetensors_files(model_dir: Path) -> list[Path]:
    """The safetensors weight files of an HF directory, checked to be readable.

    Raises :class:`TargetError` when the directory holds no safetensors file
    (pickled ``.bin`` weights are refused) or a file is truncated or corrupt.
    """
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in model_dir.glob("*.bin"))
        hint = (
            f" (found pickled weights {', '.join(pickled)}: convert them to safetensors; "
            "mechclaims never unpickles weights)"
            if pickled
            else ""
        )
        raise TargetError(f"no *.safetensors weights in {model_dir}{hint}")
    for path in files:
        check_safetensors(path)
    return files


def check_safetensors(path: Path) -> None:
    """Validate a safetensors file's header against its size without loading it."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            header_len = int.from_bytes(raw, "little")
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} does not fit in {size} bytes")
            header = json.loads(fh.read(header_len))
        end = max(
            (info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"),
            default=0,
        )
        if 8 + header_len + end != size:
            raise ValueError(
                f"tensors end at byte {8 + header_len + end} but the file has {size} bytes"
            )
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise TargetError(
            f"corrupt or truncated safetensors file {path}: {exc}; re-download or rebuild it"
        ) from None


def sha256_file(path: Path, memo_dir: Path | None = None) -> str:
    """Hex SHA-256 of a file, memoised by (path, size, mtime) under ``memo_dir``."""
    path = path.resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = memo_dir / "sha256-memo.json" if memo_dir else None
    memo: dict[str, str] = {}
    if memo_file and memo_file.exists():
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if memo_file:
        memo[key] = hexdigest
        try:
            write_text_atomic(memo_file, json.dumps(memo, indent=0), root=memo_dir)
        except OSError:  # the memo saves time on the next run; failing to keep it costs nothing now
            pass
    return hexdigest


def fingerprint(files: list[Path], memo_dir: Path | None = None) -> str:
    """One SHA-256 over several weight files (the digest of their digests)."""
    if len(files) == 1:
        return sha256_file(files[0], memo_dir)
    combined = hashlib.sha256()
    for path in sorted(files):
        combined.update(f"{path.name}:{sha256_file(path, memo_dir)}\n".encode())
    return combined.hexdigest()
