"""Bad input and bad luck that used to give a verdict, a passing gate or a traceback: each
case is one test, and each test failed before its fix (issue: verdicts under hostile input)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _claims(cwd: Path, reports: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider", "--mechclaims-cache", "off",
         "--mechclaims-report-dir", str(reports)],
        cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    report = reports / "latest" / "claims.json"
    claims = json.loads(report.read_text())["claims"] if report.exists() else []
    return proc, {c["id"]: c for c in claims}


@pytest.fixture(scope="module")
def nan_organism(tmp_path_factory) -> Path:
    """The organism with its token embeddings set to NaN."""
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("nan") / "organism"
    shutil.copytree(ROOT / "fixtures" / "organism", out)
    tensors = load_file(out / "model.safetensors")
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.slow
def test_a_model_with_nan_weights_errors_every_claim_naming_where(nan_organism, tmp_path):
    proc, claims = _claims(ROOT, tmp_path, "claims/", "--mechclaims-target", "organism", "--mechclaims-n-prompts", "20",
                           "--mechclaims-allow-other-model", env={"MECHCLAIMS_ORGANISM_DIR": str(nan_organism)})
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert len(claims) == 16 and {c["verdict"] for c in claims.values()} == {"errored"}, \
        {k: c["verdict"] for k, c in claims.items()}
    assert "computes NaN or inf: first at the embedding (embed)" in claims["C0.in-context"]["message"]


def test_the_shipped_organism_passes_the_finite_check():
    """Negative control of the check: a sound model is finite everywhere on the probe."""
    from mechclaims import load_target
    from mechclaims.finite import first_non_finite

    model = load_target("organism").model
    assert first_non_finite(model.bridge) is None


CLAIM = '''
import pytest
from mechclaims import at_least, proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    claim.judge(at_least(proportion(9, 10), 0.1, "share"))
'''


@pytest.mark.parametrize("content", ["", '[verdicts]\n"T.x" = "supported"\n', '[registered]\n[verdicts]\n"T.x" = "supported"\n'])
def test_a_preregistration_that_names_no_model_is_refused(pytester, as_organism, content):
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text(content)
    pytester.makepyfile(test_x=CLAIM)
    result = pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *organism.toml: names no model ([[]registered[]] is missing or empty)*"
                                 "mechclaims.preregister(claims_dir, target, ...)*--mechclaims-exploratory*"])
    # the exploratory mode still runs it, marked as such
    assert pytester.runpytest("--mechclaims-target", "organism", "--mechclaims-exploratory",
                              "-p", "no:cacheprovider").ret == pytest.ExitCode.OK


def test_a_preregistration_that_names_its_model_runs(pytester, as_organism):
    """Negative control: the same claim with [registered] holding the model it runs on."""
    from mechclaims import load_target
    from mechclaims.expectations import registered_model

    fields = registered_model(load_target("organism"))
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text(
        "[registered]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
        + '[verdicts]\n"T.x" = "supported"\n')
    pytester.makepyfile(test_x=CLAIM)
    assert pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK


# ------------------------------------------------------------------ targets by configuration


def _config(tmp_path: Path, text: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "pyproject.toml").write_text(text)
    return project / "pyproject.toml"


@pytest.mark.parametrize("name", ["../../../tmp/x/escape", "", ".hidden", "a/b", "a b"])
def test_a_target_name_that_could_leave_its_directory_is_refused(tmp_path, name):
    from mechclaims import TargetError, registry
    from mechclaims.expectations import path_for

    pyproject = _config(tmp_path, f'[tool.mechclaims.targets.{json.dumps(name)}]\npath = "m"\n')
    with pytest.raises(TargetError, match=r"target name .* is not allowed; use letters, digits, '\.', '_' and '-'"):
        registry.load_config(pyproject)
    with pytest.raises(TargetError, match="is not allowed"):
        path_for(tmp_path / "claims", name)
    assert path_for(tmp_path / "claims", "my-model.v2_1").name == "my-model.v2_1.toml"  # negative control


def test_discovery_refuses_a_name_that_escapes(tmp_path):
    pyproject = _config(tmp_path, '[tool.mechclaims.targets."../../../tmp/x/escape"]\npath = "m"\n')
    proc = subprocess.run([sys.executable, "-m", "mechclaims_icl.discover", "--target", "../../../tmp/x/escape"],
                          cwd=pyproject.parent, capture_output=True, text=True)
    assert proc.returncode != 0 and "is not allowed" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("escape.toml")) and not Path("/tmp/x/escape.toml").exists()


def _loaded(pyproject: Path):
    from mechclaims import registry

    registry.load_config(pyproject)
    return lambda: registry.unload_config(pyproject)


def test_a_symlink_loop_errors_its_own_target_only_in_one_line(tmp_path):
    from mechclaims import TargetError
    from mechclaims.loading import resolve

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "loop").symlink_to("loop")
    pyproject = _config(tmp_path, f'[tool.mechclaims.targets.looped]\npath = "loop"\n'
                                  f'[tool.mechclaims.targets.fine]\npath = "{ROOT / "fixtures" / "organism"}"\n')
    unload = _loaded(pyproject)
    try:
        with pytest.raises(TargetError, match=r"weights directory .*loop is a symlink loop; point it at a real"):
            resolve("looped")
        assert resolve("fine").path.name == "organism" and resolve("organism").path.name == "organism"
    finally:
        unload()
    listed = subprocess.run([sys.executable, "-m", "mechclaims.cli", "targets"], cwd=pyproject.parent,
                            capture_output=True, text=True)
    assert listed.returncode == 1 and "Traceback" not in listed.stderr  # a configured target has no weights
    assert "is a symlink loop" in listed.stdout and "have no weights: looped;" in listed.stderr


@pytest.mark.slow
def test_a_claim_run_of_another_target_ignores_a_looping_one(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "loop").symlink_to("loop")
    _config(tmp_path, '[tool.mechclaims.targets.looped]\npath = "loop"\n')
    shutil.copy(ROOT / "claims" / "test_claim0.py", project / "test_claim0.py")
    proc, claims = _claims(project, tmp_path / "reports", "test_claim0.py", "--mechclaims-target", "organism",
                           "--mechclaims-exploratory", "--mechclaims-n-prompts", "20")
    assert "INTERNALERROR" not in proc.stdout + proc.stderr and claims["C0.in-context"]["verdict"] != "errored"
    named, errored = _claims(project, tmp_path / "reports2", "test_claim0.py", "--mechclaims-target", "looped",
                             "--mechclaims-exploratory")
    assert named.returncode == pytest.ExitCode.TESTS_FAILED and "is a symlink loop" in named.stdout
    assert errored["C0.in-context"]["verdict"] == "errored"


def test_a_path_that_is_a_file_says_so(tmp_path):
    from mechclaims import TargetError
    from mechclaims.loading import resolve

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "weights.bin").write_bytes(b"\0")
    unload = _loaded(_config(tmp_path, '[tool.mechclaims.targets.filed]\npath = "weights.bin"\n'))
    try:
        with pytest.raises(TargetError, match=r"weights\.bin is a file, not a directory"):
            resolve("filed")
    finally:
        unload()


@pytest.mark.parametrize("table, message", [
    ('device = "cuda:abc"', r"device = 'cuda:abc'; valid devices: cpu, cuda, cuda:N"),
    ('max_memory = {0 = "-5GiB"}', r"max_memory 0 = '-5GiB'; a size is bytes .* or a number with a unit"),
    ('max_memory = {cpu = "lots"}', r"max_memory cpu = 'lots'; a size is"),
    ('max_memory = {gpu0 = "1GiB"}', r"max_memory key 'gpu0'; valid keys: GPU indices"),
    ('device_map = {"" = "nonsense-device"}', r"device_map '' = 'nonsense-device'; a module goes to a GPU index"),
])
def test_device_settings_are_checked_when_the_config_is_read(tmp_path, table, message):
    from mechclaims import TargetError
    from mechclaims.loading import resolve
    from mechclaims.targets import TARGETS

    unload = _loaded(_config(tmp_path, f'[tool.mechclaims.targets.placed]\npath = "m"\n{table}\n'))
    try:
        assert TARGETS["placed"].problem is not None
        with pytest.raises(TargetError, match=message):
            resolve("placed")
    finally:
        unload()


def test_valid_device_settings_are_accepted(tmp_path):
    """Negative control of the checks above."""
    from mechclaims.targets import TARGETS

    unload = _loaded(_config(tmp_path, '[tool.mechclaims.targets.placed]\npath = "m"\ndevice = "cuda:1"\n'
                                       'device_map = {"" = 0, "lm_head" = "cpu", "model.layers.3" = "cuda:1"}\n'
                                       'max_memory = {0 = "70GiB", 1 = 1000000, cpu = "1.5 TB"}\n'))
    try:
        assert TARGETS["placed"].problem is None
    finally:
        unload()


@pytest.mark.slow
def test_a_symlink_loop_in_the_cache_directory_warns_and_the_claim_goes_on(tmp_path):
    loop = tmp_path / "cache"
    loop.symlink_to("cache")
    shutil.copy(ROOT / "claims" / "test_claim0.py", tmp_path / "test_claim0.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "test_claim0.py", "--mechclaims-target", "organism", "--mechclaims-exploratory",
         "--mechclaims-n-prompts", "20", "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(loop),
         "--mechclaims-report-dir", str(tmp_path / "reports"), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True)
    claims = json.loads((tmp_path / "reports" / "latest" / "claims.json").read_text())["claims"]
    assert claims[0]["verdict"] == "inconclusive", proc.stdout[-3000:]  # 0.95 [0.764, 0.991] vs 0.8, as uncached
    assert "CacheWriteWarning" in proc.stdout and "a symlink loop on its path" in proc.stdout


# ------------------------------------------------------------------ reports


def _record(message: str) -> dict:
    return {"schema_version": 1, "run": {"complete": True, "header": "h"},
            "claims": [{"id": "T.x", "target": "organism", "verdict": "refuted", "statistic": 0.5, "ci": [0.4, 0.6],
                        "n": 20, "message": message, "expected": "refuted", "as_expected": True}]}


HOSTILE = ("![t](http://remote.example/track.png) [click](https://remote.example) <img src=x onerror=alert(1)> "
           "www.remote.example someone@remote.example **bold** `code` a|b")


def test_a_claim_message_renders_as_plain_text_in_claims_md():
    from markdown_it import MarkdownIt

    from mechclaims.report import markdown

    text = markdown.render(_record(HOSTILE))
    html = MarkdownIt("commonmark").enable("table").render(text)
    for made in ("<img", "<a ", "<strong", "<code", "onerror=alert(1)>"):
        assert made not in html, (made, html)
    assert "remote.example/track.png" in html and "&lt;img src=x" in html  # the text is all still there
    plain = MarkdownIt("commonmark").enable("table").render(markdown.render(_record("0.95 [0.764, 0.991] ![x](y)")))
    assert "0.95 [0.764, 0.991] ![x](y)" in plain  # negative control: escaping changes how it reads, not what


def test_report_files_follow_the_umask(tmp_path):
    from mechclaims.report.claims_json import write_run

    old = os.umask(0o022)
    try:
        run = write_run(tmp_path / "reports", "run-1", _record("m")).parent
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert modes == {"claims.json": 0o644, "claims.md": 0o644, "index.html": 0o644}, modes


def test_report_into_a_read_only_run_directory_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from mechclaims.cli import main
    from mechclaims.report import claims_json

    run = tmp_path / "run"
    run.mkdir()
    (run / "claims.json").write_text(json.dumps(_record("m")))

    def read_only(path, text, root=None):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(claims_json, "atomic_write_text", read_only)  # root ignores chmod; the error is the system's
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and "copy the run to a writable directory" in err
    monkeypatch.undo()
    assert main(["report", str(run)]) == 0  # negative control: writable, it renders


def test_a_refused_preregistration_is_reported_once_for_the_target(tmp_path):
    """A llama-3-8b stand-in narrower than the registered model: one cause, stated once with its fix."""
    for test in (ROOT / "claims").glob("*.py"):
        shutil.copy(test, tmp_path / test.name)
    (tmp_path / "expectations").mkdir()
    shutil.copy(ROOT / "claims" / "expectations" / "llama-3-8b.toml", tmp_path / "expectations" / "llama-3-8b.toml")
    proc, claims = _claims(tmp_path, tmp_path / "reports", ".", "--mechclaims-target", "llama-3-8b", "-m", "gpu",
                           "--mechclaims-device", "cpu", "--mechclaims-dtype", "float32",
                           env={"MECHCLAIMS_LLAMA_3_8B_DIR": str(ROOT / "fixtures" / "organism")})
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED and len(claims) == 16, proc.stdout[-3000:]
    assert {c["verdict"] for c in claims.values()} == {"errored"}
    record = json.loads((tmp_path / "reports" / "latest" / "claims.json").read_text())
    (cause,) = record["run"]["target_errors"].values()
    assert "registered on n_layers = 32" in cause and "re-run discovery" in cause
    assert all(c["message"].startswith("Failed: target llama-3-8b cannot run (reported once") for c in claims.values()), \
        [c["message"][:80] for c in claims.values()]
    assert proc.stdout.count("re-run discovery for this model") == 1  # once, in the summary's first lines
    assert "TARGET ERROR: llama-3-8b cannot run" in proc.stdout.split("errored  C0.in-context")[0]
    run = tmp_path / "reports" / "latest"
    assert (run / "claims.md").read_text().count("re-run discovery") == 1
    assert (run / "index.html").read_text().count("re-run discovery") == 1


def test_claims_md_reads_as_written_with_no_html_entities():
    """Text with <, > and & is backslash-escaped, not turned into entities: the raw file reads
    ``\\<bos\\>`` and ``\\>=``, and a viewer shows ``<bos>`` and ``>=`` (and makes no tag of them)."""
    from markdown_it import MarkdownIt

    from mechclaims.report import markdown

    text = markdown.render(_record("prompt <bos>(15, : lower bound >= 0.8 & more"))
    assert "&lt;" not in text and "&gt;" not in text and "&amp;" not in text
    assert r"prompt \<bos\>\(15, : lower bound \>= 0.8 \& more" in text
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "prompt &lt;bos&gt;(15, : lower bound &gt;= 0.8 &amp; more" in html and "<bos>" not in html


def test_a_negative_control_is_labelled_in_every_view():
    from mechclaims.report import html, markdown

    record = _record("m")  # pre-registered refuted
    supported = {**record["claims"][0], "id": "T.y", "expected": "supported", "verdict": "supported"}
    record = {**record, "claims": [*record["claims"], supported]}
    md = markdown.render(record)
    assert r"| refuted \(negative control\) |" in md and "| supported |" in md
    assert md.count("negative control") == 1
    page = html.render(record)
    assert page.count("refuted (negative control)") == 2  # the summary row and the claim's card
