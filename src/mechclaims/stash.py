"""Where the plugin keeps a run's state: the keys of ``config.stash`` and ``item.stash``. The
run's state itself is one :class:`~mechclaims.session.ClaimSession` under :data:`session_key`."""

from __future__ import annotations

from pathlib import Path

import pytest

from .recorder import ClaimRecorder
from .results import ClaimResult
from .session import ClaimSession

session_key = pytest.StashKey[ClaimSession]()
pyproject_key = pytest.StashKey[object]()
seconds_key = pytest.StashKey[float]()
report_path_key = pytest.StashKey[Path]()
recorder_key = pytest.StashKey[ClaimRecorder]()
verdict_key = pytest.StashKey[ClaimResult]()
expected_key = pytest.StashKey[str]()
sigterm_key = pytest.StashKey[object]()
forwards_key = pytest.StashKey[tuple]()
expectations_key = pytest.StashKey[dict]()
registered_key = pytest.StashKey[dict]()  # (claims dir, target) -> why the model is not the registered one, or None
