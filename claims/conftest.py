"""Shared, per-target experiments of the claim tests (computed once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mechclaims import MechclaimsError
from mechclaims_icl import claim1, claim2, claim3
from mechclaims_icl.claim0 import MIN_ACCURACY
from mechclaims_icl.claim1 import C1Params, confirmation_pairs, params_from
from mechclaims_icl.claim2 import C2Params, Reading
from mechclaims_icl.claim3 import C3Params
from mechclaims_icl.experiments import AblationStudy, ablation_study, probe_sweeps
from mechclaims import Effect
from mechclaims_icl.expectations import N_EXAMPLES
from mechclaims_icl.expectations import task as task_of
from mechclaims import split_seed
from mechclaims_icl.tasks import CANONICAL, AffineTask, make_prompts, probe_text
from mechclaims_icl.plugin import *  # noqa: F403  the pack's --mechclaims-task, where its claims run

CLAIMS_DIR = Path(__file__).parent


def task_for(exp, config) -> AffineTask:
    """The task the claims run on: the pre-registration's ``[task]``, which must be the one
    ``--mechclaims-task`` asks for when it is given."""
    task, wanted = task_of(exp), config.getoption("mechclaims_task", None)
    if wanted is not None and wanted != task:
        raise MechclaimsError(
            f"{exp.path}: [task] is {task.name}, but --mechclaims-task asks for {wanted.name}; pre-register that "
            f"task with python -m mechclaims_icl.discover --target {exp.target} --task {wanted.a},{wanted.b}")
    return task


@dataclass(frozen=True)
class C1Run:
    task: AffineTask
    params: C1Params | None
    study: AblationStudy | None
    accuracy: Effect
    applicable: bool
    reason: str
    canonical: dict | None = None  # the post's 2x+3 on a target whose [task] differs
    seed: int = 0  # of every resampling statistic: the run's --mechclaims-seed
    probe: str = "post"  # B's pre-registered format
    probe_sweeps: dict | None = None  # the clean sweep under every pre-registered format of B

    def require(self, claim) -> None:
        """Skip ``claim`` as not applicable when the precondition failed."""
        if not self.applicable:
            claim.not_applicable(self.reason, self.accuracy, **self.notes)

    @property
    def notes(self) -> dict:
        """Figures every Claim 1 result carries: the task and A's clean accuracy
        (and, where the target's task is not the post's, the post's task's verdict)."""
        return {"task": self.task.name, "probe": self.probe, "probe_b": probe_text(self.probe, 15),
                "precondition_accuracy": self.accuracy, "statistics_seed": self.seed, **(self.canonical or {})}


@pytest.fixture(scope="session")
def c1(target, mechclaims_settings, mechclaims_progress, mechclaims_expectations, pytestconfig) -> C1Run:
    """The Claim 1 ablation study of a target on the confirmation split, on the
    target's task (``[task]`` of its expectations; y = 2x + 3 unless it says otherwise),
    with the profile's number of pairs or the pre-registered ``[c1] min_pairs`` if larger."""
    s = mechclaims_settings
    try:
        exp = mechclaims_expectations(CLAIMS_DIR, target.name)
        task = task_for(exp, pytestconfig)
        n_pairs = confirmation_pairs(exp, s.n_prompts)
        probe, _ = claim1.probes_from(exp)
    except MechclaimsError as exc:
        pytest.fail(str(exc), pytrace=False)
    confirm = split_seed(s.seed, "confirmation")
    pairs, ok, accuracy = claim1.task_pairs(target.model, task, n_pairs, confirm, probe)
    canonical = None
    if task != CANONICAL:  # the post's task as well: the report says why Claim 1 runs on another
        post_ok, post_accuracy = claim1.task_pairs(target.model, CANONICAL, n_pairs, confirm)[1:]
        canonical = {
            "canonical_task": CANONICAL.name,
            "canonical_precondition_accuracy": post_accuracy,
            "canonical_verdict": f"not run: the claims run on {task.name}" if post_ok else "not-applicable",
        }
    if not ok:
        reason = f"task {task.name}: clean accuracy {accuracy} is below {MIN_ACCURACY} (lower bound)"
        return C1Run(task, None, None, accuracy, False, reason, canonical, s.seed, probe)
    try:
        params = params_from(exp, target.info.n_layers)
    except MechclaimsError as exc:
        pytest.fail(str(exc), pytrace=False)
    show = lambda message: mechclaims_progress(f"{target.name} C1 study ({task.name}, B {probe}): {message}")  # noqa: E731
    study = ablation_study(target.model, pairs, params.stages, read_layer=params.read_layer, progress=show)
    others = [v for v in params.probe_variants if v != probe]
    show(f"clean sweep with B as {', '.join(others)}" if others else "no other format of B pre-registered")
    sweeps = probe_sweeps(target.model, study, params.probe_variants)
    return C1Run(task, params, study, accuracy, True, "", canonical, s.seed, probe, sweeps)


