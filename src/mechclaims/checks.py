"""Declarative checks: a rule on an effect that writes the Finding's message for you.

Each check returns a :class:`~mechclaims.results.Finding` whose message states the effect,
its interval and the rule it had to meet, so a failed claim reads as evidence::

    finding = at_least(excess, 0.1, "attention to the next token, above uniform")
    claim.judge(finding)            # records it, and asserts it

Rules read the interval, never the point estimate: ``at_least`` needs the lower bound above
the threshold, ``at_most`` the upper bound below it, ``equivalent`` the whole interval inside
the margin, ``significant`` a p-value below alpha (by default the one-sided
``(1 - level) / 2`` that the interval's bound inverts, so ``significant`` and ``at_least(., 0)``
agree). A bound equal to the threshold decides only with ``inclusive=True``, for statistics
on integers such as layers: elsewhere (a bootstrap percentile on the ``k/n`` lattice) ties land
on the threshold too often for the rule to keep its error rate. A rule is
refuted only when the interval lies wholly on the wrong side (``at_least``: the upper
bound below the threshold; ``equivalent``: the interval wholly outside the margin); an
interval across the threshold decides nothing and makes the claim **inconclusive**, as
does a p-value at or above alpha, and an unbounded interval (a sample with no spread).
:func:`all_of` joins findings: supported when every
part is, refuted when any part is refuted, inconclusive otherwise.

:func:`holds_across` judges one claim over pre-registered variants (prompt formats,
tasks, seeds): the result is reported per variant, and the claim holds only where every
variant supports it; otherwise it is refuted and names the variants it is specific to.
"""

from __future__ import annotations

from typing import Any, Mapping

from .results import INCONCLUSIVE, REFUTED, SUPPORTED, Effect, Finding, Rule, read


def _described(what: str, effect: Effect, rule: str) -> str:
    return f"{what}: {effect} ({rule})"


def _rule(what: str, kind: str, bound: float, effect: Effect, bound_low: float | None = None,
          inclusive: bool = False) -> Rule:
    """The rule with the verdict its interval reads (:meth:`Rule.reading`)."""
    return Rule(what, kind, bound, effect, read(kind, bound, effect, bound_low, inclusive), bound_low, inclusive)


def _finding(effect: Effect, rule: Rule, message: str, threshold: float | None, figures: Mapping[str, Any]) -> Finding:
    return Finding(effect, rule.verdict == SUPPORTED, message, threshold, figures,
                   decided=rule.verdict != INCONCLUSIVE, rules=(rule,))


def at_least(effect: Effect, threshold: float, what: str, *, inclusive: bool = False, **figures: Any) -> Finding:
    """Supported when the interval's lower bound is above ``threshold`` (or equal to it, with
    ``inclusive``); refuted when its upper bound is below it; inconclusive otherwise."""
    rule = f"lower bound must be {'>=' if inclusive else '>'} {threshold:g}"
    return _finding(effect, _rule(what, "at_least", threshold, effect, inclusive=inclusive),
                    _described(what, effect, rule), threshold, figures)


def at_most(effect: Effect, threshold: float, what: str, *, inclusive: bool = False, **figures: Any) -> Finding:
    """Supported when the interval's upper bound is below ``threshold`` (or equal to it, with
    ``inclusive``); refuted when its lower bound is above it; inconclusive otherwise."""
    rule = f"upper bound must be {'<=' if inclusive else '<'} {threshold:g}"
    return _finding(effect, _rule(what, "at_most", threshold, effect, inclusive=inclusive),
                    _described(what, effect, rule), threshold, figures)


def equivalent(effect: Effect, margin: float, what: str, *, center: float = 0.0, inclusive: bool = False,
               **figures: Any) -> Finding:
    """Supported when the interval lies inside ``center ± margin`` (use with :func:`mechclaims.equivalence`,
    whose interval is the one TOST inverts); refuted when it lies wholly outside; inconclusive otherwise."""
    low, high = center - margin, center + margin
    window = f"±{margin:g}" if center == 0 else f"{center:.3g} ± {margin:g}"
    return _finding(effect, _rule(what, "within", high, effect, bound_low=low, inclusive=inclusive),
                    _described(what, effect, f"interval must lie within {window}"), margin, figures)


