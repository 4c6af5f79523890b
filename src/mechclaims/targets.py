"""Model targets: the registry of names a claim can run on, and the ONE function
that loads any of them through ``TransformerBridge.boot_transformers``.

Every target resolves to a local Hugging Face directory (config, tokenizer,
safetensors) and is then loaded the same way. The core ships no model: targets come
from packages (the entry point ``mechclaims.targets``; the post's pack ships its four) and
from a project's ``pyproject.toml`` (:mod:`mechclaims.registry`). A resolver turns a
:class:`TargetSpec` into a :class:`Resolved` directory with the sources here: a directory
(:func:`from_dir`), a snapshot in the Hugging Face cache (:func:`from_hf_cache`), a GGUF file
(:func:`from_gguf`). Any target's directory can be overridden with
``MECHCLAIMS_<NAME>_DIR`` (name upper-cased, dashes as underscores; :func:`override`).
Loading never touches the network: ``HF_HUB_OFFLINE`` is set (:mod:`mechclaims.hub`) unless
the environment already says otherwise, and ``trust_remote_code`` is never enabled.
The model a loaded target holds is a :class:`DeferredBridge`: the weights are
booted on first real use and can be released (and booted again) later.
"""

from __future__ import annotations

import gc
import json
import logging
import errno
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import TargetError
from .hub import offline
from .weights import (
    check_checkpoint, check_hf_snapshot, check_safetensors, companion_digest, fingerprint, safetensors_files, sha256_file,
)

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
# accelerate's named placements (TransformerBridge.boot_transformers passes device_map on to it)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
CACHE_MARKER = "mechclaims-cache.json"
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


def is_device(value: object) -> bool:
    """``cpu``, ``cuda`` or ``cuda:N``: where a target's inputs go."""
    return isinstance(value, str) and _DEVICE.fullmatch(value) is not None


@dataclass(frozen=True)
class Resolved:
    """Where a target's weights are, where they came from, and their fingerprint."""

    path: Path
    source: str
    sha256_or_revision: str


@dataclass(frozen=True)
class ModelShape:
    """A model's sizes, read from its ``config.json`` before any weight is loaded."""

    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_model: int
    d_mlp: int
    d_vocab: int

    def describe(self) -> str:
        return (f"{self.n_layers} layers, {self.n_heads} heads ({self.n_key_value_heads} key-value), "
                f"width {self.d_model}, MLP {self.d_mlp}, vocabulary {self.d_vocab}")


@dataclass(frozen=True)
class TargetSpec:
    """A registered model target."""

    name: str
    summary: str
    device: str
    dtype: str
    gpu: bool
    resolve: Callable[["TargetSpec", Path, Path], Resolved] = field(repr=False)
    known_shape: ModelShape | None = None  # the real model's sizes; other sizes mark a stand-in
    # A configured target's weights (registry.py): a local HF directory, an HF-cache snapshot, or a
    # GGUF file (dequantised once into the cache).
    location: Path | None = None
    gguf: Path | None = None
    origin: str | None = None  # the pyproject.toml that configured it
    hf_id: str | None = None
    revision: str | None = None
    # Passed on to TransformerBridge.boot_transformers (accelerate): device_map, n_devices, max_memory.
    boot_options: Mapping[str, Any] = field(default_factory=dict)
    # Why a configured target cannot run (its table has a bad key or value): the error it gives when
    # selected; the other targets of the same file run (registry.py).
    problem: str | None = None

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
    files_sha256: str  # config, tokenizer and generation config (weights.companion_digest)
    stand_in: str | None  # why this is not the model the target names (its shape differs), else None
    n_layers: int
    n_heads: int
    load_seconds: float  # resolving the weights, reading the tokenizer and config.json (the boot is timed apart)
    placement: dict[str, Any] = field(default_factory=dict)  # device_map, n_devices, max_memory given to the boot

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ForwardCount:
    """Forward passes through a loaded model: the tokens they were given, the tokens times the
    layers each went through, the positions whose logits they computed, the (query, key) pairs
    their attention scored and the seconds they took. A pass that a reading stops after its
    last hook counts only the layers it ran (and no logits when it stopped before the
    unembedding). Enough to count a run's floating-point work (benchmarks/roofline.py)."""

    calls: int = 0
    tokens: int = 0
    layer_tokens: int = 0  # sum over the layers run of the tokens through them
    logit_positions: int = 0
    attention_pairs: int = 0  # causal (query, key) pairs per head, cached keys included, summed over the layers run
    seconds: float = 0.0

    def to_json(self) -> dict[str, int | float]:
        return {**self.__dict__, "seconds": round(self.seconds, 3)}


