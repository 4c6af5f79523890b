"""Discovery: find a target's Claim 1 layers and Claim 2/3 parameters on the
EXPLORATION split and pre-register them, with the verdicts of C0-C3 they imply,
for the confirming claim run.

    python -m mechclaims_icl.discover --target organism [--n-pairs 200] [--seed 0]
        [--task A,B] [--n-sequences 100]

Procedure, following the post's own reasoning:
1. clean patch sweep: the onset L0 is the first layer whose ≈a*p-or-exact rate
   clears the threshold at its lower 95% bound;
2. stage 1 is the two layers before the onset (the post's 10 and 11 for 12);
3. after each stage, the backup layer is the un-ablated layer whose heads gain
   the most direct logit attribution (the post's 13, then 15); it is the next stage;
4. every Claim 1 finding is evaluated on this exploration study; its verdict is
   written as the expected verdict, and the number of pairs as ``min_pairs``: the
   confirming study is never smaller than the one that chose what it confirms.

Claim 1 runs on the target's task (``--task``; default: the ``[task]`` of its
existing file, else y = 2x + 3; C0 is always y = 2x + 3).  Claims 2 and 3
(:func:`discover_sequences`) run on the same task, with sequences of 16
examples read in one teacher-forced forward each:
5. the fit range ends at the first n whose mean P(correct) reaches 0.9 (at least
   4 points; the whole range when never);
6. the feature layer has the largest held-out separation between task and
   shuffled-label residuals before y_j; parity_from is the first n from which the
   right-parity share clears 0.9 at its lower bound;
7. the x-to-y heads are the k heads with the most attention from y_i onto x_i
   above uniform (k = 2, or 4 with more than 64 heads); the y-to-prey claim reads
   the k heads of largest direct logit attribution; the MLP layers run from the
   first x-to-y head's layer up to the first causal head's layer after it;
8. every C2/C3 finding is evaluated on this exploration split for its verdict.

The confirming run (``pytest claims/``) uses prompts from the disjoint
confirmation split.  This pack's sections of an existing file are never replaced without
``--force``; other sections of the file are always kept.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import claim0, claim1, claim2, claim3
from .answers import greedy_is
from mechclaims import MechclaimsError
from .experiments import AblationStudy, Condition, measure, probe_sweeps
from .expectations import task as task_of
from mechclaims import top_heads

from .fits import fit_range, separation
from mechclaims import NOT_APPLICABLE, REFUTED, SUPPORTED, UNDECIDED
from mechclaims import onset_layer, split_seed
from mechclaims import TARGETS, Expectations, configure_project, expectations_path, load_target, preregister
from .plugin import parse_task, task_path
from .tasks import CANONICAL, PROBES, AffineTask, make_patch_pairs, make_prompts

C1_IDS = (
    "C1.onset", "C1.ablate-10-11", "C1.backup-13", "C1.ablate-13",
    "C1.backup-15", "C1.ablate-15", "C1.parity-late", "C1.redundancy", "C1.onset-robust",
)


def backup_layer(before: Condition, after: Condition, excluded: set[int]) -> int:
    """The un-ablated layer whose best head gains the most mean direct logit attribution."""
    gain = (after.scores.dla - before.scores.dla).mean(0).max(axis=1)  # [n_layers]
    for layer in excluded:
        gain[layer] = -np.inf
    return int(np.argmax(gain))


def discover(
    model: Any, *, n_pairs: int, seed: int, threshold: float, margin: float, task: AffineTask = CANONICAL, log=print,
    probe: str = "post",
) -> dict:
    """Run the procedure; returns the expectations as a dict (see :func:`write`).

    C0 is always the post's y = 2x + 3; Claim 1 runs on ``task``, with B in the ``probe`` format;
    ``C1.onset-robust`` is evaluated under every format of :data:`~mechclaims_icl.tasks.PROBES`."""
    n_layers = model.cfg.n_layers
    read_layer = n_layers - 1
    explore = split_seed(seed, "exploration")
    no_context = make_prompts(CANONICAL, n_prompts=n_pairs, n_examples=0, seed=explore)
    canonical = make_patch_pairs(CANONICAL, n_pairs=n_pairs, n_examples=12, seed=explore, probe=probe)
    log(f"C0.in-context: {n_pairs} prompts of {CANONICAL.name} with and without examples...")
    correct = greedy_is(model, canonical.a_texts, [p.a.answer for p in canonical.pairs])
    c0 = claim0.in_context(correct, greedy_is(model, no_context.texts, no_context.answers), CANONICAL.name)
    log(f"C0.in-context: {c0.message}")
    c0_verdict = {"C0.in-context": verdict_of(c0)}
    figures = {"C0.in-context": c0.message}
    pairs, ok, accuracy = canonical, *claim1.precondition(correct)
    if task != CANONICAL:
        figures["C1 on 2x+3"] = f"not run: Claim 1 runs on {task.name}; clean accuracy on 2x+3 {accuracy}"
        pairs, ok, accuracy = claim1.task_pairs(model, task, n_pairs, explore, probe)
    log(f"C1 on {task.name}: clean accuracy {accuracy}")
    if not ok:  # the confirmation still needs B's format and the size, to check the precondition again
        return {
            "verdicts": {**c0_verdict, **{cid: NOT_APPLICABLE for cid in C1_IDS}},
            "c1": {"probe": probe, "min_pairs": n_pairs},
            "figures": {**figures, "C1": f"not applicable: task {task.name}, clean accuracy {accuracy}"},
        }
    clean = measure(model, pairs, (), read_layer=read_layer)
    onset0 = onset_layer(clean.task_flags(), threshold)
    log(f"clean onset layer {onset0} (of {n_layers}), B as {probe}")
    if onset0 == 0:  # no layer before the onset to ablate: the study below has nothing to find
        warning = (f"WARNING: the onset is layer 0: B answers the task by itself, before any layer could move "
                   f"A's answer into it (on {task.name}, B as {probe}); the stages registered from it are degenerate. "
                   "Try another task (--task) or format of B (--probe)")
        log(warning)
        figures["C1 onset"] = warning
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
        probe=probe, probe_variants=tuple(PROBES),
    )
    findings = claim1.findings(study, params, seed=seed, probe_sweeps=probe_sweeps(model, study, PROBES))
    for cid, f in findings.items():
        log(f"{cid}: {verdict_of(f)}: {f.message}")
    return {
        "verdicts": {**c0_verdict, **{cid: verdict_of(f) for cid, f in findings.items()}},
        "c1": {
            "onset": params.onset, "onset_tolerance": params.onset_tolerance,
            "stage1": list(stages[0]), "stage2": list(stages[1]), "stage3": list(stages[2]),
            "backup_layers": backups, "read_layer": read_layer, "threshold": threshold, "margin": margin,
            "backup_share": params.backup_share, "min_pairs": n_pairs,
            "probe": probe, "probe_variants": list(PROBES),
        },
        "figures": {**figures, "C1": f"task {task.name}, clean accuracy {accuracy}",
                    **{cid: f.message for cid, f in findings.items()}},
    }


def discover_probes(model: Any, previous: Any, *, seed: int, probe: str | None, n_pairs: int = 200, log=print) -> dict:
    """``C1.onset-robust`` added to an existing pre-registration: its Claim 1 values are kept, the
    clean exploration sweep is measured under every format of B and the verdict that implies is
    pre-registered, with ``[c1] probe`` (``probe``, else the file's) and ``probe_variants``."""
    from mechclaims import ConfigError

    n_layers = model.cfg.n_layers
    c1 = dict(previous.sections.get("c1", {}))
    if not c1:
        raise ConfigError(f"{previous.path}: no [c1] to add probe variants to; run the whole discovery")
    probe = probe or c1.get("probe")
    if probe is None:
        raise ConfigError(f"{previous.path}: [c1] has no probe; say which format its values were found with (--probe)")
    c1 |= {"probe": probe, "probe_variants": list(PROBES)}
    task = task_of(previous)
    n_pairs = int(c1.get("min_pairs", n_pairs))  # the exploration's own size where the file records it
    c1["min_pairs"] = n_pairs  # a confirmation never rests on fewer pairs than the exploration behind it
    pairs, ok, accuracy = claim1.task_pairs(model, task, n_pairs, split_seed(seed, "exploration"), probe)
    if not ok:
        return {"verdicts": {"C1.onset-robust": NOT_APPLICABLE}, "c1": c1,
                "figures": {"C1.onset-robust": f"not applicable: task {task.name}, clean accuracy {accuracy}"}}
    params = claim1.C1Params(
        onset=int(c1["onset"]), stages=(), backup_layers=(), read_layer=int(c1.get("read_layer", n_layers - 1)),
        threshold=float(c1.get("threshold", 0.5)), onset_tolerance=int(c1.get("onset_tolerance", 1)),
        probe=probe, probe_variants=tuple(PROBES),
    )
    clean = measure(model, pairs, (), read_layer=params.read_layer)
    found = claim1.onset_robust(probe_sweeps(model, AblationStudy(pairs, (clean,)), PROBES), params, seed=seed)
    log(f"C1.onset-robust: {verdict_of(found)}: {found.message}")
    return {"verdicts": {"C1.onset-robust": verdict_of(found)}, "c1": c1,
            "figures": {"C1.onset-robust": f"{n_pairs} exploration pairs: {found.message}"}}


MAX_PROMPTS_DEFAULT = 100  # fewer exploration sequences than this also cap the confirming run (slow targets)
C23_IDS = ("C2.log-additive", "C2.parity-by-n", "C2.feature-linear", "C3.x-to-y", "C3.y-to-prey", "C3.mlp")


def _parity_from(parity_ok: np.ndarray, threshold: float) -> int:
    """First n >= 1 from which the per-sequence right-parity share clears ``threshold`` at its lower bound."""
    k = parity_ok.shape[1]
    for n in range(1, k):
        f = claim2.parity_by_n(claim2.Reading(parity_ok, parity_ok, parity_ok), claim2.C2Params(0, n))
        if f.effect.ci.low > threshold:
            return n
    return k - 1


def discover_sequences(
    model: Any, task: AffineTask, *, n_prompts: int, seed: int, example: int = 12,
    n_examples: int = claim2.N_EXAMPLES, log=print,
) -> dict:
    """Claims 2 and 3 on the exploration split: parameters and the verdicts they imply."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    explore = make_prompts(task, n_prompts=n_prompts, n_examples=n_examples, seed=split_seed(seed, "exploration"))
    layers = list(range(1, n_layers))  # resid_pre of layer 0 is the token embedding: no context in it
    found = claim3.explore(model, explore, dla_example=example, resid_layers=layers, attention=True)
    reading = found.reading
    shuffled = claim2.read_sequences(model, claim2.shuffled_labels(explore, seed), resid_layers=layers, examples=[])
    span = fit_range(reading.p_correct.mean(0))
    sep = [separation(reading.resid[L][:, 1:].mean(1), shuffled.resid[L][:, 1:].mean(1), seed=seed) for L in layers]
    feature_layer = layers[int(np.argmax(sep))]
    k = 4 if n_layers * n_heads > 64 else 2
    x_heads = top_heads(reading.x_to_y.mean(0) - reading.uniform_x_to_y.mean(), k)
    heads = claim3.causal_heads(found, k)
    first = min(layer for layer, _ in x_heads)
    later = [layer for layer, _ in heads if layer > first]
    mlp_layers = list(range(first, min(later))) if later else [first]
    c2p = claim2.C2Params(
        feature_layer=feature_layer, parity_from=_parity_from(reading.parity_ok, 0.9),
        n_examples=n_examples, fit_first=span[0], fit_last=span[1],
    )
    c3p = claim3.C3Params(x_to_y_heads=tuple(x_heads), n_causal_heads=k, mlp_layers=tuple(mlp_layers))
    ok, accuracy = claim2.precondition(reading, example)
    log(f"C2/C3 on {task.name}: accuracy after {example} examples {accuracy}; fit range {span}; feature layer "
        f"{feature_layer}; x-to-y heads {x_heads}; causal heads {heads}; MLP layers {mlp_layers}")
    params = {
        "task": {"a": task.a, "b": task.b},
        "c2": {
            "n_examples": n_examples, "max_prompts": n_prompts if n_prompts < MAX_PROMPTS_DEFAULT else None,
            "fit_first": span[0], "fit_last": span[1],
            "feature_layer": feature_layer, "parity_from": c2p.parity_from,
        },
        "c3": {
            "x_to_y_heads": [list(h) for h in x_heads], "n_causal_heads": k, "mlp_layers": mlp_layers,
            "min_excess": c3p.min_excess, "min_drop": c3p.min_drop,
        },
    }
    if not ok:
        return {
            **params,
            "verdicts": {cid: NOT_APPLICABLE for cid in C23_IDS},
            "figures": {"C2/C3": f"not applicable: task {task.name}, accuracy after {example} examples {accuracy}"},
        }
    direction = claim2.feature_direction(reading, shuffled, feature_layer)
    ablated = claim3.mlp_ablated(model, explore, mlp_layers, found.mlp_means, example)
    controls = claim3.control_layers(mlp_layers, n_layers)
    control = claim3.mlp_ablated(model, explore, controls, found.mlp_means, example) if controls else None
    findings = {
        "C2.log-additive": claim2.log_additive(reading, c2p, span),
        "C2.parity-by-n": claim2.parity_by_n(reading, c2p),
        "C2.feature-linear": claim2.feature_linear(reading, direction, feature_layer, c2p, span),
        "C3.x-to-y": claim3.x_to_y(reading, c3p),
        "C3.y-to-prey": claim3.y_to_prey(reading, heads, found.dla, c3p),
        "C3.mlp": claim3.mlp_needed(reading.correct[:, example], ablated, c3p, control=control, control_layers=controls),
    }
    for cid, f in findings.items():
        log(f"{cid}: {verdict_of(f)}: {f.message}")
    return {
        **params,
        "verdicts": {cid: verdict_of(f) for cid, f in findings.items()},
        "figures": {cid: f.message for cid, f in findings.items()},
    }


def verdict_of(finding) -> str:
    """What discovery pre-registers: the exploration's verdict; an undecided finding (too little
    evidence either way) is pre-registered ``undecided``: nothing is predicted, so no confirmation,
    however large, can contradict it (its verdict is recorded, not judged), and it is never taken
    for a negative control."""
    return SUPPORTED if finding.supported else REFUTED if finding.decided else UNDECIDED


def write(path: Path, target: Any, found: dict, command: str) -> Path:
    """Merge ``found`` on the loaded ``target`` into the expectations file ``path``: this pack's sections
    ([c1], [task], [c2], [c3]), its verdicts and [registered] (``target``'s weights and sizes) are
    replaced; any other section, verdict or comment is kept."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return preregister(
        None, target, path=path, source=f"discovery on the exploration split: {command}",
        verdicts=found["verdicts"],
        sections={name: found[name] for name in ("c1", "task", "c2", "c3") if found.get(name)},
        comment=f"Pre-registered {stamp}. Exploration figures behind these values:\n"
                + "\n".join(f"{cid}: {text}" for cid, text in found["figures"].items()),
    )


