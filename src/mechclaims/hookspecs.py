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


@pytest.hookspec
def pytest_mechclaims_plots(config: pytest.Config, claim: dict) -> list | None:
    """The figures a pack draws itself for one claim result, beside those the core draws from the
    ``figures`` schemas (:mod:`mechclaims.report.plots`).

    ``claim`` is the claim's entry as ``claims.json`` will hold it (``id``, ``target``, ``verdict``,
    ``figures``, ...). Return ``(title, figure)`` pairs, each ``figure`` a
    ``matplotlib.figure.Figure`` (make it with ``Figure()``, not pyplot, so no global state or
    display is involved), or None for a claim the pack draws nothing for. Called in the process that
    ran the claim (a pytest-xdist worker, too), after its verdict: the figures change no verdict.
    Each is kept as an inline PNG in the claim's ``plots`` in ``claims.json`` (so merged shards
    keep them) and shown in ``index.html``; one that raises is reported there as not drawn."""
