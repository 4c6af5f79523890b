"""Discovery: find a target's Claim 1 layers on the EXPLORATION split and
pre-register them, with the verdicts of C0 and C1 they imply, for the
confirming claim run.

    python -m mechclaims.discover --target organism [--n-pairs 200] [--seed 0]

Procedure, following the post's own reasoning:
1. clean patch sweep: the onset L0 is the first layer whose ≈a*p-or-exact rate
   clears the threshold at its lower 95% bound;
2. stage 1 is the two layers before the onset (the post's 10 and 11 for 12);
3. after each stage, the backup layer is the un-ablated layer whose heads gain
   the most direct logit attribution (the post's 13, then 15); it is the next stage;
4. every Claim 1 finding is evaluated on this exploration study; its verdict is
   written as the expected verdict.

The confirming run (``pytest claims/``) uses prompts from the disjoint
confirmation split.  An existing file is never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import claim0, claim1
from .answers import greedy_is
from .errors import MechclaimsError
from .experiments import AblationStudy, Condition, measure
from .results import NOT_APPLICABLE, REFUTED, SUPPORTED
from .stats import onset_layer
from .targets import TARGETS, load_target
from .tasks import CANONICAL, make_patch_pairs, make_prompts, split_seed

C1_IDS = (
    "C1.onset", "C1.ablate-10-11", "C1.backup-13", "C1.ablate-13",
    "C1.backup-15", "C1.ablate-15", "C1.parity-late", "C1.redundancy",
)


def backup_layer(before: Condition, after: Condition, excluded: set[int]) -> int:
    """The un-ablated layer whose best head gains the most mean direct logit attribution."""
    gain = (after.scores.dla - before.scores.dla).mean(0).max(axis=1)  # [n_layers]
    for layer in excluded:
        gain[layer] = -np.inf
    return int(np.argmax(gain))


def discover(model: Any, *, n_pairs: int, seed: int, threshold: float, margin: float, log=print) -> dict:
    """Run the procedure; returns the expectations as a dict (see :func:`to_toml`)."""
    n_layers = model.cfg.n_layers
    read_layer = n_layers - 1
    explore = split_seed(seed, "exploration")
    no_context = make_prompts(CANONICAL, n_prompts=n_pairs, n_examples=0, seed=explore)
    pairs = make_patch_pairs(CANONICAL, n_pairs=n_pairs, n_examples=12, seed=explore)
    correct = greedy_is(model, pairs.a_texts, [p.a.answer for p in pairs.pairs])
    c0 = claim0.in_context(correct, greedy_is(model, no_context.texts, no_context.answers), CANONICAL.name)
    log(f"C0.in-context: {c0.message}")
    c0_verdict = {"C0.in-context": SUPPORTED if c0.supported else REFUTED}
    ok, accuracy = claim1.precondition(correct)
    if not ok:
        return {
            "verdicts": {**c0_verdict, **{cid: NOT_APPLICABLE for cid in C1_IDS}},
            "c1": {},
            "figures": {"C0.in-context": c0.message, "C1": f"not applicable: clean accuracy {accuracy}"},
        }
    clean = measure(model, pairs, (), read_layer=read_layer)
    onset0 = onset_layer(clean.task_flags(), threshold)
    log(f"clean onset layer {onset0} (of {n_layers})")
    stage1 = [layer for layer in (onset0 - 2, onset0 - 1) if 0 <= layer < n_layers] or [0]
    conditions, stages, backups, ablated = [clean], [stage1], [], list(stage1)
    for step in range(3):
        after = measure(model, pairs, ablated, read_layer=read_layer)
        conditions.append(after)
        log(f"{after.name}: accuracy {np.mean(after.correct):.3f}, onset {onset_layer(after.task_flags(), threshold)}")
        if step == 2:
            break
        backup = backup_layer(conditions[-2], after, set(ablated))
        backups.append(backup)
        stages.append([backup])
        ablated.append(backup)
    study = AblationStudy(pairs, tuple(conditions))
    params = claim1.C1Params(
        onset=min(onset0, n_layers - 1), stages=tuple(tuple(s) for s in stages),
        backup_layers=tuple(backups), read_layer=read_layer, threshold=threshold, margin=margin,
    )
    findings = {
        "C1.onset": claim1.task_onset(study, params),
        "C1.ablate-10-11": claim1.ablate(study, 0, params),
        "C1.backup-13": claim1.backup(study, 0, params),
        "C1.ablate-13": claim1.ablate(study, 1, params),
        "C1.backup-15": claim1.backup(study, 1, params),
        "C1.ablate-15": claim1.no_task_stage(study, 2, params),
        "C1.parity-late": claim1.parity_late(study, params),
        "C1.redundancy": claim1.redundancy(study, params),
    }
    for cid, f in findings.items():
        log(f"{cid}: {'supported' if f.supported else 'refuted'}: {f.message}")
    return {
        "verdicts": {**c0_verdict, **{cid: SUPPORTED if f.supported else REFUTED for cid, f in findings.items()}},
        "c1": {
            "onset": params.onset, "onset_tolerance": params.onset_tolerance,
            "stage1": list(stages[0]), "stage2": list(stages[1]), "stage3": list(stages[2]),
            "backup_layers": backups, "read_layer": read_layer, "threshold": threshold, "margin": margin,
            "backup_share": params.backup_share,
        },
        "figures": {"C0.in-context": c0.message, **{cid: f.message for cid, f in findings.items()}},
    }


def to_toml(target: str, found: dict, command: str) -> str:
    """Render the expectations file (flat tables of ints, floats, strings and int lists)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"# Pre-registered by discovery on the exploration split, {stamp}.",
        f"# Command: {command}",
        f'target = "{target}"',
        f'source = "discovery on the exploration split: {command}"',
        "",
        "[verdicts]",
        *(f'"{cid}" = "{v}"' for cid, v in found["verdicts"].items()),
        "",
        "[c1]",
        *(f"{k} = {_toml(v)}" for k, v in found["c1"].items()),
        "",
        "# Exploration figures behind these values:",
        *(f"# {cid}: {text}" for cid, text in found["figures"].items()),
        "",
    ]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(float(value))
    return str(int(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechclaims.discover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, choices=[n for n, s in TARGETS.items()], help="target to study")
    parser.add_argument("--n-pairs", type=_positive, default=200, help="exploration (A, B) pairs (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; the exploration split derives from it")
    parser.add_argument("--threshold", type=_fraction, default=0.5, help="onset rate threshold (default 0.5)")
    parser.add_argument("--margin", type=_fraction, default=0.1, help="equivalence margin on accuracy (default 0.1)")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default claims/expectations/<target>.toml)")
    parser.add_argument("--device", default=None, help="override the target's device")
    parser.add_argument("--force", action="store_true", help="overwrite an existing expectations file")
    args = parser.parse_args(argv)
    out = args.out or Path("claims") / "expectations" / f"{args.target}.toml"
    if out.exists() and not args.force:
        parser.error(f"{out} exists: pre-registrations are not overwritten silently; pass --force to replace it")
    try:
        model = load_target(args.target, device=args.device).model
        found = discover(
            model, n_pairs=args.n_pairs, seed=args.seed, threshold=args.threshold, margin=args.margin,
            log=lambda msg: print(f"[discover] {msg}", file=sys.stderr, flush=True),
        )
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = " ".join(["python -m mechclaims.discover", *(argv if argv is not None else sys.argv[1:])])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(to_toml(args.target, found, command))
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
