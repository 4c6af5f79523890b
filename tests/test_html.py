"""index.html: a self-contained claim report, checked in a real headless Chromium.

The Chromium tests need Debian's ``chromium`` package; ``.ci/run`` installs it
when missing (``apt-get install -y chromium``). Without it they skip, saying so.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mechclaims.cli import main
from mechclaims.report import html as html_report
from mechclaims.report import plots
from mechclaims.report.claims_json import write_run

REPO = Path(__file__).resolve().parents[1]


def _rates(n_layers=6):
    rise = np.linspace(0, 1, n_layers)
    out = {}
    for name, rate in {"none": 1 - rise, "approx": rise * 0.3, "exact": rise * 0.6, "copy": rise * 0.1}.items():
        out[name] = {"rate": rate.tolist(), "ci_low": np.clip(rate - 0.1, 0, 1).tolist(),
                     "ci_high": np.clip(rate + 0.1, 0, 1).tolist(), "n": 50}
    return out


def synthetic_record() -> dict:
    """One claim per verdict and per figure kind, plus figures that are not plots."""
    rng = np.random.default_rng(0)
    effect = {"statistic": 0.5, "ci": {"low": 0.4, "high": 0.6, "level": 0.95}, "n": 50, "pvalue": 0.01}
    claims = [
        {"nodeid": "claims/test_c1.py::test_onset[organism]", "id": "C1.onset", "target": "organism",
         "verdict": "supported", "statistic": 3.0, "ci": [3.0, 4.0], "ci_level": 0.95, "threshold": 3.0, "n": 50,
         "pvalue": None, "message": "onset 3 [3, 4]", "source": "spec §2", "expected": "supported", "as_expected": True,
         "figures": {"rates": _rates(), "expected_onset": 3, "accuracy": effect}},
        {"nodeid": "claims/test_c1.py::test_ablate[organism]", "id": "C1.ablate-13", "target": "organism",
         "verdict": "refuted", "statistic": 0.0, "ci": [0.0, 1.0], "threshold": 1.0, "n": 50, "pvalue": 0.2,
         "message": "no shift", "expected": "supported", "as_expected": False,
         "figures": {"heatmaps": {
             f"mean direct logit attribution, {name}": {"matrix": rng.normal(size=(6, 4)).tolist(),
                                                         "xlabel": "head", "ylabel": "layer", "scale": "dla"}
             for name in ("clean", "ablate 4+5")}}},
        {"id": "C2.log-odds", "target": "organism", "verdict": "supported", "statistic": 0.8, "ci": [0.6, 1.0],
         "threshold": 0.0, "n": 12, "expected": None, "as_expected": None,
         "figures": {"curves": {
             "log-odds against number of examples": {
                 "x": list(range(1, 9)), "y": [0.1 * i for i in range(8)],
                 "ci_low": [0.1 * i - 0.05 for i in range(8)], "ci_high": [0.1 * i + 0.05 for i in range(8)],
                 "fit": [0.1 * i + 0.01 for i in range(8)], "xlabel": "examples", "ylabel": "log-odds"},
             "bare curve": {"x": [0, 1, 2], "y": [1.0, None, 3.0], "xlabel": "x", "ylabel": "y"}}}},
        {"id": "C3.roles", "target": "smollm2-135m", "verdict": "not-applicable", "statistic": None, "ci": None,
         "n": None, "message": "no such heads",
         "figures": {"bars": {"attention by role": {"labels": ["a", "p", "b", "="], "values": [0.4, 0.3, 0.2, 0.1],
                                                    "ci_low": [0.3, 0.2, 0.1, 0.0], "ci_high": [0.5, 0.4, 0.3, 0.2],
                                                    "ylabel": "attention"}}}},
        {"id": "C3.roles", "target": "organism", "verdict": "errored", "statistic": None, "ci": None, "n": None,
         "message": "RuntimeError: <boom> & more", "expected": "supported", "as_expected": False, "figures": {}},
    ]
    return {
        "schema_version": 1,
        "run": {
            "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00", "complete": True,
            "git_commit": "abc123", "seed": 7,
            "settings": {"profile": "ci", "n_prompts": 50, "seed": 7, "level": 0.95},
            "versions": {"mechclaims": "0.1.0", "torch": "2.13.0+cpu"},
            "header": "mechclaims 0.1.0 | organism sha256:c63db959e4d0d0f2 float32 cpu | seed 7, profile ci",
            "targets": {"organism": {"source": "fixture:organism", "sha256_or_revision": "sha256:c63db959e4d0d0f2aa",
                                     "dtype": "float32", "device": "cpu", "n_layers": 6, "n_heads": 4}},
            "forwards": {"organism": {"calls": 3, "tokens": 99}},
        },
        "claims": claims,
    }


N_SYNTHETIC_PLOTS = 1 + 2 + 2 + 1  # rates, two heatmaps, two curves, one bar chart


class _Page(HTMLParser):
    """Collects ids, links, image sources and the text of every summary row."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images, self.rows = set(), [], [], []
        self._row: list[str] | None = None
        self._in_summary = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "table" and attrs.get("id") == "summary-table":
            self._in_summary = True
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "tr" and self._in_summary:
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(" ".join(t.strip() for t in self._row if t.strip()))
            self._row = None
        if tag == "table":
            self._in_summary = False

    def handle_data(self, data):
        self.text.append(data)
        if self._row is not None:
            self._row.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _assert_every_claim_with_its_verdict(page: _Page, record: dict) -> None:
    for claim in record["claims"]:
        words = [claim["id"], str(claim["target"]), claim["verdict"]]
        assert any(row.split()[:3] == words for row in page.rows), (words, page.rows)


