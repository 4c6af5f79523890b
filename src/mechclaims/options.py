"""The plugin's command-line options and their types (each bad value is refused in one line
naming the valid range)."""

from __future__ import annotations

import argparse

import pytest

from . import shards
from .cachedir import STORE_MODES
from .errors import MechclaimsError
from .settings import PROFILES
from .targets.spec import DEVICE_MAPS, DEVICES, DTYPES


def _whole(what: str, low: int, high: int):
    """An option type: a whole number from ``low`` to ``high``, else an error naming the range."""
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


def add_options(parser: pytest.Parser) -> None:
    """Add the ``--mechclaims-*`` options to ``parser``."""
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