# The pack's claim tests: claims/ of a checkout, mechclaims_icl/claims of an installed wheel. Discovery
# writes beside ./claims when the working directory holds them (a checkout, or a project's copy), else
# into the project's own directory ([tool.mechclaims] expectations).
CLAIMS_DIR = Path(importlib.import_module("mechclaims_icl.claims").__file__).parent


def main(argv: list[str] | None = None) -> int:
    try:  # the targets this project configures, besides those packages ship
        pyproject = configure_project()
        claims_dir = Path("claims") if (Path("claims") / "test_claim1.py").is_file() else CLAIMS_DIR
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m mechclaims_icl.discover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, choices=list(TARGETS), help="target to study (any registered one)")
    parser.add_argument("--n-pairs", type=_positive, default=200, help="exploration (A, B) pairs (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; the exploration split derives from it")
    parser.add_argument("--threshold", type=_fraction, default=0.5, help="onset rate threshold (default 0.5)")
    parser.add_argument("--margin", type=_fraction, default=0.1, help="equivalence margin on accuracy (default 0.1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="file to write (default: <dir>/<target>.toml in the project's [tool.mechclaims] "
                        "expectations directory, else claims/expectations/<target>.toml)")
    parser.add_argument("--task", type=parse_task, default=None,
                        help="Claim 1-3 task as A,B for y = A*x + B (default: the existing file's [task], else 2,3)")
    parser.add_argument("--n-sequences", type=_positive, default=None,
                        help="exploration sequences for Claims 2 and 3, also their cap on confirmation "
                        "(default: the existing file's [c2] max_prompts, else 100)")
    parser.add_argument("--device", default=None, help="override the target's device")
    parser.add_argument("--probe", choices=list(PROBES), default=None,
                        help="format of prompt B for Claim 1 (default: post, the post's <bos>(15, )")
    parser.add_argument("--probe-variants-only", action="store_true",
                        help="keep the file's Claim 1 values; measure only C1.onset-robust under every format of B "
                        "and pre-register its verdict (with [c1] probe and probe_variants)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing expectations file")
    args = parser.parse_args(argv)
    try:
        default = expectations_path(claims_dir, args.target)
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is None and claims_dir == CLAIMS_DIR and default.resolve().is_relative_to(CLAIMS_DIR.resolve()):
        parser.error(f"the pack's claims are installed ({CLAIMS_DIR}), and pre-registrations are not written there: "
                     f"name your project's directory for them in {pyproject or 'your pyproject.toml'} "
                     '([tool.mechclaims] expectations = "expectations"), or pass --out FILE')
    out = args.out or (task_path(claims_dir, args.target, args.task) if args.task else default)
    if args.probe_variants_only:
        return _probe_variants_only(args, out, argv)
    if out.exists() and not args.force and _owned(out, args.target):
        parser.error(f"{out} already pre-registers this pack's claims; they are not overwritten silently: pass "
                     "--force to replace them (other sections of the file are kept)")
    log = lambda msg: print(f"[discover] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        previous = Expectations.read(out, args.target) if out.exists() else None
        task = args.task or (task_of(previous) if previous else CANONICAL)
        n_sequences = args.n_sequences or (previous.get("c2", "max_prompts", int, default=MAX_PROMPTS_DEFAULT) if previous else MAX_PROMPTS_DEFAULT)
        log(f"loading {args.target} (a GGUF or a large model can take minutes on first use)...")
        loaded = load_target(args.target, device=args.device)
        log(f"loaded {args.target}: {loaded.info.n_layers} layers, {loaded.info.n_heads} heads, on {loaded.info.device}")
        model = loaded.model
        found = discover(
            model, n_pairs=args.n_pairs, seed=args.seed, threshold=args.threshold, margin=args.margin, task=task,
            log=log, probe=args.probe or "post",
        )
        more = discover_sequences(model, task, n_prompts=n_sequences, seed=args.seed, log=log)
        found = {
            **found, **{k: more[k] for k in ("task", "c2", "c3")},
            "verdicts": {**found["verdicts"], **more["verdicts"]},
            "figures": {**found["figures"], **more["figures"]},
        }
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = " ".join(["python -m mechclaims_icl.discover", *(argv if argv is not None else sys.argv[1:])])
    try:  # this pack's sections and verdicts only: any other pack's sections in the file are kept
        write(out, loaded, found, command)
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _probe_variants_only(args: argparse.Namespace, out: Path, argv: list[str] | None) -> int:
    log = lambda msg: print(f"[discover] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    command = " ".join(["python -m mechclaims_icl.discover", *(argv if argv is not None else sys.argv[1:])])
    try:
        if not out.is_file():
            raise MechclaimsError(f"{out} does not exist; --probe-variants-only adds to a pre-registration, "
                                  "run the whole discovery first")
        previous = Expectations.read(out, args.target)
        loaded = load_target(args.target, device=args.device)
        found = discover_probes(loaded.model, previous, seed=args.seed, probe=args.probe, n_pairs=args.n_pairs, log=log)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        preregister(None, loaded, path=out, source=previous.source or f"discovery: {command}", verdicts=found["verdicts"],
                    sections={"c1": found["c1"]},
                    comment=f"C1.onset-robust pre-registered {stamp} by {command}\n"
                            + "\n".join(f"{cid}: {text}" for cid, text in found["figures"].items()))
    except MechclaimsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _owned(path: Path, target: str) -> bool:
    """Whether ``path`` already holds this pack's pre-registration ([c1], [c2] or [c3])."""
    import tomllib

    try:
        return any(name in tomllib.loads(path.read_text(encoding="utf-8")) for name in ("c1", "c2", "c3"))
    except (OSError, ValueError):
        return True  # unreadable: let the loader say why, never overwrite it unasked


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
