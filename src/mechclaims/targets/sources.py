"""Where a target's weights come from: a local Hugging Face directory (:func:`from_dir`), a
snapshot in the Hugging Face cache (:func:`from_hf_cache`, never downloaded here), or a GGUF file
(:func:`from_gguf`, dequantised once into the cache); ``MECHCLAIMS_<NAME>_DIR`` overrides any of
them (:func:`override`). Each returns a :class:`~mechclaims.targets.spec.Resolved` directory with
its fingerprint."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from ..errors import TargetError
from ..hub import offline
from ..weights import check_hf_snapshot, check_safetensors, fingerprint, safetensors_files, sha256_file
from .spec import Resolved, TargetSpec

log = logging.getLogger("mechclaims.targets")

CACHE_MARKER = "mechclaims-cache.json"


def override(spec: TargetSpec) -> Resolved | None:
    """The directory ``MECHCLAIMS_<NAME>_DIR`` names for this run, if set (every resolver asks first)."""
    env = os.environ.get(spec.env_var)
    if not env:
        return None
    return from_dir(spec, Path(env).expanduser())


def from_dir(spec: TargetSpec, path: Path, source: str | None = None) -> Resolved:
    """A local Hugging Face directory; its fingerprint is the sha256 of its safetensors files."""
    return Resolved(path, source or f"dir:{path}", dir_fingerprint(path))


def from_hf_cache(spec: TargetSpec, repo: str, revision: str | None, cache_dir: Path, hint: str = "") -> Resolved:
    """A snapshot of ``repo`` already in the Hugging Face cache (never downloaded here), checked
    complete; its fingerprint is the snapshot's revision."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as exc:
        raise TargetError(
            f"{spec.name}: {repo} (revision {revision or 'main'}) is not in the HF cache ({type(exc).__name__}); "
            f"download it with `HF_HUB_OFFLINE=0 hf download {repo}`{' ' + hint if hint else ''} or set "
            f"{spec.env_var} to a local HF directory"
        ) from None
    check_hf_dir(path)
    check_hf_snapshot(path, cache_dir)
    for file in safetensors_files(path):
        check_safetensors(file)
    return Resolved(path, f"hf-cache:{repo}", f"revision:{path.name}")


def dir_fingerprint(path: Path, memo_dir: Path | None = None) -> str:
    check_hf_dir(path)
    return "sha256:" + fingerprint(safetensors_files(path), memo_dir)


def check_hf_dir(path: Path) -> None:
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TargetError(f"weights directory {path} is a symlink loop; point it at a real HF model directory") from None
        raise TargetError(f"weights directory {path} does not exist; point to an HF model directory") from None
    if not path.is_dir():
        raise TargetError(f"weights directory {path} is a file, not a directory; point to the HF model directory "
                          "that holds config.json, a tokenizer and *.safetensors")
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    has_tokenizer = any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    if not has_tokenizer:
        missing.append("tokenizer.json")
    if missing:
        raise TargetError(
            f"weights directory {path} lacks {', '.join(missing)}; it must hold config.json, "
            "a tokenizer and *.safetensors (save_pretrained of the model and its tokenizer)"
        )


def from_gguf(spec: TargetSpec, gguf: Path, cache_dir: Path, fix: str) -> Resolved:
    """A GGUF checkpoint as a target: dequantised once (through transformers, which reads it with the
    ``gguf`` package) into a float32 safetensors directory under ``cache_dir``, keyed by the file's
    sha256, so targets of the same file share one copy; later runs reuse it. ``fix`` is what the
    errors tell the user to do."""
    if not gguf.is_file():
        raise TargetError(f"{spec.name}: GGUF file {gguf} does not exist; {fix}")
    import importlib.util

    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise TargetError(f"{spec.name}: reading GGUF file {gguf.name} needs {' and '.join(missing)}, which "
                          "are not installed: pip install 'mechclaims[gguf]'")
    digest = sha256_file(gguf, cache_dir)
    out = cache_dir / "gguf" / digest[:16]
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not _cache_entry_ok(out):
            _dequantise_gguf(gguf, out, fix)
    return Resolved(out, f"gguf:{gguf.name}", f"sha256:{digest}")


def _cache_entry_ok(out: Path) -> bool:
    """True when a dequantised cache entry is complete and its weights match their checksum."""
    marker = out / CACHE_MARKER
    if not marker.is_file():
        if out.exists():
            log.warning("incomplete cache entry %s: rebuilding", out)
        return False
    try:
        expected = json.loads(marker.read_text())["sha256"]
        weights = out / "model.safetensors"
        check_safetensors(weights)
        actual = sha256_file(weights)
    except (OSError, ValueError, KeyError, TargetError) as exc:
        log.warning("corrupt cache entry %s (%s): rebuilding", out, exc)
        return False
    if actual != expected:
        log.warning("cache entry %s fails its checksum (%s != %s): rebuilding", out, actual, expected)
        return False
    return True


def _dequantise_gguf(gguf: Path, out: Path, fix: str) -> None:
    """Dequantise a GGUF checkpoint through transformers into a safetensors HF dir, atomically."""
    import torch
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"mechclaims: dequantising {gguf.name} once into {out} ...", file=sys.stderr, flush=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # gguf raises assorted errors on a bad file
        raise TargetError(
            f"cannot read GGUF file {gguf}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
            "the file is truncated or corrupt, or holds an architecture or quantisation transformers does "
            f"not read from GGUF (docs/targets.md): {fix}"
        ) from None
    # The weights are dequantised floats now; drop the GGUF quantiser so that
    # transformers saves them as a plain float32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        digest = sha256_file(tmp / "model.safetensors")
        (tmp / CACHE_MARKER).write_text(json.dumps({"sha256": digest, "source": gguf.name}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_configured(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path | None) -> Resolved:
    """A target registered by configuration: its local directory, GGUF file or HF-cache snapshot."""
    if (found := override(spec)) is not None:
        return found
    if spec.gguf is not None:
        return from_gguf(spec, spec.gguf, cache_dir,
                         f"fix gguf = ... in [tool.mechclaims.targets.{spec.name}] of {spec.origin}")
    if spec.location is not None:
        return from_dir(spec, spec.location)
    return from_hf_cache(spec, spec.hf_id, spec.revision, cache_dir)
