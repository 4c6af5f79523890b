"""How many torch threads each process of a run uses.

torch starts every process with one intra-op thread per core. Under pytest-xdist that is one
thread per core *per worker*: two workers on two cores run four threads and fight over the
cores, which made ``-n 2`` many times slower than a serial run. The rule here: a worker takes
the available cores divided by the workers that have work (at least one), unless the user chose
(``--mechclaims-threads``, ``OMP_NUM_THREADS``, or ``torch.set_num_threads`` in a conftest).
A serial run keeps torch's default. :func:`plan` is the pure rule; :func:`apply` sets it.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

# torch's intra-op threads as torch started, before any user code could change them: a conftest
# that calls torch.set_num_threads leaves a different value, and that choice wins. Read right
# after torch is first imported (by whoever imports it), so the plugin itself never imports torch.
_at_import: int | None = None


class _WatchTorchImport(importlib.abc.MetaPathFinder):
    """Reads torch's threads the moment torch's own import finishes, then leaves sys.meta_path."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            global _at_import
            run(module)
            _at_import = module.get_num_threads()

        loader.exec_module = exec_module  # this spec's loader only
        return spec


def watch_torch_import() -> None:
    """Record torch's starting threads: now if torch is already imported, else when it is."""
    global _at_import
    if "torch" in sys.modules:
        if _at_import is None:
            _at_import = sys.modules["torch"].get_num_threads()
    elif not any(isinstance(f, _WatchTorchImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _WatchTorchImport())

# Where a process's thread count came from (Plan.source).
ASKED, OMP, PRESET, DEFAULT, SHARED = (
    "--mechclaims-threads", "OMP_NUM_THREADS", "torch.set_num_threads", "torch default", "cores / busy workers")


@dataclass(frozen=True)
class Plan:
    """The intra-op threads of one process, and why."""

    threads: int
    source: str  # one of ASKED, OMP, PRESET, DEFAULT, SHARED
    cores: int  # cores this process may run on
    workers: int  # pytest-xdist workers in the run (1: a serial run)
    busy: int  # workers that have tests to run (claims grouped by target leave some idle)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def plan(*, cores: int, workers: int, busy: int, current: int, asked: int | None = None,
         omp: str | None = None, preset: bool = False) -> Plan:
    """The thread count of one process.

    ``asked`` is ``--mechclaims-threads``; ``omp`` the ``OMP_NUM_THREADS`` environment variable
    (torch has already applied it, so ``current`` holds its effect); ``preset`` whether user code
    changed torch's threads before the plugin configured. Any of them wins over the rule.
    """
    if asked is not None:
        return Plan(asked, ASKED, cores, workers, busy)
    if omp is not None:
        return Plan(current, OMP, cores, workers, busy)
    if preset:
        return Plan(current, PRESET, cores, workers, busy)
    if workers <= 1:
        return Plan(current, DEFAULT, cores, workers, busy)
    busy = max(1, min(busy, workers))
    return Plan(max(1, cores // busy), SHARED, cores, workers, busy)


def apply(*, workers: int, busy: int, asked: int | None) -> Plan:
    """Decide this process's threads from its environment, and set them."""
    import torch

    current = torch.get_num_threads()
    chosen = plan(cores=available_cores(), workers=workers, busy=busy, current=current, asked=asked,
                  omp=os.environ.get("OMP_NUM_THREADS"), preset=_at_import is not None and current != _at_import)
    if chosen.threads != current:
        torch.set_num_threads(chosen.threads)
    return chosen
