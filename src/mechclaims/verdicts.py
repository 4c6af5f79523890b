"""The verdict state machine: setup and call decide a claim's verdict from what its body did,
teardown records it with its forward passes and time; an unexpected refutation reads as evidence."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from .collection import target_name
from .errors import TargetError
from .recorder import ClaimRecorder
from .results import ERRORED, INCONCLUSIVE, NOT_APPLICABLE, REFUTED, SUPPORTED, ClaimResult
from .session import ClaimSession
from .stash import expected_key, forwards_key, recorder_key, seconds_key, session_key, verdict_key


def judge(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> pytest.TestReport:
    """Setup and call decide a claim's verdict; teardown records it (or errors it)."""
    marker = item.get_closest_marker("claim")
    if marker is None:
        return report
    item.stash[seconds_key] = item.stash.get(seconds_key, 0.0) + report.duration  # setup, call, teardown
    recorder = item.stash.get(recorder_key, None) or ClaimRecorder(
        id=marker.kwargs["id"], target=target_name(item), source=marker.kwargs.get("source")
    )
    if call.when == "teardown":
        result = item.stash.get(verdict_key, None)
        if result is None:
            result = _result(item, recorder, ERRORED, "the claim test did not run")
        if report.failed and result.verdict != ERRORED:
            result = replace(result, verdict=ERRORED, message=f"teardown: {first_line(report.longrepr)}")
        calls, tokens = item.config.stash[session_key].forward_totals()
        calls0, tokens0 = item.stash.get(forwards_key, (calls, tokens))
        result = replace(result, figures={**result.figures, "forward_calls": calls - calls0, "forward_tokens": tokens - tokens0,
                                          "wall_seconds": round(item.stash[seconds_key], 3)})
        # Travels with the report (also from pytest-xdist workers); recorded in logreport.
        report.mechclaims = item.config.stash[session_key].payload(result)
        own = pack_plots(item.config, report.mechclaims["claim"])
        if own:
            report.mechclaims["claim"]["plots"] = own
        if hasattr(item.config, "workerinput"):  # draw this claim's plots here, beside the other workers
            report.mechclaims["plots"] = drawn_plots(report.mechclaims["claim"].get("figures"), item.config)
        report.user_properties.extend(_junit_properties(result))
        return report
    if verdict_key in item.stash or (call.when == "setup" and report.passed):
        return report
    verdict, message = _verdict(call, recorder, item.config.stash.get(session_key, None))
    if verdict == ERRORED and report.passed:
        report.outcome = "failed"
        report.longrepr = f"claim {recorder.id} errored: {message}"
    if verdict == REFUTED and report.failed and recorder.effect is not None:
        # an unexpected refutation is evidence, not a crash: one line of it, not the test's traceback
        report.longrepr = f"claim {recorder.id} [{recorder.target}] refuted: {message}"
    item.stash[verdict_key] = _result(item, recorder, verdict, message)
    return report


def drawn_plots(figures: object, config: pytest.Config) -> dict:
    from .report.plots import plots_for

    state = config.stash[session_key]
    drawn: dict = {}
    plots_for(figures, state.plot_cache(), drawn)
    return drawn


def pack_plots(config: pytest.Config, claim: dict) -> list[dict[str, str]]:
    """The figures the pack draws for ``claim`` (``pytest_mechclaims_plots``), as inline PNGs; a
    pack whose drawing fails costs its figure, reported as not drawn, never the verdict."""
    if not config.hook.pytest_mechclaims_plots.get_hookimpls():
        return []
    from .report.plots import pack_plot_entries

    try:
        drawn = config.hook.pytest_mechclaims_plots(config=config, claim=claim)
    except Exception as exc:  # a pack's drawing code: anything it raises is its figure's failure
        return [{"title": "pack figures", "error": f"pytest_mechclaims_plots raised {type(exc).__name__}: {exc}"}]
    return pack_plot_entries(drawn)


class ResultCollector:
    """Records claim payloads from teardown reports, in-process or from xdist workers."""

    def __init__(self, session: ClaimSession) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, "mechclaims", None)
        if payload is not None and report.when == "teardown":
            self.session.record(payload)


def _junit_properties(result: ClaimResult) -> list[tuple[str, object]]:
    """The claim's verdict and main figures as JUnit XML properties (teardown report)."""
    data = result.to_json()
    keys = ("id", "target", "verdict", "expected", "statistic", "ci", "threshold", "n", "pvalue")
    return [(f"claim_{key}", data[key]) for key in keys if data.get(key) is not None]


def _result(item: pytest.Item, recorder: ClaimRecorder, verdict: str, message: str) -> ClaimResult:
    return ClaimResult(
        nodeid=item.nodeid,
        id=recorder.id,
        target=recorder.target,
        verdict=verdict,
        effect=recorder.effect,
        threshold=recorder.threshold,
        message=message,
        source=recorder.source,
        figures=recorder.figures,
        expected=item.stash.get(expected_key, None),
        rules=recorder.rules,
    )


def _verdict(call: pytest.CallInfo, recorder: ClaimRecorder, session: ClaimSession | None = None) -> tuple[str, str]:
    """The verdict from what the claim body did, independent of xfail bookkeeping."""
    excinfo = call.excinfo
    if excinfo is not None:
        text = first_line(excinfo.value) or excinfo.typename
        if excinfo.errisinstance(pytest.skip.Exception) and text.startswith("inconclusive: ") \
                and recorder.effect is not None:
            return INCONCLUSIVE, text.removeprefix("inconclusive: ")
        if excinfo.errisinstance(pytest.skip.Exception):
            return NOT_APPLICABLE, text.removeprefix("not applicable: ")
        if call.when == "call" and excinfo.errisinstance(AssertionError):
            return REFUTED, text
        if excinfo.errisinstance(TargetError) and session is not None and recorder.target is not None:
            return ERRORED, session.fail_target(recorder.target, text)  # the model failed to boot, not the claim
        return ERRORED, f"{excinfo.typename}: {text}"
    if recorder.effect is None:
        return ERRORED, "the claim test passed without recording a statistic (call claim.record(...))"
    if not recorder.effect.is_finite():
        return ERRORED, f"non-finite statistic recorded: {recorder.effect}"
    if recorder.threshold is not None and not math.isfinite(recorder.threshold):
        return ERRORED, f"non-finite threshold {recorder.threshold}"
    return SUPPORTED, recorder.message


def first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""

