"""The one loading function, on test-made checkpoints and the real SmolLM2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import LlamaForCausalLM

from mechclaims import TARGETS, TargetError, load_target
from mechclaims_icl.answers import encode, greedy_is
from mechclaims_icl.tasks import AffineTask, make_prompts
from mechclaims.hooks import resid_pre
from mechclaims.targets import attached_hooks, default_cache_dir, read_shape
from mechclaims_icl.targets import smollm2_gguf as _smollm2_gguf


def test_llama3_loader_on_a_tiny_checkpoint_matches_hf(tiny_llama, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MECHCLAIMS_LLAMA_3_8B_DIR", str(tiny_llama))
    loaded = load_target("llama-3-8b", device="cpu", dtype="float32", cache_dir=tmp_path)

    hf = LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = torch.tensor([encode(loaded.tokenizer, "\n(28, 59)\n(86, 175)\n(42, ")])
    with torch.no_grad():
        diff = (loaded.model(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-5, f"bridge logits differ from HF's by {diff}"
    assert loaded.info.device == "cpu" and loaded.info.dtype == "float32"
    assert loaded.info.sha256_or_revision.startswith("sha256:")
    assert loaded.info.n_layers == 2


def test_the_model_boots_on_first_use_and_agrees_with_what_was_known_before(tiny_llama, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    loaded = load_target("organism")
    model = loaded.model
    early = {name: getattr(model.cfg, name) for name in ("n_layers", "n_heads", "d_model", "d_mlp", "d_vocab", "dtype")}
    ids = encode(loaded.tokenizer, "\n(3, 9)\n(4, ")
    assert not model.booted and attached_hooks(loaded) == [] and loaded.boot_seconds is None
    assert not model.booted  # neither the sizes, the tokenizer nor the hook check booted it
    logits = model(torch.tensor([ids]))
    assert model.booted and loaded.boot_seconds is not None and logits.shape[-1] == early["d_vocab"]
    assert early == {name: getattr(model.bridge.cfg, name) for name in early}
    assert model.bridge.tokenizer(" 17", add_special_tokens=False) == loaded.tokenizer(" 17", add_special_tokens=False)
    assert loaded.forwards.calls == 1  # the warm-up forward of the boot is not counted
    assert model.cfg.d_head == model.bridge.cfg.d_head  # any other field is the bridge's


def test_a_stopped_pass_counts_only_the_layers_it_ran(tiny_llama, monkeypatch):
    """The roofline's work count: tokens x layers run, pairs per layer run, logits only when the
    unembedding ran."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    loaded = load_target("organism")
    model = loaded.model
    tokens = torch.tensor([encode(loaded.tokenizer, "\n(3, 9)\n(4, ")] * 2)
    rows, length = tokens.shape
    model(tokens)
    whole = dict(loaded.forwards.to_json(), seconds=0)
    assert whole == {"calls": 1, "tokens": rows * length, "layer_tokens": 2 * rows * length,
                     "logit_positions": rows * length, "attention_pairs": 2 * rows * length * (length + 1) // 2,
                     "seconds": 0}

    class Stop(Exception):
        pass

    def stop(act, hook):
        raise Stop

    with model.hooks(fwd_hooks=[(resid_pre(1), stop)]), pytest.raises(Stop):
        model(tokens)  # block 0 ran, block 1 never started
    after = loaded.forwards
    assert (after.calls, after.tokens) == (2, 2 * rows * length)
    assert after.layer_tokens - whole["layer_tokens"] == rows * length
    assert after.attention_pairs - whole["attention_pairs"] == rows * length * (length + 1) // 2
    assert after.logit_positions == whole["logit_positions"]  # no logits for the stopped pass


