"""``gguf = "model.gguf"`` in a ``[tool.mechclaims.targets.NAME]`` table: a GGUF file is a target
by configuration alone, dequantised once into the cache (F32, Q8_0 and Q4_K files written here;
the real SmolLM2 Q4_1 file runs the induction example end to end)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechclaims import load_target, registry
from mechclaims.weights import sha256_file
from tiny_gguf import QUANTS, write_tiny_gguf

REPO = Path(__file__).resolve().parents[1]
TOKENS = [[1, 100, 2000, 30, 4000, 500, 6000, 70]]


def _configure(project: Path, name: str, gguf: str) -> Path:
    (project / "pyproject.toml").write_text(f'[tool.mechclaims.targets.{name}]\ngguf = "{gguf}"\n')
    return project / "pyproject.toml"


@pytest.fixture(scope="module", params=QUANTS)
def tiny(request, tmp_path_factory):
    project = tmp_path_factory.mktemp(f"gguf-{request.param}")
    reference = write_tiny_gguf(project / f"tiny-{request.param}.gguf", request.param)
    return request.param, project, reference


def _logits(model, tokens) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(tokens)).float()


@pytest.mark.parametrize("tolerance", [{"F32": 1e-4, "Q8_0": 0.05, "Q4_K": 0.05}])
def test_a_configured_gguf_file_loads_as_the_model_it_holds(tiny, tmp_path, capfd, tolerance):
    quant, project, reference = tiny
    pyproject = _configure(project, "tiny-gguf", f"tiny-{quant}.gguf")
    registry.load_config(pyproject)
    try:
        loaded = load_target("tiny-gguf", cache_dir=tmp_path / "cache")
        assert "dequantising" in capfd.readouterr().err
        gguf = project / f"tiny-{quant}.gguf"
        assert loaded.info.source == f"gguf:{gguf.name}"
        assert loaded.info.sha256_or_revision == f"sha256:{sha256_file(gguf)}"
        assert (loaded.info.n_layers, loaded.info.n_heads) == (2, 4)
        got = _logits(loaded.model, TOKENS)
        with torch.no_grad():
            want = reference(torch.tensor(TOKENS)).logits
        assert (got - want).abs().max().item() < tolerance[quant]
        # negative control: another random model is far from it, so the comparison can fail
        other = write_tiny_gguf(tmp_path / "other.gguf", quant, seed=1)
        with torch.no_grad():
            assert (other(torch.tensor(TOKENS)).logits - got).abs().max().item() > 0.2
        again = load_target("tiny-gguf", cache_dir=tmp_path / "cache")  # dequantised once: reused
        assert "dequantising" not in capfd.readouterr().err
        assert again.info.sha256_or_revision == loaded.info.sha256_or_revision
    finally:
        registry.unload_config(pyproject)


def test_a_file_that_is_not_gguf_is_one_line_naming_the_table(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    pyproject = _configure(tmp_path, "broken-gguf", "model.gguf")
    registry.load_config(pyproject)
    try:
        with pytest.raises(Exception, match=r"cannot read GGUF file .*model.gguf.*fix gguf = \.\.\. in "
                                            r"\[tool.mechclaims.targets.broken-gguf\]") as info:
            load_target("broken-gguf", cache_dir=tmp_path / "cache")
        assert "\n" not in str(info.value)
    finally:
        registry.unload_config(pyproject)


@pytest.mark.slow
def test_a_real_gguf_file_runs_the_induction_example_from_discovery_to_verdicts(tmp_path):
    """SmolLM2-135M's released Q4_1 file, configured by path as a target of a user's project:
    discovery pre-registers it, and the example's claims confirm, with no conversion script."""
    from mechclaims_icl.targets import smollm2_gguf as _smollm2_gguf

    pack = tmp_path / "induction"
    shutil.copytree(REPO / "examples" / "induction", pack, ignore=shutil.ignore_patterns("__pycache__"))
    for old in (pack / "expectations").glob("*.toml"):
        old.unlink()  # the new target's claims are judged against its own discovery only
    _configure(tmp_path, "my-smollm2", str(_smollm2_gguf()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    discover = subprocess.run([sys.executable, str(pack / "discover.py"), "--target", "my-smollm2", "--n", "40"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    assert discover.returncode == 0, discover.stdout[-2000:] + discover.stderr[-3000:]
    assert (pack / "expectations" / "my-smollm2.toml").is_file()
    run = subprocess.run([sys.executable, "-m", "pytest", "induction", "--mechclaims-target", "my-smollm2",
                          "--mechclaims-n-prompts", "20", "-p", "no:cacheprovider", "-q"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "latest" / "claims.json").read_text())
    assert {c["id"]: c["verdict"] for c in report["claims"]} == {
        "I.attention": "supported", "I.attention-without-repeats": "refuted", "I.ablation": "supported"}
    assert report["run"]["targets"]["my-smollm2"]["source"] == f"gguf:{_smollm2_gguf().name}"
