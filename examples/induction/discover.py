"""Pre-register the induction claims of a target on the exploration split.

    python examples/induction/discover.py --target smollm2-135m [--heads 4] [--n 100] [--seed 0]

On exploration prompts only (disjoint from the confirmation prompts the tests use), ranks
every head by its attention from each second-repeat token to the token after its first
occurrence, keeps the top ones, and measures what ablating them costs beyond random heads.
Writes ``expectations/<target>.toml``: the ``[induction]`` section (the heads, and
thresholds at half the exploration effects' lower bounds), the three verdicts and
``[registered]``; other sections and verdicts of the file are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from induction import induction_attention, repeat_accuracy, repeated  # noqa: E402

from mechclaims import load_target, paired_increase, preregister, random_sets, top_heads  # noqa: E402

N_RANDOM = 19


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--heads", type=int, default=4, help="heads to pre-register (default 4)")
    p.add_argument("--n", type=int, default=100, help="exploration prompts (default 100)")
    p.add_argument("--seed", type=int, default=0, help="the run seed whose exploration split is used (default 0)")
    args = p.parse_args(argv)
    target = load_target(args.target)
    model = target.model
    prompts = repeated(model, args.n, args.seed, "exploration")
    masses, uniform = induction_attention(model, prompts)
    per_head = masses.mean(0)
    heads = top_heads(per_head, args.heads)
    excess = paired_increase(np.full(args.n, uniform), np.mean([masses[:, la, h] for la, h in heads], axis=0))
    clean = repeat_accuracy(model, prompts)
    drop = clean - repeat_accuracy(model, prompts, heads)
    sets = random_sets(model.cfg.n_layers, model.cfg.n_heads, len(heads), N_RANDOM, seed=args.seed, exclude=heads)
    random_drops = np.mean([clean - repeat_accuracy(model, prompts, s) for s in sets], axis=0)
    beyond = paired_increase(random_drops, drop)
    half = lambda effect: max(0.01, round(effect.ci.low / 2, 2))  # noqa: E731
    figures = ", ".join(f"L{la}H{h} {per_head[la, h]:.3f}" for la, h in heads)
    command = "python examples/induction/discover.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = preregister(
        Path(__file__).parent, target,
        source=f"exploration split (seed {args.seed}, {args.n} prompts): {command}",
        verdicts={"I.attention": "supported", "I.attention-without-repeats": "refuted", "I.ablation": "supported"},
        sections={"induction": {"heads": [list(h) for h in heads], "min_excess": half(excess),
                                "min_drop": half(beyond), "n_random": N_RANDOM}},
        comment=f"attention query -> key: {figures}; top heads above uniform ({uniform:.3f}) {excess}\n"
                f"repeat accuracy {clean.mean():.3f}; ablating the heads costs {drop.mean():.3f}, "
                f"{N_RANDOM} random sets {random_drops.mean():.3f}; beyond random {beyond}",
    )
    print(f"wrote {path}: heads {figures}; excess {excess}; beyond random {beyond}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
