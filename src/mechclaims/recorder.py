"""The ``claim`` fixture's object: how a claim test records its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from .results import Effect, Finding


@dataclass
class ClaimRecorder:
    """Collects the main effect and supporting figures of one claim test."""

    id: str
    target: str | None
    source: str | None = None
    effect: Effect | None = None
    threshold: float | None = None
    message: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def record(
        self, effect: Effect, *, threshold: float | None = None, message: str = "", **figures: Any
    ) -> Effect:
        """Record the claim's main statistic; returns ``effect`` for the assertion."""
        if not isinstance(effect, Effect):
            raise TypeError(
                f"claim.record takes an Effect (statistic, ci, n), got {type(effect).__name__}; "
                "build one with mechclaims.proportion(...) or another mechclaims.stats function"
            )
        self.effect = effect
        self.threshold = threshold
        self.message = message
        self.figures.update(figures)
        return effect

    def judge(self, finding: Finding, **notes: Any) -> None:
        """Record ``finding`` (effect, threshold, message, figures, plus ``notes``) and
        assert it: a refuted finding fails the test with the evidence."""
        self.record(finding.effect, threshold=finding.threshold, message=finding.message, **finding.figures, **notes)
        assert finding.supported, self.evidence()

    def note(self, **figures: Any) -> None:
        """Add supporting figures without changing the main statistic."""
        self.figures.update(figures)

    def not_applicable(self, reason: str, effect: Effect | None = None, **figures: Any) -> NoReturn:
        """The claim's precondition failed: record why and skip as not applicable."""
        if effect is not None:
            self.effect = effect
        self.message = reason
        self.figures.update(figures)
        pytest.skip(f"not applicable: {reason}")

    def evidence(self) -> str:
        """The recorded figures as one line, for assertion messages."""
        parts = [f"{self.id} on {self.target}: {self.effect}"]
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.message:
            parts.append(self.message)
        return "; ".join(parts)
