"""The pytest plugin: options, markers, fixtures and the hooks that turn test
outcomes into claim verdicts and write the report.  No logic of its own lives
here; it wires :mod:`mechclaims.session`, :mod:`mechclaims.targets` and
:mod:`mechclaims.report` into pytest.
"""

from __future__ import annotations

import math
from collections import Counter
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

from . import expectations as _expectations
from . import cachedir, registry, scheduling, shards, threads
from .errors import TargetError, MechclaimsError
from .recorder import ClaimRecorder
from .report import reproduce, write_run
from .report.reading import NEGATIVE_CONTROL
from .report.claims_json import new_run_id
from .results import ERRORED, INCONCLUSIVE, NOT_APPLICABLE, REFUTED, SUPPORTED, UNDECIDED, ClaimResult
from .session import ClaimSession
from .settings import PROFILES, settings
from .cachedir import STORE_MODES
from .targets import DEVICE_MAPS, DEVICES, DTYPES, TARGETS, attached_hooks, default_cache_dir, get_spec, resolve

threads.watch_torch_import()  # before any conftest can import torch and set its threads

# The exit status of a run whose claim report could not be written (pytest's own codes are 0-5).
REPORT_NOT_WRITTEN = 6


def _whole(what: str, low: int, high: int):
    """An option type: a whole number from ``low`` to ``high``, else an error naming the range."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected an integer from {low} to {high}")
        return value

    return parse


_seed = _whole("seed", 0, 2**32 - 1)  # what numpy's seeding takes
_positive = _whole("number of prompts", 2, 100_000)  # a paired interval needs two
_threads = _whole("thread count", 1, 4096)


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


# --------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mechclaims", "mechanistic claims")
    group.addoption(
        "--mechclaims-target", action="append", default=[], metavar="NAME",
        help="run claims on this target (repeatable; default: every CPU target). Targets come from installed "
        "packages and [tool.mechclaims.targets.NAME] in pyproject.toml; mechclaims targets lists them",
    )
    group.addoption("--mechclaims-seed", type=_seed, default=0, help="seed of every prompt set (default 0)")
    group.addoption(
        "--mechclaims-profile", default="ci", choices=sorted(PROFILES),
        help="settings profile: how much evidence each claim gathers (default ci)",
    )
    group.addoption("--mechclaims-device", default=None, choices=DEVICES, help="override every target's device")
    group.addoption("--mechclaims-dtype", default=None, choices=DTYPES, help="override every target's dtype")
    group.addoption(
        "--mechclaims-device-map", default=None, choices=DEVICE_MAPS,
        help="spread every target's layers over the visible GPUs with this accelerate device map "
        "(overrides a configured device_map; docs/targets.md)",
    )
    group.addoption(
        "--mechclaims-report-dir", default=None, metavar="DIR",
        help="where claim reports go (default: <rootdir>/reports)",
    )
    group.addoption(
        "--mechclaims-cache", default="memory", choices=STORE_MODES,
        help="activation cache: off, memory (each forward pass once per run; default), disk "
        "(also reused across runs, see --mechclaims-cache-dir) or disk-readonly (reads the disk cache, "
        "writes nothing: for runs of code that is not trusted)",
    )
    group.addoption(
        "--mechclaims-allow-other-model", action="store_true",
        help="run claims on a model other than the one their pre-registration records ([registered]); "
        "the report records each such target",
    )
    group.addoption(
        "--mechclaims-exploratory", action="store_true",
        help="run targets that have no expectations file without one: verdicts are recorded, none is "
        "judged against a pre-registration, and the report marks the target exploratory",
    )
    group.addoption(
        "--mechclaims-n-prompts", type=_positive, default=None, metavar="N",
        help="prompts per claim, overriding the profile's (a quick run; claims that pre-register a "
        "minimum still use at least that many)",
    )
    group.addoption(
        "--mechclaims-threads", type=_threads, default=None, metavar="N",
        help="torch intra-op threads of every process (default: torch's own in a serial run; under "
        "pytest-xdist the cores divided among the workers that have work; OMP_NUM_THREADS also wins)",
    )
    group.addoption(
        "--mechclaims-shard", type=_shard, default=None, metavar="K/N",
        help="run the K-th of N shards (1-based): a target's claims stay in one shard; merge the shards' "
        "reports with mechclaims merge (docs/distributed.md)",
    )
    group.addoption(
        "--mechclaims-cache-dir", default=None, metavar="DIR",
        help="directory of the disk activation cache (default: $MECHCLAIMS_CACHE_DIR/activations, "
        "else ~/.cache/mechclaims/activations)",
    )


def _shard(text: str) -> shards.Shard:
    import argparse

    try:
        return shards.parse(text)
    except MechclaimsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _expectations_path(config: pytest.Config, claims_dir: Path, target: str) -> Path:
    own = _expectations.own_dir(claims_dir, config.stash.get(pyproject_key, None))
    chosen = config.hook.pytest_mechclaims_expectations_path(config=config, claims_dir=claims_dir, target=target,
                                                            expectations_dir=own)
    return chosen if chosen is not None else _expectations.path_for(claims_dir, target, own=own)


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
    state = ClaimSession(
        settings=settings(config.getoption("mechclaims_profile"), seed=config.getoption("mechclaims_seed"),
                          **({"n_prompts": config.getoption("mechclaims_n_prompts")}
                             if config.getoption("mechclaims_n_prompts") else {})),
        root=root,
        device=config.getoption("mechclaims_device"),
        dtype=config.getoption("mechclaims_dtype"),
        device_map=config.getoption("mechclaims_device_map"),
        fixtures_dir=_fixtures_dir(root),
        cache_mode=config.getoption("mechclaims_cache"),
        activation_dir=Path(config.getoption("mechclaims_cache_dir") or default_cache_dir() / "activations"),
        cache_max_size=cache_cap,
    )
    state.parallel = _parallel_notes(config)
    state.shard = config.getoption("mechclaims_shard")
    config.stash[session_key] = state
    config.pluginmanager.register(_ResultCollector(state), f"mechclaims-collector-{id(config)}")


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


def _fixtures_dir(root: Path) -> Path | None:
    candidate = root / "fixtures"
    return candidate if candidate.is_dir() else None


def _selected_targets(config: pytest.Config) -> list[str]:
    return list(dict.fromkeys(config.getoption("mechclaims_target"))) or list(TARGETS)


# --------------------------------------------------------------------------- collection


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" not in metafunc.fixturenames:
        return
    params = [
        pytest.param(name, id=name, marks=[pytest.mark.gpu] if TARGETS[name].gpu else [])
        for name in _selected_targets(metafunc.config)
    ]
    metafunc.parametrize("target", params, indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    defined = _claim_ids_by_dir(items)  # before deselection, so every id of a directory counts
    _limit_to_claim_targets(config, items)
    _check_unique_ids(items)
    _check_expected_ids(config, items, defined)
    for item in items:
        marker = item.get_closest_marker("claim")
        if marker is not None and not marker.kwargs.get("id"):
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.claim needs id=..., e.g. @pytest.mark.claim(id='heads.attend')"
            )
        if marker is not None:
            item.extra_keyword_matches.add(marker.kwargs["id"])  # `-k C1`, `-k redundancy` select by claim id
        if marker is not None and _target_name(item) is not None:
            _apply_expectation(item, marker.kwargs["id"])
    explicit_gpu = any(TARGETS[n].gpu for n in config.getoption("mechclaims_target"))
    if not config.option.markexpr and not explicit_gpu:
        _deselect(config, items, [i for i in items if i.get_closest_marker("gpu") is not None])
    _preflight_gpu(config, items)
    _keep_shard(config, items)


def _keep_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--mechclaims-shard K/N``: deselect every test outside shard K (mechclaims.shards)."""
    shard = config.getoption("mechclaims_shard")
    if shard is None:
        return
    group = {id(item): _target_name(item) or item.nodeid for item in items}
    placed = shards.assign(group.values(), shard.count)
    dropped = [item for item in items if placed[group[id(item)]] != shard.index]
    config.stash[session_key].shard_empty = len(dropped) == len(items) > 0
    _deselect(config, items, dropped)


