"""TransformerLens hook names, built in one place.

Every name a pass hooks is made here, so the pack code, the readers and the
interventions agree on one spelling (TransformerBridge's own names; the same for
every architecture it adapts).
"""

from __future__ import annotations

FINAL_NORM = "ln_final.hook_out"  # the final-norm output that the unembedding reads
FINAL_SCALE = "ln_final.hook_scale"  # the final norm's per-position scale


def final_norm() -> str:
    """The final norm's output, which the unembedding reads: ``[batch, pos, d_model]``."""
    return FINAL_NORM


def final_scale() -> str:
    """The final norm's per-position scale (``1 / rms``): ``[batch, pos, 1]``."""
    return FINAL_SCALE


def resid_pre(layer: int) -> str:
    """The residual stream entering ``layer``: ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_resid_pre"


def head_z(layer: int) -> str:
    """Each query head's output before ``W_O``: ``[batch, pos, n_heads, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def attn_pattern(layer: int) -> str:
    """Attention probabilities: ``[batch, head, query, key]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def mlp_out(layer: int) -> str:
    """The MLP's output added to the residual: ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_mlp_out"
