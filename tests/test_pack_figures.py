"""A pack's own figures: the ``pytest_mechclaims_plots`` hook reaches the report, never the verdict."""

from __future__ import annotations

import base64
import json

import pytest

CLAIMS = '''
import pytest
from mechclaims import proportion


@pytest.mark.claim(id="T.drawn")
def test_drawn(target, claim):
    claim.record(proportion(9, 10), threshold=0.5, points=[1, 3, 2])


@pytest.mark.claim(id="T.plain")
def test_plain(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)
'''

CONFTEST = '''
from matplotlib.figure import Figure


def pytest_mechclaims_plots(config, claim):
    if claim["id"] != "T.drawn":
        return None
    fig = Figure()
    fig.subplots().plot(claim["figures"]["points"])
    return [("the pack's own line", fig)]
'''


def _report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())


def _claims(pytester: pytest.Pytester) -> dict[str, dict]:
    return {c["id"]: c for c in _report(pytester)["claims"]}


def _page(pytester: pytest.Pytester) -> str:
    return (pytester.path / "reports" / "latest" / "index.html").read_text()


def test_a_pack_figure_reaches_claims_json_and_the_page(pytester, as_organism):
    pytester.makepyfile(test_claims=CLAIMS)
    pytester.makeconftest(CONFTEST)
    pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism").assert_outcomes(passed=2)
    claims = _claims(pytester)
    (entry,) = claims["T.drawn"]["plots"]
    assert entry["title"] == "the pack's own line"
    assert base64.b64decode(entry["png"].removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")
    assert "plots" not in claims["T.plain"]  # the hook drew nothing for it
    page = _page(pytester)
    assert page.count(entry["png"]) == 1 and "the pack&#x27;s own line" in page


@pytest.mark.parametrize("body, reason", [
    ('raise RuntimeError("no data for the figure")', "pytest_mechclaims_plots raised RuntimeError: no data for the figure"),
    ('return "a figure"', "pytest_mechclaims_plots returned str"),
    ('return [("title", object())]', "is not a (title, matplotlib Figure) pair"),
])
def test_a_failing_pack_figure_is_named_on_the_page_and_keeps_the_verdict(pytester, as_organism, body, reason):
    pytester.makepyfile(test_claims=CLAIMS)
    pytester.makeconftest(f"def pytest_mechclaims_plots(config, claim):\n    {body}\n")
    pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism").assert_outcomes(passed=2)
    claims = _claims(pytester)
    assert claims["T.drawn"]["verdict"] == claims["T.plain"]["verdict"] == "supported"
    (entry,) = claims["T.drawn"]["plots"]
    assert reason in entry["error"] and "png" not in entry
    assert "not drawn" in _page(pytester) and reason.split(":")[0] in _page(pytester)


def test_the_page_shows_only_inline_pngs_from_a_claims_plots(tmp_path):
    from mechclaims.report.plots import Plot, PlotError, pack_plots

    png = "data:image/png;base64,iVBORw0KGgo="
    shown = pack_plots([{"title": "ok", "png": png}, {"title": "remote", "png": "https://example.com/x.png"},
                        {"title": "failed", "error": "why"}, "junk"])
    assert shown[0] == Plot("ok", png)
    assert [type(p) for p in shown[1:]] == [PlotError, PlotError, PlotError]
    assert shown[2] == PlotError("failed", "why")
    assert pack_plots(None) == [] and isinstance(pack_plots({"title": "x"})[0], PlotError)


@pytest.mark.slow
def test_pack_figures_come_back_from_xdist_workers(pytester, as_organism):
    pytester.makepyfile(test_claims=CLAIMS)
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("--mechclaims-exploratory", "--mechclaims-target", "organism", "-n", "2")
    result.assert_outcomes(passed=2)
    assert _claims(pytester)["T.drawn"]["plots"][0]["png"].startswith("data:image/png;base64,")


def test_the_post_pack_draws_the_onset_ladder():
    from matplotlib.figure import Figure

    from mechclaims_icl.figures import plots

    curve = {"rate": [0.1, 0.7, 0.9], "ci_low": [0.0, 0.6, 0.8], "ci_high": [0.2, 0.8, 1.0], "n": 40}
    claim = {"id": "C1.redundancy", "target": "t", "figures": {"onset_ladder": {
        "threshold": 0.5, "conditions": {"clean": {**curve, "onset": 1}, "ablate 1": {**curve, "onset": 3}}}}}
    ((title, fig),) = plots(claim)
    assert title == "task stage under cumulative ablation" and isinstance(fig, Figure)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["clean (onset L1)", "ablate 1 (no onset)", "threshold 0.5"]
    assert plots({"id": "C1.onset", "figures": {}}) == []
    assert plots({"id": "C1.redundancy", "figures": {}}) == []  # an old record without the data