def _deselect(config: pytest.Config, items: list[pytest.Item], dropped: list[pytest.Item]) -> None:
    """Take ``dropped`` out of ``items`` as pytest's own deselection does (reported as deselected)."""
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = {id(item) for item in dropped}
        items[:] = [item for item in items if id(item) not in gone]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``-n N`` (or ``--dist loadgroup``): one group per target, so each model loads on one worker."""
    if not scheduling.by_target(config):
        return None
    return scheduling.make_scheduler(config, log, _selected_targets(config))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """Tell each pytest-xdist worker whether it gets whole targets (its thread share depends on it)."""
    node.workerinput["mechclaims_by_target"] = scheduling.by_target(node.config)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set this process's torch threads (mechclaims.threads) once its tests are known."""
    config = session.config
    state = config.stash.get(session_key, None)
    if state is None or not any(_is_claim_test(item) for item in session.items):
        return  # a run of other tests: torch stays unimported and untouched
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput["workercount"]) if workerinput else 1
    busy = workers
    if workerinput and workerinput.get("mechclaims_by_target"):
        names = [_target_name(item) for item in session.items]
        if names and None not in names:  # only claim tests: one worker per target has work
            busy = len(set(names))
    state.threads = threads.apply(workers=workers, busy=busy, asked=config.getoption("mechclaims_threads"))


