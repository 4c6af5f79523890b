"""The induction pack: random token sequences repeated twice, and what is read from them.

Each prompt is BOS, then ``LENGTH`` random tokens, then the same tokens again. In the
second repeat, the token at ``query`` saw its own first occurrence ``LENGTH`` positions
back; an induction head attends from it to ``key``, the token that followed that first
occurrence, and the model predicts that token next. The exploration and confirmation
splits are drawn from disjoint seeds of the run's ``--mechclaims-seed``.
"""

from __future__ import annotations

import numpy as np

from mechclaims import (AblateHeads, Key, PromptSet, attention_mass, greedy_tokens, register_section, role_weights,
                        split_seed, uniform_pattern)

register_section("induction", {
    "heads": Key(list, why="[layer, head] pairs chosen on the exploration split"),
    "min_excess": Key(float, 0.01, 1.0, "attention above uniform the heads must show (lower bound)"),
    "min_drop": Key(float, 0.01, 1.0, "accuracy the ablation must cost beyond random heads (lower bound)"),
    "n_random": Key(int, 5, 999, "random head sets ablated for the baseline"),
})
LENGTH = 20


def repeated(model, n: int, seed: int, split: str, *, repeat: bool = True) -> PromptSet:
    """``n`` prompts BOS + r + r (with ``repeat=False``, BOS + r + fresh random tokens)."""
    rng = np.random.default_rng(split_seed(seed, split))
    low = min(1000, model.cfg.d_vocab // 2)  # past byte and special tokens
    bos = model.tokenizer.bos_token_id
    draw = lambda: rng.integers(low, model.cfg.d_vocab, LENGTH).tolist()  # noqa: E731
    rows = [[bos, *r, *(r if repeat else draw())] for r in (draw() for _ in range(n))]
    queries = list(range(LENGTH + 1, 2 * LENGTH))  # second occurrence of token i = 0..LENGTH-2
    return PromptSet.from_tokens(rows, {"query": [queries] * n, "key": [[q - LENGTH + 1 for q in queries]] * n})


def induction_attention(model, prompts: PromptSet) -> tuple[np.ndarray, float]:
    """Attention from each query to its key: ``[n, layer, head]`` (reduced in the hook), and
    the same reading under causal-uniform attention."""
    tokens = prompts.tensor(model)
    weights = role_weights([(q, [k]) for q, k in zip(prompts.roles["query"][0], prompts.roles["key"][0])],
                           tokens.shape[1])
    return attention_mass(model, tokens, weights), float((weights * uniform_pattern(tokens.shape[1])).sum())


def repeat_accuracy(model, prompts: PromptSet, heads=()) -> np.ndarray:
    """Per sequence: the share of second-repeat tokens (from the second on) the model predicts,
    with ``heads`` zero-ablated at every position."""
    tokens = prompts.tensor(model)
    want = tokens[:, LENGTH + 2 :].cpu().numpy()
    ablate = [AblateHeads(tuple(heads), position=None)] if heads else []
    guess = greedy_tokens(model, tokens, last=want.shape[1] + 1, interventions=ablate)[:, :-1]
    return (guess == want).mean(1)
