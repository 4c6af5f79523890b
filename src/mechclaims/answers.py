"""Reading the number a model answers, for any tokenizer.

A model's answer is the number its greedy continuation starts with: one token
for tokenisers with one token per number (llama-3, the organisms), digits until
a non-digit token for digit-by-digit tokenisers (SmolLM2).

* :func:`greedy_numbers` decodes that number (one forward per digit).
* :func:`greedy_is` checks whether it equals a given number with ONE
  teacher-forced forward: the expected tokens are appended and every position
  must predict the next one, the last predicting a non-digit.  The result is the
  same as decoding and comparing, at a fraction of the cost.

Prompts are grouped by token length and each group runs as one batch, so no
padding enters the forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

MAX_NUMBER_TOKENS = 4
NO_NUMBER = -1


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with exactly one BOS in front."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


def _number_ids(tokenizer: Any, number: int, single: bool) -> list[int]:
    ids = tokenizer(str(number), add_special_tokens=False)["input_ids"]
    if single and len(ids) != 1:
        raise ValueError(f"number {number} is {len(ids)} tokens for a one-token-per-number tokenizer")
    return ids


@lru_cache(maxsize=8)
def _digit_token_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(
        i for piece, i in tokenizer.get_vocab().items()
        if tokenizer.convert_tokens_to_string([piece]).strip().isdigit()
    )


@torch.no_grad()
def greedy_is(model: Any, texts: Sequence[str], numbers: Sequence[int]) -> np.ndarray:
    """Whether each prompt's greedy answer is exactly ``numbers[i]`` (bool array)."""
    tokenizer = model.tokenizer
    single = numbers_are_single_tokens(tokenizer)
    digits = None if single else _digit_token_ids(tokenizer)
    rows = []
    for text, number in zip(texts, numbers, strict=True):
        prompt = encode(tokenizer, text)
        rows.append((prompt, _number_ids(tokenizer, int(number), single)))
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (prompt, expected) in enumerate(rows):
        groups[len(prompt) + len(expected)].append(i)
    out = np.zeros(len(rows), dtype=bool)
    device = next(model.parameters()).device
    for members in groups.values():
        tokens = torch.tensor([rows[i][0] + rows[i][1] for i in members], device=device)
        predicted = model(tokens).argmax(-1).cpu()
        for j, i in enumerate(members):
            prompt, expected = rows[i]
            start = len(prompt) - 1
            got = predicted[j, start : start + len(expected)].tolist()
            ok = got == expected
            if ok and not single:
                ok = int(predicted[j, start + len(expected)]) not in digits
            out[i] = ok
    return out


def numbers_are_single_tokens(tokenizer: Any) -> bool:
    """True when every number up to 999 is one token (llama-3, the organisms)."""
    return all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) == 1 for s in ("7", "42", "987"))


def _digits(tokenizer: Any, token_ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in token_ids]


@torch.no_grad()
def greedy_numbers(model: Any, texts: Sequence[str]) -> np.ndarray:
    """The integer each prompt's greedy continuation starts with (``-1`` if none)."""
    tokenizer = model.tokenizer
    groups: dict[int, list[int]] = defaultdict(list)
    encoded = [encode(tokenizer, t) for t in texts]
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    out = np.full(len(texts), NO_NUMBER, dtype=np.int64)
    device = next(model.parameters()).device
    steps = 1 if numbers_are_single_tokens(tokenizer) else MAX_NUMBER_TOKENS
    for rows in groups.values():
        tokens = torch.tensor([encoded[i] for i in rows], device=device)
        text = [""] * len(rows)
        alive = np.ones(len(rows), dtype=bool)
        for _ in range(steps):
            logits = model(tokens)[:, -1, :]
            nxt = logits.argmax(-1)
            for j, piece in enumerate(_digits(tokenizer, nxt)):
                piece = piece.strip() if not text[j] else piece
                if alive[j] and piece.isdigit():
                    text[j] += piece
                else:
                    alive[j] = False
            if not alive.any():
                break
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        for j, i in enumerate(rows):
            out[i] = int(text[j]) if text[j] else NO_NUMBER
    return out
