"""Bad and hostile input never becomes a wrong verdict or a green run (docs/reliability.md).
Each test fails without the protection it names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from mechclaims import TargetError, load_target

REPO = Path(__file__).resolve().parents[1]
ORGANISM = REPO / "fixtures" / "organism"


def _copy_organism(tmp_path: Path, name: str = "copy") -> Path:
    out = tmp_path / name
    shutil.copytree(ORGANISM, out)
    return out


def _edit_config(directory: Path, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _c0_run(workdir: Path, organism_dir: Path, cache: Path | None, *args: str) -> tuple[int, dict | None, str]:
    """C0 on `organism` from `organism_dir`, in a fresh process; (exit status, claims.json, output)."""
    workdir.mkdir(exist_ok=True)
    shutil.copy(REPO / "claims" / "test_claim0.py", workdir / "test_claim0.py")
    reports = workdir / "reports"
    cache_args = ["--mechclaims-cache", "off"] if cache is None else [
        "--mechclaims-cache", "disk", "--mechclaims-cache-dir", str(cache)]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_claim0.py", "--mechclaims-target", "organism", "-p", "no:cacheprovider",
         "--mechclaims-report-dir", str(reports), *cache_args, *args],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_ORGANISM_DIR": str(organism_dir),
             "MECHCLAIMS_CACHE_DIR": str(workdir / "home-cache")},
    )
    latest = reports / "latest" / "claims.json"
    record = json.loads(latest.read_text()) if latest.is_file() else None
    return proc.returncode, record, proc.stdout + proc.stderr


def _c0(record: dict) -> dict:
    (claim,) = [c for c in record["claims"] if c["id"] == "C0.in-context"]
    return claim


# ------------------------------------------------------------------ 1. the cache key


@pytest.mark.slow
def test_an_edited_config_is_never_a_stale_cache_hit(tmp_path):
    """The disk-cache key covers config.json (and the tokenizer and generation config), not
    only the weights: rms_norm_eps = 1.0 in a copy's config breaks the model, and a run on the
    copy with the original's cache must compute, not serve the original's passes."""
    cache = tmp_path / "acts"
    code, first, out = _c0_run(tmp_path / "a", ORGANISM, cache)
    assert code == 0 and _c0(first)["verdict"] == "supported", out
    broken = _copy_organism(tmp_path)
    _edit_config(broken, rms_norm_eps=1.0)
    code, cached, out = _c0_run(tmp_path / "b", broken, cache)
    code_off, uncached, _ = _c0_run(tmp_path / "c", broken, None)
    stats = cached["run"]["activation_cache"]["stats"]["organism"]
    assert stats["disk_hits"] == 0 and stats["computed"] > 0
    assert _c0(cached)["statistic"] == _c0(uncached)["statistic"] < _c0(first)["statistic"]
    assert first["run"]["targets"]["organism"]["files_sha256"] != cached["run"]["targets"]["organism"]["files_sha256"]


# ------------------------------------------------------------------ 2. incomplete checkpoints


@pytest.mark.parametrize("damage", ["missing", "extra-layer-in-config", "unexpected", "shape"])
def test_an_incomplete_or_mismatched_checkpoint_is_refused_in_one_line(tmp_path, damage):
    broken = _copy_organism(tmp_path)
    weights = broken / "model.safetensors"
    tensors = load_file(weights)
    if damage == "missing":
        del tensors["model.layers.3.mlp.up_proj.weight"]
        match = "missing tensor model.layers.3.mlp.up_proj.weight"
    elif damage == "unexpected":
        tensors["model.layers.3.mlp.extra.weight"] = tensors["model.norm.weight"].clone()
        match = "unexpected tensor model.layers.3.mlp.extra.weight"
    elif damage == "shape":
        tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()
        match = r"tensor model.norm.weight has shape \[127\], config.json implies \[128\]"
    else:
        _edit_config(broken, num_hidden_layers=9)
        match = r"missing tensor model.layers.8\."
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
        with pytest.raises(TargetError, match=match) as info:
            load_target("organism", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and "initialised at random" in str(info.value)


def test_a_complete_checkpoint_with_tied_embeddings_loads(tiny_llama, monkeypatch, tmp_path):
    """The negative control of the check: nothing missing, and a tied lm_head stored once, pass."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    assert load_target("organism", cache_dir=tmp_path).info.n_layers == 2
    tied = tmp_path / "tied"
    shutil.copytree(tiny_llama, tied)
    tensors = load_file(tied / "model.safetensors")
    tensors.pop("lm_head.weight", None)
    save_file(tensors, str(tied / "model.safetensors"), metadata={"format": "pt"})
    _edit_config(tied, tie_word_embeddings=True)
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tied))
    assert load_target("organism", cache_dir=tmp_path).info.n_layers == 2


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{not json", b"[1, 2]", b'{"num_hidden_layers": "many"}'])
def test_a_garbage_config_is_one_line(tmp_path, monkeypatch, content):
    broken = _copy_organism(tmp_path)
    (broken / "config.json").write_bytes(content)
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
    with pytest.raises(TargetError, match="config.json") as info:
        load_target("organism", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_a_self_referencing_symlink_in_the_model_directory_is_one_line(tmp_path, monkeypatch):
    broken = _copy_organism(tmp_path)
    (broken / "tokenizer_config.json").unlink()
    (broken / "tokenizer_config.json").symlink_to(broken / "tokenizer_config.json")
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
    with pytest.raises(TargetError) as info:
        load_target("organism", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and "tokenizer_config.json" in str(info.value)


# ------------------------------------------------------------------ 3. exit status and compare

HIDDEN_FAILURES = {
    "errored-negative-control": ('[verdicts]\n"T.x" = "refuted"\n', "raise RuntimeError('boom')"),
    "skip-inside-a-claim": ('[verdicts]\n"T.x" = "supported"\n', "pytest.skip('no reason given')"),
    "xfail-inside-a-claim": ('[verdicts]\n"T.x" = "supported"\n', "pytest.xfail('no reason given')"),
    "unexpected-not-applicable": ('[verdicts]\n"T.x" = "supported"\n',
                                  "claim.not_applicable('cannot do the task', proportion(0, 10))"),
}


@pytest.mark.parametrize("case", sorted(HIDDEN_FAILURES))
def test_a_verdict_unlike_its_preregistration_fails_the_run_whatever_pytest_thinks(pytester, as_organism, case):
    expectations, body = HIDDEN_FAILURES[case]
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text(expectations)
    pytester.makepyfile(test_x=f'''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    {body}
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*T.x [[]organism[]] (UNEXPECTED: pre-registered *"])


def test_a_verdict_as_preregistered_still_exits_zero(pytester, as_organism):
    """The negative control: not-applicable pre-registered as such is no failure."""
    (pytester.path / "expectations").mkdir()
    (pytester.path / "expectations" / "organism.toml").write_text('[verdicts]\n"T.x" = "not-applicable"\n')
    pytester.makepyfile(test_x='''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    claim.not_applicable("cannot do the task", proportion(0, 10))
''')
    assert pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:cacheprovider").ret == pytest.ExitCode.OK


def test_a_broken_gguf_fails_a_c0_run(tmp_path):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copy(REPO / "claims" / "test_claim0.py", workdir / "test_claim0.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_claim0.py", "--mechclaims-target", "smollm2-135m", "-k", "C0",
         "-p", "no:cacheprovider", "--mechclaims-report-dir", str(workdir / "reports")],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_SMOLLM2_GGUF": str(gguf),
             "MECHCLAIMS_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "cannot read GGUF file" in proc.stdout + proc.stderr


@pytest.mark.parametrize("after", ["not-applicable", "errored", "refuted", None])
def test_compare_counts_any_loss_of_supported_as_a_regression(tmp_path, capsys, after):
    from mechclaims.cli import main

    def run(name, verdicts):
        (tmp_path / name).mkdir()
        claims = [{"id": cid, "target": "organism", "verdict": v, "statistic": 1.0, "ci": [0.0, 1.0], "n": 10}
                  for cid, v in verdicts.items()]
        (tmp_path / name / "claims.json").write_text(json.dumps({"schema_version": 1, "run": {"complete": True},
                                                                 "claims": claims}))
        return str(tmp_path / name)

    before = run("a", {"C1.onset": "supported"})
    later = run("b", {} if after is None else {"C1.onset": after})
    assert main(["compare", before, later]) == 1
    assert "1 changed, 1 regressed" in capsys.readouterr().out


# ------------------------------------------------------------------ 5. a stand-in is flagged


@pytest.mark.slow
def test_a_stand_in_is_flagged_in_every_view(tmp_path):
    """The llama-3-8b target pointed at the 8-layer organism runs, but the header, the terminal,
    claims.json, claims.md and index.html all say it is a stand-in; the real shape is not flagged."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copy(REPO / "claims" / "test_claim0.py", workdir / "test_claim0.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_claim0.py", "--mechclaims-target", "llama-3-8b", "-m", "gpu or not gpu",
         "--mechclaims-device", "cpu", "--mechclaims-dtype", "float32", "-p", "no:cacheprovider",
         "--mechclaims-report-dir", str(workdir / "reports")],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_LLAMA_3_8B_DIR": str(ORGANISM),
             "MECHCLAIMS_CACHE_DIR": str(tmp_path / "cache")},
    )
    out = proc.stdout + proc.stderr
    assert "WARNING: llama-3-8b is a stand-in, not the model it names: dir:" in out, out[-3000:]
    assert "8 layers" in out and "32 layers" in out and "llama-3-8b (STAND-IN)" in out
    run = workdir / "reports" / "latest"
    record = json.loads((run / "claims.json").read_text())
    assert "32 layers, 32 heads (8 key-value)" in record["run"]["targets"]["llama-3-8b"]["stand_in"]
    assert "**STAND-IN**" in (run / "claims.md").read_text() and ">STAND-IN</span>" in (run / "index.html").read_text()


def test_the_known_shape_is_not_a_stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(ORGANISM))
    assert load_target("organism", cache_dir=tmp_path).info.stand_in is None


# ------------------------------------------------------------------ 6-9. writes, options, odd files


def test_a_poisoned_or_misplaced_plot_cache_entry_is_drawn_again(tmp_path):
    from test_html import synthetic_record

    from mechclaims.report.plots import plots_for

    cache = tmp_path / "plots"
    figures = synthetic_record()["claims"][2]["figures"]
    fresh = plots_for(figures, cache)
    (entry,) = [p for p in cache.iterdir() if p.suffix == ".json"]
    kept = json.loads(entry.read_text())
    for poison in ("uri", "key", "digest"):
        bad = json.loads(json.dumps(kept))
        if poison == "uri":
            bad["plots"][0][1] = "javascript:alert(1)"
        elif poison == "key":
            bad["key"] = "0" * 64
        else:
            bad["plots"][0][0] = "a title the drawing never had"
        entry.write_text(json.dumps(bad))
        assert plots_for(figures, cache) == fresh, poison


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["a-file", "read-only"])
def test_an_unwritable_report_directory_still_prints_the_verdicts(tmp_path, kind):
    if kind == "read-only" and os.geteuid() == 0:
        # root ignores directory permissions; a read-only bind is what makes it read-only for root
        reports = tmp_path / "ro"
        reports.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(reports), str(reports)], capture_output=True).returncode:
            pytest.skip("cannot make a read-only bind mount here")
    elif kind == "read-only":
        reports = tmp_path / "ro"
        reports.mkdir()
        reports.chmod(0o500)
    else:
        reports = tmp_path / "file"
        reports.write_text("not a directory")
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copy(REPO / "claims" / "test_claim0.py", workdir / "test_claim0.py")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--mechclaims-exploratory", "test_claim0.py", "--mechclaims-target", "organism", "-p",
             "no:cacheprovider", "--mechclaims-report-dir", str(reports), "--mechclaims-cache", "off"],
            cwd=workdir, capture_output=True, text=True, timeout=600,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_ORGANISM_DIR": str(ORGANISM),
                 "MECHCLAIMS_CACHE_DIR": str(tmp_path / "cache")},
        )
    finally:
        if kind == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", str(reports)], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 6, out[-3000:]
    assert "supported  C0.in-context [organism]" in out  # the verdicts, whatever happened to the report
    assert len([line for line in out.splitlines() if line.startswith("ERROR: claim report")]) == 1
    assert "Traceback" not in out and "INTERNALERROR" not in out
    if reports.is_dir():
        assert list(reports.iterdir()) == []


def test_a_run_stopped_early_is_not_complete(pytester, as_organism):
    pytester.makepyfile(test_x='''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.first")
def test_first(target, claim):
    effect = claim.record(proportion(1, 10), threshold=0.5)
    assert effect.ci.low >= 0.5, claim.evidence()

@pytest.mark.claim(id="T.second")
def test_second(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)
''')
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism", "-p", "no:cacheprovider", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    run = pytester.path / "reports"
    (record,) = [json.loads((p / "claims.json").read_text()) for p in run.iterdir() if not p.is_symlink()]
    assert record["run"]["complete"] is False and record["run"]["finished"] is None
    assert not (run / "latest").exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296", "x"])
def test_a_bad_seed_is_a_usage_error_naming_the_range(pytester, seed):
    result = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-seed", seed)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*invalid seed '{seed}': expected an integer from 0 to 4294967295*"])


def test_a_fifo_named_like_weights_is_refused_not_read(tmp_path, monkeypatch):
    broken = _copy_organism(tmp_path)
    os.mkfifo(broken / "extra.safetensors")
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
    with pytest.raises(TargetError, match="extra.safetensors is not a regular file"):
        load_target("organism", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------ 4. no pre-registration


def test_a_target_without_expectations_is_one_line_unless_run_as_exploratory(pytester, as_organism):
    pytester.makepyfile(test_x='''
import pytest
from mechclaims import proportion

@pytest.mark.claim(id="T.x")
def test_x(target, claim):
    claim.record(proportion(9, 10))
''')
    refused = pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in refused.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "organism.toml: no pre-registration for target 'organism'" in errors[0]
    assert "--mechclaims-exploratory" in errors[0]
    explored = pytester.runpytest("--mechclaims-target", "organism", "-p", "no:cacheprovider",
                                  "--mechclaims-exploratory", "--mechclaims-n-prompts", "7")
    assert explored.ret == pytest.ExitCode.OK
    explored.stdout.fnmatch_lines(["*profile ci, 7 prompts | organism EXPLORATORY*",
                                   "*EXPLORATORY: organism has no pre-registration*",
                                   "*supported  T.x [[]organism[]]  0.9 *"])
    run = json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["run"]
    assert run["expectations"]["organism"] == {"path": None, "sha256": None, "exploratory": True}
    assert run["settings"]["n_prompts"] == 7


@pytest.mark.parametrize("value", ["1", "x", "100001"])
def test_a_bad_number_of_prompts_is_a_usage_error_naming_the_range(pytester, value):
    result = pytester.runpytest("--mechclaims-n-prompts", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*invalid number of prompts {value!r}: expected an integer from 2 to 100000*"])


def _hf_cache(root, model_dir, repo="meta-llama/Meta-Llama-3-8B", revision="a" * 40):
    """``model_dir`` laid out as the HF cache stores a download: blobs named by their content's hash
    (SHA-256 for large files, the git blob SHA-1 for small ones), a snapshot of links, refs/main."""
    import hashlib

    repo_dir = root / "hub" / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in sorted(model_dir.iterdir()):
        data = file.read_bytes()
        name = (hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors"
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        (repo_dir / "blobs" / name).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def _resolve_in(hf_home, tmp_path):
    script = ("from mechclaims.loading import resolve; from mechclaims.errors import TargetError\n"
              "try:\n    print('OK', resolve('llama-3-8b', device='cpu').sha256_or_revision)\n"
              "except TargetError as exc:\n    print('REFUSED', exc)")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "MECHCLAIMS_CACHE_DIR": str(tmp_path / "memo")}
    env.pop("MECHCLAIMS_LLAMA_3_8B_DIR", None)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600).stdout.strip()


@pytest.mark.parametrize("changed", ["model.safetensors", "config.json"])
def test_a_weight_file_changed_in_a_shared_hf_cache_is_refused(tiny_llama, tmp_path, changed):
    """The GPU runner's HF cache outlives its jobs: a file changed there after download (by a job
    that shared the cache) does not match the blob it is stored as, and the target is refused."""
    hf_home = tmp_path / "hf"
    snapshot = _hf_cache(hf_home, tiny_llama)
    assert _resolve_in(hf_home, tmp_path).startswith("OK revision:" + "a" * 40)
    blob = (snapshot / changed).resolve()
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0xFF  # one byte of the last tensor (or of the config's text)
    blob.write_bytes(bytes(data))
    out = _resolve_in(hf_home, tmp_path)
    assert out.startswith(f"REFUSED {snapshot / changed} was changed after download"), out
    assert f"delete {blob} and download the model again" in out