def _parallel_notes(config: pytest.Config) -> list[str]:
    """What ``-n`` does for this run, said once in the run header: the cost of a ``--dist`` that
    splits targets, or that one CPU target cannot go faster."""
    workers = config.getoption("numprocesses", None)
    if not workers or hasattr(config, "workerinput"):
        return []
    if (cost := scheduling.cost_of_dist(config)) is not None:
        return [cost]
    names = _selected_targets(config)
    if not config.option.markexpr and not any(TARGETS[n].gpu for n in config.getoption("mechclaims_target")):
        names = [n for n in names if n in TARGETS and not TARGETS[n].gpu]
    device = config.getoption("mechclaims_device")
    if len(names) == 1 and (device or get_spec(names[0]).device) == "cpu":
        return [f"-n {workers} with one CPU target ({names[0]}): its claims run on one worker, which takes "
                f"all {threads.available_cores()} cores; -n cannot make one CPU target faster than a serial run "
                "(docs/concepts.md)"]
    return []


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What -n does, at the start of a run that names its targets (any claim run's end-of-run
    header says it too; a run of other tests under -n says nothing)."""
    state = config.stash.get(session_key, None)
    if state is None or not config.getoption("mechclaims_target"):
        return []
    return [f"mechclaims: {line}" for line in state.parallel]


def _limit_to_claim_targets(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.claim(..., targets=[...])`` runs a claim on those targets only; its items
    for other targets are deselected (not skipped: a skip would be a not-applicable verdict)."""
    dropped = []
    for item in items:
        marker = item.get_closest_marker("claim")
        only = marker.kwargs.get("targets") if marker is not None else None
        if only is None:
            continue
        if isinstance(only, str) or not all(isinstance(t, str) for t in only):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.claim targets={only!r}; expected a list of "
                                    "target names, e.g. targets=['my-model']")
        if _target_name(item) not in only:
            dropped.append(item)
    _deselect(config, items, dropped)


def _claim_ids_by_dir(items: list[pytest.Item]) -> dict[Path, tuple[set[str], set[Path]]]:
    """Per claim directory: the claim ids its collected tests define, and their files."""
    by_dir: dict[Path, tuple[set[str], set[Path]]] = {}
    for item in items:
        marker = item.get_closest_marker("claim")
        if marker is not None and marker.kwargs.get("id"):
            ids, files = by_dir.setdefault(item.path.parent, (set(), set()))
            ids.add(marker.kwargs["id"])
            files.add(item.path)
    return by_dir


def _check_unique_ids(items: list[pytest.Item]) -> None:
    """One test per (claim id, target): the report, the pre-registration and ``mechclaims compare``
    key on that pair, so a second test under the same id would hide the first one's verdict."""
    seen: dict[tuple[str, str | None], pytest.Item] = {}
    for item in items:
        marker = item.get_closest_marker("claim")
        if marker is None or not marker.kwargs.get("id"):
            continue
        key = (marker.kwargs["id"], _target_name(item))
        if key in seen:
            first = seen[key]
            raise pytest.UsageError(
                f"claim id {key[0]!r} is used twice on target {key[1]!r}: {_where(first)} and {_where(item)}; "
                "give each claim test its own id (a parametrised claim: one id per parameter)"
            )
        seen[key] = item


def _where(item: pytest.Item) -> str:
    path, line, name = item.location
    return f"{path}:{line + 1 if line is not None else '?'} ({name})"


def _check_expected_ids(config: pytest.Config, items: list[pytest.Item],
                        defined: dict[Path, tuple[set[str], set[Path]]]) -> None:
    """An expectations file may only name claim ids that its claim directory defines.

    Checked when every test file of the directory was collected (before -k / -m
    deselection), so running one file alone never raises a false alarm; only for the
    targets some claim of the directory runs on.
    """
    for claims_dir, (ids, files) in defined.items():
        if files != set(claims_dir.glob("test_*.py")):
            continue
        running = {_target_name(i) for i in items if i.path.parent == claims_dir}
        for name in [n for n in _selected_targets(config) if n in running]:
            exp = _expectations_for(config, claims_dir, name)
            unknown = sorted(set(exp.verdicts) - ids)
            if unknown:
                raise pytest.UsageError(
                    f"{exp.path}: [verdicts] names unknown claim ids {', '.join(unknown)}; "
                    f"claims defined in {claims_dir}: {', '.join(sorted(ids))}"
                )