# --------------------------------------------------------------------------- the page itself


def test_page_draws_every_figure_kind_inline():
    record = synthetic_record()
    text = html_report.render(record)
    page = _parse(text)
    assert len(page.images) == N_SYNTHETIC_PLOTS
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: no script, no external style sheet, no address outside the page
    assert "<script" not in text and "<link" not in text and not re.search(r"https?://|url\(", text)
    assert all(href.startswith("#") for href in page.links)
    _assert_every_claim_with_its_verdict(page, record)


def test_every_summary_row_links_to_its_evidence():
    record = synthetic_record()
    page = _parse(html_report.render(record))
    targets = [href[1:] for href in page.links if href.startswith("#claim-")]
    assert len(targets) == len(record["claims"]) == len(set(targets))
    assert set(targets) <= page.ids
    assert "run" in page.ids and "summary" in page.ids


def test_run_header_and_badges():
    record = synthetic_record()
    text = html_report.render(record)
    body = " ".join(_parse(text).text)
    for fact in ("sha256:c63db959e4d0d0f2aa", "fixture:organism", "2.13.0+cpu", "abc123", "complete run", "2 unexpected"):
        assert fact in body
    assert text.count('class="badge e-no"') == 1 + 2 * 2  # the count chip; two unexpected claims, row and section
    for cls in ("v-supported", "v-refuted", "v-errored", "v-na", "e-yes", "e-none"):
        assert f"badge {cls}" in text
    record["run"].update(complete=False, finished=None)
    assert "incomplete run" in html_report.render(record)


def test_messages_are_escaped():
    text = html_report.render(synthetic_record())
    assert "RuntimeError: &lt;boom&gt; &amp; more" in text and "<boom>" not in text


def test_off_schema_figures_are_reported_and_the_rest_still_drawn():
    record = synthetic_record()
    record["claims"][0]["figures"].update(
        heatmaps={"ragged": {"matrix": [[1, 2], [3]]}, "good": {"matrix": [[1, 2], [3, 4]]}},
        bars="not a mapping",
        curves={"no y": {"x": [1, 2]}},
        some_future_kind={"nested": [{"deep": 1}]},
    )
    text = html_report.render(record)
    page = _parse(text)
    assert len(page.images) == N_SYNTHETIC_PLOTS + 1  # the good heatmap
    assert "figure ragged not drawn: heatmaps[&#x27;ragged&#x27;].matrix row 1 has 1 values, expected 2" in text
    assert "figure bars not drawn: bars must be an object, got str" in text
    assert "figure no y not drawn: curves[&#x27;no y&#x27;].y must be a list of numbers, got NoneType" in text
    assert "some_future_kind" in " ".join(page.text)


def test_heatmap_colour_scales():
    signed, positive = np.array([[-2.0, 1.0]]), np.array([[0.5, 3.0]])
    assert plots._colour_scale([signed]) == ("RdBu_r", -2.0, 2.0)
    assert plots._colour_scale([positive]) == ("Blues", 0.0, 3.0)
    assert plots._colour_scale([signed, positive]) == ("RdBu_r", -3.0, 3.0)  # one shared scale
    assert plots._colour_scale([np.array([[np.nan]])]) == ("Blues", 0.0, 1.0)


