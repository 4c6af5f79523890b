"""``index.html``: the claim report people read, one self-contained page.

The page needs no network: the style sheet is inline, there is no script, and
every plot is a PNG drawn with matplotlib (Agg) and inlined as a ``data:`` URI.
It shows

* the run: started/finished, complete or incomplete, git commit, seed, profile
  and settings, package versions, and per target its source, weight hash, dtype
  and device;
* a summary table, one row per (claim, target): verdict badge, the
  pre-registered verdict and whether the run agrees with it, statistic, CI,
  threshold, n; each row links to the claim's evidence;
* per claim an anchored section with, per target, the statistic, CI, n,
  threshold, p-value, message, the plots its ``figures`` ask for, the figures its
  pack drew itself (its ``plots``, from the ``pytest_mechclaims_plots`` hook) and a
  table of its other figures (scalars and effects).

Plots follow the ``figures`` conventions documented in
:mod:`mechclaims.report.plots` (``rates``, ``heatmaps``, ``curves``, ``bars``):
what is present is drawn, anything else is listed or ignored, and an entry off
its schema is reported on the page instead of failing the run.
"""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

from ..results import ERRORED, INCONCLUSIVE, NOT_APPLICABLE, REFUTED, SUPPORTED
from .plots import PLOT_KINDS, Plot, PlotError, pack_plots, plots_for
from .reading import expected_label, preregistration