@dataclass
class LoadedTarget:
    """A loaded model with its tokenizer and provenance."""

    name: str
    model: Any  # DeferredBridge of a transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    info: TargetInfo
    torch_hook_baseline: int = 0
    forwards: ForwardCount = field(default_factory=ForwardCount)
    boot_seconds: float | None = None  # None while the model was never booted; summed over boots
    boots: int = 0  # more than 1 when the model was released and needed again
    devices: list[str] = field(default_factory=list)  # where the booted weights lie (several under a device map)


def default_cache_dir() -> Path:
    env = os.environ.get("MECHCLAIMS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechclaims"


def default_fixtures_dir() -> Path | None:
    """``$MECHCLAIMS_FIXTURES_DIR``: a directory of model fixtures that resolvers look in first (a
    pytest run passes its project's ``fixtures/``); None when unset."""
    env = os.environ.get("MECHCLAIMS_FIXTURES_DIR")
    return Path(env) if env else None


# --------------------------------------------------------------------------- resolvers


def override(spec: TargetSpec) -> Resolved | None:
    """The directory ``MECHCLAIMS_<NAME>_DIR`` names for this run, if set (every resolver asks first)."""
    env = os.environ.get(spec.env_var)
    if not env:
        return None
    return from_dir(spec, Path(env).expanduser())


def from_dir(spec: TargetSpec, path: Path, source: str | None = None) -> Resolved:
    """A local Hugging Face directory; its fingerprint is the sha256 of its safetensors files."""
    return Resolved(path, source or f"dir:{path}", _dir_fingerprint(path))


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
    _check_hf_dir(path)
    check_hf_snapshot(path, cache_dir)
    for file in safetensors_files(path):
        check_safetensors(file)
    return Resolved(path, f"hf-cache:{repo}", f"revision:{path.name}")


def _dir_fingerprint(path: Path, memo_dir: Path | None = None) -> str:
    _check_hf_dir(path)
    return "sha256:" + fingerprint(safetensors_files(path), memo_dir)


def _check_hf_dir(path: Path) -> None:
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


# Every registered target by name, filled by mechclaims.registry: packages' entry points, pyproject.toml.
TARGETS: dict[str, TargetSpec] = {}


def resolve(
    name: str,
    *,
    device: str | None = None,
    cache_dir: Path | None = None,
    fixtures_dir: Path | None = None,
) -> Resolved:
    """Check that target ``name`` can run on ``device`` and locate its weights, without loading."""
    spec = get_spec(name)
    if spec.problem is not None:
        raise TargetError(spec.problem)
    device = device or spec.device
    if not is_device(device):
        raise TargetError(f"unknown device {device!r}; valid devices: cpu, cuda, cuda:N (N a GPU index)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise TargetError(
                f"target {name} needs CUDA but torch {torch.__version__} sees no GPU: run on a GPU "
                "machine with a CUDA build of torch, or pass --mechclaims-device cpu"
            )
    return spec.resolve(spec, cache_dir or default_cache_dir(), fixtures_dir or default_fixtures_dir())


def worker_device(device: str, worker: str | None, n_gpus: int) -> str:
    """The device of pytest-xdist worker ``worker`` (``gw0``, ``gw1``, ...): worker K takes
    ``cuda:K`` when the run asks for plain ``cuda``; any other device, and a run without
    workers, keeps ``device``."""
    if device != "cuda" or worker is None:
        return device
    k = int(worker.removeprefix("gw"))
    if k >= n_gpus:
        raise TargetError(f"pytest-xdist worker {worker} would take cuda:{k}, but torch sees {n_gpus} GPU(s): "
                          f"run with -n {n_gpus} or fewer (one worker per GPU)")
    return f"cuda:{k}"


def get_spec(name: str) -> TargetSpec:
    """The registered target ``name``. Outside a pytest run (a discovery script, ``load_target``
    in a notebook) a name not registered yet is looked up in the ``[tool.mechclaims.targets.*]``
    tables of the nearest ``pyproject.toml`` at or above the working directory."""
    from .registry import find_pyproject, load_config, load_entry_points

    load_entry_points()
    if name not in TARGETS:
        pyproject = find_pyproject(Path.cwd())
        load_config(pyproject)
        where = (f"{pyproject} has no [tool.mechclaims.targets.{name}] table" if pyproject is not None
                 else f"no pyproject.toml at or above {Path.cwd()}")
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(
            f"unknown target {name!r} ({where}); valid targets: {', '.join(TARGETS)}; add your own model as a "
            f"[tool.mechclaims.targets.{name}] table with path = \"DIR\" in your project's pyproject.toml "
            "(docs/targets.md)"
        ) from None


# --------------------------------------------------------------------------- loading


def load_target(
    name: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    cache_dir: Path | None = None,
    fixtures_dir: Path | None = None,
) -> LoadedTarget:
    """Resolve and load target ``name``; the one way any model enters mechclaims.

    ``device`` and ``dtype`` override the target's defaults (``llama-3-8b`` is
    ``cuda``/``bfloat16``; the CPU targets ``cpu``/``float32``). ``device_map`` (one of
    :data:`DEVICE_MAPS`) overrides the target's configured map: accelerate then spreads the
    layers over the visible devices, and ``device`` is where inputs go and readings come back.
    """
    spec = get_spec(name)
    device = device or spec.device
    dtype = dtype or spec.dtype
    if dtype not in DTYPES:
        raise TargetError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise TargetError(f"unknown device map {device_map!r}; valid device maps: {', '.join(DEVICE_MAPS)} "
                          "(or a table of module = device in the target's configuration, docs/targets.md)")
    options = {**spec.boot_options, **({"device_map": device_map} if device_map else {})}
    resolved = resolve(name, device=device, cache_dir=cache_dir, fixtures_dir=fixtures_dir)
    started = time.perf_counter()
    tokenizer = load_tokenizer(resolved.path)
    shape = read_shape(resolved.path)
    check_checkpoint(resolved.path)
    loaded = LoadedTarget(name, None, tokenizer, None)  # type: ignore[arg-type]  # filled below

    def boot_now() -> Any:
        import torch

        from .finite import first_non_finite

        booted = time.perf_counter()
        model = boot(resolved.path, device=device, dtype=getattr(torch, dtype), tokenizer=tokenizer,
                     options=options)
        loaded.devices = sorted({str(p.device) for p in model.parameters()})
        before = dict(loaded.forwards.__dict__)
        _count_forwards(model, loaded.forwards)
        loaded.torch_hook_baseline = _settled_hook_count(model)
        problem = first_non_finite(model)
        loaded.forwards.__dict__.update(before)  # the warm-up and probe forwards are not the claims' work
        if problem is not None:
            raise TargetError(
                f"target {name} computes NaN or inf: first at {problem} on a probe prompt, so no reading of it is "
                f"evidence; check the weights at {resolved.path} (a NaN in a tensor, a broken conversion), or "
                f"run in float32 if {dtype} overflows")
        loaded.boot_seconds = round((loaded.boot_seconds or 0.0) + time.perf_counter() - booted, 3)
        loaded.boots += 1
        return model

    loaded.model = DeferredBridge(boot_now, tokenizer, shape, device=device, dtype=dtype)
    loaded.info = TargetInfo(
        name=name,
        source=resolved.source,
        sha256_or_revision=resolved.sha256_or_revision,
        dtype=dtype,
        device=device,
        files_sha256=companion_digest(resolved.path),
        stand_in=None if spec.known_shape in (None, shape) else (
            f"{resolved.source} has {shape.describe()}; {name} has {spec.known_shape.describe()}"),
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        load_seconds=round(time.perf_counter() - started, 3),
        placement={k: (v if isinstance(v, (str, int)) else {str(d): m for d, m in v.items()}) for k, v in options.items()},
    )
    return loaded


def read_shape(path: Path) -> ModelShape:
    """The sizes of the HF model in ``path``, from its ``config.json`` (any family: :data:`SHAPE_KEYS`)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        raise TargetError(f"cannot read {path / 'config.json'}: {_first_line(exc)}; it must be the model's "
                          "JSON config (save_pretrained writes it)") from None
    if not isinstance(config, dict):
        raise TargetError(f"{path / 'config.json'} is not a JSON object; it must be the model's config")
    try:
        return ModelShape(**{name: _size(config, name) for name in SHAPE_KEYS})
    except KeyError as exc:
        raise TargetError(
            f"{path / 'config.json'} gives no {exc.args[0]} (looked for {', '.join(SHAPE_KEYS[exc.args[0]])}); "
            "mechclaims reads the sizes of causal LMs that transformers and TransformerBridge support "
            "(Llama, Qwen2, Gemma, GPT-2, GPT-NeoX, ...)"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TargetError(f"{path / 'config.json'} has a size that is not an integer ({_first_line(exc)}); "
                          "correct config.json") from None


# Where each size lives in the config.json of the model families transformers knows: the
# first key present wins. Families name them differently (GPT-2 n_layer, n_head, n_embd,
# n_inner); a missing MLP width is 4 x d_model for GPT-2-like families, and missing key-value heads are
# the attention heads (no grouped-query attention).
SHAPE_KEYS: dict[str, tuple[str, ...]] = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads"),
    "n_key_value_heads": ("num_key_value_heads", "multi_query_group_num"),
    "d_model": ("hidden_size", "n_embd", "d_model"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim"),
    "d_vocab": ("vocab_size",),
}


FOUR_X_MLP = ("gpt2", "gpt_bigcode", "gptj", "gpt_neo")  # families whose unset MLP width is 4 x d_model


def _size(config: dict, name: str) -> int:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    for key in SHAPE_KEYS[name]:
        if text.get(key) is not None:
            return int(text[key])
    if name == "n_key_value_heads":
        return _size(config, "n_heads")
    if name == "d_mlp" and text.get("model_type") in FOUR_X_MLP:
        return 4 * _size(config, "d_model")
    raise KeyError(name)


FAST_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")  # one class in transformers 5


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of the HF directory ``path``, as the bridge loads it (BOS prepended).

    A directory whose ``tokenizer_config.json`` names the generic fast tokenizer is
    loaded by that class directly: what ``AutoTokenizer`` returns, without
    resolving the model's config class first (about 1 s of imports).
    """
    offline()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = path / "tokenizer_config.json"
    named = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    loader = PreTrainedTokenizerFast if named in FAST_TOKENIZER_CLASSES and (path / "tokenizer.json").is_file() else AutoTokenizer
    try:
        return loader.from_pretrained(str(path), add_bos_token=True)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load the tokenizer of {path}: {_first_line(exc)}") from None


class DeferredConfig:
    """``cfg`` of a :class:`DeferredBridge`: the sizes, ``device`` and ``dtype`` are
    answered from ``config.json`` without booting (checked equal to the bridge's
    own at boot); any other field is the booted bridge's ``cfg``."""

    def __init__(self, owner: "DeferredBridge", shape: ModelShape, device: str, dtype: str):
        self._owner = owner
        self.__dict__.update(shape.__dict__)
        self.device, self.dtype = device, dtype

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_owner":
            raise AttributeError(name)
        return getattr(self._owner.bridge.cfg, name)


class DeferredBridge:
    """A target's TransformerBridge, booted on first use.

    The tokenizer and ``cfg``'s sizes, device and dtype are known at once;
    TransformerLens is imported and the weights loaded only when anything else
    is asked of the model (a forward pass, a hook, its parameters).  A claim
    run whose every forward pass is served from the activation cache therefore
    never boots the model.  Every other attribute is the bridge's.
    """

    def __init__(self, boot: Callable[[], Any], tokenizer: Any, shape: ModelShape, *, device: str, dtype: str):
        import torch

        self.tokenizer = tokenizer
        self.shape = shape
        self.cfg = DeferredConfig(self, shape, device, getattr(torch, dtype))
        self._boot = boot
        self._bridge: Any = None
        self._failure: TargetError | None = None

    @property
    def booted(self) -> bool:
        return self._bridge is not None

    def release(self) -> None:
        """Drop the booted bridge and free its weights; the next use boots it again.
        The tokenizer, ``cfg`` and anything attached to this object (its activation
        store) stay."""
        if self._bridge is not None:
            self._bridge = None
            gc.collect()  # the bridge's modules and hooks reference each other

    @property
    def bridge(self) -> Any:
        """The TransformerBridge (booted now if it was not). A boot that failed is not retried:
        every later use raises the same error (one cause, one message, one boot)."""
        if self._failure is not None:
            raise self._failure
        if self._bridge is None:
            try:
                bridge = self._boot()
                _check_same_model(self, bridge)
            except TargetError as exc:
                self._failure = exc
                raise
            self._bridge = bridge
        return self._bridge

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_boot", "_bridge", "_failure"):
            raise AttributeError(name)
        return getattr(self.bridge, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.bridge(*args, **kwargs)

    def __repr__(self) -> str:
        return f"DeferredBridge({'booted' if self.booted else 'not booted'}, {self.shape})"


def _check_same_model(deferred: DeferredBridge, bridge: Any) -> None:
    """What a DeferredBridge answered before booting must be what the bridge says."""
    import torch

    early = {**deferred.shape.__dict__, "dtype": deferred.cfg.dtype, "device": torch.device(deferred.cfg.device).type}
    booted = {name: getattr(bridge.cfg, name, None) for name in deferred.shape.__dict__}
    booted |= {"dtype": bridge.cfg.dtype, "device": torch.device(bridge.cfg.device).type}
    if booted.get("n_key_value_heads") is None:  # no grouped-query attention: as many as the heads
        booted["n_key_value_heads"] = booted.get("n_heads")
    if booted != early:
        raise TargetError(
            f"the booted bridge's config {booted} differs from what config.json gave {early}: mechclaims reads "
            "sizes from config.json before booting, so this model directory is not supported"
        )
    probe = "The 3 cats, 42 dogs;\n  naïve café → 2026!"  # digits, spaces, newline, non-ASCII
    ours, theirs = deferred.tokenizer, bridge.tokenizer
    if (ours(probe, add_special_tokens=False)["input_ids"] != theirs(probe, add_special_tokens=False)["input_ids"]
            or ours.bos_token_id != theirs.bos_token_id):
        raise TargetError(
            "the booted bridge's tokenizer encodes differently from AutoTokenizer.from_pretrained(path, "
            "add_bos_token=True), which encoded the prompts before booting: this model directory is not supported"
        )


def _count_forwards(model: Any, count: ForwardCount) -> ForwardCount:
    """Add every top-level forward to ``count`` (permanent, read-only hooks: before and after the
    pass, after each block and after the unembedding)."""
    passes: list[dict[str, Any]] = []  # the pass under way (a forward inside a hook nests)

    def tally(module: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input")
        count.calls += 1
        entry: dict[str, Any] = {"started": time.perf_counter(), "blocks": 0, "unembedded": False, "shape": None}
        if hasattr(tokens, "shape") and len(tokens.shape) == 2:
            rows, length = (int(n) for n in tokens.shape)
            cache = kwargs.get("past_key_values")
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            keep = int(kwargs.get("logits_to_keep") or 0)
            count.tokens += rows * length
            entry["shape"] = (rows, length, past, keep)
        passes.append(entry)

    def block_done(module: Any, args: tuple, output: Any) -> None:
        if passes:
            passes[-1]["blocks"] += 1

    def unembedded(module: Any, args: tuple, output: Any) -> None:
        if passes:
            passes[-1]["unembedded"] = True

    def stop(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if not passes:
            return
        entry = passes.pop()
        count.seconds += time.perf_counter() - entry["started"]
        if entry["shape"] is None:
            return
        rows, length, past, keep = entry["shape"]
        count.layer_tokens += entry["blocks"] * rows * length
        count.attention_pairs += entry["blocks"] * rows * (length * past + length * (length + 1) // 2)
        if entry["unembedded"]:
            count.logit_positions += rows * (min(keep, length) if keep else length)

    model.register_forward_pre_hook(tally, with_kwargs=True)
    for block in getattr(model, "blocks", ()):
        block.register_forward_hook(block_done)
    if getattr(model, "unembed", None) is not None:
        model.unembed.register_forward_hook(unembedded)
    model.register_forward_hook(stop, with_kwargs=True, always_call=True)  # also when a reading stops the pass
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


def boot(path: Path, *, device: str, dtype: Any, tokenizer: Any = None, options: Mapping[str, Any] | None = None) -> Any:
    """``TransformerBridge.boot_transformers`` on a local, validated HF directory
    (with ``tokenizer``, that tokenizer is the bridge's; else it loads the directory's).
    ``options`` (``device_map``, ``n_devices``, ``max_memory``) go to accelerate through it; with a
    ``device_map`` the map, not ``device``, places the layers."""
    offline()
    from transformer_lens.model_bridge import TransformerBridge

    _check_hf_dir(path)
    safetensors_files(path)
    options = dict(options or {})
    placement = {"device": None} if "device_map" in options else {"device": device}
    try:
        model = TransformerBridge.boot_transformers(str(path), dtype=dtype, tokenizer=tokenizer, **placement, **options)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load model from {path}: {_first_line(exc)}") from None
    model.eval()
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def count_torch_hooks(model: Any) -> int:
    """Forward and pre-forward hooks attached anywhere in the module tree."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def attached_hooks(loaded: LoadedTarget) -> list[str]:
    """Names of hooks left on a loaded model beyond those it had after loading
    (none while it is not booted: nothing can have been attached)."""
    if not loaded.model.booted:
        return []
    names = [f"{name} ({len(handles)})" for name, handles in loaded.model.list_hooks().items()]
    extra = count_torch_hooks(loaded.model) - loaded.torch_hook_baseline
    if extra > 0 and not names:
        names.append(f"{extra} raw torch hook(s)")
    return names
