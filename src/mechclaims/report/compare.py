"""Compare two runs: changed verdicts and figures; regressions for CI gating."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import ERRORED, UNDECIDED


@dataclass(frozen=True)
class Change:
    key: tuple[str, str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @property
    def regressed(self) -> bool:
        """The new run moved away from what was expected of it.

        The pre-registration is the new run's ``expected``, else the old run's. Against it: a new
        verdict other than the pre-registered one, ``errored`` included, and a negative control
        turning ``supported``. A verdict that was already off its pre-registration in the old run
        and stays the same has not moved (its run failed on its own; a figure that moved in its
        last digits does not make it a regression). Without a pre-registration, the old run is the
        baseline: any change of verdict. A claim that is gone from the new run always regressed."""
        if self.after is None:
            return True
        expected = self.after.get("expected") or (self.before or {}).get("expected")
        if expected is not None and expected != UNDECIDED:  # undecided predicts nothing: as without one
            moved = self.before is None or self.before["verdict"] != self.after["verdict"]
            return self.after["verdict"] != expected and moved
        if self.before is None:
            return self.after["verdict"] == ERRORED
        return self.after["verdict"] != self.before["verdict"]

    def describe(self) -> str:
        claim_id, target = self.key
        before = self.before["verdict"] if self.before else "absent"
        after = self.after["verdict"] if self.after else "absent"
        text = f"{claim_id} [{target}]: {before} -> {after}"
        expected = (self.after.get("expected") or (self.before or {}).get("expected")) if self.after else None
        if expected is not None and expected != after:
            text += f" (pre-registered {expected})"
        if self.before and self.after and self.before.get("statistic") != self.after.get("statistic"):
            text += f"; statistic {self.before.get('statistic')} -> {self.after.get('statistic')}"
        return ("REGRESSION " if self.regressed else "") + text


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Claims whose verdict or main statistic differs between runs ``a`` and ``b`` (each checked by
    :func:`mechclaims.report.reading.read_run`, so an (id, target) appears once in each)."""
    index_a = {(c["id"], c["target"]): c for c in a["claims"]}
    index_b = {(c["id"], c["target"]): c for c in b["claims"]}
    changes = []
    for key in sorted(set(index_a) | set(index_b), key=lambda k: (k[0], str(k[1]))):
        before, after = index_a.get(key), index_b.get(key)
        if before is None or after is None or before["verdict"] != after["verdict"] or before.get("statistic") != after.get("statistic"):
            changes.append(Change(key, before, after))
    return changes


def incomplete(record: dict[str, Any]) -> bool:
    """The run stopped before every selected claim had a verdict (``run.complete`` false)."""
    return not record["run"].get("complete", False)
