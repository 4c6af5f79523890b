"""What a target is: its specification (a name, a resolver and its defaults), the weights a
resolver finds, the sizes read from ``config.json``, and a loaded target with its provenance and
forward-pass counts. :data:`TARGETS` holds every registered spec (filled by
:mod:`mechclaims.registry`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

DTYPES = ("float32", "bfloat16", "float16")

DEVICES = ("cpu", "cuda")

# accelerate's named placements (TransformerBridge.boot_transformers passes device_map on to it)
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

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


# Every registered target by name, filled by mechclaims.registry: packages' entry points, pyproject.toml.
TARGETS: dict[str, TargetSpec] = {}


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
