"""The Claim 1 experiment: cumulative head ablations, each followed by a patch sweep.

For each condition (clean, then every cumulative ablation stage) it measures,
on one set of (A, B) pairs: A's correctness under the ablation, the residual
patch sweep from ablated A into B, and the per-head scores of A.  Claims read
what they need from one :class:`AblationStudy`, computed once per target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

import torch

from mechclaims import AblateHeads, at_prompt_end, encode, forward, resid_pre, token_batches
from .answers import answer_tokens, numbers_are_single_tokens, predicts_answer
from .patching import Sweep, patch_sweep
from .scores import HeadScores, score_hooks, scores_from
from .tasks import PatchSet

APPROX_OR_EXACT = ("approx", "exact")


@dataclass(frozen=True)
class Condition:
    """One ablation condition and what was measured under it."""

    name: str
    layers: tuple[int, ...]
    correct: np.ndarray  # [n_pairs] A answers correctly under the ablation
    sweep: Sweep
    scores: HeadScores
    source: torch.Tensor | None = None  # [n_pairs, n_layers, d_model]: A's last-position resid_pre, on the CPU

    def task_flags(self) -> np.ndarray:
        """``[n_layers, n_pairs]``: patched B answers ≈ a*p or exactly a*p + b."""
        return self.sweep.task_flags()

    def flags(self, outcome: str) -> np.ndarray:
        from .answers import OUTCOMES

        return self.sweep.outcomes == OUTCOMES.index(outcome)


@dataclass(frozen=True)
class AblationStudy:
    """The clean condition followed by cumulative ablation stages."""

    pairs: PatchSet
    conditions: tuple[Condition, ...]

    @property
    def clean(self) -> Condition:
        return self.conditions[0]

    def after(self, stage: int) -> Condition:
        """The condition with stages ``0..stage`` ablated (``stage`` counts from 0)."""
        return self.conditions[stage + 1]


def measure(
    model: Any,
    pairs: PatchSet,
    layers: Sequence[int],
    *,
    read_layer: int,
    mode: str = "zero",
    position: int | None = -1,
    means: dict | None = None,
) -> Condition:
    """One condition: every head of ``layers`` ablated (none: clean).

    A runs ONCE per batch: that forward gives the residual the sweep patches,
    the activations of both head scores and A's answer.  For digit-by-digit
    tokenisers the answer's tokens are appended (teacher forcing) and the
    activations are read at the prompt's last position, where the ablation sits.
    """
    layers = tuple(layers)
    ivs = [AblateHeads.layers(layers, model.cfg.n_heads, mode=mode, position=position, means=means)] if layers else []
    n_layers, tokenizer = model.cfg.n_layers, model.tokenizer
    answers = [pair.a.answer for pair in pairs.pairs]
    expected = answer_tokens(tokenizer, answers)
    first = [ids[0] for ids in expected]  # the token direct logit attribution reads
    forced = [[] for _ in expected] if numbers_are_single_tokens(tokenizer) else expected
    names = list(dict.fromkeys([resid_pre(layer) for layer in range(n_layers)] + score_hooks(n_layers, read_layer)))
    prompts = [encode(tokenizer, t) for t in pairs.a_texts]
    source = torch.empty(len(pairs), n_layers, model.cfg.d_model, dtype=model.cfg.dtype)
    dla = np.zeros((len(pairs), n_layers, model.cfg.n_heads))
    dot = np.zeros_like(dla)
    correct = np.zeros(len(pairs), dtype=bool)
    for rows, tokens in token_batches(model, prompts, forced):
        end = len(prompts[rows[0]]) - 1
        held = [at_prompt_end(iv, end + 1) for iv in ivs]
        tail = len(forced[rows[0]]) + 1  # the predictions from the prompt's last position on
        out = forward(model, tokens, names=names, position=end, interventions=held, logits="argmax", tail=tail)
        predicted, acts = out.logits, out.acts
        source[rows] = torch.stack([acts[resid_pre(layer)].cpu() for layer in range(n_layers)], dim=1)
        dla[rows], dot[rows] = scores_from(model, acts, [first[i] for i in rows], read_layer)
        predicted = predicted.cpu()
        correct[rows] = [predicts_answer(tokenizer, predicted[j].tolist(), expected[i]) for j, i in enumerate(rows)]
    return Condition(
        name="clean" if not layers else "ablate " + "+".join(str(layer) for layer in layers),
        layers=layers,
        correct=correct,
        sweep=patch_sweep(model, pairs, source=source),
        scores=HeadScores(dla=dla, dot=dot, read_layer=read_layer),
        source=source,
    )


def probe_sweeps(model: Any, study: AblationStudy, probes: Sequence[str]) -> dict[str, Sweep]:
    """The clean patch sweep with B in each format of ``probes``: A's residual is the one the
    study captured, so only B's runs are added (the study's own probe is reused as measured)."""
    clean = study.clean
    out = {}
    for probe in probes:
        if probe == study.pairs.probe:
            out[probe] = clean.sweep
        else:
            if clean.source is None:
                raise ValueError("the study's clean condition kept no source residual; measure it with experiments.measure")
            out[probe] = patch_sweep(model, study.pairs.with_probe(probe), source=clean.source)
    return out


def ablation_study(
    model: Any,
    pairs: PatchSet,
    stages: Sequence[Sequence[int]],
    *,
    read_layer: int,
    clean: Condition | None = None,
    progress: Callable[[str], None] = lambda message: None,
    **ablation: Any,
) -> AblationStudy:
    """The clean condition (measured unless given) and each cumulative ablation of ``stages``."""
    total = len(stages) + 1
    progress(f"condition 1/{total}: clean ({len(pairs)} prompt pairs)")
    conditions = [clean or measure(model, pairs, (), read_layer=read_layer, **ablation)]
    ablated: list[int] = []
    for k, stage in enumerate(stages, start=2):
        ablated += list(stage)
        progress(f"condition {k}/{total}: ablate layers {'+'.join(map(str, ablated))}")
        conditions.append(measure(model, pairs, ablated, read_layer=read_layer, **ablation))
    return AblationStudy(pairs, tuple(conditions))