def test_config_without_the_sizes_names_the_missing_field(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    config = json.loads((broken / "config.json").read_text())
    del config["intermediate_size"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(TargetError, match=r"gives no d_mlp \(looked for intermediate_size, n_inner, ffn_dim\)"):
        read_shape(broken)


def test_llama3_defaults_to_bf16_on_cuda():
    spec = TARGETS["llama-3-8b"]
    assert (spec.device, spec.dtype, spec.gpu) == ("cuda", "bfloat16", True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_llama3_without_cuda_says_what_is_missing(tiny_llama, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_LLAMA_3_8B_DIR", str(tiny_llama))
    with pytest.raises(TargetError, match="needs CUDA.*--mechclaims-device cpu"):
        load_target("llama-3-8b")


def test_llama3_without_weights_says_how_to_supply_them(monkeypatch, tmp_path):
    monkeypatch.delenv("MECHCLAIMS_LLAMA_3_8B_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(TargetError, match="MECHCLAIMS_LLAMA_3_8B_DIR") as err:
        load_target("llama-3-8b", device="cpu", dtype="float32")
    assert "\n" not in str(err.value)


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(TargetError, match=r"unknown target 'llama-4' \(.*\); valid targets: llama-3-8b, smollm2-135m, organism"):
        load_target("llama-4")


def test_missing_weights_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(TargetError, match=r"weights directory .*nowhere does not exist"):
        load_target("organism")


def test_truncated_safetensors(tiny_llama, monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
    with pytest.raises(TargetError, match="corrupt or truncated safetensors file .*model.safetensors") as err:
        load_target("organism")
    assert "\n" not in str(err.value)


def test_garbage_safetensors_header(tiny_llama, monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(broken))
    with pytest.raises(TargetError, match="corrupt or truncated safetensors"):
        load_target("organism")


def test_pickled_weights_are_refused(tiny_llama, monkeypatch, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(pickled))
    with pytest.raises(TargetError, match="never unpickles"):
        load_target("organism")


def test_truncated_gguf(monkeypatch, tmp_path):
    source = _smollm2_gguf()
    truncated = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with source.open("rb") as fh:
        truncated.write_bytes(fh.read(4 << 20))
    monkeypatch.setenv("MECHCLAIMS_SMOLLM2_GGUF", str(truncated))
    with pytest.raises(TargetError, match="cannot read GGUF file .* truncated or corrupt") as err:
        load_target("smollm2-135m", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").glob("gguf/*/model.safetensors"))


@pytest.fixture(scope="module")
def smollm2():
    return load_target("smollm2-135m")


def test_smollm2_loads_offline_and_copies_in_context(smollm2):
    assert smollm2.info.n_layers == 30 and smollm2.info.source.startswith("gguf:")
    prompts = make_prompts(AffineTask(1, 0), n_prompts=20, n_examples=12, seed=0)
    correct = greedy_is(smollm2.model, prompts.texts, prompts.answers)
    assert correct.mean() >= 0.9, f"SmolLM2 copied {correct.mean():.0%} of 20 prompts: {correct.tolist()}"


@pytest.mark.slow
def test_corrupt_smollm2_cache_entry_is_rebuilt(smollm2, tmp_path, monkeypatch, caplog):
    # Copy the shared cache entry into a private cache, corrupt it, and load again.
    shared = default_cache_dir() / "gguf" / smollm2.info.sha256_or_revision.removeprefix("sha256:")[:16]
    assert (shared / "model.safetensors").is_file(), f"no dequantised SmolLM2 cache at {shared}"
    cache = tmp_path / "cache"
    entry = cache / "gguf" / shared.name
    shutil.copytree(shared, entry)
    weights = entry / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\xff" * 10
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        reloaded = load_target("smollm2-135m", cache_dir=cache)
    assert "fails its checksum" in caplog.text
    assert reloaded.info.sha256_or_revision == smollm2.info.sha256_or_revision


def test_a_released_model_frees_its_bridge_and_boots_again_when_needed(tiny_llama, monkeypatch):
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    loaded = load_target("organism")
    ids = torch.tensor([encode(loaded.tokenizer, "\n(3, 9)\n(4, ")])
    with torch.no_grad():
        first = loaded.model(ids)
        loaded.model.release()
        assert not loaded.model.booted and attached_hooks(loaded) == []
        again = loaded.model(ids)
    assert loaded.boots == 2 and torch.equal(first, again)
    assert (loaded.forwards.calls, loaded.forwards.tokens) == (2, 2 * ids.shape[1])  # counted over both boots
