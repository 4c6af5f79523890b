"""Declarative checks: a rule on an effect that writes the Finding's message for you.

Each check returns a :class:`~mechclaims.results.Finding` whose message states the effect,
its interval and the rule it had to meet, so a failed claim reads as evidence::

    finding = at_least(excess, 0.1, "attention to the next token, above uniform")
    claim.judge(finding)            # records it, and asserts it

Rules read the interval, never the point estimate: ``at_least`` needs the lower bound at
or above the threshold, ``at_most`` the upper bound at or below it, ``equivalent`` the
whole interval inside the margin, ``significant`` a p-value below alpha. A rule is
refuted only when the interval lies wholly on the wrong side (``at_least``: the upper
bound below the threshold; ``equivalent``: the interval wholly outside the margin); an
interval across the threshold decides nothing and makes the claim **inconclusive**, as
does a p-value at or above alpha. :func:`all_of` joins findings: supported when every
part is, refuted when any part is refuted, inconclusive otherwise.

:func:`holds_across` judges one claim over pre-registered variants (prompt formats,
tasks, seeds): the result is reported per variant, and the claim holds only where every
variant supports it; otherwise it is refuted and names the variants it is specific to.
"""

from __future__ import annotations

from typing import Any, Mapping

from .results import INCONCLUSIVE, REFUTED, SUPPORTED, Effect, Finding


def _described(what: str, effect: Effect, rule: str) -> str:
    return f"{what}: {effect} ({rule})"


def at_least(effect: Effect, threshold: float, what: str, **figures: Any) -> Finding:
    """Supported when the interval's lower bound is at or above ``threshold``."""
    ok = effect.ci.low >= threshold
    return Finding(effect, bool(ok), _described(what, effect, f"lower bound must be >= {threshold:g}"), threshold,
                   figures, decided=bool(ok or effect.ci.high < threshold))


def at_most(effect: Effect, threshold: float, what: str, **figures: Any) -> Finding:
    """Supported when the interval's upper bound is at or below ``threshold``."""
    ok = effect.ci.high <= threshold
    return Finding(effect, bool(ok), _described(what, effect, f"upper bound must be <= {threshold:g}"), threshold,
                   figures, decided=bool(ok or effect.ci.low > threshold))


def equivalent(effect: Effect, margin: float, what: str, **figures: Any) -> Finding:
    """Supported when the interval lies inside ``±margin`` (use with :func:`mechclaims.equivalence`,
    whose interval is the one TOST inverts)."""
    ok = -margin <= effect.ci.low and effect.ci.high <= margin
    outside = effect.ci.low > margin or effect.ci.high < -margin
    return Finding(effect, bool(ok), _described(what, effect, f"interval must lie within ±{margin:g}"), margin,
                   figures, decided=bool(ok or outside))


def significant(effect: Effect, what: str, *, alpha: float = 0.05, **figures: Any) -> Finding:
    """Supported when the effect's p-value is below ``alpha``."""
    if effect.pvalue is None:
        raise ValueError(f"{what}: {effect} has no p-value; use a test that gives one (paired_increase, beats_random)")
    ok = effect.pvalue < alpha
    return Finding(effect, bool(ok), _described(what, effect, f"p must be < {alpha:g}"), alpha, figures,
                   decided=bool(ok))  # no significance is absence of evidence, not evidence against


def all_of(*findings: Finding) -> Finding:
    """The first finding's effect, supported only if every finding is; messages joined with '; '."""
    if not findings:
        raise ValueError("all_of needs at least one finding")
    figures: dict[str, Any] = {}
    for f in findings:
        figures.update(f.figures)
    supported = all(f.supported for f in findings)
    refuted = any(not f.supported and f.decided for f in findings)
    return Finding(findings[0].effect, supported, "; ".join(f.message for f in findings), findings[0].threshold,
                   figures, decided=supported or refuted)


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
    holds = [name for name, v in verdicts.items() if v == SUPPORTED]
    fails = [name for name, v in verdicts.items() if v == REFUTED]
    open_ = [name for name, v in verdicts.items() if v == INCONCLUSIVE]
    shown = (fails or open_ or list(per_variant))[0]
    effect = per_variant[shown].effect
    if not fails and not open_:
        summary = f"{what} holds under every variant ({', '.join(holds)})"
    elif fails:
        summary = (f"{what} is specific to {', '.join(holds) or 'no variant'}: refuted under {', '.join(fails)}"
                   + (f", undecided under {', '.join(open_)}" if open_ else ""))
    else:
        summary = f"{what} holds under {', '.join(holds) or 'no variant'}, undecided under {', '.join(open_)}"
    variants = {
        name: {"verdict": verdicts[name], "statistic": f.effect.statistic, "ci_low": f.effect.ci.low,
               "ci_high": f.effect.ci.high, "level": f.effect.ci.level, "n": f.effect.n, "message": f.message}
        for name, f in per_variant.items()
    }
    message = summary + "; " + "; ".join(f"[{name}] {f.message}" for name, f in per_variant.items())
    return Finding(effect, not fails and not open_, message, per_variant[shown].threshold,
                   {"variants": variants, "holds_under": holds, "refuted_under": fails}, decided=bool(fails) or not open_)
