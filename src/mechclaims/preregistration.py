"""The pre-registrations a run judges against: which file each (claims directory, target) reads
(a pack may choose it: ``pytest_mechclaims_expectations_path``), loaded and checked once, and the
check that the model at hand is the one each was made on."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import expectations as _expectations
from .errors import MechclaimsError
from .stash import expectations_key, pyproject_key, registered_key, session_key


def expectations_file(config: pytest.Config, claims_dir: Path, target: str) -> Path:
    own = _expectations.own_dir(claims_dir, config.stash.get(pyproject_key, None))
    chosen = config.hook.pytest_mechclaims_expectations_path(config=config, claims_dir=claims_dir, target=target,
                                                            expectations_dir=own)
    return chosen if chosen is not None else _expectations.path_for(claims_dir, target, own=own)


def expectations_for(config: pytest.Config, claims_dir: Path, target: str) -> _expectations.Expectations:
    cache = config.stash.setdefault(expectations_key, {})
    key = (claims_dir, target)
    if key not in cache:
        try:
            cache[key] = _expectations.load(expectations_file(config, claims_dir, target), target)
        except MechclaimsError as exc:
            raise pytest.UsageError(str(exc)) from None
        if (cache[key].path is not None and not cache[key].sections.get("registered")
                and not config.getoption("mechclaims_exploratory")):
            raise pytest.UsageError(
                f"{cache[key].path}: names no model ([registered] is missing or empty), so nothing ties its "
                f"verdicts to {target}'s weights; write it with the pack's discovery script (one that calls "
                "mechclaims.preregister(claims_dir, target, ...), which records the model), or pass "
                "--mechclaims-exploratory to run without one")
        if cache[key].path is not None:  # the report names the exact file each verdict was judged against
            config.stash[session_key].note_expectations(target, {
                "path": str(cache[key].path), "sha256": cache[key].sha256})
        elif config.getoption("mechclaims_exploratory"):
            config.stash[session_key].note_expectations(target, {"path": None, "sha256": None, "exploratory": True})
        else:
            path = expectations_file(config, claims_dir, target)
            raise pytest.UsageError(
                f"{path}: no pre-registration for target {target!r}; pre-register its claims first (a pack's "
                "discovery writes this file, or write it by hand: docs/writing-claims.md), or pass "
                "--mechclaims-exploratory to run without expectations (the report marks the run exploratory)")
    return cache[key]


def registered(config: pytest.Config, claims_dir: Path, name: str) -> _expectations.Expectations:
    """The pre-registration of ``name`` for ``claims_dir``, once the model at hand is checked to be
    the one it was made on (once per file and target). A target that cannot run (this check, a load
    or boot that failed) fails every claim that asks, pointing to its one error in the report."""
    session = config.stash[session_key]
    if name in session.target_errors:
        pytest.fail(session.fail_target(name, session.target_errors[name]), pytrace=False)
    exp = expectations_for(config, claims_dir, name)
    checked = config.stash.setdefault(registered_key, {})
    if (claims_dir, name) not in checked:
        try:
            loaded = session.target(name)
        except MechclaimsError as exc:
            pytest.fail(session.fail_target(name, str(exc)), pytrace=False)
        cfg = loaded.model.cfg
        shape = {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model, "d_vocab": cfg.d_vocab}
        checked[claims_dir, name] = _expectations.model_mismatch(exp, loaded.info.sha256_or_revision, shape)
    mismatch = checked[claims_dir, name]
    if mismatch is not None:
        if not config.getoption("mechclaims_allow_other_model"):
            pytest.fail(session.fail_target(name, mismatch), pytrace=False)
        session.expectation_overrides[name] = mismatch
    return exp

