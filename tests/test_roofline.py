"""The floating-point accounting of benchmarks/roofline.py, against published parameter counts
and a hand count."""

from __future__ import annotations

import pytest

from benchmarks.roofline import non_embedding_params, run_flops
from mechclaims.targets import TARGETS, ModelShape


def test_non_embedding_weights_match_the_published_counts():
    # SmolLM2-135M: 134.5 M parameters, of which the tied embedding is 49,152 x 576; norms aside
    smollm2 = non_embedding_params(TARGETS["smollm2-135m"].known_shape)
    assert smollm2 == pytest.approx(134.515e6 - 49152 * 576, rel=1e-3)
    # Llama-3-8B: 8.03 B, of which embedding and unembedding are 2 x 128,256 x 4096
    llama = non_embedding_params(TARGETS["llama-3-8b"].known_shape)
    assert llama == pytest.approx(8.030e9 - 2 * 128256 * 4096, rel=1e-3)


def test_a_runs_work_is_weights_attention_and_unembedding():
    shape = ModelShape(n_layers=2, n_heads=2, n_key_value_heads=1, d_model=4, d_mlp=8, d_vocab=10)
    # per layer: q, o 2 x 4 x 4; k, v 2 x 4 x 2; MLP 3 x 4 x 8
    assert non_embedding_params(shape) == 2 * (32 + 16 + 96)
    # 5 tokens through both layers, 15 (query, key) pairs in each, one logit position
    flops = run_flops(shape, {"tokens": 5, "layer_tokens": 10, "attention_pairs": 30, "logit_positions": 1})
    assert flops == {"weights": 2 * 288 * 5, "attention": 4 * 4 * 2 * 15, "unembedding": 2 * 4 * 10,
                     "total": 2880 + 480 + 80}
    # the same pass stopped after its first layer, before the unembedding
    half = run_flops(shape, {"tokens": 5, "layer_tokens": 5, "attention_pairs": 15, "logit_positions": 0})
    assert half["total"] == 1440 + 240
