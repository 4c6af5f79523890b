"""SmolLM2-135M has induction heads.

On random token sequences repeated twice, the pre-registered heads (chosen on the
exploration split by ``discover.py``) attend from each token of the second repeat to the
token after its first occurrence, above uniform attention and above random heads; and
zero-ablating them costs repeat-token accuracy beyond what as many random heads cost
(their mean, paired per sequence). On sequences that do not repeat, the same heads attend
there no more than uniformly: a negative control, pre-registered refuted.
"""

from pathlib import Path

import numpy as np
import pytest
from induction import induction_attention, repeat_accuracy

from mechclaims import all_of, at_least, beats_random, paired_increase, random_sets, significant

# The targets this pack has pre-registered (discover.py writes expectations/<target>.toml): another
# model, a GGUF file configured as a target included, joins by discovery, with no edit here.
TARGETS = sorted(p.stem for p in (Path(__file__).parent / "expectations").glob("*.toml"))


def attend_to_the_next_token(target, prompts, expectations, claim):
    heads = [tuple(h) for h in expectations.get("induction", "heads", list)]
    masses, uniform = induction_attention(target.model, prompts)
    per_seq = np.mean([masses[:, layer, h] for layer, h in heads], axis=0)
    excess = paired_increase(np.full(len(per_seq), uniform), per_seq)
    per_head = masses.mean(0)  # [layer, head]
    sets = random_sets(*per_head.shape, len(heads), 999, seed=claim.seed)
    control = beats_random(per_seq.mean(), [per_head[tuple(zip(*s))].mean() for s in sets])
    claim.judge(all_of(at_least(excess, expectations.get("induction", "min_excess", float), "attention above uniform"),
                       significant(control, "against random head sets")), heads=str(heads))


@pytest.mark.claim(id="I.attention", targets=TARGETS)
def test_heads_attend_to_the_token_after_the_first_occurrence(target, sequences, expectations, claim):
    attend_to_the_next_token(target, sequences["repeated"], expectations, claim)


@pytest.mark.claim(id="I.attention-without-repeats", targets=TARGETS)
def test_without_repeats_the_same_heads_attend_no_more_than_uniform(target, sequences, expectations, claim):
    attend_to_the_next_token(target, sequences["fresh"], expectations, claim)


@pytest.mark.claim(id="I.ablation", targets=TARGETS)
def test_ablating_the_heads_costs_repeat_accuracy_beyond_random_heads(target, sequences, expectations, claim):
    heads = [tuple(h) for h in expectations.get("induction", "heads", list)]
    prompts = sequences["repeated"]
    clean = repeat_accuracy(target.model, prompts)
    drop = clean - repeat_accuracy(target.model, prompts, heads)
    sets = random_sets(target.info.n_layers, target.info.n_heads, len(heads),
                       expectations.get("induction", "n_random", int), seed=claim.seed, exclude=heads)
    random_drops = np.array([clean - repeat_accuracy(target.model, prompts, s) for s in sets])  # [set, sequence]
    beyond = paired_increase(random_drops.mean(0), drop)
    claim.judge(at_least(beyond, expectations.get("induction", "min_drop", float),
                         "accuracy lost beyond ablating as many random heads"),
                clean_accuracy=float(clean.mean()), drop=float(drop.mean()), random_drop=float(random_drops.mean()))
