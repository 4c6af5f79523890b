"""Per-head scores at the last position: the post's dot score and direct logit attribution.

For head ``h`` of layer ``L`` the output at the last position is
``z[L, h] @ W_O[L, h]`` (``attn.hook_z`` times the head's slice of the output
projection; Llama has no output bias).  Two scores are reported:

* ``dot``: the original, non-causal score of the post: that output divided by
  the final RMSNorm scale (``ln_final.hook_scale``), dotted with ``resid_pre`` of
  a later layer at the same position.
* ``dla``: direct logit attribution, the causal-path counterpart: that output
  through the final norm (scale and weight) and the unembedding, read at the
  correct answer's first token.  Summed over every component it is that token's
  logit exactly (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mechclaims import Intervention, cached, encode, final_scale, forward, head_z, resid_pre, token_batches

FINAL_SCALE = final_scale()  # the final norm's scale, which direct logit attribution divides by

from .answers import answer_tokens


@dataclass(frozen=True)
class HeadScores:
    """``[n_prompts, n_layers, n_heads]`` arrays of both scores."""

    dla: np.ndarray
    dot: np.ndarray
    read_layer: int


def final_norm_weight(model: Any) -> torch.Tensor:
    weights = [p for name, p in model.ln_final.named_parameters() if name.endswith("weight")]
    if len(weights) != 1:
        raise ValueError(f"expected one final-norm weight, found {len(weights)}")
    return weights[0]


def head_outputs(model: Any, z: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-head outputs ``[batch, n_layers, n_heads, d_model]`` from last-position ``hook_z``, in float32
    on ``z``'s device.

    Each layer's product is taken where that layer's ``W_O`` lives (a device map may spread the
    layers), in float32 whatever the model's dtype: the scores sum many small products, and a
    bf16 model's weights are exact in float32.
    """
    home = z[head_z(0)].device
    outs = []
    for layer in range(model.cfg.n_layers):
        w_o = model.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
        z_l = z[head_z(layer)].to(w_o.device, torch.float32)
        outs.append(torch.einsum("bhd,hdm->bhm", z_l, w_o.float()).to(home))
    return torch.stack(outs, dim=1)


def score_hooks(n_layers: int, read_layer: int) -> list[str]:
    """The activations (at the last position) that both scores are computed from."""
    if not 0 <= read_layer <= n_layers - 1:
        raise ValueError(f"read_layer {read_layer} is outside 0..{n_layers - 1}")
    return [head_z(layer) for layer in range(n_layers)] + [FINAL_SCALE, resid_pre(read_layer)]


def answer_token_ids(tokenizer: Any, answers: Sequence[int]) -> list[int]:
    """Each answer's first token (the one direct logit attribution reads)."""
    return [ids[0] for ids in answer_tokens(tokenizer, answers)]


def scores_from(model: Any, acts: dict[str, torch.Tensor], first: Sequence[int], read_layer: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dla, dot)``, each ``[batch, n_layers, n_heads]``, from captured :func:`score_hooks`.

    They depend on the weights (``W_O``, ``W_U``, the final norm) as well as on
    the activations, so they are memoised in the model's activation store by the
    digest of those activations: a run served from the disk cache needs no
    weights.  No forward pass is involved (``tokens`` 0): the capture counted it.
    """
    names = score_hooks(model.cfg.n_layers, read_layer)
    inputs = {"acts": {n: acts[n] for n in names}, "first": [int(f) for f in first], "read_layer": int(read_layer)}
    arrays = cached(model, "scores", inputs, lambda: dict(zip(("dla", "dot"), _scores(model, acts, first, read_layer))))
    return arrays["dla"], arrays["dot"]


@torch.no_grad()
def _scores(model: Any, acts: dict[str, torch.Tensor], first: Sequence[int], read_layer: int) -> tuple[np.ndarray, np.ndarray]:
    out = head_outputs(model, acts)  # float32, on the activations' device
    f32 = dict(device=out.device, dtype=torch.float32)
    out = out / acts[FINAL_SCALE].to(**f32)[:, None, None, :]
    w_u = model.W_U
    unembed = w_u[:, torch.tensor(list(first), device=w_u.device)].T.to(**f32)  # [b, d_model]
    dla = torch.einsum("blhm,bm->blh", out * final_norm_weight(model).to(**f32), unembed)
    dot = torch.einsum("blhm,bm->blh", out, acts[resid_pre(read_layer)].to(**f32))
    return dla.cpu().numpy(), dot.cpu().numpy()


@torch.no_grad()
def head_scores(
    model: Any,
    texts: Sequence[str],
    answers: Sequence[int],
    *,
    read_layer: int,
    interventions: Sequence[Intervention] = (),
) -> HeadScores:
    """Both scores for every head, for each prompt, under ``interventions``."""
    names = score_hooks(model.cfg.n_layers, read_layer)
    encoded = [encode(model.tokenizer, t) for t in texts]
    first = answer_token_ids(model.tokenizer, answers)
    dla = np.zeros((len(texts), model.cfg.n_layers, model.cfg.n_heads))
    dot = np.zeros_like(dla)
    for rows, tokens in token_batches(model, encoded, logits=1):
        acts = forward(model, tokens, names=names, position=-1, interventions=interventions, logits="none").acts
        dla[rows], dot[rows] = scores_from(model, acts, [first[i] for i in rows], read_layer)
    return HeadScores(dla=dla, dot=dot, read_layer=read_layer)
