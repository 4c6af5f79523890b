"""C0: the precondition every other claim rests on.

"With twelve in-context examples the target answers y = 2x + 3 for a new x,
and without examples it does not."  A target that fails this has nothing for
the mechanistic claims to explain; they report it as not applicable.
"""

import pytest

from mechclaims_icl import claim0
from mechclaims_icl.answers import greedy_is, greedy_numbers
from mechclaims_icl.expectations import N_EXAMPLES
from mechclaims import split_seed
from mechclaims_icl.tasks import BLOG_PROMPT, CANONICAL, make_prompts


@pytest.mark.claim(id="C0.in-context", source="claims-spec §1, §6 (precondition)")
def test_target_learns_the_task_in_context(target, claim, mechclaims_settings):
    s = mechclaims_settings
    seed = split_seed(s.seed, "confirmation")
    with_context = make_prompts(CANONICAL, n_prompts=s.n_prompts, n_examples=N_EXAMPLES, seed=seed)
    no_context = make_prompts(CANONICAL, n_prompts=s.n_prompts, n_examples=0, seed=seed)

    finding = claim0.in_context(
        greedy_is(target.model, with_context.texts, with_context.answers),
        greedy_is(target.model, no_context.texts, no_context.answers),
        CANONICAL.name,
    )
    claim.judge(
        finding,
        blog_prompt_answer=int(greedy_numbers(target.model, [BLOG_PROMPT.text])[0]),
        blog_prompt_expected=BLOG_PROMPT.answer,
    )
