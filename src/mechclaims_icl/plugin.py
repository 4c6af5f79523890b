"""The post's pack in pytest: ``--mechclaims-task A,B`` runs Claims 1-3 on y = A x + B.

Not a ``pytest11`` plugin: installing the pack changes no other project's pytest. The pack's
claims directory opts in from its ``conftest.py`` (``from mechclaims_icl.plugin import *``), or
a run passes ``-p mechclaims_icl.plugin``; the option then exists where the pack's claims run.

Each task has its own pre-registration: the target's ``expectations/<target>.toml`` when its
``[task]`` is that task, else ``expectations/<target>@<task>.toml`` (``organism@4x+17.toml``),
which ``python -m mechclaims_icl.discover --target T --task A,B`` writes.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from mechclaims import expectations_path

from .tasks import CANONICAL, AffineTask


def parse_task(text: str) -> AffineTask:
    """``A,B`` -> y = A x + B (A >= 1, B >= 0)."""
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid task {text!r}: expected A,B (integers, e.g. 1,0 for y = x)") from None
    if not (1 <= a <= 999 and 0 <= b <= 999):
        raise argparse.ArgumentTypeError(f"invalid task {text!r}: expected 1 <= A <= 999 and 0 <= B <= 999")
    return AffineTask(a, b)


def task_path(claims_dir: Path, target: str, task: AffineTask, own: Path | None = None) -> Path:
    """Where ``task``'s own pre-registration of ``target`` lives (see the module docstring); ``own``
    is the project's own directory of pre-registrations as the hook receives it (default: the
    working directory's project's)."""
    default = expectations_path(claims_dir, target, directory=own)
    if not default.is_file():  # the target's first pre-registration is its main file, whatever the task
        return default
    try:
        table = tomllib.loads(default.read_text(encoding="utf-8")).get("task", {})
    except (OSError, ValueError):
        return default  # let the loader say what is wrong with it
    if isinstance(table, dict) and AffineTask(table.get("a", CANONICAL.a), table.get("b", CANONICAL.b)) == task:
        return default
    return expectations_path(claims_dir, target, task.name, directory=own)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("mechclaims").addoption(
        "--mechclaims-task", type=parse_task, default=None, metavar="A,B",
        help="run the post's Claims 1-3 on y = A x + B, judged against that task's own pre-registration "
        "(expectations/<target>@<task>.toml unless the target's file is for that task)",
    )


def is_pack_dir(claims_dir: Path) -> bool:
    """Whether ``claims_dir`` holds the pack's claims: one of its pre-registrations has a ``[task]``."""
    for path in sorted((claims_dir / "expectations").glob("*.toml")):
        try:
            if isinstance(tomllib.loads(path.read_text(encoding="utf-8")).get("task"), dict):
                return True
        except (OSError, ValueError):
            continue  # the loader says what is wrong with it, if the run reads it
    return False


def pytest_mechclaims_expectations_path(config: pytest.Config, claims_dir: Path, target: str,
                                        expectations_dir: Path | None) -> Path | None:
    task = config.getoption("mechclaims_task", None)
    if task is None or not is_pack_dir(claims_dir):  # another pack's claims: its default file
        return None
    return task_path(claims_dir, target, task, expectations_dir)


def pytest_mechclaims_plots(config: pytest.Config, claim: dict) -> list | None:
    """The pack's own figures of a claim result (:mod:`mechclaims_icl.figures`)."""
    from .figures import FIGURES, plots

    return plots(claim) if claim.get("id") in FIGURES else None


__all__ = ["pytest_addoption", "pytest_mechclaims_expectations_path", "pytest_mechclaims_plots"]
