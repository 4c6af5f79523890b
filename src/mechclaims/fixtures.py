"""The plugin's fixtures: the run's session, settings and progress line, the ``target`` (a model
loaded once per session), its ``expectations``, the ``claim`` recorder, and two autouse guards
(the model is the pre-registered one; no test leaves hooks on a shared model)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .collection import target_name
from .errors import MechclaimsError
from .preregistration import registered
from .recorder import ClaimRecorder
from .session import ClaimSession
from .stash import recorder_key, session_key
from .targets.accounting import attached_hooks


@pytest.fixture(scope="session")
def mechclaims_session(request: pytest.FixtureRequest) -> ClaimSession:
    """The run's :class:`~mechclaims.session.ClaimSession`."""
    return request.config.stash[session_key]


@pytest.fixture(scope="session")
def mechclaims_settings(mechclaims_session: ClaimSession):
    """The run's immutable :class:`~mechclaims.settings.Settings`."""
    return mechclaims_session.settings


@pytest.fixture(scope="session")
def mechclaims_progress(request: pytest.FixtureRequest):
    """A function that shows one progress line on the terminal (not captured)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def show(message: str) -> None:
        if reporter is None or request.config.get_verbosity() < 0:
            return
        if capture is None:
            reporter.write_line(f"[mechclaims] {message}")
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[mechclaims] {message}")

    return show


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, mechclaims_session: ClaimSession, mechclaims_progress):
    """A loaded model target (parametrised over the selected targets), loaded once per session.

    Pytest runs the items of one target together and tears this fixture down when it
    moves on to the next target; the model's weights are released then, so one
    model's weights are in memory at a time.  Its tokenizer, activation store and
    counts stay for the report (a target needed again would boot again, counted in
    ``boots``).
    """
    name = getattr(request, "param", None)
    if name is None:
        raise pytest.UsageError("the `target` fixture is parametrised by mechclaims; do not request it directly")
    if name not in mechclaims_session.loaded:
        mechclaims_progress(f"loading {name} ...")
    if name in mechclaims_session.target_errors:
        pytest.fail(mechclaims_session.fail_target(name, mechclaims_session.target_errors[name]), pytrace=False)
    try:
        loaded = mechclaims_session.target(name)
    except MechclaimsError as exc:
        pytest.fail(mechclaims_session.fail_target(name, str(exc)), pytrace=False)
    yield loaded
    loaded.model.release()


@pytest.fixture(scope="session")
def mechclaims_expectations(request: pytest.FixtureRequest):
    """``load(claims_dir, target_name)``: a target's pre-registration for the claims in ``claims_dir``,
    loaded once per run (what ``expectations`` gives a test), for session-scoped fixtures of a pack."""
    return lambda claims_dir, target: registered(request.config, Path(claims_dir), target)


@pytest.fixture
def expectations(request: pytest.FixtureRequest):
    """The pre-registered :class:`~mechclaims.expectations.Expectations` of the test's target."""
    name = target_name(request.node)
    if name is None:
        raise pytest.UsageError("the `expectations` fixture needs the `target` fixture in the same test")
    return registered(request.config, request.node.path.parent, name)


@pytest.fixture
def claim(request: pytest.FixtureRequest) -> ClaimRecorder:
    """Records the figures of a ``@pytest.mark.claim`` test."""
    marker = request.node.get_closest_marker("claim")
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses the `claim` fixture without @pytest.mark.claim(id=...)"
        )
    recorder = ClaimRecorder(
        id=marker.kwargs["id"], target=target_name(request.node), source=marker.kwargs.get("source"),
        seed=request.config.stash[session_key].settings.seed,
    )
    request.node.stash[recorder_key] = recorder
    return recorder


@pytest.fixture(autouse=True)
def _mechclaims_registered_model(request: pytest.FixtureRequest) -> None:
    """A claim runs only on the model its pre-registration was made on (``[registered]``), unless
    --mechclaims-allow-other-model says otherwise; then the report records the difference."""
    name = target_name(request.node)
    if name is None or "target" not in request.fixturenames or request.node.get_closest_marker("claim") is None:
        return
    registered(request.config, request.node.path.parent, name)


@pytest.fixture(autouse=True)
def _mechclaims_no_hooks_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves hooks on a shared model (and remove them)."""
    yield
    if "target" not in request.fixturenames:
        return
    session = request.config.stash[session_key]
    loaded = session.loaded.get(target_name(request.node) or "")
    if loaded is None:
        return
    left = attached_hooks(loaded)
    if left:
        loaded.model.reset_hooks(including_permanent=False)
        pytest.fail(
            f"test left hooks on {loaded.name}: {', '.join(left)}; remove hooks in a finally block "
            "(or use model.hooks(...) as a context manager)",
            pytrace=False,
        )


__all__ = ["mechclaims_session", "mechclaims_settings", "mechclaims_progress", "target", "mechclaims_expectations",
           "expectations", "claim", "_mechclaims_registered_model", "_mechclaims_no_hooks_left"]
