"""Claim 2 of the post: in-context learning as Bayesian, log-additive updates.

"If each example multiplies the odds of the correct hypothesis by c/(1-c), the
log-odds of the correct answer are linear in the number of examples seen."
Measured with one teacher-forced forward per sequence on the confirmation split,
with the range, layer and direction fixed on the exploration split
(claims/expectations/<target>.toml; for llama-3-8b, c = ln 2 from the post).
"""

import pytest

from mechclaims_icl import claim2

SOURCE = "claims-spec §3 (blog Claim 2)"


@pytest.mark.claim(id="C2.log-additive", source=SOURCE)
def test_log_odds_of_the_correct_answer_grow_linearly_in_the_examples(c23, claim):
    c23.require(claim)
    claim.judge(claim2.log_additive(c23.reading, c23.c2, c23.span, seed=c23.seed), **c23.notes)


@pytest.mark.claim(id="C2.parity-by-n", source="claims-spec §2 (parity by number of examples), §3")
def test_the_right_parity_is_in_place_after_a_few_examples(c23, claim):
    c23.require(claim)
    claim.judge(claim2.parity_by_n(c23.reading, c23.c2, seed=c23.seed), **c23.notes)


@pytest.mark.claim(id="C2.feature-linear", source=SOURCE)
def test_the_task_feature_grows_linearly_in_the_examples(c23, claim):
    c23.require(claim)
    claim.judge(
        claim2.feature_linear(c23.reading, c23.direction, c23.c2.feature_layer, c23.c2, c23.span, seed=c23.seed),
        **c23.notes,
    )
