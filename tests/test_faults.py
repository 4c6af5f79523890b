"""A claim run under faults: SIGKILL during writes, a full disk, planted symlinks, two runs at
once, a run that selects no claim. Each test fails when its protection is removed (docs/reliability.md,
Reliability)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mechclaims.files import UnsafePathError, write_atomic
from mechclaims.report.claims_json import point_latest, write_run

REPO = Path(__file__).resolve().parents[1]
CLAIM0 = REPO / "claims" / "test_claim0.py"

# Injected into a claim run's process: count os.replace / os.rename calls (every file and
# directory mechclaims puts into place goes through one), SIGKILL the process just before
# the call numbered $KILL_AT, and record the total in $COUNT_FILE at a normal exit.
KILLER = '''
import atexit, os, signal
_calls = [0]
_kill_at = int(os.environ.get("KILL_AT", "0"))

def _wrap(real):
    def put_into_place(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] == _kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return put_into_place

os.replace, os.rename = _wrap(os.replace), _wrap(os.rename)
if os.environ.get("COUNT_FILE"):
    atexit.register(lambda: open(os.environ["COUNT_FILE"], "w").write(str(_calls[0])))
'''


def _claim_run(workdir: Path, reports: Path, cache: Path | None, env: dict | None = None, *args: str):
    """`pytest test_claim0.py` on the shipped organism (C0 supported) in a fresh process."""
    cache_args = ["--mechclaims-cache", "off"] if cache is None else [
        "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(cache)]
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_claim0.py", "--mechclaims-target", "organism", "-p", "no:cacheprovider",
         "--mechclaims-report-dir", str(reports), *cache_args, *args],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_CACHE_DIR": str(workdir / "home-cache"),
             "MECHCLAIMS_ORGANISM_DIR": str(REPO / "fixtures" / "organism"), **(env or {})},
    )


def _finish(proc) -> tuple[int, str]:
    out = proc.communicate(timeout=600)[0]
    return proc.returncode, out


def _verdicts(record: dict) -> list[tuple]:
    return sorted((c["id"], c["target"], c["verdict"], c["n"]) for c in record["claims"])


def _figures(record: dict) -> list[tuple]:
    return sorted((c["id"], c["target"], c["statistic"], *(c["ci"] or ())) for c in record["claims"])


def _assert_reports_sound(reports: Path) -> dict | None:
    """Every visible run directory is complete and parseable; `latest`, if any, points at one."""
    for run in reports.iterdir():
        if run.name.startswith(".") or run.is_symlink():
            continue
        record = json.loads((run / "claims.json").read_text())
        assert (run / "index.html").stat().st_size > 0 and (run / "claims.md").stat().st_size > 0
        assert record["claims"], run
    latest = reports / "latest"
    if not latest.exists():
        assert not latest.is_symlink(), "latest dangles"
        return None
    record = json.loads((latest / "claims.json").read_text())
    assert record["run"]["complete"] is True
    return record


@pytest.fixture
def workdir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(CLAIM0, work / "test_claim0.py")
    return work


@pytest.mark.slow
def test_sigkill_at_any_write_keeps_latest_complete_and_the_cache_sound(workdir, tmp_path):
    """Kill -9 just before each of several renames (activation-cache entries, the checksum memo,
    plot cache, claims.json's staging, the run directory, `latest`): `reports/latest` stays a
    complete run, and the next run on the killed run's cache gives the figures of a cache-off run."""
    reports, counts = tmp_path / "reports", tmp_path / "count"
    (workdir / "conftest.py").write_text(KILLER)
    code, out = _finish(_claim_run(workdir, reports, tmp_path / "count-cache", {"COUNT_FILE": str(counts)}))
    assert code == 0, out
    complete = (reports / "latest").resolve()  # a complete run for `latest` to keep
    n_calls = int(counts.read_text())
    assert n_calls >= 5, n_calls
    code, out = _finish(_claim_run(workdir, tmp_path / "off", None))
    assert code == 0, out
    off = json.loads((tmp_path / "off" / "latest" / "claims.json").read_text())
    for kill_at in sorted({1, n_calls // 2, n_calls - 1, n_calls}):
        cache = tmp_path / f"cache-{kill_at}"  # cold, as in the counted run, so call kill_at is reached
        code, out = _finish(_claim_run(workdir, reports, cache, {"KILL_AT": str(kill_at)}))
        assert code == -9, f"kill point {kill_at} of {n_calls} not reached:\n{out[-2000:]}"
        assert _assert_reports_sound(reports) is not None and (reports / "latest").resolve() == complete
        code, out = _finish(_claim_run(workdir, tmp_path / f"after-{kill_at}", cache, {"KILL_AT": "0"}))
        assert code == 0, out
        cached = json.loads((tmp_path / f"after-{kill_at}" / "latest" / "claims.json").read_text())
        assert cached["run"]["activation_cache"]["stats"]["organism"]["corrupt_entries"] == 0
        assert _verdicts(cached) == _verdicts(off)
        for got, want in zip(_figures(cached), _figures(off)):
            assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:], rel=1e-6, abs=1e-9)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: room for a few cache entries, not for a run's report and cache."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the test needs root, as CI has")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_torn_file(workdir, full_disk):
    reports, cache = full_disk / "reports", full_disk / "cache"
    with (full_disk / "filler").open("wb", buffering=0) as fh:  # fill it: every later write meets ENOSPC
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    code, out = _finish(_claim_run(workdir, reports, cache))
    errors = [line for line in out.splitlines() if line.startswith("ERROR: claim report")]
    assert code == 6, out[-3000:]
    assert len(errors) == 1 and "No space left on device (errno 28)" in errors[0], out[-3000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert "activation cache: cannot write" in out  # the cache said so once, and the run went on
    assert not (reports / "latest").exists() and not (reports / "latest").is_symlink()
    leftovers = [p for p in full_disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # every temporary removed, nothing half-renamed
    assert not reports.exists() or list(reports.iterdir()) == []
    for entry in cache.rglob("*.safetensors"):  # what did fit is whole
        from safetensors import safe_open

        with safe_open(str(entry), framework="pt") as fh:
            assert fh.metadata()["key"] == entry.stem


def test_a_symlink_planted_in_the_cache_or_report_directory_never_carries_a_write_outside(tmp_path, tiny_model):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("keep me")

    # a link in place of a sub-directory: the write is refused, nothing lands outside
    root = tmp_path / "cache"
    root.mkdir()
    (root / "ab").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside"):
        write_atomic(root / "ab" / "victim", b"evil", root=root)
    with pytest.raises(UnsafePathError, match="outside"):  # refused before any directory is made past the link
        write_atomic(root / "ab" / "deeper" / "victim", b"evil", root=root)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    # a link at the temporary's name or at the target's name: never followed
    (root / ".entry.planted.tmp").symlink_to(victim)
    (root / "entry").symlink_to(victim)
    write_atomic(root / "entry", b"new", root=root)
    assert not (root / "entry").is_symlink() and (root / "entry").read_bytes() == b"new"
    assert victim.read_text() == "keep me" and sorted(p.name for p in outside.iterdir()) == ["victim"]

    # the activation cache: every shard directory planted as a link to `outside`
    from mechclaims.interventions import capture, resid_pre
    from mechclaims.store import ActivationStore, CacheWriteWarning, attach
    from mechclaims_icl.tasks import CANONICAL, make_prompts

    acts = tmp_path / "acts"
    acts.mkdir()
    for i in range(256):
        (acts / f"{i:02x}").symlink_to(outside)
    store = ActivationStore(model_key="m", mode="disk", directory=acts, version="t")
    attach(tiny_model, store)
    try:
        import torch

        from mechclaims_icl.answers import encode

        prompts = make_prompts(CANONICAL, n_prompts=2, n_examples=3, seed=0)
        tokens = torch.tensor([encode(tiny_model.tokenizer, t) for t in prompts.texts])
        with pytest.warns(CacheWriteWarning, match="outside"):
            capture(tiny_model, tokens, [resid_pre(0)])
    finally:
        attach(tiny_model, None)
    assert store.stats.disk_writes == 0 and sorted(p.name for p in outside.iterdir()) == ["victim"]

    # the report directory: planted `latest` and plot-cache links are replaced or refused, not followed
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "latest").symlink_to(outside)
    plots_link = tmp_path / "plot-parent"
    plots_link.mkdir()
    (plots_link / "plots").symlink_to(outside)
    from test_html import synthetic_record

    path = write_run(reports, "run", synthetic_record(), plot_cache=plots_link / "plots")
    assert (reports / "latest").resolve() == path.parent.resolve()
    assert sorted(p.name for p in outside.iterdir()) == ["victim"] and victim.read_text() == "keep me"
    # an existing run directory (or a link in its place) is never written into
    (reports / "taken").symlink_to(outside)
    with pytest.raises(OSError):
        write_run(reports, "taken", synthetic_record())
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert not [p for p in reports.iterdir() if p.name.endswith(".tmp")]
    point_latest(reports, path.parent)  # repointing twice leaves no temporary link either
    assert not [p for p in reports.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_two_claim_runs_at_once_share_one_cache_and_one_report_directory(workdir, tmp_path):
    reports, cache = tmp_path / "reports", tmp_path / "cache"
    procs = [_claim_run(workdir, reports, cache) for _ in range(2)]
    for proc in procs:
        code, out = _finish(proc)
        assert code == 0, out
    runs = [p for p in reports.iterdir() if not p.name.startswith(".") and p.name != "latest"]
    assert len(runs) == 2
    records = [json.loads((run / "claims.json").read_text()) for run in runs]
    assert all(r["run"]["complete"] for r in records) and _verdicts(records[0]) == _verdicts(records[1])
    assert (reports / "latest").resolve() in {run.resolve() for run in runs}
    _assert_reports_sound(reports)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_run_that_selects_no_claim_writes_no_report_and_keeps_latest(workdir, tmp_path):
    """`pytest claims/ -k nothing` exits 5 (pytest's "no tests ran"), writes no report and
    leaves `latest` where it was (docs/reliability.md, Exit status)."""
    reports = tmp_path / "reports"
    code, out = _finish(_claim_run(workdir, reports, None))
    assert code == 0, out
    before = sorted(p.name for p in reports.iterdir())
    latest = (reports / "latest").resolve()
    code, out = _finish(_claim_run(workdir, reports, None, None, "-k", "nothing"))
    assert code == 5, out
    assert sorted(p.name for p in reports.iterdir()) == before and (reports / "latest").resolve() == latest