def _expectations_for(config: pytest.Config, claims_dir: Path, target: str) -> _expectations.Expectations:
    cache = config.stash.setdefault(expectations_key, {})
    key = (claims_dir, target)
    if key not in cache:
        try:
            cache[key] = _expectations.load(_expectations_path(config, claims_dir, target), target)
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
            path = _expectations_path(config, claims_dir, target)
            raise pytest.UsageError(
                f"{path}: no pre-registration for target {target!r}; pre-register its claims first (a pack's "
                "discovery writes this file, or write it by hand: docs/writing-claims.md), or pass "
                "--mechclaims-exploratory to run without expectations (the report marks the run exploratory)")
    return cache[key]


def _apply_expectation(item: pytest.Item, claim_id: str) -> None:
    """Store the pre-registered verdict; an expected refutation becomes a strict xfail."""
    exp = _expectations_for(item.config, item.path.parent, _target_name(item))
    if exp.path is None:  # exploratory: nothing was pre-registered, so nothing is expected
        return
    expected = exp.verdict(claim_id)
    item.stash[expected_key] = expected
    if expected == REFUTED:
        item.add_marker(pytest.mark.xfail(strict=True, reason=f"pre-registered negative control: {claim_id} expected refuted"))
    elif expected == UNDECIDED:  # nothing predicted: a refutation is recorded, not failed; an error still fails
        item.add_marker(pytest.mark.xfail(raises=AssertionError, strict=False,
                                          reason=f"{claim_id} was undecided at discovery: recorded, not judged"))


