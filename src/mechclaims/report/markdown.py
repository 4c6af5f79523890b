"""``claims.md``: one table per claim (target, verdict, expected, statistic, CI, threshold, n).

Every text that comes from a run (ids, target names, messages, sources) is untrusted: markdown
viewers render inline HTML, so ``&``, ``<`` and ``>`` become entities, and a table cell's ``|``
and line breaks are escaped."""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _text(value)


def _text(value: Any) -> str:
    """Run text as inert markdown: no HTML, no table breaks, one line."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").replace("`", "\\`").split())


def render(record: dict[str, Any]) -> str:
    run = record["run"]
    lines = [
        "# Claim report",
        "",
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
                f"| {_text(c.get('target'))} | {verdict} | {_text(c.get('expected') or '-')} | {_num(c.get('statistic'))} | "
                f"{ci_text} | {_num(c.get('threshold'))} | {_num(c.get('n'))} | {_num(c.get('pvalue'))} |"
            )
        for c in rows:
            if c.get("message"):
                lines.append(f"\n- {_text(c.get('target'))}: {_text(c['message'])}")
    return "\n".join(lines) + "\n"
