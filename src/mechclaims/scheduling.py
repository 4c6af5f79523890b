"""pytest-xdist scheduling by target: ``-n N`` sends all of a target's claims to one worker, so
each model loads once, on one worker (and, with ``--mechclaims-device cuda``, on that worker's own
GPU: worker K takes ``cuda:K``, :func:`mechclaims.loading.worker_device`). It is the default under
``-n`` and what ``--dist loadgroup`` asks for; any other ``--dist`` the user names is kept.

xdist's own ``loadgroup`` groups by ``@pytest.mark.xdist_group``, which it records by renaming
node ids; pytest 9.2 derives node ids from their parts, so the rename no longer takes and every
test is its own group. This scheduler reads the target from the node id's parameters instead
(``test_x[organism]``, ``test_x[organism-3]``) and keeps xdist's rule for tests that carry an
``@group`` suffix.
"""

from __future__ import annotations

from typing import Iterable


def target_of(nodeid: str, names: Iterable[str]) -> str | None:
    """The target among ``names`` that parametrises ``nodeid``, or None. Parameter ids are joined by
    ``-`` and target names may contain one, so the longest name that fills whole parts wins."""
    if not nodeid.endswith("]") or "[" not in nodeid:
        return None
    params = nodeid[nodeid.rindex("[", 0, nodeid.rindex("]")) + 1 : -1]
    parts = params.split("-")
    found = None
    for name in names:
        width = name.count("-") + 1
        if any("-".join(parts[i : i + width]) == name for i in range(len(parts) - width + 1)):
            if found is None or len(name) > len(found):
                found = name
    return found


def by_target(config) -> bool:
    """Whether this run's pytest-xdist workers get whole targets: ``-n`` without ``--dist`` (xdist
    then says ``load``, but the command line said nothing) or ``--dist loadgroup``."""
    dist = config.getoption("dist", None)
    asked = getattr(config.known_args_namespace, "dist", None)
    return dist == "loadgroup" or (dist == "load" and asked in (None, "no"))


def cost_of_dist(config) -> str | None:
    """One line on what an explicitly asked ``--dist`` other than by target costs, or None."""
    dist = config.getoption("dist", None)
    if not config.getoption("numprocesses", None) or dist in (None, "no") or by_target(config):
        return None
    return (f"--dist {dist} spreads each target's claims over the workers: every worker loads each target "
            "it meets and recomputes what one activation store would share; leave --dist out to give "
            "each worker whole targets")


def make_scheduler(config, log, names: list[str]):
    """A LoadGroupScheduling whose groups are targets (pytest-xdist is imported only here)."""
    from xdist.scheduler import LoadGroupScheduling

    class TargetGroups(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # xdist's own group suffix, where it takes
                return nodeid.split("@")[-1]
            target = target_of(nodeid, names)
            return f"mechclaims-target:{target}" if target else nodeid

    return TargetGroups(config, log)