def significant(effect: Effect, what: str, *, alpha: float | None = None, **figures: Any) -> Finding:
    """Supported when the effect's p-value is below ``alpha``; otherwise inconclusive (no
    significance is absence of evidence, not evidence against). ``alpha`` defaults to
    ``(1 - level) / 2`` of the effect's interval: the one-sided level its bound inverts, so that
    ``significant`` and ``at_least(effect, 0, ...)`` test one hypothesis at one level."""
    if effect.pvalue is None:
        raise ValueError(f"{what}: {effect} has no p-value; use a test that gives one (paired_increase, beats_random)")
    alpha = (1 - effect.ci.level) / 2 if alpha is None else alpha
    return _finding(effect, _rule(what, "p_below", alpha, effect),
                    _described(what, effect, f"p must be < {alpha:g}"), alpha, figures)


def holds(condition: bool, what: str, effect: Effect, **figures: Any) -> Finding:
    """A condition with no sampling error of its own (a count, a configuration, a point reading the
    claim states without an interval): supported when true, refuted when false. ``effect`` is the
    figure it is about, reported beside it. Prefer a rule on an interval wherever one exists."""
    verdict = SUPPORTED if condition else REFUTED
    return _finding(effect, Rule(what, "holds", None, effect, verdict),
                    f"{what}: {'holds' if condition else 'does not hold'}", None, figures)


def all_of(*findings: Finding) -> Finding:
    """The first finding's effect, supported only if every finding is, refuted when any is refuted,
    inconclusive otherwise; messages joined with '; ', rules and figures gathered."""
    if not findings:
        raise ValueError("all_of needs at least one finding")
    figures: dict[str, Any] = {}
    for f in findings:
        figures.update(f.figures)
    supported = all(f.supported for f in findings)
    refuted = any(not f.supported and f.decided for f in findings)
    return Finding(findings[0].effect, supported, "; ".join(f.message for f in findings), findings[0].threshold,
                   figures, decided=supported or refuted, rules=_joined_rules(findings))


def _joined_rules(findings: tuple[Finding, ...]) -> tuple:
    """The parts' rules; none when some part was built by hand (its rules are unknown)."""
    if not all(f.rules for f in findings):
        return ()
    return tuple(r for f in findings for r in f.rules)


def holds_across(per_variant: Mapping[str, Finding], what: str) -> Finding:
    """One claim judged under each pre-registered variant (``{name: finding}``, in order).

    Supported when every variant's finding is; refuted when any is refuted (the claim is then
    specific to the variants it holds in); inconclusive otherwise.  The effect is the first
    refuted variant's (else the first undecided one's, else the first variant's), and
    ``figures["variants"]`` gives every variant's verdict, statistic, interval, n and message.
    """
    if not per_variant:
        raise ValueError(f"{what}: holds_across needs at least one variant")
    verdicts = {name: SUPPORTED if f.supported else REFUTED if f.decided else INCONCLUSIVE
                for name, f in per_variant.items()}
    holding = [name for name, v in verdicts.items() if v == SUPPORTED]
    fails = [name for name, v in verdicts.items() if v == REFUTED]
    open_ = [name for name, v in verdicts.items() if v == INCONCLUSIVE]
    shown = (fails or open_ or list(per_variant))[0]
    effect = per_variant[shown].effect
    if not fails and not open_:
        summary = f"{what} holds under every variant ({', '.join(holding)})"
    elif fails:
        summary = (f"{what} is specific to {', '.join(holding) or 'no variant'}: refuted under {', '.join(fails)}"
                   + (f", undecided under {', '.join(open_)}" if open_ else ""))
    else:
        summary = f"{what} holds under {', '.join(holding) or 'no variant'}, undecided under {', '.join(open_)}"
    variants = {
        name: {"verdict": verdicts[name], "statistic": f.effect.statistic, "ci_low": f.effect.ci.low,
               "ci_high": f.effect.ci.high, "level": f.effect.ci.level, "n": f.effect.n, "message": f.message}
        for name, f in per_variant.items()
    }
    message = summary + "; " + "; ".join(f"[{name}] {f.message}" for name, f in per_variant.items())
    return Finding(effect, not fails and not open_, message, per_variant[shown].threshold,
                   {"variants": variants, "holds_under": holding, "refuted_under": fails}, decided=bool(fails) or not open_,
                   rules=_variant_rules(per_variant))


def _variant_rules(per_variant: Mapping[str, Finding]) -> tuple[Rule, ...]:
    """Every variant's rules, named for their variant; none when some variant was built by hand."""
    if not all(f.rules for f in per_variant.values()):
        return ()
    return tuple(Rule(f"[{name}] {r.what}", r.kind, r.bound, r.effect, r.verdict, r.bound_low, r.inclusive)
                 for name, f in per_variant.items() for r in f.rules)
