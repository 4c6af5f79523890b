"""Claim 3 of the post: a two-stage mechanism.

"A head at y_i attends to its own x_i; MLPs turn x and y into features of the
transformation; a head at the position before y_j attends to earlier y_i."
Attention masses between token roles on the confirmation split, against
uniform attention and randomly drawn heads; heads, layers and margins from
claims/expectations/<target>.toml (for llama-3-8b, the post's heads).
"""

import pytest

from mechclaims_icl import claim3

SOURCE = "claims-spec §4 (blog Claim 3)"


@pytest.mark.claim(id="C3.x-to-y", source=SOURCE)
def test_some_heads_attend_from_y_to_its_own_x(c23, claim):
    c23.require(claim)
    claim.judge(claim3.x_to_y(c23.reading, c23.c3, seed=c23.seed), **c23.notes)


@pytest.mark.claim(id="C3.y-to-prey", source=SOURCE)
def test_the_most_causal_heads_attend_from_before_y_to_earlier_ys(c23, claim):
    c23.require(claim)
    claim.judge(claim3.y_to_prey(c23.reading, c23.heads, c23.dla, c23.c3, seed=c23.seed), **c23.notes)


@pytest.mark.claim(id="C3.mlp", source=SOURCE)
def test_the_mlps_between_the_head_stages_are_needed(c23, claim):
    c23.require(claim)
    clean = c23.reading.correct[:, c23.example]
    claim.judge(
        claim3.mlp_needed(clean, c23.ablated, c23.c3, control=c23.control, control_layers=c23.control_layers),
        **c23.notes,
    )
