"""Frozen result types shared by every claim, with one vocabulary.

Every figure a claim reports is an :class:`Effect`: a ``statistic`` with its
confidence interval ``ci`` (``ci.low``, ``ci.high``), the sample size ``n`` and,
where a test was run, its ``pvalue``.  A :class:`ClaimResult` is what the
report stores for one (claim, target) pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SCHEMA_VERSION = 1

SUPPORTED = "supported"
REFUTED = "refuted"
NOT_APPLICABLE = "not-applicable"
ERRORED = "errored"
INCONCLUSIVE = "inconclusive"  # the interval straddles the rule: too little evidence for a verdict either way
VERDICTS = (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_APPLICABLE, ERRORED)
# An expectation, not a verdict: the exploration could not decide, so nothing was predicted. The
# confirmation's verdict is recorded and not judged (only an errored claim fails the run).
UNDECIDED = "undecided"


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval at ``level``."""

    low: float
    high: float
    level: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"Interval level must be in (0, 1), got {self.level!r}")
        if self.low > self.high:
            raise ValueError(
                f"Interval low {self.low!r} exceeds high {self.high!r}; pass (low, high) in order"
            )

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_list(self) -> list[float | None]:
        return [_finite_or_none(self.low), _finite_or_none(self.high)]


@dataclass(frozen=True)
class Effect:
    """A statistic with its interval and sample size (scipy.stats vocabulary)."""

    statistic: float
    ci: Interval
    n: int
    pvalue: float | None = None

    def is_finite(self) -> bool:
        """A finite statistic and p-value, and an interval without NaN (an unbounded interval,
        from a sample with no spread, is allowed: no rule decides on it)."""
        values = [self.statistic]
        if self.pvalue is not None:
            values.append(self.pvalue)
        return all(math.isfinite(v) for v in values) and not (math.isnan(self.ci.low) or math.isnan(self.ci.high))

    def __str__(self) -> str:
        text = (
            f"{self.statistic:.3g} [{self.ci.low:.3g}, {self.ci.high:.3g}] "
            f"({self.ci.level:.0%} CI, n={self.n})"
        )
        if self.pvalue is not None:
            text += f", p={self.pvalue:.3g}"
        return text


RULE_KINDS = ("at_least", "at_most", "within", "p_below", "holds")


def read(kind: str, bound: float | None, effect: "Effect | None", bound_low: float | None = None,
         inclusive: bool = False) -> str:
    """What an interval says of a rule: ``supported`` when it lies on the rule's side (strictly,
    unless ``inclusive``), ``refuted`` when it lies wholly on the other, ``inconclusive`` when it
    crosses the bound, is unbounded or holds a NaN. ``p_below`` reads the p-value and is never
    refuted."""
    if effect is None or bound is None:
        return INCONCLUSIVE
    low, high = effect.ci.low, effect.ci.high
    beyond = (lambda x, y: x >= y) if inclusive else (lambda x, y: x > y)  # x past y on the rule's side
    if kind == "at_least":
        ok, wrong = beyond(low, bound), high < bound
    elif kind == "at_most":
        ok, wrong = beyond(bound, high), low > bound
    elif kind == "within":
        floor = -math.inf if bound_low is None else bound_low
        ok, wrong = beyond(low, floor) and beyond(bound, high), low > bound or high < floor
    elif kind == "p_below":
        ok, wrong = effect.pvalue is not None and effect.pvalue < bound, False
    else:
        raise ValueError(f"rule kind {kind!r} is not read from an interval; use one of at_least, at_most, within, p_below")
    return SUPPORTED if ok else REFUTED if wrong else INCONCLUSIVE