VERDICT_CLASSES = {SUPPORTED: "supported", REFUTED: "refuted", ERRORED: "errored", NOT_APPLICABLE: "na",
                   INCONCLUSIVE: "inconclusive"}

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--fg); background:#fff; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 64px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:21px; margin:40px 0 8px; padding-bottom:6px;
     border-bottom:1px solid var(--line); } h3 { font-size:17px; margin:0 0 8px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
td code { word-break:break-all; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:13px; }
.header-line { color:var(--muted); margin:0 0 16px; word-break:break-word; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(260px,1fr)); gap:12px; margin:16px 0; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; background:var(--bg); }
.card h4 { margin:0 0 6px; font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:0; }
dl.kv dt { color:var(--muted); } dl.kv dd { margin:0; word-break:break-all; }
table { border-collapse:collapse; width:100%; margin:8px 0 16px; font-size:14px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { background:var(--bg); font-weight:600; } tbody tr:hover { background:#f0f6ff; }
td.num { font-variant-numeric:tabular-nums; white-space:nowrap; }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px; font-weight:600;
         border:1px solid transparent; white-space:nowrap; }
.v-supported { background:#dafbe1; color:#116329; border-color:#4ac26b; }
.v-refuted { background:#ffebe9; color:#a40e26; border-color:#ff8182; }
.v-errored { background:#fff1c2; color:#7d4e00; border-color:#d4a72c; }
.v-na { background:#eef1f4; color:#59636e; border-color:#c8d1da; }
.v-inconclusive { background:#fff; color:#7d4e00; border-color:#d4a72c; border-style:dashed; }
.e-yes { background:#fff; color:#0550ae; border-color:#80ccff; }
.e-no { background:#8250df; color:#fff; border-color:#8250df; }
.e-none { background:#fff; color:#59636e; border-color:#d1d9e0; }
.run-complete { background:#dafbe1; color:#116329; border-color:#4ac26b; }
.run-incomplete { background:#fff1c2; color:#7d4e00; border-color:#d4a72c; }
.counts { display:flex; flex-wrap:wrap; gap:8px; margin:8px 0 4px; }
article { border:1px solid var(--line); border-radius:10px; padding:16px 18px; margin:14px 0; }
article.unexpected { border-color:#8250df; box-shadow:0 0 0 1px #8250df33; }
.stats { display:flex; flex-wrap:wrap; gap:8px 24px; margin:6px 0 10px; }
.stat { min-width:90px; } .stat .k { color:var(--muted); font-size:12px; display:block; }
.stat .v { font-size:16px; font-variant-numeric:tabular-nums; }
.message { background:var(--bg); border-left:3px solid var(--line); padding:8px 12px; margin:8px 0;
           white-space:pre-wrap; word-break:break-word; font-size:14px; }
.plots { display:flex; flex-wrap:wrap; gap:12px; margin:10px 0; }
figure { margin:0; border:1px solid var(--line); border-radius:8px; padding:6px; background:#fff; }
figure img { display:block; max-width:100%; height:auto; }
figcaption { font-size:12px; color:var(--muted); padding:4px 2px 0; }
.plot-error { color:#a40e26; font-size:13px; }
.meta { color:var(--muted); font-size:12px; margin-top:8px; }
.top { float:right; font-size:13px; font-weight:400; }
table.figs td:first-child { white-space:nowrap; color:var(--muted); }
"""


def _stand_in(target: dict) -> str:
    """A badge on a target that is not the model it names (its shape differs from the known one)."""
    if not target.get("stand_in"):
        return ""
    return f' <span class="badge v-errored" title="{escape(str(target["stand_in"]))}">STAND-IN</span>'


def _boot(target: dict) -> str:
    """Seconds the weights took to boot, or why there is no figure."""
    if "boot_seconds" not in target:
        return "–"
    return "not booted (all from cache)" if target["boot_seconds"] is None else _num(target["boot_seconds"])


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _ci(claim: dict[str, Any]) -> str:
    ci = claim.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return f"[{_num(ci[0])}, {_num(ci[1])}]"
    return "–"


def _level(claim: dict[str, Any]) -> str:
    level = claim.get("ci_level")
    return f"{level:.0%} CI" if isinstance(level, (int, float)) and not isinstance(level, bool) else "CI"


def verdict_badge(verdict: Any) -> str:
    cls = VERDICT_CLASSES.get(verdict, "na")
    return f'<span class="badge v-{cls}">{escape(str(verdict))}</span>'


def expectation_badge(claim: dict[str, Any]) -> str:
    as_expected = claim.get("as_expected")
    if as_expected is True:
        return '<span class="badge e-yes">as expected</span>'
    if as_expected is False:
        return '<span class="badge e-no">unexpected</span>'
    return '<span class="badge e-none">no expectation</span>'


def _anchors(claims: list[dict[str, Any]]) -> list[str]:
    """A unique HTML id per claim row: ``claim-<id>--<target>``."""
    seen: dict[str, int] = {}
    out = []
    for claim in claims:
        base = "claim-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{claim.get('id')}--{claim.get('target')}")
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _is_effect(value: Any) -> bool:
    return isinstance(value, dict) and "statistic" in value and "ci" in value


def _effect_text(value: dict[str, Any]) -> str:
    ci = value.get("ci")
    if isinstance(ci, dict):
        low, high, level = ci.get("low"), ci.get("high"), ci.get("level")
    elif isinstance(ci, (list, tuple)) and len(ci) == 2:
        (low, high), level = ci, None
    else:
        low = high = level = None
    text = f"{_num(value.get('statistic'))} [{_num(low)}, {_num(high)}]"
    details = []
    if isinstance(level, (int, float)):
        details.append(f"{level:.0%} CI")
    if value.get("n") is not None:
        details.append(f"n={_num(value.get('n'))}")
    if value.get("pvalue") is not None:
        details.append(f"p={_num(value.get('pvalue'))}")
    return text + (f" ({', '.join(details)})" if details else "")


def _figure_text(value: Any, limit: int = 300) -> str:
    if _is_effect(value):
        return _effect_text(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return _num(value)
    if isinstance(value, list) and all(v is None or isinstance(v, (int, float, bool, str)) for v in value):
        text = ", ".join(_num(v) for v in value)
    else:
        text = json.dumps(value, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kv(pairs: list[tuple[str, str]]) -> str:
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="kv">{rows}</dl>'


def _run_section(run: dict[str, Any], claims: list[dict[str, Any]]) -> str:
    complete = run.get("complete")
    status = (
        '<span class="badge run-complete">complete run</span>'
        if complete
        else '<span class="badge run-incomplete">incomplete run (interrupted or unfinished)</span>'
    )
    settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
    overview = _kv([
        ("started", escape(_num(run.get("started")))),
        ("finished", escape(_num(run.get("finished"))) if run.get("finished") else "not finished"),
        ("git commit", f"<code>{escape(_num(run.get('git_commit') or 'unknown'))}</code>"),
        ("seed", escape(_num(run.get("seed")))),
        ("profile", escape(_num(settings.get("profile")))),
    ])
    cards = [f'<div class="card"><h4>Run</h4>{overview}</div>']
    rest = [(k, escape(_figure_text(v))) for k, v in settings.items() if k not in ("profile", "seed")]
    if rest:
        cards.append(f'<div class="card"><h4>Settings</h4>{_kv(rest)}</div>')
    versions = run.get("versions") if isinstance(run.get("versions"), dict) else {}
    if versions:
        cards.append(f'<div class="card"><h4>Versions</h4>{_kv([(k, escape(_num(v))) for k, v in versions.items()])}</div>')

    targets = run.get("targets") if isinstance(run.get("targets"), dict) else {}
    forwards = run.get("forwards") if isinstance(run.get("forwards"), dict) else {}
    registered = run.get("expectations") if isinstance(run.get("expectations"), dict) else {}
    target_rows = []
    for name, t in targets.items():
        t = t if isinstance(t, dict) else {}
        shape = f"{_num(t.get('n_layers'))} × {_num(t.get('n_heads'))}" if t.get("n_layers") else "–"
        fw = forwards.get(name) if isinstance(forwards.get(name), dict) else {}
        target_rows.append(
            f"<tr><td><strong>{escape(str(name))}</strong>{_stand_in(t)}</td><td>{escape(_num(t.get('source')))}</td>"
            f"<td><code>{escape(_num(t.get('sha256_or_revision')))}</code></td>"
            f"<td>{escape(_num(t.get('dtype')))}</td><td>{escape(_num(t.get('device')))}</td>"
            f"<td class=num>{escape(shape)}</td><td class=num>{escape(_num(t.get('load_seconds')))}</td>"
            f"<td class=num>{escape(_boot(t))}</td>"
            f"<td class=num>{escape(_num(fw.get('calls')))} / {escape(_num(fw.get('tokens')))}</td>"
            f"<td>{escape(preregistration(registered.get(name)))}</td></tr>"
        )
    target_table = ""
    if target_rows:
        target_table = (
            "<h3>Models</h3><table><thead><tr><th>target</th><th>source</th><th>weights (hash or revision)</th>"
            "<th>dtype</th><th>device</th><th>layers × heads</th><th>load s</th><th>boot s</th><th>forwards / tokens</th>"
            "<th>pre-registration (sha256)</th>"
            f"</tr></thead><tbody>{''.join(target_rows)}</tbody></table>"
        )
    errors = run.get("target_errors") if isinstance(run.get("target_errors"), dict) else {}
    failed = "".join(
        f'<p class="target-error" id="target-error-{escape(str(name), quote=True)}"><span class="badge v-errored">'
        f"TARGET ERROR</span> <strong>{escape(str(name))}</strong> cannot run, so its claims errored: "
        f"{escape(str(why))}</p>" for name, why in errors.items())
    return (
        f'<header id="run"><h1>Claim report</h1>{failed}'
        f'<p class="header-line"><code>{escape(str(run.get("header", "")))}</code></p>'
        f"<div>{status}</div>"
        f'<div class="cards">{"".join(cards)}</div>{target_table}</header>'
    )


def _summary(claims: list[dict[str, Any]], anchors: list[str]) -> str:
    counts: dict[str, int] = {}
    for c in claims:
        counts[c.get("verdict")] = counts.get(c.get("verdict"), 0) + 1
    chips = [f"{verdict_badge(v)} <span>{n}</span>" for v, n in counts.items()]
    unexpected = sum(c.get("as_expected") is False for c in claims)
    chips.append(f'<span class="badge {"e-no" if unexpected else "e-yes"}">{unexpected} unexpected</span>')
    rows = []
    for claim, anchor in zip(claims, anchors):
        rows.append(
            f'<tr data-claim="{escape(str(claim.get("id")))}" data-target="{escape(str(claim.get("target")))}">'
            f'<td><a href="#{anchor}">{escape(str(claim.get("id")))}</a></td>'
            f"<td>{escape(_num(claim.get('target')))}</td>"
            f"<td>{verdict_badge(claim.get('verdict'))}</td>"
            f"<td>{escape(expected_label(claim))}</td>"
            f"<td>{expectation_badge(claim)}</td>"
            f"<td class=num>{escape(_num(claim.get('statistic')))}</td>"
            f"<td class=num>{escape(_ci(claim))}</td>"
            f"<td class=num>{escape(_num(claim.get('threshold')))}</td>"
            f"<td class=num>{escape(_num(claim.get('n')))}</td></tr>"
        )
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="counts">{" ".join(chips)}</div>'
        '<table id="summary-table"><thead><tr><th>claim</th><th>target</th><th>verdict</th><th>expected</th>'
        "<th>vs. pre-registration</th><th>statistic</th><th>CI</th><th>threshold</th><th>n</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _plots(figures: Any, plot_cache: Path | None, drawn: dict | None = None, own: Any = None) -> str:
    """The plots ``figures`` asks for (the core's schemas), then those the pack drew (``own``)."""
    items = []
    for plot in [*plots_for(figures, plot_cache, drawn), *pack_plots(own)]:
        if isinstance(plot, Plot):
            items.append(
                f'<figure><img src="{escape(plot.uri)}" alt="{escape(plot.title)}">'
                f"<figcaption>{escape(plot.title)}</figcaption></figure>"
            )
        elif isinstance(plot, PlotError):
            items.append(f'<p class="plot-error">figure {escape(plot.title)} not drawn: {escape(plot.reason)}</p>')
    return f'<div class="plots">{"".join(items)}</div>' if items else ""


def _variants(figures: Any) -> str:
    """The per-variant results of a claim judged over variants (``figures["variants"]``,
    as :func:`mechclaims.holds_across` writes them): one row per variant."""
    variants = figures.get("variants") if isinstance(figures, dict) else None
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        return ""
    rows = []
    for name, v in variants.items():
        ci = f"[{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]"
        rows.append(f"<tr><td>{escape(str(name))}</td><td>{verdict_badge(v.get('verdict'))}</td>"
                    f"<td class=mono>{escape(_num(v.get('statistic')))}</td><td class=mono>{escape(ci)}</td>"
                    f"<td class=mono>{escape(_num(v.get('n')))}</td><td>{escape(str(v.get('message', '')))}</td></tr>")
    return ('<table class="figs"><thead><tr><th>variant</th><th>verdict</th><th>statistic</th><th>CI</th><th>n</th>'
            f'<th>message</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _other_figures(figures: Any) -> str:
    if not isinstance(figures, dict):
        return ""
    skip = {"variants"} if _variants(figures) else set()
    rows = [
        f"<tr><td>{escape(str(k))}</td><td class=mono>{escape(_figure_text(v))}</td></tr>"
        for k, v in figures.items()
        if k not in PLOT_KINDS and k not in skip
    ]
    if not rows:
        return ""
    return f'<table class="figs"><thead><tr><th>figure</th><th>value</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _claim_article(claim: dict[str, Any], anchor: str, plot_cache: Path | None = None,
                   drawn: dict | None = None) -> str:
    stats = [
        ("statistic", _num(claim.get("statistic"))),
        (_level(claim), _ci(claim)),
        ("n", _num(claim.get("n"))),
        ("threshold", _num(claim.get("threshold"))),
        ("p-value", _num(claim.get("pvalue"))),
        ("expected", expected_label(claim)),
    ]
    if isinstance(claim.get("duration_s"), (int, float)):
        stats.append(("seconds", _num(claim.get("duration_s"))))
    stat_html = "".join(
        f'<div class="stat"><span class="k">{escape(k)}</span><span class="v">{escape(v)}</span></div>' for k, v in stats
    )
    message = f'<div class="message">{escape(str(claim["message"]))}</div>' if claim.get("message") else ""
    meta = []
    if claim.get("source"):
        meta.append(f"source: {escape(str(claim['source']))}")
    if claim.get("nodeid"):
        meta.append(f"test: <code>{escape(str(claim['nodeid']))}</code>")
    unexpected = " unexpected" if claim.get("as_expected") is False else ""
    return (
        f'<article id="{anchor}" class="claim{unexpected}">'
        f'<h3>{escape(str(claim.get("id")))} on {escape(_num(claim.get("target")))} '
        f"{verdict_badge(claim.get('verdict'))} {expectation_badge(claim)}"
        '<a class="top" href="#summary">↑ summary</a></h3>'
        f'<div class="stats">{stat_html}</div>{message}'
        f"{_variants(claim.get('figures'))}{_plots(claim.get('figures'), plot_cache, drawn, claim.get('plots'))}{_other_figures(claim.get('figures'))}"
        f'<div class="meta">{" · ".join(meta)}</div></article>'
    )


def render(record: dict[str, Any], plot_cache: Path | None = None, drawn: dict | None = None) -> str:
    """The whole page for one run record (the content of ``claims.json``); plots
    already drawn into ``plot_cache`` are reused (:func:`plots_for`)."""
    run = record.get("run") if isinstance(record.get("run"), dict) else {}
    claims = [c for c in record.get("claims", []) if isinstance(c, dict)]
    anchors = _anchors(claims)
    by_claim: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for claim, anchor in zip(claims, anchors):
        by_claim.setdefault(str(claim.get("id")), []).append((claim, anchor))
    sections = []
    for claim_id, rows in by_claim.items():
        section_id = "section-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", claim_id)
        sections.append(
            f'<section id="{section_id}"><h2>{escape(claim_id)}</h2>'
            + "".join(_claim_article(c, a, plot_cache, drawn) for c, a in rows)
            + "</section>"
        )
    title = f"Claim report – {run.get('started') or ''}".strip(" –")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"{_run_section(run, claims)}{_summary(claims, anchors)}{''.join(sections)}"
        "</main></body></html>\n"
    )