def test_write_run_writes_index_html_next_to_the_json(tmp_path):
    record = synthetic_record()
    path = write_run(tmp_path, "run1", record)
    assert sorted(p.name for p in path.parent.iterdir()) == ["claims.json", "claims.md", "index.html"]
    page = _parse((path.parent / "index.html").read_text(encoding="utf-8"))
    assert len(page.images) == N_SYNTHETIC_PLOTS
    assert (tmp_path / "latest" / "index.html").is_file()


def test_kept_plots_are_served_without_drawing_and_equal_fresh_ones(tmp_path, monkeypatch):
    record = synthetic_record()
    fresh = html_report.render(record)
    cache = tmp_path / "plots"
    assert html_report.render(record, cache) == fresh
    kept = sorted(cache.iterdir())
    assert kept and not [p for p in kept if p.name.startswith(".")]

    def refuse(*args):
        raise AssertionError("drew a plot that was kept")

    monkeypatch.setattr(plots, "_DRAW", {kind: refuse for kind in plots.PLOT_KINDS})
    assert html_report.render(record, cache) == fresh
    kept[0].write_text("{not json")  # a damaged entry is drawn again, never shown
    with pytest.raises(AssertionError, match="drew a plot that was kept"):
        html_report.render(record, cache)
    monkeypatch.undo()
    assert html_report.render(record, cache) == fresh


def test_a_changed_figure_is_drawn_anew(tmp_path):
    record = synthetic_record()
    cache = tmp_path / "plots"
    html_report.render(record, cache)
    before = {p.name for p in cache.iterdir()}
    changed = json.loads(json.dumps(record))
    changed["claims"][0]["figures"]["rates"]["none"]["rate"][0] = 0.5
    assert html_report.render(changed, cache) == html_report.render(changed)
    assert len({p.name for p in cache.iterdir()} - before) == 1


def test_report_command_rerenders_html(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "claims.json").write_text(json.dumps(synthetic_record()))
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.split() == [str(run / "claims.md"), str(run / "index.html")]
    assert len(_parse((run / "index.html").read_text()).images) == N_SYNTHETIC_PLOTS


# --------------------------------------------------------------------------- in a real browser


PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length;
  var out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.appendChild(out);
});
</script></body>"""


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed and could not be installed here; "
                    "`apt-get install -y chromium` (bash .ci/run does this) runs these tests")
    return path


def _browse(chromium: str, tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with no network (every host unresolvable); its stdout."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def check_in_chromium(chromium: str, index: Path, tmp_path: Path) -> dict:
    """Screenshot (not blank), every <img> loaded, every claim shown with its verdict."""
    record = json.loads((index.parent / "claims.json").read_text())
    text = index.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE), encoding="utf-8")

    shot = tmp_path / "screenshot.png"
    _browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", index.as_uri())
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).astype(np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    colours, counts = np.unique(packed, return_counts=True)
    assert len(colours) > 50, f"{shot} looks blank: {len(colours)} colours"
    assert counts.max() < 0.98 * packed.size, f"{shot} is almost one colour"

    dom = _browse(chromium, tmp_path, "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="image-probe">([^<]*)</pre>', dom)
    assert found, "the probe script did not run: " + dom[-500:]
    result = json.loads(found.group(1))
    assert result["images"] == text.count("<img "), result
    assert result["broken"] == 0, result
    _assert_every_claim_with_its_verdict(_parse(dom), record)
    return result


def test_synthetic_report_in_chromium(chromium, tmp_path):
    index = write_run(tmp_path / "reports", "run", synthetic_record()).parent / "index.html"
    assert check_in_chromium(chromium, index, tmp_path)["images"] == N_SYNTHETIC_PLOTS
    print(f"screenshot: {tmp_path / 'screenshot.png'}")


def test_the_probe_sees_a_broken_image(chromium, tmp_path):
    index = write_run(tmp_path / "reports", "run", synthetic_record()).parent / "index.html"
    text = index.read_text()
    first = re.search(r'src="(data:image/png;base64,[^"]*)"', text).group(1)
    index.write_text(text.replace(first, "data:image/png;base64,AAAA", 1))
    with pytest.raises(AssertionError, match="'broken': 1"):
        check_in_chromium(chromium, index, tmp_path)


@pytest.mark.slow
def test_a_real_organism_claim_run_in_chromium(chromium, tmp_path):
    reports = tmp_path / "reports"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "--mechclaims-target", "organism",
         "--mechclaims-report-dir", str(reports), "-p", "no:cacheprovider", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    index = reports / "latest" / "index.html"
    assert index.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = check_in_chromium(chromium, index, tmp_path)
    assert result["images"] >= 1  # Claim 1's patching curves at least
    print(f"index.html {index.stat().st_size} bytes, {result['images']} plots; screenshot {tmp_path / 'screenshot.png'}")


# A payload that marks the page if any of it runs, as a script or as an event handler.
PWN = "document.documentElement.setAttribute('data-pwned', '1')"
HOSTILE = f"<script>{PWN}</script><img src=x onerror=\"{PWN}\">"


def hostile_record() -> dict:
    """The synthetic record with hostile strings where a run takes text from outside: a claim's
    message, a target's name, an expected verdict (from an expectations file), figures, the header."""
    record = synthetic_record()
    first = record["claims"][0]
    first["message"] = HOSTILE
    first["target"] = "organism | " + HOSTILE  # a pipe would also break a markdown table row
    first["expected"] = HOSTILE
    first["figures"]["note" + HOSTILE] = HOSTILE
    record["run"]["header"] = HOSTILE
    record["run"]["targets"]["organism" + HOSTILE] = {"source": HOSTILE, "sha256_or_revision": HOSTILE}
    return record


