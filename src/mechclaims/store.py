"""The activation store: every forward pass of a claim run computed once.

A forward pass is data (:class:`Request`): the token batch, the hooks whose
activations to keep, the kept position, the interventions and the kind of
logits wanted.  :func:`~mechclaims.interventions.forward` asks the store
attached to the model (:func:`attach`) before running anything:

* in memory, an entry serves every later request on the same tokens under the
  same interventions whose hooks and logits it covers, so a claim reuses what
  another claim computed;
* on disk (optional), each entry is one safetensors file named by the SHA-256
  of its full key, which includes the model's weight fingerprint, dtype and
  device, the token bytes, the interventions (values hashed), the hook names,
  the versions of the numeric packages, and a fingerprint of the code that
  computes the entry (:mod:`mechclaims.codeprint`: the forward-pass modules, and
  the code reachable from the request's interventions or derived computation,
  a pack's own included): a changed model, prompt set, version or computing
  code is a different file, never a stale hit.  Files are written to a temporary name
  and renamed into place (no torn files for concurrent pytest-xdist workers);
  each carries the SHA-256 of its tensors, so a corrupted entry is detected,
  reported with a warning, recomputed and rewritten.  A hit touches its file, so
  ``mechclaims cache prune`` removes the least recently used first; an entry
  pruned while a run needs it is recomputed.  ``disk-readonly`` reads entries and
  never writes, touches or removes anything (a run of untrusted code).

:class:`StoreStats` counts requests, hits, tokens processed and the tokens the
claim set needs (each distinct token batch under each distinct intervention
processed once), for the report's forward-pass accounting.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import codeprint
from .cachedir import DISK_MODES, STORE_MODES
from .errors import ConfigError
from .files import describe_os_error, remove_stale_temporaries, write_atomic

LOGITS = ("all", "last", "argmax", "none")
# A request for logits of kind `key` can be served by an entry holding any of `value`.
_SERVES = {"all": ("all",), "last": ("all", "last"), "argmax": ("all", "argmax"), "none": LOGITS}
# Entries larger than this are computed but not kept in memory (e.g. full-vocabulary
# logits of a long batch of a large model).
MAX_ENTRY_BYTES = 256 * 2**20
FORMAT = 2  # 2: keys hold the code fingerprint; entries name their target and creation time


class CacheCorruptionWarning(UserWarning):
    """A disk-cache entry failed its checksum or could not be read; it was recomputed."""


class CacheWriteWarning(UserWarning):
    """A disk-cache entry could not be written (full disk, read-only or unsafe directory)."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    data = t.detach().cpu().contiguous()
    if data.numel():
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Request:
    """One forward pass as data."""

    tokens: torch.Tensor
    names: tuple[str, ...] = ()
    position: int | None = -1
    interventions: tuple[Any, ...] = ()
    logits: str = "all"
    tail: int | None = None  # "all"/"argmax": only the last `tail` positions (None: every position)

    def __post_init__(self) -> None:
        if self.logits not in LOGITS:
            raise ConfigError(f"logits={self.logits!r} is not one of {', '.join(LOGITS)}")
        if self.tail is not None and not 1 <= self.tail <= self.tokens.shape[-1]:
            raise ConfigError(
                f"tail={self.tail} must be between 1 and the {self.tokens.shape[-1]} positions of the batch "
                "(None keeps every position)"
            )

    def logits_to_keep(self) -> int:
        """Positions whose logits the pass computes (0: all), from the end."""
        if self.logits in ("last", "none"):
            return 1
        return self.tail or 0

    def base_key(self) -> str:
        """Identity of the computation: tokens and interventions (not what is kept)."""
        ivs = "|".join(iv.key() for iv in self.interventions)
        return hashlib.sha256(f"{tensor_digest(self.tokens)}|{ivs}".encode()).hexdigest()


