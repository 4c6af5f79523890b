"""A model that computes NaN or inf gives no evidence: the check a target passes once, at boot.

A checkpoint with a NaN in its weights (or a dtype that overflows) still runs, and every reading
taken from it is NaN; the statistics built on those readings then look like evidence against a
claim, or like a failed precondition. :func:`first_non_finite` runs one probe pass and names the
first place whose output is not finite, so the target errors instead.
"""

from __future__ import annotations

from typing import Any

import torch

from .batching import encode

PROBE = "The 3 cats, 42 dogs;\n(12, 27)\n(3, 9)\n"  # words, digits, punctuation, newlines


def first_non_finite(model: Any) -> str | None:
    """Where a probe pass of ``model`` (a TransformerBridge) first gives a non-finite value, as
    ``"the embedding"``, ``"layer K's output (blocks.K)"`` or ``"the logits"``; None when all is finite."""
    stages: list[tuple[str, Any]] = []
    embed = getattr(model, "embed", None)
    if embed is not None:
        stages.append(("the embedding (embed)", embed))
    stages += [(f"layer {k}'s output (blocks.{k})", block) for k, block in enumerate(getattr(model, "blocks", ()))]
    bad: list[str] = []

    def watch(where: str):
        def hook(module: Any, args: tuple, output: Any) -> None:
            value = output[0] if isinstance(output, tuple) else output
            if not bad and isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                bad.append(where)
        return hook

    handles = [module.register_forward_hook(watch(where)) for where, module in stages]
    try:
        tokens = torch.tensor([encode(model.tokenizer, PROBE)], device=next(model.parameters()).device)
        with torch.no_grad():
            logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    if bad:
        return bad[0]
    if isinstance(logits, torch.Tensor) and not torch.isfinite(logits).all():
        return "the logits (unembed)"
    return None
