"""The command that runs one claim again as a run ran it: its test, target, seed, profile and,
when the run overrode the profile's, its number of prompts (shown under each refuted or errored
claim, in the terminal and in ``claims.md``)."""

from __future__ import annotations

import shlex
from typing import Any

from ..results import ERRORED, REFUTED
from ..settings import PROFILES

SHOWN_FOR = (REFUTED, ERRORED)


def command(claim: dict[str, Any], run: dict[str, Any]) -> str:
    """``pytest <nodeid> --mechclaims-target T --mechclaims-seed S --mechclaims-profile P -k ID``."""
    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
    profile = str(settings.get("profile", "ci"))
    argv = ["pytest", str(claim.get("nodeid") or "claims/")]
    if claim.get("target") is not None:
        argv += ["--mechclaims-target", str(claim["target"])]
    argv += ["--mechclaims-seed", str(run.get("seed", settings.get("seed", 0))), "--mechclaims-profile", profile]
    n_prompts = settings.get("n_prompts")
    if profile in PROFILES and n_prompts is not None and n_prompts != PROFILES[profile].n_prompts:
        argv += ["--mechclaims-n-prompts", str(n_prompts)]
    argv += ["-k", str(claim.get("id"))]
    return shlex.join(argv)
