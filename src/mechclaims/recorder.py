"""The ``claim`` fixture's object: how a claim test records its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from .results import Effect, Finding, Rule


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
    rules: tuple[Rule, ...] = ()  # the rules the verdict rests on (claim.judge)
    seed: int = 0  # the run's --mechclaims-seed: every resampling and random control of the claim uses it

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
        self.figures.setdefault("statistics_seed", self.seed)
        self.figures.update(figures)
        return effect

    def judge(self, finding: Finding, **notes: Any) -> None:
        """Record ``finding`` (effect, threshold, message, figures, plus ``notes``) and
        assert it: a refuted finding fails the test with the evidence; an undecided one
        (``finding.decided`` False) makes the claim inconclusive."""
        if not isinstance(finding, Finding):
            raise TypeError(f"claim.judge takes a Finding, got {type(finding).__name__}; build one with "
                            "mechclaims.at_least, at_most, equivalent, significant, holds or all_of")
        self.record(finding.effect, threshold=finding.threshold, message=finding.message, **finding.figures, **notes)
        self.rules = finding.rules
        if not finding.supported and not finding.decided:
            pytest.skip(f"inconclusive: {self.evidence()}")
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

    def require(self, effect: Effect, *, at_least: float, what: str, **figures: Any) -> None:
        """A precondition: unless ``effect``'s lower bound reaches ``at_least``, the claim is
        not applicable (recorded with the effect, and the test skipped). A claim about how a
        model does a task has nothing to explain on a model that cannot do it."""
        if not isinstance(effect, Effect):
            raise TypeError(f"claim.require takes an Effect, got {type(effect).__name__}")
        if effect.ci.low < at_least:
            self.not_applicable(f"precondition: {what} {effect} is below {at_least:g} (lower bound)", effect, **figures)
        self.figures.setdefault("precondition", f"{what} {effect}")

    def evidence(self) -> str:
        """The recorded figures as one line, for assertion messages."""
        parts = [f"{self.id} on {self.target}: {self.effect}"]
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.message:
            parts.append(self.message)
        return "; ".join(parts)
