"""Reading the number a model answers, for any tokenizer, under interventions.

A model's answer is the number its greedy continuation starts with: one token
for tokenisers with one token per number (llama-3, the organisms), digits until
a non-digit token for digit-by-digit tokenisers (SmolLM2).

* :func:`decode_numbers` decodes that number for a batch of equal-length
  prompts, holding interventions fixed (one forward per digit).
* :func:`greedy_numbers` does so for prompts of any length (grouped by length).
* :func:`greedy_is` checks whether the answer equals a given number with ONE
  teacher-forced forward: the expected tokens are appended and every position
  must predict the next one, the last predicting a non-digit.  Same result as
  decoding and comparing, at a fraction of the cost.
* :func:`classify` sorts patched answers into none / approx / exact / copy.

Prompts are grouped by token length and each group runs as one batch, so no
padding enters a forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .interventions import Intervention, run_with

MAX_NUMBER_TOKENS = 4
NO_NUMBER = -1


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


def numbers_are_single_tokens(tokenizer: Any) -> bool:
    """True when every number up to 999 is one token (llama-3, the organisms)."""
    return all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) == 1 for s in ("7", "42", "987"))


@lru_cache(maxsize=8)
def _digit_token_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(
        i for piece, i in tokenizer.get_vocab().items()
        if tokenizer.convert_tokens_to_string([piece]).strip().isdigit()
    )


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


# Transient memory one CPU forward pass may take. Full-vocabulary logits dominate
# (fp32: SmolLM2's 49,152-token vocabulary makes 13 prompts of 124 tokens 317 MB);
# a pass stopped before the unembedding is bounded by its attention scores (about
# three copies of n_heads x length per token, measured) and MLP activations.
# GPU passes keep MAX_ROWS rows.
CPU_PASS_BYTES = 64 * 2**20


def rows_per_pass(model: Any, length: int, *, logits: bool = True) -> int:
    """Rows of ``length`` tokens per forward pass: MAX_ROWS, fewer on CPU where one
    pass would take more than CPU_PASS_BYTES (``logits``: the pass computes them)."""
    if device_of(model).type != "cpu":
        return MAX_ROWS
    cfg = model.cfg
    per_token = max(cfg.d_vocab if logits else 0, 3 * cfg.n_heads * length, 4 * cfg.d_mlp)
    return max(1, min(MAX_ROWS, CPU_PASS_BYTES // (length * per_token * 4)))


def device_of(model: Any) -> torch.device:
    """Where ``model``'s weights live, from its ``cfg`` (a DeferredBridge knows before booting)."""
    return torch.device(model.cfg.device)


def decode_numbers(model: Any, tokens: torch.Tensor, interventions: Sequence[Intervention] = ()) -> np.ndarray:
    """Greedy number of each row of an equal-length batch (``-1`` where none)."""
    tokenizer = model.tokenizer
    steps = 1 if numbers_are_single_tokens(tokenizer) else MAX_NUMBER_TOKENS
    text = [""] * tokens.shape[0]
    alive = np.ones(tokens.shape[0], dtype=bool)
    for _ in range(steps):
        nxt = run_with(model, tokens, interventions, logits="argmax")[:, -1]
        for j, token in enumerate(nxt.tolist()):
            piece = tokenizer.decode([token])
            piece = piece if text[j] else piece.strip()
            if alive[j] and piece.isdigit():
                text[j] += piece
            else:
                alive[j] = False
        if not alive.any():
            break
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return np.array([int(t) if t else NO_NUMBER for t in text], dtype=np.int64)


def greedy_numbers(model: Any, texts: Sequence[str]) -> np.ndarray:
    """The integer each prompt's greedy continuation starts with (``-1`` if none)."""
    encoded = [encode(model.tokenizer, t) for t in texts]
    out = np.full(len(texts), NO_NUMBER, dtype=np.int64)
    for rows in group_by_length(encoded).values():
        tokens = torch.tensor([encoded[i] for i in rows], device=device_of(model))
        out[rows] = decode_numbers(model, tokens)
    return out


def greedy_is(
    model: Any, texts: Sequence[str], numbers: Sequence[int], *, interventions: Sequence[Intervention] = ()
) -> np.ndarray:
    """Whether each prompt's greedy answer is exactly ``numbers[i]`` (bool array).

    ``interventions`` that address the last position (``position=-1``) are moved
    to the prompt's last position, before the appended answer tokens.
    """
    tokenizer = model.tokenizer
    single = numbers_are_single_tokens(tokenizer)
    digits = None if single else _digit_token_ids(tokenizer)
    prompts = [encode(tokenizer, t) for t in texts]
    expected = [tokenizer(str(int(n)), add_special_tokens=False)["input_ids"] for n in numbers]
    if len(prompts) != len(expected):
        raise ValueError(f"{len(prompts)} prompts but {len(expected)} numbers; pass one number per prompt")
    full = [p + e for p, e in zip(prompts, expected)]
    out = np.zeros(len(full), dtype=bool)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (p, e) in enumerate(zip(prompts, expected)):
        groups[len(p), len(e)].append(i)  # same prompt end, so interventions align
    # Interventions that carry per-row values (a residual patch) need the whole group in one pass.
    per_row_values = any(hasattr(iv, "values") for iv in interventions)
    chunks = [
        rows[start : start + step]
        for rows in groups.values()
        for step in [len(rows) if per_row_values else rows_per_pass(model, len(full[rows[0]]))]
        for start in range(0, len(rows), step)
    ]
    for rows in chunks:
        tokens = torch.tensor([full[i] for i in rows], device=device_of(model))
        held = [_at_prompt_end(iv, len(prompts[rows[0]])) for iv in interventions]
        predicted = run_with(model, tokens, held, logits="argmax").cpu()
        for j, i in enumerate(rows):
            start, want = len(prompts[i]) - 1, expected[i]
            ok = predicted[j, start : start + len(want)].tolist() == want
            if ok and not single:
                ok = int(predicted[j, start + len(want)]) not in digits
            out[i] = ok
    return out


def _at_prompt_end(iv: Intervention, prompt_len: int) -> Intervention:
    """``iv`` with a last-position (-1) target pinned to the prompt's last token."""
    position = getattr(iv, "position", None)
    if position == -1:
        return replace(iv, position=prompt_len - 1)
    return iv


OUTCOMES = ("none", "approx", "exact", "copy")


def approx_tolerance(b: int) -> int:
    """Half-width of "≈ a*p": the task's slope applied, its offset b not yet.

    An answer within ``b`` of ``a*p`` (but not the exact ``a*p + b``) is one the
    model reached by applying the slope to B's own x without the offset: for
    y = 2x + 3 that is 2p - 3 .. 2p + 2, which contains 2p, the post's "≈ 2x".
    """
    return max(int(b), 1)


def classify(answers: np.ndarray, p: np.ndarray, q: np.ndarray, a: int, b: int) -> np.ndarray:
    """Outcome of each patched answer: 0 none, 1 approx, 2 exact, 3 copy (see ``OUTCOMES``).

    ``exact`` is a*p + b, ``copy`` is A's own answer a*q + b, ``approx`` is within
    :func:`approx_tolerance` of a*p and neither of those.
    """
    answers, p, q = (np.asarray(v) for v in (answers, p, q))
    out = np.zeros(np.broadcast(answers, p, q).shape, dtype=np.int8)
    near = np.abs(answers - a * p) <= approx_tolerance(b)
    out[near] = 1
    out[answers == a * p + b] = 2
    out[answers == a * q + b] = 3
    return out
