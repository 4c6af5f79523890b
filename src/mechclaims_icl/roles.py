"""Token roles of a task prompt: where each x_i, each y_i, the position before
each y_i, the query and the last position are, for any tokenizer.

The prompt is encoded piece by piece (BOS, ``\\n``, then ``(``, x, ``, ``, y,
``)\\n`` per line) and the concatenation is checked against encoding the whole
text: a tokenizer that merges across these boundaries is refused with an error
rather than given wrong roles.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from mechclaims import encode
from mechclaims import ConfigError
from .tasks import Prompt


@dataclass(frozen=True)
class Roles:
    """Positions in the encoded prompt (``x``/``y``: one span per example)."""

    tokens: tuple[int, ...]
    x: tuple[range, ...]
    y: tuple[range, ...]
    pre_y: tuple[int, ...]  # the token just before each y_i (the space), where y_i is predicted
    query: range
    last: int


# Per tokenizer, the ids of each piece already encoded: a prompt set repeats the same few
# dozen pieces (format tokens and numbers) thousands of times.
_PIECES: "weakref.WeakKeyDictionary[Any, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def _ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    try:
        pieces = _PIECES.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced or hashed: encode every time
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    if text not in pieces:
        pieces[text] = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return pieces[text]


def roles(tokenizer: Any, prompt: Prompt) -> Roles:
    """The token roles of ``prompt``; raises ConfigError if the tokenizer merges pieces."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    tokens = [*bos, *_ids(tokenizer, "\n")]
    xs, ys, pre = [], [], []

    def add(text: str) -> range:
        ids = _ids(tokenizer, text)
        start = len(tokens)
        tokens.extend(ids)
        return range(start, len(tokens))

    for x, y in prompt.examples:
        add("(")
        xs.append(add(str(x)))
        add(", ")
        pre.append(len(tokens) - 1)
        ys.append(add(str(y)))
        add(")\n")
    add("(")
    query = add(str(prompt.query))
    add(", ")
    whole = encode(tokenizer, prompt.text)
    if whole != tokens:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} splits the prompt differently from the token roles "
            f"mechclaims assumes (numbers and '(', ', ', ')\\n' as separate pieces): {len(whole)} tokens "
            f"for the whole text vs {len(tokens)} piecewise; use a tokenizer that keeps numbers apart "
            "from punctuation (llama-3, SmolLM2 and the organisms do)"
        )
    return Roles(tuple(tokens), tuple(xs), tuple(ys), tuple(pre), query, len(tokens) - 1)
