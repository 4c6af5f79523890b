"""Readers: what a claim measures from forward passes, for any prompt format.

Each reader runs batched passes through :func:`mechclaims.interventions.forward` or the
activation store (:func:`mechclaims.cached`), so a reading already made in the run
is served, not recomputed, and the passes are credited to the claim test that asked.

* :func:`greedy_tokens`: the argmax token at each of the last positions.
* :func:`string_probability`: teacher-forced probability that a prompt continues with a
  given string.
* :func:`attention_mass`: attention along (query, key) links per layer and head, reduced
  inside the hook (a pattern is ``[batch, head, pos, pos]``; only ``[batch, layer, head]``
  is kept).
* :func:`residual_at`: the residual stream entering a layer at one position per row.

Token batches are ``[batch, pos]`` tensors of equal-length rows (no padding); text
prompts are grouped by length (:mod:`mechclaims.batching`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .batching import device_of, encode, rows_per_pass, token_batches
from .errors import ConfigError
from .hooks import attn_pattern, resid_pre
from .interventions import Intervention, forward
from .passes import run_pass
from .store import cached


def _chunks(model: Any, tokens: torch.Tensor, logits: int | None) -> list[slice]:
    """Row slices of ``tokens`` that each fit one pass's memory budget."""
    if tokens.ndim != 2:
        raise ConfigError(f"tokens have shape {tuple(tokens.shape)}; expected [batch, pos] (PromptSet.tensor gives it)")
    step = rows_per_pass(model, tokens.shape[1], logits=logits)
    return [slice(start, start + step) for start in range(0, tokens.shape[0], step)]


def greedy_tokens(
    model: Any, tokens: torch.Tensor, *, last: int | None = None, interventions: Sequence[Intervention] = ()
) -> np.ndarray:
    """Argmax next token at each position (``last``: only the last ``last`` positions), ``[batch, pos]``."""
    keep = tokens.shape[1] if last is None else last
    return np.concatenate([
        forward(model, tokens[rows], interventions=interventions, logits="argmax", tail=last).logits.cpu().numpy()
        for rows in _chunks(model, tokens, keep)
    ])


def string_probability(
    model: Any, prompts: Sequence[str], continuations: Sequence[str], *, interventions: Sequence[Intervention] = ()
) -> np.ndarray:
    """P(continuation | prompt) under teacher forcing, one per prompt (the product of its tokens' probabilities).

    Prompts get one BOS in front (:func:`mechclaims.batching.encode`); the continuation is
    tokenised on its own and appended, so write it with the spacing the model would produce
    (``" Paris"``, not ``"Paris"``). Interventions apply to the whole sequence.
    """
    if len(prompts) != len(continuations):
        raise ConfigError(f"{len(prompts)} prompts but {len(continuations)} continuations; pass one per prompt")
    tokenizer = model.tokenizer
    heads = [encode(tokenizer, p) for p in prompts]
    tails = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    for text, ids in zip(continuations, tails):
        if not ids:
            raise ConfigError(f"continuation {text!r} encodes to no tokens; pass a non-empty string")
    out = np.zeros(len(prompts))
    for batch, tokens in token_batches(model, heads, tails):  # equal prompt and continuation lengths, within memory
        n_tail = len(tails[batch[0]])
        logits = forward(model, tokens, interventions=interventions, logits="all", tail=n_tail + 1).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position k predicts tail token k
        total = logp.gather(-1, tokens[:, -n_tail:, None])[..., 0].sum(-1)
        out[batch] = total.exp().cpu().numpy()
    return out


def attention_mass(
    model: Any, tokens: torch.Tensor, weights: np.ndarray, *, layers: Sequence[int] | None = None,
    interventions: Sequence[Intervention] = (),
) -> np.ndarray:
    """Attention mass along weighted (query, key) links, per row, layer and head: ``[batch, n_layers, n_heads]``.

    ``weights`` is ``[pos, pos]`` (the same links in every row) or ``[batch, pos, pos]``:
    ``sum(pattern * weights)`` over query and key is the reading, so weights of ``1/n`` at
    ``n`` (query, key) pairs give the mean attention a query puts on its key (build them
    with :func:`mechclaims.role_weights`). The pattern is reduced inside the hook and
    the pass stops after the last layer read. Layers not in ``layers`` read as NaN.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"layers {bad} are out of range; the model has layers 0..{n_layers - 1}")
    batch, length = tokens.shape
    w = np.asarray(weights, dtype=np.float32)
    if w.shape not in ((length, length), (batch, length, length)):
        raise ConfigError(f"weights have shape {w.shape}; expected ({length}, {length}) or ({batch}, {length}, {length}) "
                          "for tokens of shape " + str(tuple(tokens.shape)))

    if batch > 1 and len(chunks := _chunks(model, tokens, 0)) > 1:
        return np.concatenate([
            attention_mass(model, tokens[rows], w if w.ndim == 2 else w[rows], layers=layers, interventions=interventions)
            for rows in chunks
        ])

    def compute() -> dict[str, np.ndarray]:
        masses = np.full((batch, n_layers, n_heads), np.nan, dtype=np.float32)
        w_t = torch.from_numpy(w).to(device_of(model))
        eq = "bhqk,qk->bh" if w.ndim == 2 else "bhqk,bqk->bh"

        def reducer(layer: int):
            def reduce(pattern: torch.Tensor, hook: Any) -> torch.Tensor:
                masses[:, layer] = torch.einsum(eq, pattern.float(), w_t.to(pattern.device)).cpu().numpy()
                return pattern

            return reduce

        names = [attn_pattern(layer) for layer in layers]
        run_pass(model, tokens, [(name, reducer(layer)) for name, layer in zip(names, layers)],
                 interventions=interventions, stop_after=names)
        return {"masses": masses}

    inputs = {"tokens": tokens, "interventions": interventions, "layers": layers, "weights": w}
    return cached(model, "attention_mass", inputs, compute, tokens=tokens.numel())["masses"]


def residual_at(
    model: Any, tokens: torch.Tensor, layer: int, positions: int | Sequence[int], *,
    interventions: Sequence[Intervention] = (),
) -> np.ndarray:
    """The residual stream entering ``layer`` at one position per row: ``[batch, d_model]``.

    ``positions`` is one index for every row (``-1``: the last) or one per row.
    """
    batch, length = tokens.shape
    if batch > 1 and len(chunks := _chunks(model, tokens, 0)) > 1:
        return np.concatenate([
            residual_at(model, tokens[rows], layer, positions if isinstance(positions, int) else list(positions)[rows],
                        interventions=interventions)
            for rows in chunks
        ])
    if isinstance(positions, int):
        out = forward(model, tokens, names=[resid_pre(layer)], position=positions, interventions=interventions,
                      logits="none")
        return out.acts[resid_pre(layer)].float().cpu().numpy()
    index = np.asarray(positions)
    if index.shape != (batch,) or (index < -length).any() or (index >= length).any():
        raise ConfigError(f"positions {list(index)} must be one index per row, each in -{length}..{length - 1}")
    out = forward(model, tokens, names=[resid_pre(layer)], position=None, interventions=interventions, logits="none")
    acts = out.acts[resid_pre(layer)]
    return acts[torch.arange(batch), torch.as_tensor(index % length)].float().cpu().numpy()