def test_hostile_strings_are_inert_in_both_views(tmp_path):
    run_dir = write_run(tmp_path / "reports", "run", hostile_record()).parent
    from markdown_it import MarkdownIt

    page, markdown_text = (run_dir / "index.html").read_text(), (run_dir / "claims.md").read_text()
    # claims.md backslash-escapes markup (no entities in the file); a viewer renders it as text
    for text in (page, MarkdownIt("commonmark").enable("table").render(markdown_text)):
        assert "<script>document" not in text and "<img src=x" not in text
        assert "&lt;script&gt;" in text
    rows = [line for line in markdown_text.splitlines() if line.startswith("| organism")]
    assert rows and all(line.count(" | ") == 7 for line in rows)  # eight cells each


def test_hostile_strings_never_run_in_chromium(chromium, tmp_path):
    run_dir = write_run(tmp_path / "reports", "run", hostile_record()).parent
    dom = _browse(chromium, tmp_path, "--dump-dom", (run_dir / "index.html").as_uri())
    assert "</body>" in dom and not _pwned(dom)
    # the check can fail: the same page with one message left unescaped is marked
    broken = tmp_path / "broken.html"
    broken.write_text((run_dir / "index.html").read_text().replace("</body>", HOSTILE + "</body>"))
    assert _pwned(_browse(chromium, tmp_path, "--dump-dom", broken.as_uri()))


def _pwned(dom: str) -> bool:
    """Whether the payload ran: the <html> element carries its attribute (its escaped text does not count)."""
    return re.search(r"<html[^>]*data-pwned=", dom) is not None


def test_a_claim_over_variants_shows_each_variant_and_their_curves_side_by_side():
    """A claim judged with mechclaims.holds_across: one row per variant with its verdict, and
    the variants' patching curves in one image of side-by-side panels."""
    import mechclaims as mc
    per_variant = {"post": mc.at_least(mc.proportion(10, 100), 0.5, "task rate"),
                   "newline": mc.at_least(mc.proportion(90, 100), 0.5, "task rate")}
    finding = mc.holds_across(per_variant, "the task rate")
    assert not finding.supported and finding.decided and "specific to newline" in finding.message
    claim = {"id": "C1.onset-robust", "target": "organism", "verdict": "refuted", "statistic": 0.1, "ci": [0.05, 0.17],
             "n": 100, "message": finding.message, "expected": "refuted", "as_expected": True,
             "figures": {**json.loads(json.dumps(finding.figures)),
                         "rates_by_variant": {"post": _rates(), "newline": _rates(), "neutral-line": _rates()}}}
    record = synthetic_record()
    record["claims"] = [claim]
    page = _parse(html_report.render(record))
    assert len(page.images) == 1  # the three panels are one figure
    text = " ".join(t.strip() for t in page.text if t.strip())
    assert "variant verdict statistic CI n message post refuted" in text and "newline supported" in text
    broken = dict(claim, figures={"rates_by_variant": {"post": {"task": {"rate": "high"}}}})
    drawn = plots.plots_for(broken["figures"])
    assert len(drawn) == 1 and isinstance(drawn[0], plots.PlotError) and "rates_by_variant['post']" in drawn[0].reason
