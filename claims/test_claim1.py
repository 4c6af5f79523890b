"""Claim 1 of the post: redundant attention heads carry in-context learning.

Each test is one sentence of the post, measured on the confirmation split with
the layers pre-registered for the target (claims/expectations/<target>.toml;
for llama-3-8b, the post's own layers 10-16), on the target's task (its
``[task]``: y = 2x + 3 unless a target cannot learn it in context), with prompt B
in the pre-registered format (``[c1] probe``; llama-3-8b: the post's ``<bos>(15, ``).
"""

import pytest

from mechclaims_icl import claim1

SOURCE = "claims-spec §2 (blog Claim 1)"


@pytest.mark.claim(id="C1.onset", source=SOURCE)
def test_patching_makes_b_answer_about_a_times_p_from_the_preregistered_layer(c1, claim):
    c1.require(claim)
    claim.judge(claim1.task_onset(c1.study, c1.params, seed=c1.seed), **c1.notes)


@pytest.mark.claim(id="C1.onset-robust", source="claims-spec §1-2: the onset under every pre-registered format of B")
def test_the_onset_holds_whatever_the_format_of_prompt_b(c1, claim):
    c1.require(claim)
    claim.judge(claim1.onset_robust(c1.probe_sweeps, c1.params, seed=c1.seed), **c1.notes)


@pytest.mark.claim(id="C1.ablate-10-11", source=SOURCE)
def test_ablating_the_first_stage_leaves_the_answer_and_delays_the_onset(c1, claim):
    c1.require(claim)
    claim.judge(claim1.ablate(c1.study, 0, c1.params, seed=c1.seed), **c1.notes)


@pytest.mark.claim(id="C1.backup-13", source=SOURCE)
def test_backup_heads_take_over_after_the_first_stage(c1, claim):
    c1.require(claim)
    claim.judge(claim1.backup(c1.study, 0, c1.params), **c1.notes)


@pytest.mark.claim(id="C1.ablate-13", source=SOURCE)
def test_ablating_the_backup_layer_delays_the_onset_again(c1, claim):
    c1.require(claim)
    claim.judge(claim1.ablate(c1.study, 1, c1.params, seed=c1.seed), **c1.notes)


@pytest.mark.claim(id="C1.backup-15", source=SOURCE)
def test_second_backup_heads_take_over(c1, claim):
    c1.require(claim)
    claim.judge(claim1.backup(c1.study, 1, c1.params), **c1.notes)


@pytest.mark.claim(id="C1.ablate-15", source=SOURCE)
def test_after_the_last_stage_a_is_right_but_b_copies_without_a_task_stage(c1, claim):
    c1.require(claim)
    claim.judge(claim1.no_task_stage(c1.study, 2, c1.params), **c1.notes)


@pytest.mark.claim(id="C1.parity-late", source=SOURCE)
def test_the_exact_answer_forms_after_the_approximate_one(c1, claim):
    c1.require(claim)
    claim.judge(claim1.parity_late(c1.study, c1.params, seed=c1.seed), **c1.notes)


@pytest.mark.claim(id="C1.redundancy", source=SOURCE)
def test_several_redundant_sets_of_heads_carry_the_task(c1, claim):
    c1.require(claim)
    claim.judge(claim1.redundancy(c1.study, c1.params, seed=c1.seed), **c1.notes)
