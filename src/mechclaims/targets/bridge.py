"""The model a loaded target holds: ``TransformerBridge.boot_transformers`` on a local, checked
directory (:func:`boot`), behind a :class:`DeferredBridge` that boots it on first real use and can
release it (and boot it again) later."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import TargetError
from ..hub import offline
from ..weights import safetensors_files
from .shape import first_line
from .sources import check_hf_dir
from .spec import ModelShape


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


def boot(path: Path, *, device: str, dtype: Any, tokenizer: Any = None, options: Mapping[str, Any] | None = None) -> Any:
    """``TransformerBridge.boot_transformers`` on a local, validated HF directory
    (with ``tokenizer``, that tokenizer is the bridge's; else it loads the directory's).
    ``options`` (``device_map``, ``n_devices``, ``max_memory``) go to accelerate through it; with a
    ``device_map`` the map, not ``device``, places the layers."""
    offline()
    from transformer_lens.model_bridge import TransformerBridge

    check_hf_dir(path)
    safetensors_files(path)
    options = dict(options or {})
    placement = {"device": None} if "device_map" in options else {"device": device}
    try:
        model = TransformerBridge.boot_transformers(str(path), dtype=dtype, tokenizer=tokenizer, **placement, **options)
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot load model from {path}: {first_line(exc)}") from None
    model.eval()
    return model
