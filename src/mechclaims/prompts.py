"""Prompt sets with token roles, for any text format.

A role names positions a claim reads or intervenes on ("the query", "each x", "the token
after the first occurrence"). Mark them in text with ``{{role:text}}``; the text is
tokenised whole (so markers never change the tokens) and each role maps, per prompt, to
the positions of the tokens its text spans, in order::

    ps = PromptSet.from_texts(tokenizer, ["({{x:12}}, {{y:27}})\\n({{x:3}}, "] * 2)
    ps.roles["x"]          # one tuple of token positions per prompt

Prompts made of tokens (random sequences, say) give their roles directly
(:meth:`PromptSet.from_tokens`). Every prompt gets one BOS in front
(:func:`mechclaims.batching.encode`), and positions count it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch

from .batching import device_of, token_batches
from .errors import ConfigError

_MARK = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*):(.*?)\}\}", re.S)


@dataclass(frozen=True)
class PromptSet:
    """Token rows and, per role, each row's positions of that role."""

    tokens: tuple[tuple[int, ...], ...]
    roles: Mapping[str, tuple[tuple[int, ...], ...]]

    def __post_init__(self) -> None:
        for role, rows in self.roles.items():
            if len(rows) != len(self.tokens):
                raise ConfigError(f"role {role!r} has positions for {len(rows)} prompts, the set has {len(self.tokens)}")
            for i, positions in enumerate(rows):
                bad = [p for p in positions if not 0 <= p < len(self.tokens[i])]
                if bad:
                    raise ConfigError(f"role {role!r} of prompt {i}: positions {bad} outside 0..{len(self.tokens[i]) - 1}")

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_tokens(cls, tokens: Sequence[Sequence[int]], roles: Mapping[str, Sequence[Sequence[int]]] | None = None) -> "PromptSet":
        """Rows of token ids (BOS included if wanted) with their roles' positions."""
        return cls(tuple(tuple(int(t) for t in row) for row in tokens),
                   {name: tuple(tuple(int(p) for p in ps) for ps in rows) for name, rows in (roles or {}).items()})

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str], *, exact: bool = False) -> "PromptSet":
        """Texts with ``{{role:text}}`` marks, tokenised whole with one BOS in front.

        ``exact``: every token of a role lies wholly inside its marked text; a token that straddles a
        mark's edge (a tokenizer merging a number with the comma after it, say) is refused, naming
        the role and the token, rather than given to two roles."""
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{type(tokenizer).__name__} gives no character offsets; role marks need a fast "
                              "(tokenizers-backed) tokenizer, or build the set with PromptSet.from_tokens")
        rows: list[tuple[int, ...]] = []
        found: dict[str, list[tuple[int, ...]]] = {}
        names = sorted({m.group(1) for text in texts for m in _MARK.finditer(text)})
        for text in texts:
            plain, spans, cursor = [], [], 0
            for m in _MARK.finditer(text):
                plain.append(text[cursor:m.start()])
                start = sum(map(len, plain))
                plain.append(m.group(2))
                spans.append((m.group(1), start, start + len(m.group(2))))
                cursor = m.end()
            plain.append(text[cursor:])
            plain_text = "".join(plain)
            enc = tokenizer(plain_text, add_special_tokens=False, return_offsets_mapping=True)
            bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
            rows.append(tuple(bos + enc["input_ids"]))
            per_role: dict[str, list[int]] = {name: [] for name in names}
            for name, start, end in spans:
                hit = [len(bos) + k for k, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > start]
                if not hit:
                    raise ConfigError(f"role {name!r} marks {plain_text[start:end]!r} in {plain_text!r}, which no token covers")
                if exact:
                    for k in hit:
                        a, b = enc["offset_mapping"][k - len(bos)]
                        if a < start or b > end:
                            raise ConfigError(
                                f"role {name!r} marks {plain_text[start:end]!r}, but token {plain_text[a:b]!r} of "
                                f"{plain_text!r} runs past it: this tokenizer merges the role with its neighbour; "
                                "mark whole tokens, or use a tokenizer that keeps them apart")
                per_role[name] += hit
            for name in names:
                found.setdefault(name, []).append(tuple(per_role[name]))
        return cls(tuple(rows), {name: tuple(rows_) for name, rows_ in found.items()})

    def tensor(self, model: Any) -> torch.Tensor:
        """All prompts as one ``[n, length]`` tensor on the model's device (they must be equally long;
        readers split it into passes that fit memory)."""
        lengths = sorted({len(row) for row in self.tokens})
        if len(lengths) != 1:
            raise ConfigError(f"prompts have lengths {lengths[:5]}; one tensor needs equal lengths: use "
                              "PromptSet.batches, or build prompts of one length")
        return torch.tensor(self.tokens, device=device_of(model))

    def batches(self, model: Any, *, logits: int | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        """``(row indices, [rows, length] tensor)`` of equal-length prompts on the model's device, within
        one pass's memory budget (``logits``: positions whose logits the pass keeps)."""
        yield from token_batches(model, self.tokens, logits=logits)
