"""Task sequences: BOS, "\\n", then lines "(x, y)\\n" with y = a*x + b (+ optional jitter).

Layout of a sequence of n lines (token positions):
  0: BOS, 1: "\\n", then line i at 2 + 6*i: "(", x, ",", " ", y, ")\\n".
The answer y of line i sits at Y_POS(i) = 2 + 6*i + 4 and is predicted at position Y_POS(i) - 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .tokenizer import BOS_ID, CLOSE_ID, COMMA_ID, MAX_NUMBER, NEWLINE_ID, NUMBER_OFFSET, OPEN_ID, SPACE_ID

PREFIX_LEN = 2
LINE_LEN = 6
CANONICAL = (2, 3)


def y_pos(line: int) -> int:
    """Token position of the y of line `line` (0-based)."""
    return PREFIX_LEN + LINE_LEN * line + 4


@dataclass(frozen=True)
class Family:
    """The task family: y = a*x + b, a in a_values, b in b_values, x in [x_min, x_max]."""

    a_min: int = 1
    a_max: int = 5
    b_min: int = 0
    b_max: int = 29
    x_min: int = 10
    x_max: int = 99
    held_out: tuple[int, int] = (4, 17)

    def __post_init__(self) -> None:
        if not (self.a_min <= self.a_max and self.b_min <= self.b_max and 0 <= self.x_min < self.x_max):
            raise ValueError(f"empty or invalid family ranges: {self}")
        if self.a_min < 0 or self.b_min < 0:
            raise ValueError(f"a and b must be >= 0, got a_min={self.a_min}, b_min={self.b_min}")
        top = self.a_max * self.x_max + self.b_max + 1  # +1: the label jitter
        if top > MAX_NUMBER:
            raise ValueError(f"largest y = {top} exceeds {MAX_NUMBER}: lower a_max, b_max or x_max")
        for name, (a, b) in (("canonical", CANONICAL), ("held_out", self.held_out)):
            if not self.contains(a, b):
                raise ValueError(f"{name} pair {(a, b)} is outside the family {self}")
        if tuple(self.held_out) == CANONICAL:
            raise ValueError(f"the held-out pair must differ from the canonical pair {CANONICAL}")

    def contains(self, a: int, b: int) -> bool:
        return self.a_min <= a <= self.a_max and self.b_min <= b <= self.b_max

    @property
    def n_x(self) -> int:
        return self.x_max - self.x_min + 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Batch:
    """Token ids [n, T]; the (a, b) of each row; x and y of each line [n, lines]."""

    ids: np.ndarray
    a: np.ndarray
    b: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    meta: dict = field(default_factory=dict)


def distinct_xs(rng: np.random.Generator, n_seq: int, n_lines: int, family: Family) -> np.ndarray:
    """n_lines distinct x values per row, uniformly at random."""
    if n_lines > family.n_x:
        raise ValueError(f"{n_lines} lines need {n_lines} distinct x, the family has {family.n_x}")
    order = np.argsort(rng.random((n_seq, family.n_x)), axis=1)[:, :n_lines]
    return order + family.x_min


def encode_lines(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Token ids of BOS, "\\n" and the lines (x, y) of each row."""
    n_seq, n_lines = xs.shape
    ids = np.empty((n_seq, PREFIX_LEN + LINE_LEN * n_lines), dtype=np.int64)
    ids[:, 0] = BOS_ID
    ids[:, 1] = NEWLINE_ID
    line = ids[:, PREFIX_LEN:].reshape(n_seq, n_lines, LINE_LEN)
    line[:, :, 0] = OPEN_ID
    line[:, :, 1] = NUMBER_OFFSET + xs
    line[:, :, 2] = COMMA_ID
    line[:, :, 3] = SPACE_ID
    line[:, :, 4] = NUMBER_OFFSET + ys
    line[:, :, 5] = CLOSE_ID
    return ids


def training_batch(
    rng: np.random.Generator, n_seq: int, n_lines: int, family: Family, noise: float, canonical_share: float = 0.0
) -> Batch:
    """Random (a, b) per row (never the held-out pair); a fraction `noise` of lines get y += +-1.
    With `canonical_share` > 0 each row is the canonical pair with that probability (drawn after
    the uniform pairs, so a share of 0 draws exactly what it always drew)."""
    a = rng.integers(family.a_min, family.a_max + 1, n_seq)
    b = rng.integers(family.b_min, family.b_max + 1, n_seq)
    held = (a == family.held_out[0]) & (b == family.held_out[1])
    while held.any():
        a[held] = rng.integers(family.a_min, family.a_max + 1, held.sum())
        b[held] = rng.integers(family.b_min, family.b_max + 1, held.sum())
        held = (a == family.held_out[0]) & (b == family.held_out[1])
    pick = np.zeros(n_seq, dtype=bool)
    if canonical_share > 0:
        pick = rng.random(n_seq) < canonical_share
        a[pick], b[pick] = CANONICAL
    xs = distinct_xs(rng, n_seq, n_lines, family)
    jitter = np.where(rng.random((n_seq, n_lines)) < noise, rng.choice([-1, 1], (n_seq, n_lines)), 0)
    ys = np.clip(a[:, None] * xs + b[:, None] + jitter, 0, MAX_NUMBER)
    return Batch(encode_lines(xs, ys), a, b, xs, ys, {"canonical": pick})


def task_batch(rng: np.random.Generator, n_seq: int, n_lines: int, a: int, b: int, family: Family) -> Batch:
    """Noise-free sequences of one function y = a*x + b, distinct x per row."""
    xs = distinct_xs(rng, n_seq, n_lines, family)
    ys = a * xs + b
    if ys.max() > MAX_NUMBER:
        raise ValueError(f"y = {a}x + {b} exceeds {MAX_NUMBER} for x up to {family.x_max}")
    return Batch(encode_lines(xs, ys), np.full(n_seq, a), np.full(n_seq, b), xs, ys)


def query_prompt(xs_examples: np.ndarray, ys_examples: np.ndarray, query: np.ndarray) -> np.ndarray:
    """BOS "\\n" example lines, then "(q, " (the model's next token is the answer)."""
    ids = encode_lines(xs_examples, ys_examples)
    tail = np.stack(
        [np.full_like(query, OPEN_ID), NUMBER_OFFSET + query, np.full_like(query, COMMA_ID), np.full_like(query, SPACE_ID)],
        axis=1,
    )
    return np.concatenate([ids, tail], axis=1)
