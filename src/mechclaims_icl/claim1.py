"""Claim 1 of the post as findings: each a statistic, a decision and its evidence.

Every function takes an :class:`~mechclaims_icl.experiments.AblationStudy` and the
pre-registered parameters, and returns a :class:`Finding`.  The claim tests
assert on them; the discovery command evaluates the same functions on the
exploration split to pre-register the expected verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .experiments import AblationStudy, Condition
from .patching import Sweep
from mechclaims import all_of, at_least, at_most, equivalent, holds, holds_across, significant
from .claim0 import MIN_ACCURACY
from mechclaims import INCONCLUSIVE, REFUTED, SUPPORTED, Effect, Finding, Rule
from mechclaims import equivalence, holm, onset, onset_layer, onset_shift, paired_increase, proportion_of

# One-sided, the level the lower bound of a 95% interval keeps: a rule on the bound and a test on the
# p-value of one effect judge one hypothesis at one level (mechclaims.significant's default).
ALPHA = 0.025


@dataclass(frozen=True)
class C1Params:
    """Pre-registered values of one target (see ``claims/expectations``)."""

    onset: int
    stages: tuple[tuple[int, ...], ...]
    backup_layers: tuple[int, ...]
    read_layer: int
    threshold: float = 0.5
    onset_tolerance: int = 1
    margin: float = 0.1
    backup_share: float = 0.1
    probe: str = "post"  # B's format (tasks.PROBES) in every Claim 1 sweep
    probe_variants: tuple[str, ...] = ("post", "newline", "neutral-line")  # C1.onset-robust's formats


def precondition(correct: np.ndarray) -> tuple[bool, Effect]:
    """The clean model answers A correctly (lower bound above C0's MIN_ACCURACY)."""
    accuracy = proportion_of(correct)
    return accuracy.ci.low > MIN_ACCURACY, accuracy


# The report's colour of each outcome class in the patching curves.
CLASS_COLOURS = {"none": "#6e7781", "approx": "#d97706", "exact": "#16a34a", "copy": "#2563eb"}


def rates_by_layer(condition: Condition | Sweep) -> dict[str, dict[str, list[float]]]:
    """Per outcome class, the patched-answer rate at each layer with its Wilson interval."""
    sweep = condition if isinstance(condition, Sweep) else condition.sweep
    return {name: _curve(effects, CLASS_COLOURS.get(name)) for name, effects in sweep.rates().items()}


def _curve(effects: list[Effect], colour: str | None = None) -> dict[str, Any]:
    """One rate per layer with its interval: the ``rates`` figure's entry for one class."""
    return {"rate": [e.statistic for e in effects], "ci_low": [e.ci.low for e in effects],
            "ci_high": [e.ci.high for e in effects], "n": effects[0].n, **({"colour": colour} if colour else {})}


def task_onset(study: AblationStudy, p: C1Params, seed: int = 0) -> Finding:
    """C1.onset: the first layer where patching makes B answer ≈ a*p is the pre-registered one."""
    return _onset(study.clean.sweep, p, seed)


def _onset(sweep: Sweep, p: C1Params, seed: int) -> Finding:
    flags = sweep.task_flags()
    effect = onset(flags, p.threshold, seed=seed)
    low, high = p.onset - p.onset_tolerance, p.onset + p.onset_tolerance
    ok = effect.ci.high < flags.shape[0] and low <= effect.ci.low and effect.ci.high <= high
    # As an equivalence test: supported when the interval lies inside the window, refuted when it
    # lies wholly outside it (no onset at all is outside). An interval that reaches into the window
    # and past it places the onset neither in nor out, and one wider than the window could lie
    # outside it with next to no data (too few pairs): both inconclusive.
    narrow = effect.ci.high - effect.ci.low <= 2 * p.onset_tolerance
    decided = ok or (narrow and (effect.ci.low > high or effect.ci.high < low))
    why = "it straddles the window's edge" if narrow else "too few pairs"
    verdict = SUPPORTED if ok else REFUTED if decided else INCONCLUSIVE
    rule = Rule("onset layer", "within", float(high), effect, verdict, bound_low=float(low), inclusive=True)  # layers
    return Finding(
        effect, bool(ok),
        f"onset {effect} (n_layers means none); pre-registered {p.onset} ± {p.onset_tolerance}"
        + ("" if decided else f"; the interval is neither inside nor outside the ±{p.onset_tolerance} window: {why}"),
        threshold=float(p.onset),
        figures={"rates": rates_by_layer(sweep), "expected_onset": p.onset},
        decided=bool(decided), rules=(rule,),
    )


def onset_robust(sweeps: dict[str, Sweep], p: C1Params, seed: int = 0) -> Finding:
    """C1.onset-robust: the onset holds, within its tolerance, under every pre-registered format of
    B (``sweeps``: the clean sweep per probe); otherwise the onset is specific to the formats it holds in."""
    per_probe = {probe: _onset(sweeps[probe], p, seed) for probe in p.probe_variants}
    finding = holds_across(per_probe, "the task-formation onset")
    return replace(finding, figures={
        **finding.figures, "expected_onset": p.onset,
        "rates_by_variant": {probe: _task_and_copy(sweeps[probe]) for probe in p.probe_variants},
    })


def _task_and_copy(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """The task rate (≈a*p or exact) and the copy rate by layer, with Wilson intervals."""
    return {"task (≈a*p or exact)": _curve(sweep.rate("approx", "exact"), CLASS_COLOURS["exact"]),
            "copy": _curve(sweep.rate("copy"), CLASS_COLOURS["copy"])}


def answer_unchanged(study: AblationStudy, stage: int, p: C1Params) -> Effect:
    """Paired TOST: accuracy after ablating stages 0..stage within ±margin of clean."""
    return equivalence(study.clean.correct, study.after(stage).correct, p.margin)


def ablate(study: AblationStudy, stage: int, p: C1Params, seed: int = 0) -> Finding:
    """C1.ablate-*: ablating stage ``stage`` leaves A's answer essentially unchanged and delays the onset."""
    same = answer_unchanged(study, stage, p)
    before = study.clean if stage == 0 else study.after(stage - 1)
    after = study.after(stage)
    shift = onset_shift(before.task_flags(), after.task_flags(), p.threshold, seed=seed)
    # onsets are layers (integers): a lower bound of exactly one layer decides
    finding = all_of(at_least(shift, 1.0, "onset shift", inclusive=True),
                     equivalent(same, p.margin, "accuracy change (TOST)"))
    return replace(
        finding,
        message=f"{after.name}: accuracy change {same} (TOST margin ±{p.margin}); onset shift {shift} "
                "(lower bound must be >= 1)",
        figures={
            "accuracy_change": same, "rates": rates_by_layer(after), "accuracy": proportion_of(after.correct),
            "heatmaps": {
                f"mean direct logit attribution, {c.name}": {
                    "matrix": c.scores.dla.mean(0).tolist(), "xlabel": "head", "ylabel": "layer", "scale": "dla",
                }
                for c in (before, after)
            },
        },
    )


def no_task_stage(study: AblationStudy, stage: int, p: C1Params) -> Finding:
    """C1.ablate-15: after the last stage A is still right, but no layer shows ≈ a*p; B copies A."""
    same = answer_unchanged(study, stage, p)
    after = study.after(stage)
    task = after.sweep.rate("approx", "exact")
    worst = max(task, key=lambda e: e.ci.high)
    copy_onset = onset_layer(after.flags("copy"), p.threshold)
    n_layers = after.sweep.outcomes.shape[0]
    finding = all_of(
        at_most(worst, p.threshold, "highest ≈a*p rate"),
        equivalent(same, p.margin, "accuracy change (TOST)"),
        # onset_layer reads each layer's interval: a copy onset is a layer whose lower bound reaches the threshold
        holds(copy_onset < n_layers, "B copies A from some layer", worst),
    )
    return replace(
        finding,
        message=f"{after.name}: accuracy change {same}; highest ≈a*p rate {worst} (must stay < {p.threshold}); "
        f"copy onset layer {copy_onset}",
        figures={
            "accuracy_change": same, "rates": rates_by_layer(after), "copy_onset": copy_onset,
            "heatmaps": {
                f"mean direct logit attribution, {c.name}": {
                    "matrix": c.scores.dla.mean(0).tolist(), "xlabel": "head", "ylabel": "layer", "scale": "dla",
                }
                for c in (study.conditions[stage], after)
            },
        },
    )


def backup(study: AblationStudy, stage: int, p: C1Params) -> Finding:
    """C1.backup-*: after ablating stage ``stage``, a head of its backup layer takes over.

    "Takes over" means a significant paired increase of the head's direct logit
    attribution (one-sided paired t test, Holm over the layer's heads) that amounts to at least
    ``backup_share`` of the attribution the newly ablated heads carried before.
    The head reported is the one with the largest increase among the significant
    ones (the smallest p when none is): with many prompts several heads reach the
    smallest p a signed-rank test can give, so p alone does not pick a head.
    """
    layer = p.backup_layers[stage]
    before = study.clean if stage == 0 else study.after(stage - 1)
    after = study.after(stage)
    n_heads = before.scores.dla.shape[2]
    tests = [paired_increase(before.scores.dla[:, layer, h], after.scores.dla[:, layer, h]) for h in range(n_heads)]
    adjusted = holm(np.array([t.pvalue for t in tests]))
    below = np.flatnonzero(adjusted < ALPHA)
    if below.size:
        best = int(below[np.argmax([tests[h].statistic for h in below])])
    else:
        best = int(np.argmin(adjusted))
    effect = Effect(tests[best].statistic, tests[best].ci, tests[best].n, float(adjusted[best]))
    removed = float(before.scores.dla[:, list(p.stages[stage])].sum(axis=(1, 2)).mean())
    needed = p.backup_share * abs(removed)
    dot_before = before.scores.dot[:, layer].mean(0)
    dot_after = after.scores.dot[:, layer].mean(0)
    finding = all_of(at_least(effect, needed, f"{p.backup_share:.0%} of the attribution the ablated heads carried"),
                     significant(effect, f"Holm over {n_heads} heads", alpha=ALPHA))
    return replace(
        finding,
        message=f"{after.name}: head L{layer}H{best} direct logit attribution rises by {effect} (Holm over "
        f"{n_heads} heads; lower bound needs > {needed:.3g}, {p.backup_share:.0%} of the {removed:.3g} the ablated "
        f"heads carried); dot-score row sum {dot_before.sum():.3g} -> {dot_after.sum():.3g}",
        figures={
            "layer": layer,
            "dla_increase": [t.statistic for t in tests],
            "pvalue_holm": adjusted.tolist(),
            "dot_before": dot_before.tolist(),
            "dot_after": dot_after.tolist(),
            "heatmaps": {
                f"mean direct logit attribution, {c.name}": {
                    "matrix": c.scores.dla.mean(0).tolist(), "xlabel": "head", "ylabel": "layer", "scale": "dla",
                }
                for c in (before, after)
            },
        },
    )


def parity_late(study: AblationStudy, p: C1Params, seed: int = 0) -> Finding:
    """C1.parity-late: the exact answer (the +b) forms after the ≈ a*p stage."""
    approx = study.clean.flags("approx") | study.clean.flags("exact")
    n_layers = approx.shape[0]
    shift = onset_shift(approx, study.clean.flags("exact"), p.threshold, seed=seed)
    has_stage = onset_layer(approx, p.threshold) < n_layers
    finding = all_of(at_least(shift, 1.0, "exact-answer onset minus ≈a*p onset", inclusive=True),
                     holds(has_stage, "a ≈a*p stage forms (some layer's lower bound reaches the threshold)", shift))
    return replace(
        finding,
        message=f"exact-answer onset minus ≈a*p onset {shift} (n_layers means never exact; lower bound must be >= 1)"
                + ("" if has_stage else "; no ≈a*p stage forms"),
        figures={"rates": rates_by_layer(study.clean)},
    )


def redundancy(study: AblationStudy, p: C1Params, seed: int = 0) -> Finding:
    """C1.redundancy: several sets of heads carry the task: each stage's ablation
    delays the task stage, yet the answer survives every cumulative ablation."""
    parts = [ablate(study, k, p, seed) for k in range(min(2, len(p.stages)))]
    last = answer_unchanged(study, len(p.stages) - 1, p)
    finding = all_of(equivalent(last, p.margin, "accuracy change after all stages (TOST)"), *parts)
    return replace(
        finding,
        message="; ".join(f.message for f in parts) + f"; after all stages accuracy change {last} "
                f"(TOST margin ±{p.margin})",
        figures={"stages": [list(s) for s in p.stages], "stage_supported": [f.supported for f in parts],
                 "onset_ladder": onset_ladder(study, p)},
    )


def onset_ladder(study: AblationStudy, p: C1Params) -> dict[str, Any]:
    """The task rate (≈a*p or exact) by layer under each cumulative condition, with its Wilson
    interval and onset layer (n_layers: none): the data of the pack's own ladder figure
    (:func:`mechclaims_icl.figures.onset_ladder`)."""
    conditions = {}
    for c in study.conditions:
        curve = _curve(c.sweep.rate("approx", "exact"))
        conditions[c.name] = {**curve, "onset": onset_layer(c.task_flags(), p.threshold)}
    return {"threshold": p.threshold, "conditions": conditions}


def findings(study: AblationStudy, p: C1Params, seed: int = 0,
             probe_sweeps: dict[str, Sweep] | None = None) -> dict[str, Finding]:
    """Every Claim 1 finding of ``study``, by claim id: what discovery pre-registers from the
    exploration split, with the functions the claim tests judge on the confirmation split.
    ``C1.onset-robust`` is among them when the clean sweep under every probe variant is given
    (:func:`~mechclaims_icl.experiments.probe_sweeps`)."""
    robust = {} if probe_sweeps is None else {"C1.onset-robust": onset_robust(probe_sweeps, p, seed=seed)}
    return {
        "C1.onset": task_onset(study, p, seed=seed),
        "C1.ablate-10-11": ablate(study, 0, p, seed=seed),
        "C1.backup-13": backup(study, 0, p),
        "C1.ablate-13": ablate(study, 1, p, seed=seed),
        "C1.backup-15": backup(study, 1, p),
        "C1.ablate-15": no_task_stage(study, 2, p),
        "C1.parity-late": parity_late(study, p, seed=seed),
        "C1.redundancy": redundancy(study, p, seed=seed),
        **robust,
    }


def task_pairs(model: Any, task: Any, n_pairs: int, seed: int, probe: str = "post") -> tuple[Any, bool, Effect]:
    """The (A, B) prompt pairs of ``task`` at ``seed`` (12 examples each, B in the ``probe`` format)
    and Claim 1's precondition on them: whether the model answers A right (lower bound >= C0's),
    and that accuracy."""
    from .answers import greedy_is
    from .tasks import make_patch_pairs

    pairs = make_patch_pairs(task, n_pairs=n_pairs, n_examples=12, seed=seed, probe=probe)
    ok, accuracy = precondition(greedy_is(model, pairs.a_texts, [p.a.answer for p in pairs.pairs]))
    return pairs, ok, accuracy


def confirmation_pairs(exp: Any, requested: int) -> int:
    """Pairs of the confirming Claim 1 study: the profile's ``requested`` number, raised to the
    pre-registered ``[c1] min_pairs``. Discovery writes its own exploration size there, so a
    confirmation never has less evidence than the study that found the values it confirms."""
    return max(requested, exp.get("c1", "min_pairs", int, default=1))  # range-checked on load (expectations.KEYS)


def probes_from(exp: Any) -> tuple[str, tuple[str, ...]]:
    """The pre-registered probe (``[c1] probe``, required) and the variants ``C1.onset-robust`` runs
    under (``[c1] probe_variants``, default every format of :data:`~mechclaims_icl.tasks.PROBES`)."""
    from mechclaims import ConfigError

    from .tasks import PROBES

    where = exp.path or exp.target
    probe = exp.get("c1", "probe", str, default=None)
    if probe is None:
        raise ConfigError(
            f"{where}: [c1] probe is missing; pre-register B's format, one of {', '.join(PROBES)} "
            "(\"post\" is the post's <bos>(15, ; files written before the key existed used \"newline\")")
    variants = tuple(exp.get("c1", "probe_variants", list, default=list(PROBES)))
    for name in (probe, *variants):
        if name not in PROBES:
            raise ConfigError(f"{where}: [c1] probe {name!r} is not a known format; valid: {', '.join(PROBES)}")
    if probe not in variants or len(set(variants)) != len(variants):
        raise ConfigError(f"{where}: [c1] probe_variants = {list(variants)} must list distinct formats and include "
                          f"the pre-registered probe {probe!r}")
    return probe, variants


def params_from(exp: Any, n_layers: int) -> C1Params:
    """Read and range-check the ``[c1]`` section of a target's expectations."""
    probe, variants = probes_from(exp)
    stages = tuple(exp.layers("c1", f"stage{k}", n_layers) for k in (1, 2, 3))
    return C1Params(
        onset=exp.layer("c1", "onset", n_layers),
        stages=stages,
        backup_layers=exp.layers("c1", "backup_layers", n_layers),
        read_layer=exp.layer("c1", "read_layer", n_layers),
        threshold=exp.get("c1", "threshold", float, default=0.5),
        onset_tolerance=exp.get("c1", "onset_tolerance", int, default=1),
        margin=exp.get("c1", "margin", float, default=0.1),
        backup_share=exp.get("c1", "backup_share", float, default=0.1),
        probe=probe,
        probe_variants=variants,
    )