@dataclass(frozen=True)
class SequenceRun:
    """Claims 2 and 3 on one target: the confirmation reading and what the exploration split fixed."""

    task: AffineTask
    accuracy: Effect | None
    applicable: bool
    reason: str
    example: int = 12  # examples before the answer the precondition and C3.mlp read
    c2: C2Params | None = None
    c3: C3Params | None = None
    reading: Reading | None = None  # confirmation split, with attention masses and the feature layer's residual
    span: tuple[int, int] | None = None  # examples fitted (before saturation)
    direction: np.ndarray | None = None  # task feature direction (exploration split)
    heads: tuple[tuple[int, int], ...] = ()  # largest causal effect (exploration split)
    dla: np.ndarray | None = None
    ablated: np.ndarray | None = None  # confirmation correctness with the MLPs mean-ablated
    control: np.ndarray | None = None  # ... with as many MLPs outside the band mean-ablated
    control_layers: tuple[int, ...] = ()
    seed: int = 0  # of every resampling statistic: the run's --mechclaims-seed

    def require(self, claim) -> None:
        """Skip ``claim`` as not applicable when the precondition failed."""
        if not self.applicable:
            claim.not_applicable(self.reason, self.accuracy)

    @property
    def notes(self) -> dict:
        """Figures every Claim 2/3 result carries: the task and the precondition's accuracy."""
        return {"task": self.task.name, "precondition_accuracy": self.accuracy, "statistics_seed": self.seed}


@pytest.fixture(scope="session")
def c23(target, mechclaims_settings, mechclaims_progress, mechclaims_expectations, pytestconfig) -> SequenceRun:
    """Claims 2 and 3 of a target: the exploration split fixes the fit range, the feature
    direction, the causal heads and the MLP means; the confirmation split is measured."""
    s = mechclaims_settings
    model, n_layers, n_heads = target.model, target.info.n_layers, target.info.n_heads
    try:
        exp = mechclaims_expectations(CLAIMS_DIR, target.name)
        task = task_for(exp, pytestconfig)
        c2p = claim2.params_from(exp, n_layers)
        c3p = claim3.params_from(exp, n_layers, n_heads)
    except MechclaimsError as exc:
        pytest.fail(str(exc), pytrace=False)
    n = c2p.n_prompts(s.n_prompts)

    def show(message: str) -> None:
        mechclaims_progress(f"{target.name} C2/C3 ({task.name}, {n} sequences of {c2p.n_examples} examples): {message}")

    confirm = make_prompts(task, n_prompts=n, n_examples=c2p.n_examples, seed=split_seed(s.seed, "confirmation"))
    show("confirmation forward (attention, residual)")
    reading = claim2.read_sequences(model, confirm, resid_layers=[c2p.feature_layer], attention=True)
    ok, accuracy = claim2.precondition(reading, N_EXAMPLES)
    if not ok:
        reason = f"task {task.name}: accuracy after {N_EXAMPLES} examples {accuracy} is below {MIN_ACCURACY} (lower bound)"
        return SequenceRun(task, accuracy, False, reason, N_EXAMPLES, seed=s.seed)
    explore = make_prompts(task, n_prompts=n, n_examples=c2p.n_examples, seed=split_seed(s.seed, "exploration"))
    show("exploration forward (direction, head attribution, MLP means)")
    found = claim3.explore(model, explore, dla_example=N_EXAMPLES, resid_layers=[c2p.feature_layer])
    shuffled = claim2.read_sequences(
        model, claim2.shuffled_labels(explore, s.seed), resid_layers=[c2p.feature_layer], examples=[]
    )
    show(f"MLPs {'+'.join(map(str, c3p.mlp_layers))} mean-ablated")
    ablated = claim3.mlp_ablated(model, confirm, c3p.mlp_layers, found.mlp_means, N_EXAMPLES)
    control_layers = claim3.control_layers(c3p.mlp_layers, n_layers)
    control = None
    if control_layers:
        show(f"control: MLPs {'+'.join(map(str, control_layers))} mean-ablated")
        control = claim3.mlp_ablated(model, confirm, control_layers, found.mlp_means, N_EXAMPLES)
    return SequenceRun(
        task, accuracy, True, "", N_EXAMPLES, c2p, c3p, reading,
        span=claim2.fitted_range(c2p, found.reading),
        direction=claim2.feature_direction(found.reading, shuffled, c2p.feature_layer),
        heads=tuple(claim3.causal_heads(found, c3p.n_causal_heads)),
        dla=found.dla,
        ablated=ablated,
        control=control,
        control_layers=control_layers,
        seed=s.seed,
    )
