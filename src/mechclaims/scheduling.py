"""pytest-xdist scheduling by target: ``-n N --dist loadgroup`` sends all of a target's claims
to one worker, so each model loads once, on one worker (and, with ``--mechclaims-device cuda``,
on that worker's own GPU: worker K takes ``cuda:K``, :func:`mechclaims.targets.worker_device`).

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
