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

from .accounting import attached_hooks, count_forwards, count_torch_hooks
from .bridge import DeferredBridge, DeferredConfig, boot
from .shape import SHAPE_KEYS, load_tokenizer, read_shape
from .sources import CACHE_MARKER, from_dir, from_gguf, from_hf_cache, override, resolve_configured
from .spec import (DEVICE_MAPS, DEVICES, DTYPES, TARGETS, ForwardCount, LoadedTarget, ModelShape, Resolved, TargetInfo,
                   TargetSpec, default_cache_dir, default_fixtures_dir, is_device)

__all__ = [
    "attached_hooks", "count_forwards", "count_torch_hooks", "DeferredBridge", "DeferredConfig", "boot", "SHAPE_KEYS",
    "load_tokenizer", "read_shape", "CACHE_MARKER", "from_dir", "from_gguf", "from_hf_cache", "override",
    "resolve_configured", "DEVICE_MAPS", "DEVICES", "DTYPES", "TARGETS", "ForwardCount", "LoadedTarget", "ModelShape",
    "Resolved", "TargetInfo", "TargetSpec", "default_cache_dir", "default_fixtures_dir", "is_device",
]
