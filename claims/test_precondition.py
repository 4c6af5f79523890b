"""C0: the precondition every other claim rests on.

"With twelve in-context examples the target answers y = 2x + 3 for a new x,
and without examples it does not."  A target that fails this has nothing for
the mechanistic claims to explain; they report it as not applicable.
"""

import pytest

from mechclaims import proportion_of
from mechclaims.answers import greedy_is
from mechclaims.tasks import CANONICAL, make_prompts

MIN_ACCURACY_IN_CONTEXT = 0.8  # lower 95% bound, 12 examples
MAX_ACCURACY_WITHOUT_CONTEXT = 0.2  # upper 95% bound, 0 examples


@pytest.mark.claim(id="C0.in-context", source="claims-spec §1, §6 (precondition)")
def test_target_learns_the_task_in_context(target, claim, mechclaims_settings):
    s = mechclaims_settings
    with_context = make_prompts(CANONICAL, n_prompts=s.n_prompts, n_examples=s.n_examples, seed=s.seed)
    no_context = make_prompts(CANONICAL, n_prompts=s.n_prompts, n_examples=0, seed=s.seed + 1)

    accuracy = proportion_of(greedy_is(target.model, with_context.texts, with_context.answers))
    baseline = proportion_of(greedy_is(target.model, no_context.texts, no_context.answers))

    claim.record(
        accuracy,
        threshold=MIN_ACCURACY_IN_CONTEXT,
        message=f"task {CANONICAL.name}; accuracy without context {baseline}",
        accuracy_without_context=baseline,
        task=CANONICAL.name,
        n_examples=s.n_examples,
    )
    assert accuracy.ci.low >= MIN_ACCURACY_IN_CONTEXT, claim.evidence()
    assert baseline.ci.high <= MAX_ACCURACY_WITHOUT_CONTEXT, claim.evidence()
