"""The affine task ``(x, y)\\n`` with ``y = a*x + b`` and seeded prompt sets.

A prompt is BOS, ``\\n``, ``k`` example lines and the query ``(q, `` with no
trailing newline, as in the original post; the answer is ``a*q + b``.  Example
x values are distinct, and the query is never among them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mechclaims import ConfigError

X_RANGE = (10, 99)


@dataclass(frozen=True)
class AffineTask:
    """``y = a*x + b``."""

    a: int = 2
    b: int = 3

    def __call__(self, x: int) -> int:
        return self.a * x + self.b

    @property
    def name(self) -> str:
        if self.a == 1:
            head = "x"
        else:
            head = f"{self.a}x"
        return head if self.b == 0 else f"{head}+{self.b}"


CANONICAL = AffineTask(2, 3)


@dataclass(frozen=True)
class Prompt:
    """One task prompt: its examples, the query and the expected answer."""

    examples: tuple[tuple[int, int], ...]
    query: int
    answer: int

    @property
    def text(self) -> str:
        """Prompt text without BOS (tokenisers add it)."""
        lines = "".join(f"({x}, {y})\n" for x, y in self.examples)
        return f"\n{lines}({self.query}, "


BLOG_PROMPT = Prompt(
    examples=(
        (28, 59), (86, 175), (13, 29), (55, 113), (84, 171), (66, 135),
        (85, 173), (27, 57), (15, 33), (94, 191), (37, 77), (14, 31),
    ),
    query=42,
    answer=87,
)
"""The post's prompt A: twelve examples of y = 2x + 3 and the query 42 (claims-spec §1)."""

BLOG_PATCH_TARGET = 15
"""The post's prompt B asks for x = 15 (which, unlike a rigorous draw, is one of A's examples)."""


@dataclass(frozen=True)
class TaskPrompts:
    """Prompts of one affine task drawn from one seed; ``texts`` and ``answers`` align with ``prompts``
    (tokenizer-free: :func:`mechclaims_icl.roles.roles` gives each its tokens and roles)."""

    task: AffineTask
    prompts: tuple[Prompt, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    @property
    def answers(self) -> np.ndarray:
        return np.array([p.answer for p in self.prompts])


def make_prompts(
    task: AffineTask,
    *,
    n_prompts: int,
    n_examples: int,
    seed: int,
    x_range: tuple[int, int] = X_RANGE,
) -> TaskPrompts:
    """Draw ``n_prompts`` prompts with ``n_examples`` distinct x values each, query excluded."""
    low, high = x_range
    n_values = high - low + 1
    if n_prompts < 1:
        raise ConfigError(f"n_prompts must be >= 1, got {n_prompts}")
    if n_examples < 0 or n_examples + 1 > n_values:
        raise ConfigError(
            f"n_examples={n_examples} cannot be met: x_range {x_range} has {n_values} distinct "
            f"values and each prompt needs n_examples + 1 of them (examples and the query); "
            f"use 0 <= n_examples <= {n_values - 1} or widen x_range"
        )
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n_prompts):
        xs = rng.choice(np.arange(low, high + 1), size=n_examples + 1, replace=False)
        *examples, query = (int(x) for x in xs)
        prompts.append(
            Prompt(tuple((x, task(x)) for x in examples), query, task(query))
        )
    return TaskPrompts(task, tuple(prompts), seed)


MIN_QUERY_GAP = 5  # |q - p| >= this, so A's answer a*q+b is never within tolerance of a*p

NEUTRAL_LINE = "(x, y)\n"
"""The line the ``neutral-line`` probe puts before B: the format's own header, with no number in it."""

PROBES: dict[str, str] = {
    "post": "({p}, ",
    "newline": "\n({p}, ",
    "neutral-line": NEUTRAL_LINE + "({p}, ",
}
"""The formats of the no-context prompt B (text after BOS; ``{p}`` is the patch target).

``post`` is the post's own B, ``<bos>(15, `` (claims-spec §1); ``newline`` starts B with the
newline that starts every prompt A; ``neutral-line`` puts one line that carries no example
before it.  Which one Claim 1 uses is pre-registered (``[c1] probe``), and ``C1.onset-robust``
asks whether the onset survives every one of ``[c1] probe_variants``."""


def probe_text(probe: str, p: int) -> str:
    """B's text under ``probe`` for the patch target ``p``."""
    if probe not in PROBES:
        raise ConfigError(f"unknown probe {probe!r}; valid probes: {', '.join(PROBES)} (see mechclaims_icl.tasks.PROBES)")
    return PROBES[probe].format(p=p)


@dataclass(frozen=True)
class PatchPair:
    """A context prompt A and the no-context prompt B ``(p, `` it is patched into."""

    a: Prompt
    p: int
    probe: str = "post"

    @property
    def b_text(self) -> str:
        return probe_text(self.probe, self.p)


@dataclass(frozen=True)
class PatchSet:
    """Seeded (A, B) pairs: p is never among A's examples and far from A's query."""

    task: AffineTask
    pairs: tuple[PatchPair, ...]
    seed: int

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def probe(self) -> str:
        """The format of every B of the set."""
        return self.pairs[0].probe if self.pairs else "post"

    def with_probe(self, probe: str) -> "PatchSet":
        """The same A prompts and patch targets with B in another format."""
        probe_text(probe, 0)  # validates the name
        return PatchSet(self.task, tuple(replace(pair, probe=probe) for pair in self.pairs), self.seed)

    @property
    def a_texts(self) -> list[str]:
        return [pair.a.text for pair in self.pairs]

    @property
    def b_texts(self) -> list[str]:
        return [pair.b_text for pair in self.pairs]

    @property
    def p(self) -> np.ndarray:
        return np.array([pair.p for pair in self.pairs])

    @property
    def q(self) -> np.ndarray:
        return np.array([pair.a.query for pair in self.pairs])


def make_patch_pairs(
    task: AffineTask,
    *,
    n_pairs: int,
    n_examples: int,
    seed: int,
    x_range: tuple[int, int] = X_RANGE,
    probe: str = "post",
) -> PatchSet:
    """Draw ``n_pairs`` (A, p) pairs, B in the ``probe`` format (:data:`PROBES`); p avoids A's
    examples and lies >= MIN_QUERY_GAP from q.  The draw does not depend on the probe."""
    probe_text(probe, 0)
    prompts = make_prompts(task, n_prompts=n_pairs, n_examples=n_examples, seed=seed, x_range=x_range)
    rng = np.random.default_rng([seed, 1])
    low, high = x_range
    pairs = []
    for prompt in prompts.prompts:
        used = {x for x, _ in prompt.examples}
        choices = [
            x for x in range(low, high + 1) if x not in used and abs(x - prompt.query) >= MIN_QUERY_GAP
        ]
        if not choices:
            raise ConfigError(
                f"no patch target p left in x_range {x_range} with {n_examples} examples and a gap "
                f">= {MIN_QUERY_GAP} from the query; use fewer examples or a wider x_range"
            )
        pairs.append(PatchPair(prompt, int(rng.choice(choices)), probe))
    return PatchSet(task, tuple(pairs), seed)
