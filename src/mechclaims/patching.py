"""The residual patching experiment of Claim 1, batched.

For every layer L, B's ``resid_pre`` of layer L at B's last position is
overwritten with A's at A's last position, and B's answer is read.  All layers
run in ONE batched forward per prompt batch: the B batch is repeated once per
layer and the hook at layer L writes only its own block of rows (equal to the
per-layer loop, which :func:`patch_sweep_loop` keeps as the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .answers import OUTCOMES, classify, decode_numbers, device_of, encode, group_by_length
from .interventions import Intervention, SetResidual, capture, resid_pre
from .results import Effect
from .stats import proportion_of
from .tasks import PatchSet


@dataclass(frozen=True)
class Sweep:
    """Patched answers and their outcome classes, ``[n_layers, n_pairs]``."""

    layers: tuple[int, ...]
    answers: np.ndarray
    outcomes: np.ndarray

    def rate(self, *names: str) -> list[Effect]:
        """Per layer, the share of patched answers whose outcome is one of ``names``."""
        codes = [OUTCOMES.index(n) for n in names]
        return [proportion_of(np.isin(row, codes)) for row in self.outcomes]

    def rates(self) -> dict[str, list[Effect]]:
        return {name: self.rate(name) for name in OUTCOMES}


def last_resid(
    model: Any, texts: Sequence[str], layers: Sequence[int], interventions: Sequence[Intervention] = ()
) -> torch.Tensor:
    """``resid_pre`` at each prompt's last position: ``[n_prompts, len(layers), d_model]``."""
    encoded = [encode(model.tokenizer, t) for t in texts]
    out = torch.empty(len(texts), len(layers), model.cfg.d_model, dtype=model.cfg.dtype)
    names = [resid_pre(layer) for layer in layers]
    for rows in group_by_length(encoded).values():
        tokens = torch.tensor([encoded[i] for i in rows], device=device_of(model))
        _, acts = capture(model, tokens, names, position=-1, interventions=interventions, logits="none")
        out[rows] = torch.stack([acts[n].cpu() for n in names], dim=1)
    return out


def patch_sweep(
    model: Any,
    pairs: PatchSet,
    *,
    layers: Sequence[int] | None = None,
    a_interventions: Sequence[Intervention] = (),
    source: torch.Tensor | None = None,
    max_rows: int = 2048,
) -> Sweep:
    """Patch A's last-position residual into B at every layer, batched across layers.

    ``a_interventions`` apply to A's run (e.g. head ablations), so ablation then
    patching composes.  ``source`` (``[n_pairs, len(layers), d_model]``) is A's
    residual when the caller already captured it; otherwise it is captured here.
    ``max_rows`` bounds the batch: layers are split into chunks of at most that many rows.
    """
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    if source is None:
        source = last_resid(model, pairs.a_texts, layers, a_interventions)
    encoded = [encode(model.tokenizer, t) for t in pairs.b_texts]
    answers = np.full((len(layers), len(pairs)), -1, dtype=np.int64)
    for rows in group_by_length(encoded).values():
        n = len(rows)
        base = torch.tensor([encoded[i] for i in rows], device=device_of(model))
        last = base.shape[1] - 1
        per_chunk = max(1, max_rows // n)
        for start in range(0, len(layers), per_chunk):
            chunk = range(start, min(start + per_chunk, len(layers)))
            patches = [
                SetResidual(layers[li], last, source[rows, li].to(base.device), slice(k * n, (k + 1) * n))
                for k, li in enumerate(chunk)
            ]
            decoded = decode_numbers(model, base.repeat(len(chunk), 1), patches)
            answers[chunk.start : chunk.stop, rows] = decoded.reshape(len(chunk), n)
    return _sweep(layers, answers, pairs)


def patch_sweep_loop(model: Any, pairs: PatchSet, *, layers: Sequence[int] | None = None,
                     a_interventions: Sequence[Intervention] = ()) -> Sweep:
    """The naive reference: one forward per (layer, prompt)."""
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    answers = np.full((len(layers), len(pairs)), -1, dtype=np.int64)
    for i, pair in enumerate(pairs.pairs):
        source = last_resid(model, [pair.a.text], layers, a_interventions)[0]
        tokens = torch.tensor([encode(model.tokenizer, pair.b_text)], device=device_of(model))
        for li, layer in enumerate(layers):
            patch = SetResidual(layer, tokens.shape[1] - 1, source[li : li + 1].to(tokens.device))
            answers[li, i] = decode_numbers(model, tokens, [patch])[0]
    return _sweep(layers, answers, pairs)


def _sweep(layers: tuple[int, ...], answers: np.ndarray, pairs: PatchSet) -> Sweep:
    outcomes = classify(answers, pairs.p[None, :], pairs.q[None, :], pairs.task.a, pairs.task.b)
    return Sweep(layers, answers, outcomes)
