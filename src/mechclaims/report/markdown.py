"""``claims.md``: one table per claim (target, verdict, expected, statistic, CI, threshold, n).

Every text that comes from a run (ids, target names, messages, sources) is untrusted: markdown
viewers render inline HTML, images and links, so ``&``, ``<`` and ``>`` and the characters of
images, links and emphasis are backslash-escaped (CommonMark's escapes: a viewer shows ``<bos>``
and ``>=``, and the raw file has a backslash before each, never an entity such as ``&lt;``),
URLs and addresses are broken so that no viewer links them, and a table cell's ``|`` and line
breaks are escaped."""

from __future__ import annotations

import re
from typing import Any

from . import reproduce
from .reading import expected_label, preregistration

_MARKUP = re.compile(r"([\\`*_\[\]()!|~@&<>])")
_AUTOLINK = re.compile(r"(?i)\b(https?|ftp|mailto|file|javascript|data|www)([:.])")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)


def _text(value: Any) -> str:
    """Run text as inert markdown: no HTML, no image, link or emphasis, no table breaks, one line."""
    text = _AUTOLINK.sub(lambda m: m.group(1) + "\\" + m.group(2), _MARKUP.sub(r"\\\1", str(value)))
    return " ".join(text.split())


def render(record: dict[str, Any]) -> str:
    run = record["run"]
    errors = run.get("target_errors") if isinstance(run.get("target_errors"), dict) else {}
    lines = [
        "# Claim report",
        "",
        *(f"**TARGET ERROR** {_text(name)} cannot run, so its claims errored: {_text(why)}\n"
          for name, why in errors.items()),
        _text(run.get("header", "")),
        "",
        f"- started {_text(run.get('started'))}, finished {_text(run.get('finished') or 'not finished (incomplete run)')}",
        f"- git commit {_text(run.get('git_commit') or 'unknown')}, seed {_text(run.get('seed'))}",
    ]
    for name, t in run.get("targets", {}).items():
        lines.append(f"- target {_text(name)}: {_text(t.get('source'))} ({_text(t.get('sha256_or_revision'))}), "
                     f"{_text(t.get('dtype'))} on {_text(t.get('device'))}")
        if t.get("stand_in"):
            lines.append(f"  - **STAND-IN**, not the model it names: {_text(t['stand_in'])}")
        registered = run.get("expectations") if isinstance(run.get("expectations"), dict) else {}
        lines.append(f"  - pre-registration: {_text(preregistration(registered.get(name)))}")
    by_claim: dict[str, list[dict[str, Any]]] = {}
    for claim in record["claims"]:
        by_claim.setdefault(claim["id"], []).append(claim)
    for claim_id, rows in by_claim.items():
        lines += [
            "",
            f"## {_text(claim_id)}",
            "",
            "| target | verdict | expected | statistic | 95% CI | threshold | n | p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in rows:
            ci = c.get("ci")
            ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"
            verdict = _text(c["verdict"])
            if c.get("as_expected") not in (None, True):
                verdict = f"**{verdict}** (unexpected)"
            lines.append(
                f"| {_text(c.get('target'))} | {verdict} | {_text(expected_label(c))} | {_num(c.get('statistic'))} | "
                f"{ci_text} | {_num(c.get('threshold'))} | {_num(c.get('n'))} | {_num(c.get('pvalue'))} |"
            )
        for c in rows:
            if c.get("message"):
                lines.append(f"\n- {_text(c.get('target'))}: {_text(c['message'])}")
            if c.get("verdict") in reproduce.SHOWN_FOR:
                lines.append(f"\n  reproduce: {_text(reproduce.command(c, run))}")
    return "\n".join(lines) + "\n"
