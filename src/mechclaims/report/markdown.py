"""``claims.md``: one table per claim (target, verdict, expected, statistic, CI, threshold, n)."""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(record: dict[str, Any]) -> str:
    run = record["run"]
    lines = [
        "# Claim report",
        "",
        f"`{run.get('header', '')}`",
        "",
        f"- started {run.get('started')}, finished {run.get('finished') or 'not finished (incomplete run)'}",
        f"- git commit {run.get('git_commit') or 'unknown'}, seed {run.get('seed')}",
    ]
    for name, t in run.get("targets", {}).items():
        lines.append(f"- target `{name}`: {t.get('source')} ({t.get('sha256_or_revision')}), {t.get('dtype')} on {t.get('device')}")
    by_claim: dict[str, list[dict[str, Any]]] = {}
    for claim in record["claims"]:
        by_claim.setdefault(claim["id"], []).append(claim)
    for claim_id, rows in by_claim.items():
        lines += [
            "",
            f"## {claim_id}",
            "",
            "| target | verdict | expected | statistic | 95% CI | threshold | n | p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in rows:
            ci = c.get("ci")
            ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"
            verdict = c["verdict"] if c.get("as_expected") in (None, True) else f"**{c['verdict']}** (unexpected)"
            lines.append(
                f"| {c.get('target')} | {verdict} | {c.get('expected') or '-'} | {_num(c.get('statistic'))} | "
                f"{ci_text} | {_num(c.get('threshold'))} | {_num(c.get('n'))} | {_num(c.get('pvalue'))} |"
            )
        for c in rows:
            if c.get("message"):
                lines.append(f"\n- {c.get('target')}: {c['message']}")
    return "\n".join(lines) + "\n"
