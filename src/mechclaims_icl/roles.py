"""Token roles of a task prompt: where each x_i, each y_i, the position before
each y_i, the query and the last position are, for any tokenizer.

The prompt's text is marked (``({{x0:28}}{{sep0:, }}{{y0:59}})\n...``) and read with the
core's role marks (:meth:`mechclaims.PromptSet.from_texts`, ``exact=True``): the text is
tokenised whole, and a tokenizer that merges a number with its neighbours is refused with an
error rather than given wrong roles.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from mechclaims import ConfigError, PromptSet

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


def marked(prompt: Prompt) -> str:
    """``prompt``'s text with its roles marked: ``x{i}``, ``sep{i}`` (the ``", "`` before y_i),
    ``y{i}`` and ``query``."""
    lines = "".join(f"({{{{x{i}:{x}}}}}{{{{sep{i}:, }}}}{{{{y{i}:{y}}}}})\n" for i, (x, y) in enumerate(prompt.examples))
    return f"\n{lines}({{{{query:{prompt.query}}}}}, "


def _span(positions: tuple[int, ...], role: str) -> range:
    span = range(positions[0], positions[-1] + 1)
    if list(span) != list(positions):
        raise ConfigError(f"role {role} takes tokens {list(positions)}, not one run of tokens; use a tokenizer that "
                          "keeps numbers apart from punctuation (llama-3, SmolLM2 and the organisms do)")
    return span


# Per tokenizer, the roles of each prompt already read: a run reads the same prompt sets in several claims.
_READ: "weakref.WeakKeyDictionary[Any, dict[Prompt, Roles]]" = weakref.WeakKeyDictionary()


def roles(tokenizer: Any, prompt: Prompt) -> Roles:
    """The token roles of ``prompt``; raises ConfigError if the tokenizer merges a number with its neighbours."""
    try:
        read = _READ.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: read every time
        return _roles(tokenizer, prompt)
    if prompt not in read:
        read[prompt] = _roles(tokenizer, prompt)
    return read[prompt]


def _roles(tokenizer: Any, prompt: Prompt) -> Roles:
    try:
        found = PromptSet.from_texts(tokenizer, [marked(prompt)], exact=True)
    except ConfigError as exc:
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} cannot give the task prompt's token roles: {exc}") from None
    got = {name: rows[0] for name, rows in found.roles.items()}
    k = len(prompt.examples)
    tokens = found.tokens[0]
    return Roles(
        tokens,
        tuple(_span(got[f"x{i}"], f"x{i}") for i in range(k)),
        tuple(_span(got[f"y{i}"], f"y{i}") for i in range(k)),
        tuple(got[f"sep{i}"][-1] for i in range(k)),
        _span(got["query"], "query"),
        len(tokens) - 1,
    )
