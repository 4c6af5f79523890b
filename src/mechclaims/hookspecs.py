"""Hooks a claim pack may implement (pytest hook specifications, registered by the plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.hookspec(firstresult=True)
def pytest_mechclaims_expectations_path(config: pytest.Config, claims_dir: Path, target: str,
                                        expectations_dir: Path | None) -> Path | None:
    """The expectations file of ``target`` for the claims in ``claims_dir``; None for the default,
    ``claims_dir/expectations/<target>.toml`` (or the project's own, ``expectations_dir``, which
    ``[tool.mechclaims] expectations`` names: see ``mechclaims.expectations.path_for``). A pack with variants of its claims (the post's pack:
    one pre-registration per task, ``--mechclaims-task``) points at the variant's own file."""
