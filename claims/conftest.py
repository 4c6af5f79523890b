"""Shared, per-target experiments of the claim tests (computed once per session)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mechclaims import MechclaimsError
from mechclaims.answers import greedy_is
from mechclaims.claim0 import MIN_ACCURACY
from mechclaims.claim1 import C1Params, params_from, precondition
from mechclaims.experiments import AblationStudy, ablation_study
from mechclaims.expectations import load, path_for
from mechclaims.results import Effect
from mechclaims.tasks import CANONICAL, make_patch_pairs, split_seed

CLAIMS_DIR = Path(__file__).parent


@dataclass(frozen=True)
class C1Run:
    params: C1Params | None
    study: AblationStudy | None
    accuracy: Effect
    applicable: bool
    reason: str


@pytest.fixture(scope="session")
def c1(target, mechclaims_settings, mechclaims_progress) -> C1Run:
    """The Claim 1 ablation study of a target on the confirmation split."""
    s = mechclaims_settings
    pairs = make_patch_pairs(
        CANONICAL, n_pairs=s.n_prompts, n_examples=s.n_examples, seed=split_seed(s.seed, "confirmation")
    )
    ok, accuracy = precondition(greedy_is(target.model, pairs.a_texts, [p.a.answer for p in pairs.pairs]))
    if not ok:
        return C1Run(None, None, accuracy, False, f"clean accuracy {accuracy} is below {MIN_ACCURACY} (lower bound)")
    try:
        params = params_from(load(path_for(CLAIMS_DIR, target.name), target.name), target.info.n_layers)
    except MechclaimsError as exc:
        pytest.fail(str(exc), pytrace=False)
    study = ablation_study(
        target.model, pairs, params.stages, read_layer=params.read_layer,
        progress=lambda message: mechclaims_progress(f"{target.name} C1 study: {message}"),
    )
    return C1Run(params, study, accuracy, True, "")
