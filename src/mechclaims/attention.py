"""Attention between token roles: the weights of (query, keys) links, a pattern's mass along
them, the causal-uniform baseline, and the heads that score highest.

Pure numpy; no torch. :func:`role_weights` turns (query, keys) links into a ``[query, key]``
weight matrix; :func:`role_mass` reads a pattern's mean attention along those links;
:func:`uniform_pattern` is the causal-uniform baseline pattern; :func:`top_heads` ranks heads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Link = tuple[int, Sequence[int]]  # (query position, key positions)


def role_weights(links: Sequence[Link], length: int) -> np.ndarray:
    """``[length, length]`` weights: ``1/len(links)`` at each (query, key) of ``links``.

    ``pattern`` summed against it is the mean, over links, of the attention mass a
    query puts on its keys.  Keys must not lie after their query (causal).
    """
    if not links:
        raise ValueError("no role links to weigh")
    w = np.zeros((length, length))
    for query, keys in links:
        keys = list(keys)
        if not keys or max(keys) > query:
            raise ValueError(f"link ({query}, {keys}) needs keys at or before the query")
        w[query, keys] += 1.0
    return w / len(links)


def role_mass(pattern: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean attention along the links of ``weights``: ``pattern`` ``[..., q, k]`` -> ``[...]``.

    ``weights`` is ``[q, k]`` (one for all rows) or ``[batch, q, k]`` matching the
    pattern's leading batch axis (``pattern`` ``[batch, head, q, k]``).
    """
    pattern = np.asarray(pattern, dtype=float)
    if weights.ndim == 2:
        return np.einsum("...qk,qk->...", pattern, weights)
    return np.einsum("bhqk,bqk->bh", pattern, weights)


def uniform_pattern(length: int) -> np.ndarray:
    """Causal-uniform attention: each query spreads 1 evenly over itself and the keys before it."""
    return np.tril(np.ones((length, length))) / np.arange(1, length + 1)[:, None]


def top_heads(scores: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs with the largest ``scores`` ``[n_layers, n_heads]``, largest first."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores.ravel(), kind="stable")[:k]
    return [(int(i // scores.shape[1]), int(i % scores.shape[1])) for i in order]
