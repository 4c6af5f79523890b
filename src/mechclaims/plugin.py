"""The pytest plugin: thin hook implementations that delegate.

The run's state is one :class:`~mechclaims.session.ClaimSession` in ``config.stash``
(:mod:`mechclaims.stash`); it writes the report and the terminal summary. Options live in
:mod:`mechclaims.options`, the collection policy in :mod:`mechclaims.collection`, the
pre-registrations a run judges against in :mod:`mechclaims.preregistration`, the verdict state
machine in :mod:`mechclaims.verdicts` and the fixtures in :mod:`mechclaims.fixtures`.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import pytest

from . import cachedir, collection, options, registry, scheduling, threads, verdicts
from . import expectations as _expectations
from .errors import MechclaimsError, TargetError
from .fixtures import *  # noqa: F401,F403  (pytest finds a plugin's fixtures in its namespace)
from .session import ClaimSession
from .settings import settings
from .stash import forwards_key, pyproject_key, report_path_key, session_key, sigterm_key
from .registry import get_spec
from .targets.spec import default_cache_dir

threads.watch_torch_import()  # before any conftest can import torch and set its threads

# The exit status of a run whose claim report could not be written (pytest's own codes are 0-5).
REPORT_NOT_WRITTEN = 6


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: runs on a CUDA target (one configured with gpu = true); deselected unless asked for "
                            "with -m gpu or --mechclaims-target")
    config.addinivalue_line("markers", "claim(id, source=None, targets=None): a claim test; its outcome becomes a "
                            "verdict in the report; targets=[...] runs it on those targets only")
    try:  # targets the project configures ([tool.mechclaims.targets.NAME] in its pyproject.toml)
        config.stash[pyproject_key] = registry.find_pyproject(config.rootpath)
        registry.load_config(config.stash[pyproject_key])
        cache_cap = cachedir.configured_cap(config.stash[pyproject_key])
        _expectations.project_dir(config.stash[pyproject_key])  # a bad value stops the run here, in one line
        for name in config.getoption("mechclaims_target"):
            if (problem := get_spec(name).problem) is not None:  # asked for by name: stop at once, in one line
                raise TargetError(problem)
    except MechclaimsError as exc:
        raise pytest.UsageError(str(exc)) from None
    root = config.rootpath
    fixtures = root / "fixtures"
    state = ClaimSession(
        settings=settings(config.getoption("mechclaims_profile"), seed=config.getoption("mechclaims_seed"),
                          **({"n_prompts": config.getoption("mechclaims_n_prompts")}
                             if config.getoption("mechclaims_n_prompts") else {})),
        root=root,
        device=config.getoption("mechclaims_device"),
        dtype=config.getoption("mechclaims_dtype"),
        device_map=config.getoption("mechclaims_device_map"),
        fixtures_dir=fixtures if fixtures.is_dir() else None,
        cache_mode=config.getoption("mechclaims_cache"),
        activation_dir=Path(config.getoption("mechclaims_cache_dir") or default_cache_dir() / "activations"),
        cache_max_size=cache_cap,
    )
    state.parallel = collection.parallel_notes(config)
    state.shard = config.getoption("mechclaims_shard")
    config.stash[session_key] = state
    config.pluginmanager.register(verdicts.ResultCollector(state), f"mechclaims-collector-{id(config)}")


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """SIGTERM ends the run like Ctrl-C, so the partial report is still written."""
    if threading.current_thread() is threading.main_thread():
        session.config.stash[sigterm_key] = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(sigterm_key, None)
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
    registry.unload_config(config.stash.get(pyproject_key, None))


# --------------------------------------------------------------------------- collection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", collection.target_params(metafunc.config), indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    collection.modify_items(config, items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``-n N`` (or ``--dist loadgroup``): one group per target, so each model loads on one worker."""
    if not scheduling.by_target(config):
        return None
    return scheduling.make_scheduler(config, log, collection.selected_targets(config))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Tell each pytest-xdist worker whether it gets whole targets (its thread share depends on it)."""
    node.workerinput["mechclaims_by_target"] = scheduling.by_target(node.config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set this process's torch threads (mechclaims.threads) once its tests are known."""
    config = session.config
    state = config.stash.get(session_key, None)
    if state is None or not any(collection.is_claim_test(item) for item in session.items):
        return  # a run of other tests: torch stays unimported and untouched
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput["workercount"]) if workerinput else 1
    busy = workers
    if workerinput and workerinput.get("mechclaims_by_target"):
        names = [collection.target_name(item) for item in session.items]
        if names and None not in names:  # only claim tests: one worker per target has work
            busy = len(set(names))
    state.threads = threads.apply(workers=workers, busy=busy, asked=config.getoption("mechclaims_threads"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What -n does, at the start of a run that names its targets (any claim run's end-of-run
    header says it too; a run of other tests under -n says nothing)."""
    state = config.stash.get(session_key, None)
    if state is None or not config.getoption("mechclaims_target"):
        return []
    return [f"mechclaims: {line}" for line in state.parallel]


# --------------------------------------------------------------------------- verdicts


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[forwards_key] = item.config.stash[session_key].forward_totals()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    return verdicts.judge(item, call, report)


# --------------------------------------------------------------------------- session end


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(session_key, None)
    if state is None or (not state.claims and state.shard is None) or hasattr(config, "workerinput"):
        return  # pytest-xdist workers send their results to the controller, which writes (a shard always does)
    from .session import utc_now

    if state.shard_empty and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK  # a shard that drew no target has done its part
    if exitstatus != pytest.ExitCode.INTERRUPTED and not (session.shouldfail or session.shouldstop):
        state.finished = utc_now()  # a run stopped early (-x, --maxfail) stays incomplete
    # pytest's outcome can hide a verdict that differs from its pre-registration (an errored
    # negative control is a passing strict xfail; a skip is not a failure): the verdicts decide.
    if session.exitstatus == pytest.ExitCode.OK and any(c["as_expected"] is False for c in state.claims):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    state.exit_status = int(session.exitstatus)  # a usage error with no claim run still fails a merge
    report_dir = Path(config.getoption("mechclaims_report_dir") or config.rootpath / "reports")
    try:
        config.stash[report_path_key] = state.write_report(report_dir)
    except OSError as exc:  # a full disk, a read-only or unsafe directory: one line, no traceback
        from .files import describe_os_error

        line = "ERROR: " + describe_os_error(
            exc, "claim report", "nothing was written and reports/latest is unchanged; free space or pass "
            "another --mechclaims-report-dir")
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write("\n")  # the progress line is still open here
            terminal.write_line(line, red=True)
        else:
            sys.stderr.write(line + "\n")
        session.exitstatus = REPORT_NOT_WRITTEN


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(session_key, None)
    if state is None or not state.claims:
        return
    terminalreporter.section("mechclaims")
    for line, markup in state.summary_lines():
        terminalreporter.write_line(line, **markup)
    path = config.stash.get(report_path_key, None)
    if path is not None:
        terminalreporter.write_line(f"claim report: {path}")
