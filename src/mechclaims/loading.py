"""Loading a target: :func:`load_target`, the one way any model enters mechclaims, and
:func:`resolve`, which checks a target can run and finds its weights without loading them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import TargetError
from .registry import get_spec
from .targets.accounting import count_forwards, settled_hook_count
from .targets.bridge import DeferredBridge, boot
from .targets.shape import load_tokenizer, read_shape
from .targets.spec import (DEVICE_MAPS, DTYPES, LoadedTarget, Resolved, TargetInfo, default_cache_dir,
                           default_fixtures_dir, is_device)
from .weights import check_checkpoint, companion_digest


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
        count_forwards(model, loaded.forwards)
        loaded.torch_hook_baseline = settled_hook_count(model)
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
