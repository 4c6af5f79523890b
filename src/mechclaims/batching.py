"""Batching forward passes without padding, within a memory budget.

Prompts are grouped by token length and each group runs as one batch, so no
padding enters a forward pass; :func:`rows_per_pass` caps a batch so one CPU pass
stays within ``CPU_PASS_BYTES``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from .interventions import Intervention


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


# Rows per forward pass of same-length prompts (see group_by_length).
MAX_ROWS = 128


def group_by_length(
    encoded: Sequence[Sequence[int]], max_rows: int | Callable[[int], int] = MAX_ROWS
) -> dict[tuple[int, int], list[int]]:
    """Indices of equal-length sequences, in batches of at most ``max_rows``
    (a number, or a function of the sequence length such as :func:`rows_per_pass`).

    The cap bounds one forward pass's memory: the model computes logits over the
    whole vocabulary at every position (for llama-3-8b, 128 rows of 80 tokens
    are 2.6 GB of bf16 logits).
    """
    cap = max_rows if callable(max_rows) else (lambda length: max_rows)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    out = {}
    for length, rows in groups.items():
        step = cap(length)
        if step < 1:
            raise ValueError(f"max_rows must be >= 1, got {step}")
        out.update({(length, start): rows[start : start + step] for start in range(0, len(rows), step)})
    return out


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


def with_answers(
    model: Any, prompts: Sequence[Sequence[int]], expected: Sequence[Sequence[int]], *, whole_groups: bool = False
) -> list[list[int]]:
    """Batches of prompt indices for teacher-forced passes over prompt + answer:
    equal prompt and answer lengths (so the prompt ends, where interventions sit,
    align), at most :func:`rows_per_pass` rows each unless ``whole_groups``."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (p, e) in enumerate(zip(prompts, expected)):
        groups[len(p), len(e)].append(i)
    return [
        rows[start : start + step]
        for (n_prompt, n_answer), rows in groups.items()
        for step in [len(rows) if whole_groups else rows_per_pass(model, n_prompt + n_answer, logits=n_answer + 1)]
        for start in range(0, len(rows), step)
    ]


def at_prompt_end(iv: Intervention, prompt_len: int) -> Intervention:
    """``iv`` with a last-position (-1) target pinned to the prompt's last token."""
    position = getattr(iv, "position", None)
    if position == -1:
        return replace(iv, position=prompt_len - 1)
    return iv
