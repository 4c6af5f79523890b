"""Compare two runs: changed verdicts and figures; regressions for CI gating."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..results import SUPPORTED


@dataclass(frozen=True)
class Change:
    key: tuple[str, str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @property
    def regressed(self) -> bool:
        """supported before, anything else (or gone) after: refuted, errored or not-applicable."""
        was = self.before and self.before["verdict"] == SUPPORTED
        return bool(was) and (self.after is None or self.after["verdict"] != SUPPORTED)

    def describe(self) -> str:
        claim_id, target = self.key
        before = self.before["verdict"] if self.before else "absent"
        after = self.after["verdict"] if self.after else "absent"
        text = f"{claim_id} [{target}]: {before} -> {after}"
        if self.before and self.after and self.before.get("statistic") != self.after.get("statistic"):
            text += f"; statistic {self.before.get('statistic')} -> {self.after.get('statistic')}"
        return ("REGRESSION " if self.regressed else "") + text


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """Claims whose verdict or main statistic differs between runs ``a`` and ``b``."""
    index_a = {(c["id"], c["target"]): c for c in a["claims"]}
    index_b = {(c["id"], c["target"]): c for c in b["claims"]}
    changes = []
    for key in sorted(set(index_a) | set(index_b), key=lambda k: (k[0], str(k[1]))):
        before, after = index_a.get(key), index_b.get(key)
        if before is None or after is None or before["verdict"] != after["verdict"] or before.get("statistic") != after.get("statistic"):
            changes.append(Change(key, before, after))
    return changes
