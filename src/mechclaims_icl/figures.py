"""The pack's own figures: what the core's figure schemas do not draw, through the
``pytest_mechclaims_plots`` hook (:mod:`mechclaims_icl.plugin`).

Each function takes a claim's entry as ``claims.json`` holds it and returns ``(title, Figure)``
pairs; a claim without the data a figure needs gets none.
"""

from __future__ import annotations

import math
from typing import Any

# One colour per cumulative condition, clean first (the post's ladder: 12, 14, 16, none).
LADDER_COLOURS = ("#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#6e7781")


def onset_ladder(claim: dict[str, Any]) -> list[tuple[str, Any]]:
    """C1.redundancy: the task rate by layer under each cumulative ablation, on one axis, with the
    threshold and each condition's onset marked: the onset moving later, stage by stage, is the
    redundancy the claim states."""
    ladder = (claim.get("figures") or {}).get("onset_ladder")
    if not isinstance(ladder, dict) or not isinstance(ladder.get("conditions"), dict):
        return []
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 3.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    threshold = float(ladder["threshold"])
    n_layers = 0
    for i, (name, c) in enumerate(ladder["conditions"].items()):
        colour = LADDER_COLOURS[i % len(LADDER_COLOURS)]
        rate = [math.nan if v is None else v for v in c["rate"]]
        low = [math.nan if v is None else v for v in c["ci_low"]]
        high = [math.nan if v is None else v for v in c["ci_high"]]
        layers = range(len(rate))
        n_layers = max(n_layers, len(rate))
        onset = int(c["onset"])
        where = f"onset L{onset}" if onset < len(rate) else "no onset"
        ax.plot(layers, rate, color=colour, linewidth=1.6, label=f"{name} ({where})")
        ax.fill_between(layers, low, high, color=colour, alpha=0.15, linewidth=0)
        if onset < len(rate):
            ax.axvline(onset, color=colour, linestyle=":", linewidth=1.2)
    ax.axhline(threshold, color="#57606a", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("layer patched")
    ax.set_ylabel("B answers ≈a*p or exact")
    ax.grid(True, color="#d0d7de", linewidth=0.6)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.set_title(f"{claim.get('id')} on {claim.get('target')}: task stage under cumulative ablation "
                 "(onset: first layer whose lower bound reaches the threshold)", fontsize=9, wrap=True)
    return [("task stage under cumulative ablation", fig)]


# Each claim id the pack draws a figure for, and the function that draws it.
FIGURES = {"C1.redundancy": onset_ladder}


def plots(claim: dict[str, Any]) -> list[tuple[str, Any]]:
    """The pack's figures of one claim result (none for a claim it draws nothing for)."""
    draw = FIGURES.get(str(claim.get("id")))
    return [] if draw is None else draw(claim)
