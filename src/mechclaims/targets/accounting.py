"""Counting a loaded model's forward passes (tokens, layers run, logits, attention pairs,
seconds) and the hooks left on it."""

from __future__ import annotations

import time
from typing import Any

from .spec import ForwardCount, LoadedTarget


def count_forwards(model: Any, count: ForwardCount) -> ForwardCount:
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


def settled_hook_count(model: Any) -> int:
    """The bridge wires its own capture hooks on the first forward; run a one-token
    forward so that the count taken as the baseline includes them."""
    import torch

    bos = model.tokenizer.bos_token_id
    token = bos if bos is not None else 0
    with torch.no_grad():
        model(torch.tensor([[token]], device=next(model.parameters()).device))
    return count_torch_hooks(model)


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
