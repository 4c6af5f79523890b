"""The physical limit of a claim run on this machine: its floating-point work, counted from the
run's own accounting, against the measured peak of this CPU's float32 matrix multiply.

Pure functions; ``benchmarks/test_peers.py`` measures and writes ``reports/peers.json``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch


def non_embedding_params(shape: Any) -> int:
    """Weights a token meets in the layers of a Llama-like model (``mechclaims.targets.ModelShape``):
    query and output projections, key and value projections of the key-value heads, the gated
    MLP's three matrices. Norms are left out (a fraction of a percent)."""
    d_head = shape.d_model // shape.n_heads
    attention = 2 * shape.d_model * shape.n_heads * d_head + 2 * shape.d_model * shape.n_key_value_heads * d_head
    return shape.n_layers * (attention + 3 * shape.d_model * shape.d_mlp)


def run_flops(shape: Any, forwards: Mapping[str, float]) -> dict[str, float]:
    """Floating-point operations of the passes ``forwards`` counted (a report's ``run.forwards``
    entry): 2 x one layer's weights per token and layer it went through, 4 x width per (query,
    key) pair and layer run (scores and the weighted sum), 2 x width x vocabulary per computed
    logit position. A pass that a reading stopped counts only the layers it ran."""
    per_layer = non_embedding_params(shape) // shape.n_layers
    parts = {
        "weights": 2.0 * per_layer * forwards["layer_tokens"],
        "attention": 4.0 * shape.d_model * forwards["attention_pairs"],
        "unembedding": 2.0 * shape.d_model * shape.d_vocab * forwards["logit_positions"],
    }
    return {**parts, "total": sum(parts.values())}


def matmul_peak_gflops(threads: int, *, n: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matrix-multiply rate at ``threads`` threads: best of ``repeats``
    ``torch.mm`` of two ``n x n`` matrices (2 n^3 operations each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up: allocation, kernel choice
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9