def _preflight_gpu(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An explicit GPU run fails at once, in one line, when CUDA or weights are missing."""
    names = {
        item.callspec.params["target"]
        for item in items
        if item.get_closest_marker("gpu") is not None and hasattr(item, "callspec")
        and "target" in item.callspec.params
    }
    session = config.stash[session_key]
    for name in sorted(names):
        try:
            resolve(name, device=session.device, cache_dir=session.cache_dir, fixtures_dir=session.fixtures_dir)
        except MechclaimsError as exc:
            raise pytest.UsageError(f"-m gpu cannot run: {exc}") from None


# --------------------------------------------------------------------------- fixtures


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
    return lambda claims_dir, target: _registered(request.config, Path(claims_dir), target)


@pytest.fixture
def expectations(request: pytest.FixtureRequest):
    """The pre-registered :class:`~mechclaims.expectations.Expectations` of the test's target."""
    name = _target_name(request.node)
    if name is None:
        raise pytest.UsageError("the `expectations` fixture needs the `target` fixture in the same test")
    return _registered(request.config, request.node.path.parent, name)


@pytest.fixture
def claim(request: pytest.FixtureRequest) -> ClaimRecorder:
    """Records the figures of a ``@pytest.mark.claim`` test."""
    marker = request.node.get_closest_marker("claim")
    if marker is None:
        raise pytest.UsageError(
            f"{request.node.nodeid} uses the `claim` fixture without @pytest.mark.claim(id=...)"
        )
    recorder = ClaimRecorder(
        id=marker.kwargs["id"], target=_target_name(request.node), source=marker.kwargs.get("source"),
        seed=request.config.stash[session_key].settings.seed,
    )
    request.node.stash[recorder_key] = recorder
    return recorder


@pytest.fixture(autouse=True)
def _mechclaims_registered_model(request: pytest.FixtureRequest) -> None:
    """A claim runs only on the model its pre-registration was made on (``[registered]``), unless
    --mechclaims-allow-other-model says otherwise; then the report records the difference."""
    name = _target_name(request.node)
    if name is None or "target" not in request.fixturenames or request.node.get_closest_marker("claim") is None:
        return
    _registered(request.config, request.node.path.parent, name)


def _registered(config: pytest.Config, claims_dir: Path, name: str) -> _expectations.Expectations:
    """The pre-registration of ``name`` for ``claims_dir``, once the model at hand is checked to be
    the one it was made on (once per file and target). A target that cannot run (this check, a load
    or boot that failed) fails every claim that asks, pointing to its one error in the report."""
    session = config.stash[session_key]
    if name in session.target_errors:
        pytest.fail(session.fail_target(name, session.target_errors[name]), pytrace=False)
    exp = _expectations_for(config, claims_dir, name)
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


@pytest.fixture(autouse=True)
def _mechclaims_no_hooks_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves hooks on a shared model (and remove them)."""
    yield
    if "target" not in request.fixturenames:
        return
    session = request.config.stash[session_key]
    loaded = session.loaded.get(_target_name(request.node) or "")
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


def _is_claim_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("claim") is not None or _target_name(item) is not None


def _target_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target") if callspec else None


# --------------------------------------------------------------------------- verdicts


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[forwards_key] = item.config.stash[session_key].forward_totals()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Setup and call decide a claim's verdict; teardown records it (or errors it)."""
    report = yield
    marker = item.get_closest_marker("claim")
    if marker is None:
        return report
    item.stash[seconds_key] = item.stash.get(seconds_key, 0.0) + report.duration  # setup, call, teardown
    recorder = item.stash.get(recorder_key, None) or ClaimRecorder(
        id=marker.kwargs["id"], target=_target_name(item), source=marker.kwargs.get("source")
    )
    if call.when == "teardown":
        result = item.stash.get(verdict_key, None)
        if result is None:
            result = _result(item, recorder, ERRORED, "the claim test did not run")
        if report.failed and result.verdict != ERRORED:
            result = replace(result, verdict=ERRORED, message=f"teardown: {_first_line(report.longrepr)}")
        calls, tokens = item.config.stash[session_key].forward_totals()
        calls0, tokens0 = item.stash.get(forwards_key, (calls, tokens))
        result = replace(result, figures={**result.figures, "forward_calls": calls - calls0, "forward_tokens": tokens - tokens0,
                                          "wall_seconds": round(item.stash[seconds_key], 3)})
        # Travels with the report (also from pytest-xdist workers); recorded in logreport.
        report.mechclaims = item.config.stash[session_key].payload(result)
        if hasattr(item.config, "workerinput"):  # draw this claim's plots here, beside the other workers
            report.mechclaims["plots"] = _drawn_plots(report.mechclaims["claim"].get("figures"), item.config)
        report.user_properties.extend(_junit_properties(result))
        return report
    if verdict_key in item.stash or (call.when == "setup" and report.passed):
        return report
    verdict, message = _verdict(call, recorder, item.config.stash.get(session_key, None))
    if verdict == ERRORED and report.passed:
        report.outcome = "failed"
        report.longrepr = f"claim {recorder.id} errored: {message}"
    if verdict == REFUTED and report.failed and recorder.effect is not None:
        # an unexpected refutation is evidence, not a crash: one line of it, not the test's traceback
        report.longrepr = f"claim {recorder.id} [{recorder.target}] refuted: {message}"
    item.stash[verdict_key] = _result(item, recorder, verdict, message)
    return report


def _drawn_plots(figures: object, config: pytest.Config) -> dict:
    from .report.plots import plots_for

    state = config.stash[session_key]
    drawn: dict = {}
    plots_for(figures, _plot_cache(state), drawn)
    return drawn


def _plot_cache(state: ClaimSession) -> Path | None:
    """With the disk cache, the report's plots are kept beside the activations (a warm run redraws
    nothing); never with disk-readonly."""
    return state.activation_dir / "plots" if state.cache_mode == "disk" and state.activation_dir else None


class _ResultCollector:
    """Records claim payloads from teardown reports, in-process or from xdist workers."""

    def __init__(self, session: ClaimSession) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, "mechclaims", None)
        if payload is not None and report.when == "teardown":
            self.session.record(payload)


def _junit_properties(result: ClaimResult) -> list[tuple[str, object]]:
    """The claim's verdict and main figures as JUnit XML properties (teardown report)."""
    data = result.to_json()
    keys = ("id", "target", "verdict", "expected", "statistic", "ci", "threshold", "n", "pvalue")
    return [(f"claim_{key}", data[key]) for key in keys if data.get(key) is not None]


def _result(item: pytest.Item, recorder: ClaimRecorder, verdict: str, message: str) -> ClaimResult:
    return ClaimResult(
        nodeid=item.nodeid,
        id=recorder.id,
        target=recorder.target,
        verdict=verdict,
        effect=recorder.effect,
        threshold=recorder.threshold,
        message=message,
        source=recorder.source,
        figures=recorder.figures,
        expected=item.stash.get(expected_key, None),
        rules=recorder.rules,
    )