@dataclass(frozen=True)
class Forward:
    """What a forward pass kept: logits of the requested kind and activations by hook name."""

    logits: torch.Tensor | None
    acts: dict[str, torch.Tensor]

    def nbytes(self) -> int:
        tensors = list(self.acts.values()) + ([self.logits] if self.logits is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def served_as(self, request: Request) -> "Forward":
        """A copy holding exactly what ``request`` asked for (callers may modify it)."""
        logits = self.logits
        if request.logits == "none" or logits is None:
            logits = None
        elif request.logits == "last" and logits.dim() == 3:
            logits = logits[:, -1]
        else:
            if request.logits == "argmax" and logits.is_floating_point():
                logits = logits.argmax(-1)
            if request.tail is not None:
                logits = logits[:, -request.tail :]
        return Forward(
            None if logits is None else logits.clone(),
            {name: self.acts[name].clone() for name in request.names},
        )


@dataclass
class StoreStats:
    """Forward-pass accounting of one store (one loaded model)."""

    requests: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    computed: int = 0
    tokens_processed: int = 0
    tokens_needed: int = 0
    corrupt_entries: int = 0
    disk_writes: int = 0
    bytes_in_memory: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Entry:
    names: frozenset[str]
    position: int | None
    logits: str
    tail: int | None
    value: Forward


@dataclass
class ActivationStore:
    """Memoised forward passes of one model (see the module docstring)."""

    model_key: str
    mode: str = "memory"
    directory: Path | None = None
    version: str = ""
    code: str = ""  # fingerprint of the forward-pass modules (default: codeprint.framework())
    label: str = ""  # the target's name, recorded in each entry (`mechclaims cache info`)
    max_entry_bytes: int = MAX_ENTRY_BYTES
    stats: StoreStats = field(default_factory=StoreStats)
    disk_write_error: str | None = None  # set by the first failed disk write; later writes are skipped
    _entries: dict[str, list[_Entry]] = field(default_factory=dict, repr=False)
    needed: dict[str, int] = field(default_factory=dict, repr=False)  # distinct work: key -> tokens
    _derived: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in STORE_MODES:
            raise ConfigError(f"activation cache mode {self.mode!r} is not one of {', '.join(STORE_MODES)}")
        if self.mode in DISK_MODES and self.directory is None:
            raise ConfigError(f"the {self.mode} activation cache needs a directory: pass --mechclaims-cache-dir DIR")
        if self.directory is not None:
            self.directory = Path(self.directory)
            if self.writes:
                remove_stale_temporaries(self.directory, "*/.*.safetensors.*.tmp")
        if not self.version:
            from . import __version__

            self.version = __version__
        if not self.code:
            self.code = codeprint.framework()

    @property
    def reads(self) -> bool:
        """Whether entries are read from disk."""
        return self.mode in DISK_MODES

    @property
    def writes(self) -> bool:
        """Whether entries are written to disk (never in ``disk-readonly``)."""
        return self.mode == "disk"

    # ------------------------------------------------------------------ lookup

    def get(self, request: Request, compute: Callable[[], Forward]) -> Forward:
        """The result of ``request``: from memory, from disk, or computed (then kept)."""
        self.stats.requests += 1
        base = request.base_key()
        if base not in self.needed:
            self.needed[base] = int(request.tokens.numel())
            self.stats.tokens_needed += self.needed[base]
        if self.mode == "off":
            return self._compute(request, compute)
        for entry in self._entries.get(base, ()):
            if self._covers(entry, request):
                self.stats.memory_hits += 1
                return entry.value.served_as(request)
        value = self._from_disk(request, base) if self.reads else None
        if value is not None:
            self.stats.disk_hits += 1
        else:
            value = self._compute(request, compute)
            if self.writes:
                self._to_disk(request, base, value)
        if value.nbytes() <= self.max_entry_bytes:
            self.stats.bytes_in_memory += value.nbytes()
            self._entries.setdefault(base, []).append(
                _Entry(frozenset(request.names), request.position, request.logits, request.tail, value)
            )
        return value.served_as(request)

    def _compute(self, request: Request, compute: Callable[[], Forward]) -> Forward:
        self.stats.computed += 1
        self.stats.tokens_processed += int(request.tokens.numel())
        return compute()

    @staticmethod
    def _covers(entry: _Entry, request: Request) -> bool:
        same_position = entry.position == request.position or not request.names
        positions = (
            request.logits in ("last", "none") or entry.tail is None
            or (request.tail is not None and request.tail <= entry.tail)
        )
        return (
            same_position and positions and entry.names >= set(request.names)
            and entry.logits in _SERVES[request.logits]
        )

    # ------------------------------------------------------------------ derived results

    def derived(self, kind: str, key: str, tokens: int, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """A result computed from forward passes that reduce activations on the fly
        (arrays by name), memoised like a forward pass; ``tokens`` is what computing it processes."""
        self.stats.requests += 1
        full = hashlib.sha256(
            json.dumps({"format": FORMAT, "model": self.model_key, "version": self.version, "derived": kind, "key": key,
                        "code": [self.code, codeprint.fingerprint(compute)]}, sort_keys=True).encode()
        ).hexdigest()
        if full not in self.needed:
            self.needed[full] = tokens
            self.stats.tokens_needed += tokens
        if self.mode != "off" and full in self._derived:
            self.stats.memory_hits += 1
            return {name: a.copy() for name, a in self._derived[full].items()}
        path = self._path(full) if self.reads else None
        value = self._read(path, full) if path is not None else None
        if value is not None:
            self.stats.disk_hits += 1
            arrays = {name: t.numpy() for name, t in value.items()}
        else:
            self.stats.computed += 1
            self.stats.tokens_processed += tokens
            arrays = compute()
            if path is not None and self.writes:
                self._write(path, full, {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()})
        if self.mode != "off":
            self._derived[full] = {name: a.copy() for name, a in arrays.items()}
            self.stats.bytes_in_memory += sum(a.nbytes for a in arrays.values())
        return arrays

    # ------------------------------------------------------------------ disk

    def full_key(self, request: Request, base: str) -> str:
        spec = json.dumps(
            {
                "format": FORMAT,
                "model": self.model_key,
                "version": self.version,
                "code": [self.code, codeprint.fingerprint(*(type(iv) for iv in request.interventions))],
                "base": base,
                "names": sorted(request.names),
                "position": request.position,
                "logits": request.logits,
                "tail": request.tail,
            },
            sort_keys=True,
        )
        return hashlib.sha256(spec.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _from_disk(self, request: Request, base: str) -> Forward | None:
        key = self.full_key(request, base)  # once: it fingerprints the request's code
        tensors = self._read(self._path(key), key)
        if tensors is None:
            return None
        device = request.tokens.device  # where the model (and so the caller) works
        logits = tensors.pop("logits", None)
        acts = {name[len("act:"):]: t.to(device) for name, t in tensors.items() if name.startswith("act:")}
        return Forward(None if logits is None else logits.to(device), acts)

    def _to_disk(self, request: Request, base: str, value: Forward) -> None:
        tensors = {f"act:{name}": t for name, t in value.acts.items()}
        if value.logits is not None:
            tensors["logits"] = value.logits
        key = self.full_key(request, base)
        self._write(self._path(key), key, tensors)

    def _read(self, path: Path, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of one entry; None when there is none (a miss, or an entry pruned meanwhile),
        and None with a warning when it fails its checks. A hit touches the file (least recently
        used first, for ``mechclaims cache prune``), except in ``disk-readonly``."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                for name in fh.keys():
                    tensors[name] = fh.get_tensor(name)
            if meta.get("key") != key:
                raise ValueError("the entry's key does not match its file name")
            if meta.get("sha256") != _content_digest(tensors):
                raise ValueError("checksum mismatch")
        except FileNotFoundError:  # removed between the check and the read (a concurrent prune)
            return None
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
            self.stats.corrupt_entries += 1
            warnings.warn(
                f"corrupt activation-cache entry {path} ({exc}); recomputing and rewriting it",
                CacheCorruptionWarning,
                stacklevel=4,
            )
            return None
        if self.writes:
            try:
                os.utime(path)
            except OSError:
                pass
        return tensors

    def _write(self, path: Path, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write one entry atomically inside the cache directory (:func:`mechclaims.files.write_atomic`).
        A write that fails (a full disk, a read-only or unsafe directory) costs time, never the run:
        one warning says why, and the store stops writing to disk for the rest of the run."""
        from safetensors.torch import save

        if self.disk_write_error is not None:
            return
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"key": key, "sha256": _content_digest(tensors), "versions": self.version,
                "target": self.label, "created": f"{time.time():.0f}"}
        assert self.directory is not None
        try:
            write_atomic(path, save(tensors, metadata=meta), root=self.directory)
        except OSError as exc:
            self.disk_write_error = describe_os_error(
                exc, "activation cache", "the run goes on without writing to the cache; free space or "
                "pass another --mechclaims-cache-dir")
            warnings.warn(self.disk_write_error, CacheWriteWarning, stacklevel=4)
            return
        self.stats.disk_writes += 1


def _content_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensor_digest(tensors[name]).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------- registry

_STORES: "weakref.WeakKeyDictionary[Any, ActivationStore]" = weakref.WeakKeyDictionary()


def attach(model: Any, store: ActivationStore | None) -> None:
    """Serve ``model``'s forward passes through ``store`` (``None`` detaches)."""
    if store is None:
        _STORES.pop(model, None)
    else:
        _STORES[model] = store


def store_of(model: Any) -> ActivationStore | None:
    """The store attached to ``model``, if any."""
    try:
        return _STORES.get(model)
    except TypeError:  # an object that cannot be weakly referenced has no store
        return None


def derived(model: Any, kind: str, key: str, tokens: int, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()`` memoised in ``model``'s store (computed directly when it has none)."""
    store = store_of(model)
    return compute() if store is None else store.derived(kind, key, tokens, compute)


class _Unkeyed(Exception):
    """An input with no identity (an intervention without ``key()``): its reading is not memoised."""


def _keyed(value: Any) -> Any:
    """``value`` as JSON-ready data: tensors and arrays by their SHA-256, interventions by ``key()``."""
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(f"{data.dtype}|{data.shape}|".encode() + data.tobytes()).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _keyed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, range)):
        return [_keyed(v) for v in value]
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if callable(getattr(value, "key", None)):
        return {type(value).__name__: value.key()}
    if callable(getattr(value, "hooks", None)):
        raise _Unkeyed
    raise ConfigError(
        f"cannot key a reading on {type(value).__name__} {value!r:.60}: inputs are tensors, arrays, numbers, "
        "strings, None, lists, tuples, dicts of them and interventions; pass what determines the reading as one of these")


def reading_key(inputs: Any) -> str | None:
    """The store key of a reading computed from ``inputs`` (tensors and arrays hashed, interventions
    by their ``key()``), or ``None`` when an input has no identity (an intervention without ``key()``)."""
    try:
        return json.dumps(_keyed(inputs), sort_keys=True)
    except _Unkeyed:
        return None


def cached(model: Any, kind: str, inputs: Any, compute: Callable[[], dict[str, np.ndarray]], *,
           tokens: int = 0) -> dict[str, np.ndarray]:
    """``compute()`` (arrays by name) memoised in ``model``'s activation store under ``kind`` and ``inputs``.

    ``inputs`` is everything the reading depends on besides the model and the code: token
    batches, arrays, settings, interventions (see :func:`reading_key`). The store adds the model's
    weights, the package versions and a fingerprint of ``compute``'s code, so a changed input or
    code is a different entry. ``tokens`` is what computing it processes (the report's forward
    accounting; 0 for a reading that runs no pass). Computed directly when the model has no store
    or an intervention has no ``key()``.
    """
    key = reading_key(inputs)
    return compute() if key is None else derived(model, kind, key, tokens, compute)
