"""The one rule for comparing greedy answers that two computation paths produced.

A full forward pass and a cached, batched decode compute the same logits up to fp32 rounding,
which differs with batch shape, kernel and processor. Where two candidate tokens are within
that rounding of each other (a near tie), either may win, on any machine. So answers from two
paths must agree on every pair but near ties, and near ties are rare: at most one answer in
twenty may differ (and at most one when there are fewer than twenty). Answers from the same
path and shapes are compared exactly instead.
"""

from __future__ import annotations

import numpy as np

SHARE = 0.05


def agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether greedy answers ``a`` and ``b`` from two computation paths agree under the rule."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    return int((a != b).sum()) <= max(1, int(SHARE * a.size))


def rates_agree(x: float, y: float, n: int) -> bool:
    """The same rule for two rates over ``n`` answers: they may differ by the allowed answers."""
    return abs(x - y) <= max(1, int(SHARE * n)) / n + 1e-12