def _verdict(call: pytest.CallInfo, recorder: ClaimRecorder, session: ClaimSession | None = None) -> tuple[str, str]:
    """The verdict from what the claim body did, independent of xfail bookkeeping."""
    excinfo = call.excinfo
    if excinfo is not None:
        text = _first_line(excinfo.value) or excinfo.typename
        if excinfo.errisinstance(pytest.skip.Exception) and text.startswith("inconclusive: ") \
                and recorder.effect is not None:
            return INCONCLUSIVE, text.removeprefix("inconclusive: ")
        if excinfo.errisinstance(pytest.skip.Exception):
            return NOT_APPLICABLE, text.removeprefix("not applicable: ")
        if call.when == "call" and excinfo.errisinstance(AssertionError):
            return REFUTED, text
        if excinfo.errisinstance(TargetError) and session is not None and recorder.target is not None:
            return ERRORED, session.fail_target(recorder.target, text)  # the model failed to boot, not the claim
        return ERRORED, f"{excinfo.typename}: {text}"
    if recorder.effect is None:
        return ERRORED, "the claim test passed without recording a statistic (call claim.record(...))"
    if not recorder.effect.is_finite():
        return ERRORED, f"non-finite statistic recorded: {recorder.effect}"
    if recorder.threshold is not None and not math.isfinite(recorder.threshold):
        return ERRORED, f"non-finite threshold {recorder.threshold}"
    return SUPPORTED, recorder.message


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


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
    report_dir = Path(config.getoption("mechclaims_report_dir") or config.rootpath / "reports")
    state.enforce_cache_cap()
    try:
        config.stash[report_path_key] = write_run(report_dir, new_run_id(), state.to_json(), _plot_cache(state),
                                                  state.drawn)
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
    tr = terminalreporter
    tr.section("mechclaims")
    tr.write_line(state.header())
    for name, why in state.target_errors.items():
        tr.write_line(f"TARGET ERROR: {name} cannot run, so its claims errored: {why}", red=True)
    if state.cache_pruned is not None and state.cache_pruned["removed"]:
        p = state.cache_pruned
        tr.write_line(f"activation cache: removed {p['removed']} least recently used entries "
                      f"({p['freed']} bytes) to stay under [tool.mechclaims] cache-max-size ({p['max_size']} bytes)")
    for name, t in state.targets().items():
        if t.get("stand_in"):
            tr.write_line(f"WARNING: {name} is a stand-in, not the model it names: {t['stand_in']}", yellow=True)
    for name, why in state.expectation_overrides.items():
        tr.write_line(f"WARNING: {name} runs on another model than its pre-registration (allowed): {why}", yellow=True)
    for name, entry in state.expectation_files.items():
        if entry.get("exploratory"):
            tr.write_line(f"EXPLORATORY: {name} has no pre-registration; its verdicts were judged against none",
                          yellow=True)
    for c in state.claims:
        figure = "-" if c["statistic"] is None else f"{c['statistic']:.3g}"
        if c["ci"]:
            figure += f" [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] n={c['n']}"
        expected = "" if c["expected"] is None else f" (expected {c['expected']})"
        if c["expected"] == REFUTED:
            expected = f" ({NEGATIVE_CONTROL}: expected {REFUTED})"
        elif c["expected"] == UNDECIDED:
            expected = f" ({UNDECIDED} at discovery: recorded, not judged)"
        if c["as_expected"] is False:
            expected = f" (UNEXPECTED: pre-registered {c['expected']})"
        tr.write_line(f"{c['verdict']:>14}  {c['id']} [{c['target']}]{expected}  {figure}")
        if c["verdict"] in reproduce.SHOWN_FOR:
            tr.write_line(f"{'':>16}reproduce: {reproduce.command(c, {'seed': state.settings.seed, 'settings': dict(state.settings.__dict__)})}")
        elif c["verdict"] in (INCONCLUSIVE, NOT_APPLICABLE) and c.get("message"):
            tr.write_line(f"{'':>16}why: {_first_line(c['message'])[:200]}")
    skipped = Counter(c["verdict"] for c in state.claims if c["verdict"] in (INCONCLUSIVE, NOT_APPLICABLE))
    if skipped:
        tr.write_line("pytest counts these claims as skipped: " + ", ".join(
            f"{n} {verdict}" for verdict, n in sorted(skipped.items())) + " (each with its reason above)")
    path = config.stash.get(report_path_key, None)
    if path is not None:
        tr.write_line(f"claim report: {path}")
