"""Batching forward passes without padding, within a memory budget.

:func:`token_batches` groups prompts (and teacher-forced answers) by token length and
each group runs as one batch, so no padding enters a forward pass; :func:`rows_per_pass`
caps a batch so one CPU pass stays within ``CPU_PASS_BYTES``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Iterator, Sequence

import torch

from .interventions import Intervention


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


# Rows per forward pass on an accelerator (on the CPU, rows_per_pass keeps a pass within CPU_PASS_BYTES).
MAX_ROWS = 128


# Transient memory one CPU forward pass may take. Passes compute logits only at
# the positions they keep (full-vocabulary logits would dominate: SmolLM2's 49,152
# tokens are 192 KiB per position) and build no key-value cache (see
# mechclaims.interventions.forward). The rest is one layer's working set per
# token: the attention scores and their copies (about five of n_heads x length),
# the gated MLP's four d_mlp activations and about eight d_model vectors
# (residual, norms, q/k/v and rotary copies); measured on SmolLM2-135M and the
# organism within a factor of 1.3. GPU passes keep MAX_ROWS rows.
CPU_PASS_BYTES = 64 * 2**20


def rows_per_pass(model: Any, length: int, *, logits: int | None = None) -> int:
    """Rows of ``length`` tokens per forward pass: MAX_ROWS, fewer on CPU where one
    pass would take more than CPU_PASS_BYTES (``logits``: the positions whose
    logits the pass computes; None: all of them)."""
    if device_of(model).type != "cpu":
        return MAX_ROWS
    cfg = model.cfg
    per_token = 5 * cfg.n_heads * length + 4 * cfg.d_mlp + 8 * cfg.d_model
    kept = length if logits is None else min(logits, length)
    per_row = 4 * (length * per_token + kept * cfg.d_vocab)
    return max(1, min(MAX_ROWS, CPU_PASS_BYTES // per_row))


def device_of(model: Any) -> torch.device:
    """Where ``model``'s weights live, from its ``cfg`` (a DeferredBridge knows before booting)."""
    return torch.device(model.cfg.device)


def token_batches(
    model: Any, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]] | None = None, *,
    logits: int | None = None, whole: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(row indices, [rows, length] tensor on the model's device)`` of token sequences of equal length,
    so no padding enters a pass, at most :func:`rows_per_pass` rows each.

    ``answers``: teacher-forced continuations, one per prompt; a batch then holds prompts of one
    length with answers of one length (so every prompt ends at the same position, where
    interventions sit), its tensor is prompt + answer, and its passes keep the logits of the
    answer and the prompt's last position unless ``logits`` says otherwise. ``logits``: the
    positions whose logits a pass computes (``None``: all; ``0``: the pass stops before the
    unembedding). ``whole``: one batch per length, for callers that bound memory themselves (a
    decode loop, or interventions whose per-row values need the whole group).
    """
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt")
    tails = answers if answers is not None else [()] * len(prompts)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (p, a) in enumerate(zip(prompts, tails)):
        groups[len(p), len(a)].append(i)
    device = device_of(model)
    for (n_prompt, n_answer), rows in groups.items():
        kept = logits if logits is not None or answers is None else n_answer + 1
        step = len(rows) if whole else rows_per_pass(model, n_prompt + n_answer, logits=kept)
        for start in range(0, len(rows), step):
            batch = rows[start : start + step]
            yield batch, torch.tensor([[*prompts[i], *tails[i]] for i in batch], device=device)


def at_prompt_end(intervention: Intervention, prompt_length: int) -> Intervention:
    """``intervention`` with a last-position (-1) target pinned to the prompt's last token, so it
    stays there when answer tokens are appended."""
    if getattr(intervention, "position", None) == -1:
        return replace(intervention, position=prompt_length - 1)
    return intervention
