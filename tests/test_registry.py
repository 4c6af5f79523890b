"""Targets by configuration: a project registers its own model in its pyproject.toml, lists it,
pre-registers it with discovery and confirms it with the claim suite (docs/targets.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mechclaims import TargetError
from mechclaims import registry
from mechclaims.targets import TARGETS
from mechclaims.weights import sha256_file

REPO = Path(__file__).resolve().parents[1]
ORGANISM = REPO / "fixtures" / "organism"


def _project(tmp_path: Path, table: str, claims: bool = False) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(table)
    if claims:
        shutil.copytree(REPO / "claims", project / "claims", ignore=shutil.ignore_patterns("*.toml", "__pycache__"))
    return project


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=project, capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_CACHE_DIR": str(project / ".cache")},
    )


@pytest.mark.slow
def test_a_project_registers_discovers_and_confirms_its_own_model(tmp_path):
    project = _project(tmp_path, '[tool.mechclaims.targets.my-model]\npath = "models/my-model"\n', claims=True)
    shutil.copytree(ORGANISM, project / "models" / "my-model")

    listed = _run(project, "-m", "mechclaims.cli", "targets")
    assert listed.returncode == 0, listed.stderr
    block = listed.stdout.split("my-model: ")[1]
    assert f"registered by: {project / 'pyproject.toml'}" in block
    assert f"weights: present: {project / 'models' / 'my-model'}" in block and "(none yet: run discover)" in block

    # B in the format the organism was trained with (the default is the post's <bos>(p, ); 400 pairs as the
    # shipped organism's file (at 200, C1.parity-late's interval touches its bound on the confirmation split)
    found = _run(project, "-m", "mechclaims_icl.discover", "--target", "my-model", "--probe", "newline", "--n-pairs", "400")
    assert found.returncode == 0, found.stderr[-3000:]
    assert (project / "claims" / "expectations" / "my-model.toml").is_file()

    confirmed = _run(project, "-m", "pytest", "claims/", "--mechclaims-target", "my-model", "-p", "no:cacheprovider")
    out = confirmed.stdout + confirmed.stderr
    assert confirmed.returncode == 0, out[-3000:]
    report = json.loads((project / "reports" / "latest" / "claims.json").read_text())
    onset = next(c for c in report["claims"] if c["id"] == "C1.onset")
    assert onset["verdict"] == "supported" and onset["as_expected"] and onset["n"] == 400
    assert "STAND-IN" not in out  # a configured target has no known shape to differ from

    # the pre-registration names the model it was made on (its weight file's hash); other weights are
    # refused unless allowed
    weights = "sha256:" + sha256_file(ORGANISM / "model.safetensors")
    text = (project / "claims" / "expectations" / "my-model.toml").read_text()
    assert "[registered]" in text and f'weights = "{weights}"' in text and "n_layers = 8" in text
    shutil.rmtree(project / "models" / "my-model")
    shutil.copytree(REPO / "fixtures" / "organism-control", project / "models" / "my-model")
    other = _run(project, "-m", "pytest", "claims/test_claim0.py", "--mechclaims-target", "my-model", "-p",
                 "no:cacheprovider")
    assert other.returncode == 1 and f"registered on weights = '{weights}'" in other.stdout
    allowed = _run(project, "-m", "pytest", "claims/test_claim0.py", "--mechclaims-target", "my-model", "-p",
                   "no:cacheprovider", "--mechclaims-allow-other-model")
    assert allowed.returncode == 0 and "runs on another model than its pre-registration (allowed)" in allowed.stdout


@pytest.mark.parametrize("table, message", [
    ('path = "m"\ndtyp = "float32"\n', r"\[tool.mechclaims.targets.bad\] dtyp: not a known key; did you mean 'dtype'\?"),
    ('dtype = "float32"\n', "needs exactly one of path .*, hf_id .* or gguf .*; it has none"),
    ('path = "m"\nhf_id = "org/m"\n', "needs exactly one of path .* or gguf .*; it has path and hf_id"),
    ('path = "m"\ngguf = "m.gguf"\n', "it has path and gguf"),
    ('gguf = "nowhere.gguf"\n', r"bad: GGUF file .*nowhere.gguf does not exist; fix gguf = \.\.\. in \[tool.mechclaims.targets.bad\] of "),
    ('path = "m"\ndevice = "tpu"\n', r"device = 'tpu'; valid devices: cpu, cuda"),
    ('path = "m"\ndtype = "float8"\n', r"dtype = 'float8'; valid dtypes: "),
    ('path = "m"\ngpu = "yes"\n', r"gpu = 'yes'; expected true or false"),
    ('path = "m"\ndevice_map = "everywhere"\n', r"device_map = 'everywhere'; valid: auto, balanced"),
    ('path = "m"\nn_devices = 0\n', r"n_devices = 0; expected an integer >= 1"),
    ('path = "m"\nrevision = "main"\n', "revision needs hf_id"),
])
def test_a_bad_target_table_is_one_line_naming_file_key_and_choices(tmp_path, table, message):
    """The problem is the target's own: it errors when resolved, and the file's other targets load."""
    from mechclaims.loading import resolve

    project = _project(tmp_path, "[tool.mechclaims.targets.bad]\n" + table
                       + f'[tool.mechclaims.targets.good]\npath = "{ORGANISM}"\n')
    try:
        assert registry.load_config(project / "pyproject.toml") == ["bad", "good"]
        with pytest.raises(TargetError, match=message) as info:
            resolve("bad")
        assert resolve("good").path == ORGANISM
    finally:
        registry.unload_config(project / "pyproject.toml")
    assert "\n" not in str(info.value) and str(project / "pyproject.toml") in str(info.value)
    assert "bad" not in TARGETS


def test_a_bad_table_or_a_missing_path_stops_a_claim_run_in_one_line(tmp_path):
    project = _project(tmp_path, '[tool.mechclaims.targets.mine]\npath = "nowhere"\n', claims=True)
    missing = _run(project, "-m", "pytest", "claims/test_claim0.py", "--mechclaims-target", "mine", "-p",
                   "no:cacheprovider", "--mechclaims-exploratory")
    assert missing.returncode != 0
    assert f"weights directory {project / 'nowhere'} does not exist" in missing.stdout + missing.stderr
    (project / "pyproject.toml").write_text('[tool.mechclaims.targets.mine]\npath = "m"\ndevise = "cpu"\n')
    bad = _run(project, "-m", "pytest", "claims/test_claim0.py", "--mechclaims-target", "mine")
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in bad.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "devise: not a known key; did you mean 'device'?" in errors[0], bad.stderr


def test_a_configured_name_cannot_shadow_a_packages_target(tmp_path):
    project = _project(tmp_path, '[tool.mechclaims.targets.organism]\npath = "m"\n')
    with pytest.raises(TargetError, match=r"target 'organism' from .* is already registered by package mechclaims \(entry point icl = mechclaims_icl.targets:TARGETS\); give it another name"):
        registry.load_config(project / "pyproject.toml")
    assert TARGETS["organism"].location is None


def test_an_unknown_target_says_how_to_add_one():
    from mechclaims.registry import get_spec

    with pytest.raises(TargetError, match=r"add your own model as a \[tool.mechclaims.targets.mymodel\] table"):
        get_spec("mymodel")


def test_the_posts_models_come_from_its_pack_through_the_entry_point():
    """The core ships no model: the four targets of the post are the pack's, registered like any
    package's, and a fresh process has none until the entry points load."""
    from importlib import metadata

    (ep,) = [ep for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP) if ep.name == "icl"]
    assert ep.value == "mechclaims_icl.targets:TARGETS"
    assert [spec.name for spec in ep.load()] == ["llama-3-8b", "smollm2-135m", "organism", "organism-control"]
    registry.load_entry_points()
    assert registry.source_of("organism") == "package mechclaims (entry point icl = mechclaims_icl.targets:TARGETS)"
    code = ("import mechclaims.targets as t, mechclaims as m; assert t.TARGETS == {}; "
            "assert 'organism' in m.TARGETS and 'mechclaims_icl' in __import__('sys').modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_boot_options_reach_boot_transformers_and_a_device_map_boots(tmp_path, monkeypatch):
    """device_map / n_devices / max_memory go to TransformerBridge.boot_transformers (and so to
    accelerate); a one-device map really boots here. Maps over several GPUs need a machine with them."""
    from transformer_lens.model_bridge import TransformerBridge

    from mechclaims import load_target

    project = _project(tmp_path, f'[tool.mechclaims.targets.mapped]\npath = "{ORGANISM}"\n'
                                 'device_map = {{"" = "cpu"}}\nmax_memory = {{cpu = "2GiB", 0 = "1GiB"}}\n'
                       .replace("{{", "{").replace("}}", "}"))
    registry.load_config(project / "pyproject.toml")
    seen = []
    real = TransformerBridge.boot_transformers

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", staticmethod(spy))
    try:
        loaded = load_target("mapped", cache_dir=tmp_path / "cache")
        import torch

        logits = loaded.model(torch.tensor([[1, 2, 3]]))
    finally:
        registry.unload_config(project / "pyproject.toml")
    assert seen and seen[0]["device_map"] == {"": "cpu"} and seen[0]["max_memory"] == {"cpu": "2GiB", 0: "1GiB"}
    assert seen[0]["device"] is None and logits.shape[-1] == 1009
    assert "mapped" not in TARGETS  # unloaded with its project


def test_load_target_outside_pytest_finds_the_working_directorys_project(tmp_path, monkeypatch):
    """A discovery script or a notebook in a user's project loads its configured target by name:
    load_target reads the nearest pyproject.toml, as a pytest run does (no internal call needed)."""
    from mechclaims import load_target

    project = _project(tmp_path, f'[tool.mechclaims.targets.mine]\npath = "{ORGANISM}"\n')
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")  # below the project's root, as a script often is
    try:
        loaded = load_target("mine", cache_dir=tmp_path / "cache")
        assert loaded.info.name == "mine" and registry.source_of("mine") == str((project / "pyproject.toml").resolve())
    finally:
        registry.unload_config(project / "pyproject.toml")
    with pytest.raises(TargetError, match=r"unknown target 'yours' \(.*pyproject.toml has no "
                                           r"\[tool.mechclaims.targets.yours\] table\)"):
        load_target("yours")
    monkeypatch.chdir(tmp_path.parent)  # negative control: no project above, and the error says so
    registry.unload_config(project / "pyproject.toml")
    with pytest.raises(TargetError, match=r"unknown target 'mine' \(no pyproject.toml at or above"):
        load_target("mine")
