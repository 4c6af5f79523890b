"""Checks and fingerprints of weight files on disk.

Weights are read only from safetensors (or GGUF through transformers); nothing
here unpickles.  Hashing a large checkpoint is slow, so digests are memoised in
the cache directory keyed by (path, size, mtime).
"""

from __future__ import annotations

from typing import Any

import hashlib
import json
from pathlib import Path

from .errors import TargetError
from .hub import offline
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
        if not path.is_file():  # a FIFO or device would block or stream forever
            raise TargetError(f"{path} is not a regular file; weights must be safetensors files")
        check_safetensors(path)
    return files


def check_safetensors(path: Path) -> dict:
    """Validate a safetensors file's header against its size without loading it; the header."""
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
    return header


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


def check_hf_snapshot(snapshot: Path, memo_dir: Path | None = None) -> None:
    """Every file of an HF-cache snapshot against the name of the blob it links to: a large (LFS)
    file's blob is named by the SHA-256 of its content, a small file's by its git blob SHA-1. A
    file changed after download (by hand, by a job that shared the cache) is refused in one line.
    The SHA-256 of a large file is memoised like :func:`sha256_file`'s."""
    for link in sorted(Path(snapshot).iterdir()):
        blob = link.resolve()
        if blob.parent.name != "blobs" or not blob.is_file():
            continue
        if len(blob.name) == 64:
            actual = sha256_file(link, memo_dir)
        elif len(blob.name) == 40:
            data = blob.read_bytes()
            actual = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
        else:
            continue
        if actual != blob.name:
            raise TargetError(
                f"{link} was changed after download: its content hashes to {actual}, but the HF cache "
                f"stored it as blob {blob.name}; delete {blob} and download the model again "
                "(`HF_HUB_OFFLINE=0 hf download ...`)")


def fingerprint(files: list[Path], memo_dir: Path | None = None) -> str:
    """One SHA-256 over several weight files (the digest of their digests)."""
    if len(files) == 1:
        return sha256_file(files[0], memo_dir)
    combined = hashlib.sha256()
    for path in sorted(files):
        combined.update(f"{path.name}:{sha256_file(path, memo_dir)}\n".encode())
    return combined.hexdigest()


# Files of an HF directory that never shape a forward pass (prose, locks); everything else
# besides the weights (config, generation config, tokenizer files) is part of the digest.
_NOT_COMPUTATION = (".md", ".lock")


def companion_digest(model_dir: Path) -> str:
    """SHA-256 over every file of ``model_dir`` that shapes a forward pass besides the weights:
    ``config.json``, ``generation_config.json``, the tokenizer files and any other top-level file
    (prose and hidden files excepted). With the weights' fingerprint it keys the activation cache,
    so an edited config or tokenizer is never a stale hit."""
    combined = hashlib.sha256()
    try:
        files = sorted(p for p in model_dir.iterdir() if not p.name.startswith(".") and p.suffix != ".safetensors"
                       and not p.name.endswith(_NOT_COMPUTATION) and (p.is_file() or p.is_symlink()))
        for path in files:
            combined.update(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    except OSError as exc:
        raise TargetError(f"cannot read {exc.filename or model_dir}: {exc.strerror or exc}; "
                          "the model directory must hold readable regular files") from None
    return combined.hexdigest()


def _loaded_name(model: Any, name: str) -> str:
    """The parameter a checkpoint tensor loads into: transformers renames some on load (GPT-NeoX
    saves ``lm_head`` as ``embed_out``), by the renamings it declares for the architecture."""
    import re

    offline()
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    for rule in get_model_conversion_mapping(model):
        if isinstance(rule, WeightRenaming):
            for source, target in zip(rule.source_patterns, rule.target_patterns):
                if re.search(source, name):
                    return re.sub(source, target, name)
    return name


def check_checkpoint(model_dir: Path) -> None:
    """Refuse a checkpoint whose tensors do not match its ``config.json``: a missing tensor (which
    transformers would initialise at random), an unexpected one, or one of the wrong shape. The
    architecture is built on the meta device (no memory, no weights, no remote code)."""
    import torch
    offline()
    from transformers import AutoConfig, AutoModelForCausalLM

    found = {name: tuple(info["shape"]) for path in safetensors_files(model_dir)
             for name, info in check_safetensors(path).items() if name != "__metadata__"}
    try:
        config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"cannot build the architecture of {model_dir / 'config.json'}: {first}") from None
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {_loaded_name(model, name): shape for name, shape in found.items()}
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)  # the output matrix is the embedding, stored once
        found.pop("lm_head.weight", None)
    problems = [f"missing tensor {name} {list(shape)}" for name, shape in expected.items() if name not in found]
    problems += [f"unexpected tensor {name} {list(shape)}" for name, shape in found.items() if name not in expected]
    problems += [f"tensor {name} has shape {list(found[name])}, config.json implies {list(shape)}"
                 for name, shape in expected.items() if name in found and found[name] != shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TargetError(
            f"checkpoint {model_dir} does not match its config.json: {problems[0]}{more}; a missing tensor "
            "would be initialised at random: restore the checkpoint or correct config.json"
        )
