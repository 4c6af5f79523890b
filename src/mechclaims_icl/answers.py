"""Reading the number a model answers, for any tokenizer, under interventions.

A model's answer is the number its greedy continuation starts with: one token
for tokenisers with one token per number (llama-3, the organisms), digits until
a non-digit token for digit-by-digit tokenisers (SmolLM2).

* :func:`decode_numbers` decodes that number for a batch of equal-length
  prompts, holding interventions fixed (one forward per digit).
* :func:`greedy_numbers` does so for prompts of any length (grouped by length).
* :func:`greedy_is` checks whether the answer equals a given number with ONE
  teacher-forced forward: the expected tokens are appended and every position
  must predict the next one, the last predicting a non-digit
  (:func:`predicts_answer`).  Same result as decoding and comparing, at a
  fraction of the cost.
* :func:`classify` sorts patched answers into none / approx / exact / copy.

Prompts are grouped by token length and each group runs as one batch, so no
padding enters a forward pass.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

from mechclaims import at_prompt_end, encode, token_batches
from mechclaims import Intervention, forward

MAX_NUMBER_TOKENS = 4
NO_NUMBER = -1


def numbers_are_single_tokens(tokenizer: Any) -> bool:
    """True when every number up to 999 is one token (llama-3, the organisms)."""
    return all(len(tokenizer(s, add_special_tokens=False)["input_ids"]) == 1 for s in ("7", "42", "987"))


@lru_cache(maxsize=8)
def _digit_token_ids(tokenizer: Any) -> frozenset[int]:
    return frozenset(
        i for piece, i in tokenizer.get_vocab().items()
        if tokenizer.convert_tokens_to_string([piece]).strip().isdigit()
    )


def answer_steps(tokenizer: Any) -> int:
    """Generated tokens that can make up one answer: 1 for the number tokenizers,
    MAX_NUMBER_TOKENS digits (the last showing whether the number ended) for others."""
    return 1 if numbers_are_single_tokens(tokenizer) else MAX_NUMBER_TOKENS


class NumberReader:
    """Greedy answers of a batch, one generated token at a time: each row's number
    is its digit tokens up to the first non-digit (leading spaces dropped)."""

    def __init__(self, tokenizer: Any, n_rows: int):
        self._tokenizer = tokenizer
        self._text = [""] * n_rows
        self._alive = np.ones(n_rows, dtype=bool)

    def add(self, tokens: Sequence[int], rows: Sequence[int] | None = None) -> bool:
        """Read one generated token per row (of ``rows``, default all); False once every row's
        number has ended."""
        for j, token in zip(range(len(tokens)) if rows is None else rows, tokens):
            piece = self._tokenizer.decode([token])
            piece = piece if self._text[j] else piece.strip()
            if self._alive[j] and piece.isdigit():
                self._text[j] += piece
            else:
                self._alive[j] = False
        return bool(self._alive.any())

    @property
    def alive(self) -> np.ndarray:
        """Per row: its number may still go on."""
        return self._alive.copy()

    def numbers(self) -> np.ndarray:
        return np.array([int(t) if t else NO_NUMBER for t in self._text], dtype=np.int64)


def decode_numbers(model: Any, tokens: torch.Tensor, interventions: Sequence[Intervention] = ()) -> np.ndarray:
    """Greedy number of each row of an equal-length batch (``-1`` where none),
    one full forward per generated token with ``interventions`` held."""
    steps = answer_steps(model.tokenizer)
    reader = NumberReader(model.tokenizer, tokens.shape[0])
    for _ in range(steps):
        nxt = forward(model, tokens, interventions=interventions, logits="last").logits.argmax(-1)
        if not reader.add(nxt.tolist()):
            break
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return reader.numbers()


def greedy_numbers(model: Any, texts: Sequence[str]) -> np.ndarray:
    """The integer each prompt's greedy continuation starts with (``-1`` if none)."""
    encoded = [encode(model.tokenizer, t) for t in texts]
    out = np.full(len(texts), NO_NUMBER, dtype=np.int64)
    for rows, tokens in token_batches(model, encoded, logits=1):
        out[rows] = decode_numbers(model, tokens)
    return out


def answer_tokens(tokenizer: Any, numbers: Sequence[int]) -> list[list[int]]:
    """The tokens each number is written with (one for the number tokenizers, its digits for others)."""
    return [tokenizer(str(int(n)), add_special_tokens=False)["input_ids"] for n in numbers]


def predicts_answer(tokenizer: Any, predicted: Sequence[int], want: Sequence[int]) -> bool:
    """Whether the argmax ids of a teacher-forced pass, from the prompt's last
    position on, predict ``want``, then a non-digit for digit-by-digit tokenisers."""
    if list(predicted[: len(want)]) != list(want):
        return False
    if numbers_are_single_tokens(tokenizer):
        return True
    return int(predicted[len(want)]) not in _digit_token_ids(tokenizer)


def greedy_is(
    model: Any, texts: Sequence[str], numbers: Sequence[int], *, interventions: Sequence[Intervention] = ()
) -> np.ndarray:
    """Whether each prompt's greedy answer is exactly ``numbers[i]`` (bool array).

    ``interventions`` that address the last position (``position=-1``) are moved
    to the prompt's last position, before the appended answer tokens.
    """
    tokenizer = model.tokenizer
    prompts = [encode(tokenizer, t) for t in texts]
    expected = answer_tokens(tokenizer, numbers)
    if len(prompts) != len(expected):
        raise ValueError(f"{len(prompts)} prompts but {len(expected)} numbers; pass one number per prompt")
    # Interventions that carry per-row values (a residual patch) need the whole group in one pass.
    per_row_values = any(hasattr(iv, "values") for iv in interventions)
    out = np.zeros(len(prompts), dtype=bool)
    for rows, tokens in token_batches(model, prompts, expected, whole=per_row_values):
        n_prompt, n_answer = len(prompts[rows[0]]), len(expected[rows[0]])
        held = [at_prompt_end(iv, n_prompt) for iv in interventions]
        predicted = forward(model, tokens, interventions=held, logits="argmax", tail=n_answer + 1).logits.cpu()
        for j, i in enumerate(rows):
            out[i] = predicts_answer(tokenizer, predicted[j].tolist(), expected[i])
    return out


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
