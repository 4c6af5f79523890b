"""The induction pack's fixtures: confirmation prompts, drawn once per target."""

import pytest
from induction import repeated


@pytest.fixture(scope="session")
def sequences(target, mechclaims_settings):
    """Confirmation prompts: repeated, and (the negative control) not repeated."""
    s = mechclaims_settings
    return {kind: repeated(target.model, s.n_prompts, s.seed, "confirmation", repeat=kind == "repeated")
            for kind in ("repeated", "fresh")}
