"""The llama-3-8b claim code, end to end on the CPU, against a random Llama with llama-3-8b's
geometry and its real tokenizer, loaded through the same loader (so the GPU path is never untested).

The stand-in keeps what the claims depend on: 32 layers, 32 query heads over 8 key-value heads,
rope base 500,000, and Llama-3's own 128,256-token vocabulary (rebuilt from quicktok's BPE ranks,
tests/llama3_tokenizer.py). Only the width shrinks (128, MLP 64), so the pack runs in about a
minute. A 128k vocabulary costs little here because logits are computed only at the positions a
claim keeps (``logits_to_keep``); the full-vocabulary unembedding of every position would be
most of a pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import mechclaims_icl.claim2  # noqa: F401  (patched below; imported before pytester runs so it stays one module object)

pytestmark = pytest.mark.slow  # end-to-end claim runs: the quick tier (make test-quick) leaves them out

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"
PACK = ("conftest.py", "test_claim0.py", "test_claim1.py", "test_claim2.py", "test_claim3.py")


def write_stand_in(path: Path, tokenizer, *, n_layers: int = 32, n_heads: int = 32, width: int = 128,
                   seed: int = 0) -> Path:
    """A random Llama with llama-3-8b's layer and head counts (GQA, 8 key-value heads) and rope base,
    at ``width``, saved with ``tokenizer`` (Llama-3's own: the ``llama3_tokenizer`` fixture)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=8, rope_theta=500000.0,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).eval().save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory, llama3_tokenizer):
    return write_stand_in(tmp_path_factory.mktemp("llama32") / "llama", llama3_tokenizer)


def test_the_stand_in_has_llama_3_8b_geometry_and_tokenizer(stand_in):
    from mechclaims.targets import load_tokenizer, read_shape

    shape = read_shape(stand_in)
    assert (shape.n_layers, shape.n_heads, shape.n_key_value_heads, shape.d_vocab) == (32, 32, 8, 128256)
    assert json.loads((stand_in / "config.json").read_text())["rope_parameters"]["rope_theta"] == 500000.0
    tokenizer = load_tokenizer(stand_in)  # as the run loads it: BOS prepended
    assert tokenizer("Hello world")["input_ids"] == [128000, 9906, 1917]
    assert tokenizer("(28, 59)\n", add_special_tokens=False)["input_ids"] == [7, 1591, 11, 220, 2946, 340]


@pytest.fixture
def gpu_claims(pytester, stand_in, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_LLAMA_3_8B_DIR", str(stand_in))
    # Copied under new names: tests/ has test_claim*.py files of its own.
    for name in PACK:
        shutil.copy(CLAIMS_DIR / name, pytester.path / name.replace("test_", "test_pack_"))
    shutil.copytree(CLAIMS_DIR / "expectations", pytester.path / "expectations")
    return pytester


def _run(pytester, *args, dtype: str = "float32"):
    # the stand-in is not the model llama-3-8b.toml was registered on: allowed, and recorded
    reports = pytester.path / f"reports-{dtype}"
    result = pytester.runpytest(
        "--mechclaims-exploratory", "-m", "gpu", "--mechclaims-device", "cpu", "--mechclaims-dtype", dtype,
        "-p", "no:cacheprovider", "--mechclaims-allow-other-model", "--mechclaims-report-dir", str(reports), *args,
    )
    report = json.loads((reports / "latest" / "claims.json").read_text())
    assert report["run"]["targets"]["llama-3-8b"]["dtype"] == dtype
    assert "registered on d_model = 4096" in report["run"]["expectation_overrides"]["llama-3-8b"]
    return result, report


def test_a_pre_registration_is_refused_on_another_model_unless_allowed(gpu_claims):
    result = gpu_claims.runpytest("--mechclaims-exploratory", "-m", "gpu", "--mechclaims-device", "cpu", "--mechclaims-dtype", "float32",
                                  "-p", "no:cacheprovider", "-k", "C0 or onset")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*llama-3-8b.toml: registered on d_model = 4096, but this llama-3-8b has 128; "
                                 "re-run discovery for this model, or pass --mechclaims-allow-other-model*"])
    report = json.loads((gpu_claims.path / "reports" / "latest" / "claims.json").read_text())
    assert {c["verdict"] for c in report["claims"]} == {"errored"} and report["run"]["expectation_overrides"] == {}


def test_gpu_claims_run_on_the_stand_in_and_are_not_applicable(gpu_claims):
    result, report = _run(gpu_claims)
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert set(verdicts) >= {"C0.in-context", "C1.onset", "C1.redundancy", "C2.log-additive", "C3.mlp"}
    assert all(v == "not-applicable" for k, v in verdicts.items() if k[:3] in ("C1.", "C2.", "C3.")), verdicts
    assert report["run"]["targets"]["llama-3-8b"]["n_layers"] == 32
    # llama-3-8b's pre-registration takes the post's own B, <bos>(15, : no newline before it
    assert {(c["figures"]["probe"], c["figures"]["probe_b"]) for c in report["claims"] if c["id"].startswith("C1.")} == {
        ("post", "(15, ")}


@pytest.fixture
def past_the_precondition(monkeypatch):
    """A random model: run past C0's precondition (claim1 and claim2 bind its threshold at import)."""
    from mechclaims_icl import claim1, claim2

    monkeypatch.setattr(claim1, "MIN_ACCURACY", -1.0)
    monkeypatch.setattr(claim2, "MIN_ACCURACY", -1.0)


def test_the_post_layers_drive_the_full_study_in_float32_and_bfloat16(gpu_claims, past_the_precondition):
    result, report = _run(gpu_claims)
    c1 = {c["id"]: c for c in report["claims"] if c["id"].startswith("C1.")}
    assert len(c1) == 9 and {c["figures"]["probe"] for c in c1.values()} == {"post"}
    assert list(c1["C1.onset-robust"]["figures"]["variants"]) == ["post", "newline", "neutral-line"]
    assert all(c["verdict"] in ("supported", "refuted") for c in c1.values()), {k: c["message"] for k, c in c1.items()}
    assert c1["C1.backup-13"]["figures"]["layer"] == 13 and c1["C1.backup-15"]["figures"]["layer"] == 15
    assert "ablate 10+11" in c1["C1.ablate-10-11"]["message"]
    c23 = {c["id"]: c for c in report["claims"] if c["id"][:3] in ("C2.", "C3.")}
    assert len(c23) == 6
    assert all(c["verdict"] in ("supported", "refuted") for c in c23.values()), {k: c["message"] for k, c in c23.items()}
    assert c23["C3.x-to-y"]["figures"]["heads"] == ["L9H23", "L9H9", "L9H21", "L9H24"]
    assert c23["C3.mlp"]["figures"]["mlp_layers"] == [9, 10, 11, 12]
    assert c23["C2.feature-linear"]["figures"]["layer"] == 12
    assert "c must lie within 0.693 ± 0.1" in c23["C2.log-additive"]["message"]
    assert len(c23["C3.y-to-prey"]["figures"]["heads"]) == 4

    # bfloat16, the GPU run's dtype: every claim gets a verdict, and the one it gets in float32
    # (readings are taken in float32 from bf16 activations; the organisms compare this on claims
    # that hold: tests/test_bf16.py)
    _, half = _run(gpu_claims, dtype="bfloat16")
    verdicts = {c["id"]: c["verdict"] for c in report["claims"]}
    assert {c["id"]: c["verdict"] for c in half["claims"]} == verdicts
    assert len(verdicts) == 16 and not {"errored", "not-applicable"} & set(verdicts.values()), verdicts