@dataclass(frozen=True)
class Rule:
    """One rule a claim had to meet and what its evidence says of it.

    ``kind`` is how the interval is read against ``bound``: ``at_least`` (lower bound at or
    above it), ``at_most`` (upper bound at or below it), ``within`` (the interval inside
    ``[bound_low, bound]``), ``p_below`` (the p-value under it; never refuted), ``holds`` (a
    fact with no sampling error, decided either way).  ``verdict`` is ``supported``,
    ``refuted`` or ``inconclusive``, as the checks in :mod:`mechclaims.checks` read it.
    """

    what: str
    kind: str
    bound: float | None
    effect: Effect | None
    verdict: str
    bound_low: float | None = None
    # Whether an interval bound equal to the rule's bound decides it. Off by default: a bound on a
    # lattice (a bootstrap percentile at k/n) lands on the threshold too often for the rule to keep
    # its error rate. On for statistics that live on integers, such as layers.
    inclusive: bool = False

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"rule kind {self.kind!r} is not one of {', '.join(RULE_KINDS)}")
        if self.verdict not in (SUPPORTED, REFUTED, INCONCLUSIVE):
            raise ValueError(f"rule verdict {self.verdict!r} is not one of {SUPPORTED}, {REFUTED}, {INCONCLUSIVE}")
        if self.kind != "holds" and self.verdict != INCONCLUSIVE and self.verdict != self.reading():
            raise ValueError(
                f"{self.what}: {self.effect} does not earn {self.verdict!r} under {self.kind} {self.bound!r} "
                f"(the interval reads {self.reading()!r}); an interval across its rule is inconclusive"
            )

    def reading(self) -> str:
        """What the interval says of the rule (:func:`read`); ``holds`` is read by the claim itself."""
        return self.verdict if self.kind == "holds" else read(self.kind, self.bound, self.effect, self.bound_low,
                                                               self.inclusive)

    def to_json(self) -> dict[str, Any]:
        effect = self.effect
        return {
            "what": self.what, "kind": self.kind, "bound": _finite_or_none(self.bound),
            "bound_low": _finite_or_none(self.bound_low), "inclusive": self.inclusive, "verdict": self.verdict,
            "statistic": _finite_or_none(effect.statistic) if effect else None,
            "ci": effect.ci.as_list() if effect else None,
            "n": effect.n if effect else None,
            "pvalue": _finite_or_none(effect.pvalue) if effect else None,
        }


@dataclass(frozen=True)
class ClaimResult:
    """The verdict on one claim for one target, as written to ``claims.json``."""

    nodeid: str
    id: str
    target: str | None
    verdict: str
    effect: Effect | None = None
    threshold: float | None = None
    message: str = ""
    source: str | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)
    expected: str | None = None
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(
                f"verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}"
            )

    def to_json(self) -> dict[str, Any]:
        effect = self.effect
        return {
            "nodeid": self.nodeid,
            "id": self.id,
            "target": self.target,
            "verdict": self.verdict,
            "statistic": _finite_or_none(effect.statistic) if effect else None,
            "ci": effect.ci.as_list() if effect else None,
            "ci_level": effect.ci.level if effect else None,
            "threshold": _finite_or_none(self.threshold),
            "n": effect.n if effect else None,
            "pvalue": _finite_or_none(effect.pvalue) if effect else None,
            "message": self.message,
            "source": self.source,
            "figures": _jsonable(dict(self.figures)),
            "rules": [rule.to_json() for rule in self.rules],
            "expected": self.expected,
            "as_expected": (None if self.expected is None
                            else (False if self.verdict == ERRORED else None) if self.expected == UNDECIDED
                            else self.verdict == self.expected),
        }


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays and nested containers into plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, (Effect, Interval)):
        return _jsonable(value.__dict__)
    return value


@dataclass(frozen=True)
class Finding:
    """A claim's decision on one target: its main effect, whether the claim is
    supported, and the evidence (one-line message and supporting figures)."""

    effect: Effect
    supported: bool
    message: str
    threshold: float | None = None
    figures: Mapping[str, Any] = field(default_factory=dict)
    # False when the evidence decides neither way (an interval across the threshold): the claim is
    # then inconclusive, never refuted; an under-powered result is not a verdict. No default: every
    # finding says whether its evidence decides (the checks in mechclaims.checks work it out).
    decided: bool = field(kw_only=True)
    # The rules the verdict rests on, each with its own interval and reading (empty only for a
    # finding built by hand); when given, the verdict must follow from them.
    rules: tuple[Rule, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.decided, bool) or not isinstance(self.supported, bool):
            raise TypeError(f"Finding takes supported and decided as bools, got {self.supported!r} and {self.decided!r}")
        if self.supported and not self.decided:
            raise ValueError(f"a supported finding is decided; got supported=True, decided=False: {self.message}")
        if self.rules:
            verdict = self.verdict
            implied = (SUPPORTED if all(r.verdict == SUPPORTED for r in self.rules)
                       else REFUTED if any(r.verdict == REFUTED for r in self.rules) else INCONCLUSIVE)
            if verdict != implied:
                raise ValueError(
                    f"finding says {verdict} but its rules imply {implied} "
                    f"({', '.join(f'{r.what}: {r.verdict}' for r in self.rules)}); build it with mechclaims.all_of"
                )

    @property
    def verdict(self) -> str:
        """``supported``, ``refuted`` or ``inconclusive``."""
        return SUPPORTED if self.supported else REFUTED if self.decided else INCONCLUSIVE
