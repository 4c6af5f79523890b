"""The collection policy: targets as parameters, deselection (claim targets, GPU marks, shards),
claim-id checks, and pre-registered verdicts turned into marks (a negative control is a strict
xfail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import scheduling, shards, threads
from .errors import MechclaimsError
from .preregistration import expectations_for
from .results import REFUTED, UNDECIDED
from .stash import expected_key, session_key
from .registry import get_spec
from .loading import resolve
from .targets.spec import TARGETS


def target_params(config: pytest.Config) -> list:
    """One parameter per selected target; a GPU target's carries the ``gpu`` mark."""
    return [
        pytest.param(name, id=name, marks=[pytest.mark.gpu] if TARGETS[name].gpu else [])
        for name in selected_targets(config)
    ]


def modify_items(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check and mark the collected claim tests, then deselect what this run does not run."""
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
        if marker is not None and target_name(item) is not None:
            _apply_expectation(item, marker.kwargs["id"])
    explicit_gpu = any(TARGETS[n].gpu for n in config.getoption("mechclaims_target"))
    if not config.option.markexpr and not explicit_gpu:
        deselect(config, items, [i for i in items if i.get_closest_marker("gpu") is not None])
    _preflight_gpu(config, items)
    _keep_shard(config, items)


def selected_targets(config: pytest.Config) -> list[str]:
    return list(dict.fromkeys(config.getoption("mechclaims_target"))) or list(TARGETS)


def _keep_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--mechclaims-shard K/N``: deselect every test outside shard K (mechclaims.shards)."""
    shard = config.getoption("mechclaims_shard")
    if shard is None:
        return
    group = {id(item): target_name(item) or item.nodeid for item in items}
    placed = shards.assign(group.values(), shard.count)
    dropped = [item for item in items if placed[group[id(item)]] != shard.index]
    config.stash[session_key].shard_empty = len(dropped) == len(items) > 0
    deselect(config, items, dropped)


def deselect(config: pytest.Config, items: list[pytest.Item], dropped: list[pytest.Item]) -> None:
    """Take ``dropped`` out of ``items`` as pytest's own deselection does (reported as deselected)."""
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        gone = {id(item) for item in dropped}
        items[:] = [item for item in items if id(item) not in gone]


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
        if target_name(item) not in only:
            dropped.append(item)
    deselect(config, items, dropped)


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
        key = (marker.kwargs["id"], target_name(item))
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
        running = {target_name(i) for i in items if i.path.parent == claims_dir}
        for name in [n for n in selected_targets(config) if n in running]:
            exp = expectations_for(config, claims_dir, name)
            unknown = sorted(set(exp.verdicts) - ids)
            if unknown:
                raise pytest.UsageError(
                    f"{exp.path}: [verdicts] names unknown claim ids {', '.join(unknown)}; "
                    f"claims defined in {claims_dir}: {', '.join(sorted(ids))}"
                )


def _apply_expectation(item: pytest.Item, claim_id: str) -> None:
    """Store the pre-registered verdict; an expected refutation becomes a strict xfail."""
    exp = expectations_for(item.config, item.path.parent, target_name(item))
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


def parallel_notes(config: pytest.Config) -> list[str]:
    """What ``-n`` does for this run, said once in the run header: the cost of a ``--dist`` that
    splits targets, or that one CPU target cannot go faster."""
    workers = config.getoption("numprocesses", None)
    if not workers or hasattr(config, "workerinput"):
        return []
    if (cost := scheduling.cost_of_dist(config)) is not None:
        return [cost]
    names = selected_targets(config)
    if not config.option.markexpr and not any(TARGETS[n].gpu for n in config.getoption("mechclaims_target")):
        names = [n for n in names if n in TARGETS and not TARGETS[n].gpu]
    device = config.getoption("mechclaims_device")
    if len(names) == 1 and (device or get_spec(names[0]).device) == "cpu":
        return [f"-n {workers} with one CPU target ({names[0]}): its claims run on one worker, which takes "
                f"all {threads.available_cores()} cores; -n cannot make one CPU target faster than a serial run "
                "(docs/concepts.md)"]
    return []


def is_claim_test(item: pytest.Item) -> bool:
    return item.get_closest_marker("claim") is not None or target_name(item) is not None


def target_name(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("target") if callspec else None

