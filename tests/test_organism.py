"""Tests of the model organisms: tokenizer, training command, shipped fixtures."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from answers_rule import rates_agree
import torch

from organisms import measure, train
from organisms.data import CANONICAL, Family
from organisms.tokenizer import BOS_ID, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
ORGANISMS = ["organism", "organism-control"]
TINY = ["--steps", "4000", "--batch", "4", "--d-model", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1",
        "--mlp", "16", "--log-every", "1"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {name: measure.load(FIXTURES / name) for name in ORGANISMS}


# ---------------------------------------------------------------- tokenizer

def test_example_line_is_six_tokens():
    tok = build_tokenizer()
    ids = tok("(28, 59)\n", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["(", "28", ",", " ", "59", ")\n"]


@pytest.mark.parametrize("name", ORGANISMS)
def test_saved_tokenizer_adds_bos_and_decodes_numbers(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXTURES / name)
    text = "\n(28, 59)\n(999, 0)\n(42, "
    ids = tok(text).input_ids
    assert ids[0] == BOS_ID and len(ids) == 1 + 1 + 6 + 6 + 4
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids[3:4]) == "28"


# ---------------------------------------------------------------- fixtures

# Floors below the measured 200-prompt accuracy after 12 examples (MODEL_CARD.md): organism 0.985,
# organism-control 1.000; checked here on a small seeded sample.
ACC12_FLOOR = {"organism": 0.9, "organism-control": 0.9}


@pytest.mark.parametrize("name", ORGANISMS)
def test_fixture_accuracy_curve(models, name):
    model, info = models[name]
    curve = measure.accuracy_curve(model, *CANONICAL, n_prompts=50, seed=7, family=measure.family_of(info))
    assert curve.acc(12) >= ACC12_FLOOR[name]
    assert curve.acc(0) <= 0.1
    assert curve.acc(1) < curve.acc(8)


@pytest.mark.parametrize("name", ORGANISMS)
def test_fixture_size_and_files(name):
    d = FIXTURES / name
    assert (d / "MODEL_CARD.md").is_file() and (d / "model.safetensors").is_file()
    assert not list(d.glob("*.bin")) and not list(d.glob("*.py"))
    assert sum(f.stat().st_size for f in d.iterdir()) <= 10 * 2**20


def test_fixture_loads_in_transformer_bridge_with_hf_logits(models):
    from transformer_lens.model_bridge import TransformerBridge

    d = FIXTURES / "organism"
    bridge = TransformerBridge.boot_transformers(str(d), device="cpu", dtype=torch.float32)
    ids = build_tokenizer()("\n(28, 59)\n(86, 175)\n(13, 29)\n(42, ", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(bridge(ids), models["organism"][0](input_ids=ids).logits, atol=1e-4)


def test_patching_at_layer_zero_is_clean_b_under_every_format_of_b():
    """A's resid_pre at layer 0 is the embedding of the same ' ' token, so B is unchanged; the card's
    sweep is the claim pack's own (one bridge, every format of B)."""
    from mechclaims_icl.tasks import PROBES

    model = measure.bridge(FIXTURES / "organism")
    sweep = measure.patch_sweeps(model, *CANONICAL, n_pairs=20, seed=3, family=Family())
    assert list(sweep["probes"]) == list(PROBES) and sweep["n"] == 20
    for probe, row in sweep["probes"].items():
        layer0 = row["layers"][0]  # the same values by another path (cached decode vs a full pass)
        assert all(rates_agree(layer0[k], row["clean_b"][k], 20) for k in ("approx", "exact", "copy", "other")), probe
        assert row["b_text"].endswith(", ") and all(0 <= r["task"] <= 1 for r in row["layers"])
    assert measure.sweep_stages(sweep["probes"]["newline"])["task_onset"] is not None


def test_family_scan_pools_trained_pairs_by_slope_and_reports_the_held_out_pair_apart(models):
    model, _ = models["organism"]
    family = Family(a_max=2, b_max=3, held_out=(1, 2))
    rows = measure.family_scan(model, family, n_per_pair=3, seed=0)
    assert [(r["a"], r["pairs"], r["n"], r["held_out_b"]) for r in rows] == [(1, 3, 9, 2), (2, 4, 12, None)]
    for r in rows:
        assert r["acc"] == r["correct"] / r["n"] and r["ci"][0] <= r["acc"] <= r["ci"][1]
        assert r["worst_b"] != r["held_out_b"] and r["worst_acc"] <= r["acc"]
    assert rows[0]["held_out_acc"] is not None and rows[1]["held_out_acc"] is None


# ---------------------------------------------------------------- training command

def test_short_training_lowers_loss(tmp_path):
    cfg = train.parse_config(["--out", str(tmp_path / "m"), "--steps", "40", "--batch", "16", "--d-model", "32",
                              "--layers", "2", "--heads", "2", "--kv-heads", "1", "--mlp", "64", "--lr", "3e-3",
                              "--head-dropout", "0.2", "--layer-dropout", "0.1", "--log-every", "10"])
    record = train.train(cfg, log=sys.stderr)
    assert record["final_loss"] < record["first_loss"] - 0.5
    model, info = measure.load(tmp_path / "m")
    assert info["config"]["steps"] == 40 and model.config.num_hidden_layers == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# Two steps of the shipped architecture, batch, dropouts and patching objective.
SHORT_RUN = ["--steps", "2", "--batch", "32", "--head-dropout", "0.1", "--layer-dropout", "0.2", "--group-dropout", "0.6",
             "--group-layers", "0-4", "--group-max", "4", "--group-positions", "query", "--patch-layers", "2-4",
             "--patch-weight", "0.5", "--log-every", "1"]
# torch promises no bitwise equality across thread counts or processors, so runs there are
# compared within tolerances. Measured for SHORT_RUN (TRAINING_NOTES.md, Reproducibility): another
# kernel set (ATEN_CPU_CAPABILITY avx2 / default instead of avx512) moved weights by at most
# 6.8e-5 and logits by 4.6e-5; another seed moves weights by 0.14 and logits by 1.4. The
# tolerances sit 15-20x above the first and two orders of magnitude below the second.
WEIGHT_TOL = 1e-3
LOGIT_TOL = 1e-3


def _train_short(out, threads=1, seed=0, env=None):
    """Train SHORT_RUN into out, in this process (env None) or in a fresh one with env added."""
    args = ["--out", str(out), "--threads", str(threads), "--seed", str(seed), *SHORT_RUN]
    if env is None:
        before = torch.get_num_threads()
        try:
            train.train(train.parse_config(args), log=sys.stderr)
        finally:
            torch.set_num_threads(before)
    else:
        subprocess.run([sys.executable, "-m", "organisms.train", *args], env={**_env(), **env},
                       check=True, capture_output=True, timeout=600)
    return out


def _digest(directory):
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def _seeded_logits(directory):
    """Logits at every position of 100 seeded prompts of 13 lines (the card's prompt shape)."""
    import numpy as np

    from organisms.data import task_batch

    model, _ = measure.load(directory)
    data = task_batch(np.random.default_rng(5), 100, 13, *CANONICAL, Family())
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(data.ids)).logits


def _agreement(reference, other):
    """(max weight difference, max logit difference, whether decided greedy answers are equal).
    An answer is decided where the reference's top-two margin exceeds 2 x LOGIT_TOL: there, logits
    within LOGIT_TOL cannot change the argmax, so a changed answer is a real difference."""
    from safetensors.torch import load_file

    w0, w1 = load_file(reference / "model.safetensors"), load_file(other / "model.safetensors")
    weight_diff = max((w0[k] - w1[k]).abs().max().item() for k in w0)
    l0, l1 = _seeded_logits(reference), _seeded_logits(other)
    top = l0.topk(2, -1).values
    decided = (top[..., 0] - top[..., 1]) > 2 * LOGIT_TOL
    assert decided.float().mean() > 0.9  # the answer check covers nearly every position
    answers_equal = bool((l0.argmax(-1) == l1.argmax(-1))[decided].all())
    return weight_diff, (l0 - l1).abs().max().item(), answers_equal


@pytest.mark.slow
def test_training_at_a_fixed_seed_and_thread_count_is_bitwise_reproducible(tmp_path):
    """Same seed, same thread count, same machine: the same kernels reduce in the same order, so
    the weights are bit-identical, twice in one process and in a second process."""
    first = _digest(_train_short(tmp_path / "a"))
    assert _digest(_train_short(tmp_path / "b")) == first
    assert _digest(_train_short(tmp_path / "c", env={})) == first


@pytest.mark.slow
def test_training_across_thread_counts_and_kernel_sets_agrees_within_tolerance(tmp_path):
    """Two threads, and the generic kernels another processor would get (ATEN_CPU_CAPABILITY=default),
    train to weights and logits within the stated tolerances and the same decided greedy answers;
    a different seed, the negative control, is outside them."""
    reference = _train_short(tmp_path / "ref")
    for name, threads, env in (("threads2", 2, {}), ("generic", 2, {"ATEN_CPU_CAPABILITY": "default"})):
        weight_diff, logit_diff, answers_equal = _agreement(reference, _train_short(tmp_path / name, threads, env=env))
        assert weight_diff <= WEIGHT_TOL and logit_diff <= LOGIT_TOL and answers_equal, name
    weight_diff, logit_diff, answers_equal = _agreement(reference, _train_short(tmp_path / "seed1", seed=1))
    assert weight_diff > 10 * WEIGHT_TOL and logit_diff > 10 * LOGIT_TOL and not answers_equal


def test_grouped_dropout_zeroes_whole_layers_inside_the_named_range():
    cfg = train.parse_config(["--out", "unused", "--d-model", "32", "--layers", "6", "--heads", "2", "--kv-heads", "1",
                              "--mlp", "64", "--group-dropout", "0.5", "--group-layers", "1-4", "--group-max", "3"])
    model = train.build_model(cfg)
    dropout = train.HeadDropout(model, 0.0, 0.0, torch.Generator().manual_seed(0),
                                cfg.group_dropout, cfg.group_layers, cfg.group_max)
    try:
        dropout.resample(2000)
        dropped = dropout.masks[:, :, 0, :, 0] == 0  # [layers, batch, heads]
        assert (dropped.all(-1) == dropped.any(-1)).all()  # a layer loses all its heads or none
        per_row = dropped.all(-1)
        assert not per_row[[0, 5]].any()  # only layers 1..4
        counts = per_row.sum(0)
        assert counts.max() == 3 and abs((counts > 0).float().mean().item() - 0.5) < 0.05
    finally:
        dropout.remove()
    assert all(not layer.self_attn.o_proj._forward_pre_hooks for layer in model.model.layers)


def test_prefix_grouped_dropout_zeroes_the_first_k_layers_of_the_range():
    cfg = train.parse_config(["--out", "unused", "--d-model", "32", "--layers", "6", "--heads", "2", "--kv-heads", "1",
                              "--mlp", "64", "--group-dropout", "0.5", "--group-layers", "1-4", "--group-max", "3",
                              "--group-order", "prefix"])
    assert "--group-order prefix" in measure.train_command(dataclasses.asdict(cfg) | {"held_out": [3, 17]}, "m")
    model = train.build_model(cfg)
    dropout = train.HeadDropout(model, 0.0, 0.0, torch.Generator().manual_seed(0), cfg.group_dropout,
                                cfg.group_layers, cfg.group_max, group_order=cfg.group_order)
    try:
        dropout.resample(2000)
        per_row = (dropout.masks[:, :, 0, :, 0] == 0).all(-1)  # [layers, batch]
        counts = per_row.sum(0)
        assert set(counts.tolist()) == {0, 1, 2, 3}
        for k in (1, 2, 3):  # k dropped layers are always layers 1..k
            rows = per_row[:, counts == k]
            assert rows[1:1 + k].all() and not rows[[0, *range(1 + k, 6)]].any()
    finally:
        dropout.remove()
    with pytest.raises(ValueError, match="group_order 'middle'"):
        train.HeadDropout(model, 0.0, 0.0, torch.Generator(), 0.5, group_order="middle")


def test_grouped_dropout_at_query_positions_leaves_every_other_position_and_prompt_b_alone():
    cfg = train.parse_config(["--out", "unused", "--d-model", "32", "--layers", "3", "--heads", "2", "--kv-heads", "1",
                              "--mlp", "64", "--group-dropout", "0.99", "--group-max", "3", "--group-positions", "query"])
    model = train.build_model(cfg)
    query = torch.tensor([2, 5])
    dropout = train.HeadDropout(model, 0.0, 0.0, torch.Generator().manual_seed(0), cfg.group_dropout,
                                cfg.group_layers, cfg.group_max, cfg.group_positions, (7, query))
    seen = []
    hook = model.model.layers[0].self_attn.o_proj.register_forward_hook(
        lambda module, args, out: seen.append(args[0].detach().clone()))
    a_ids, b_ids = torch.randint(0, 50, (64, 7)), torch.randint(0, 50, (64, 4))
    try:
        with torch.no_grad():
            model(a_ids), model(b_ids)  # no masks drawn yet: clean
            dropout.resample(64)
            model(a_ids), model(b_ids)
        dropped = dropout.query_masks[0, :, 0, :, 0] == 0  # layer 0: [batch, heads]
        assert dropped.any() and (dropped.all(-1) == dropped.any(-1)).all()
        rows = dropped.all(-1)
        clean, masked = seen[0].view(64, 7, 2, -1), seen[2].view(64, 7, 2, -1)
        assert (masked[rows][:, query] == 0).all() and (clean[rows][:, query] != 0).any()
        other = [0, 1, 3, 4, 6]
        assert torch.equal(masked[:, other], clean[:, other]) and torch.equal(masked[~rows], clean[~rows])
        assert torch.equal(seen[3], seen[1])  # the shorter prompt B is left alone
    finally:
        hook.remove()
        dropout.remove()


def test_several_prompts_b_per_sequence_share_that_sequences_head_masks():
    """With --patch-samples K the patching prompts B come K per training sequence, in order:
    each gets its own sequence's head-dropout mask; a batch that is no multiple is refused."""
    cfg = train.parse_config(["--out", "unused", "--d-model", "32", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                              "--mlp", "64", "--head-dropout", "0.5"])
    model = train.build_model(cfg)
    dropout = train.HeadDropout(model, cfg.head_dropout, 0.0, torch.Generator().manual_seed(0))
    try:
        dropout.resample(3)
        hook = dropout._hook(1)
        (out,) = hook(None, (torch.ones(6, 4, 32),))
        kept = out.view(6, 4, 4, 8)[:, 0, :, 0]  # [rows, heads]: 1 where the head is kept
        expected = dropout.masks[1, :, 0, :, 0].repeat_interleave(2, dim=0)
        assert torch.equal(kept, expected) and 0 < kept.mean() < 1
        with pytest.raises(ValueError, match="multiple of the training batch"):
            hook(None, (torch.ones(4, 4, 32),))
    finally:
        dropout.remove()


def test_canonical_share_draws_the_canonical_pair_that_often_and_reaches_the_card():
    import numpy as np

    from organisms.data import training_batch

    family = Family(held_out=(4, 17))
    uniform = training_batch(np.random.default_rng(0), 4000, 3, family, 0.1)
    again = training_batch(np.random.default_rng(0), 4000, 3, family, 0.1, canonical_share=0.0)
    assert np.array_equal(uniform.ids, again.ids)  # a share of 0 draws what it always drew
    mixed = training_batch(np.random.default_rng(0), 4000, 3, family, 0.1, canonical_share=0.25)
    canonical = (mixed.a == CANONICAL[0]) & (mixed.b == CANONICAL[1])
    assert abs(canonical.mean() - 0.25) < 0.03 and not ((mixed.a == 4) & (mixed.b == 17)).any()
    assert (mixed.ys[canonical] - (2 * mixed.xs[canonical] + 3) != 0).mean() > 0  # label noise still applies
    assert canonical[mixed.meta["canonical"]].all() and abs(mixed.meta["canonical"].mean() - 0.25) < 0.03
    assert not uniform.meta["canonical"].any()
    cfg = train.parse_config(["--out", "m", "--canonical-share", "0.1"])
    assert cfg.canonical_share == 0.1
    assert "--canonical-share 0.1" in measure.train_command(dataclasses.asdict(cfg) | {"held_out": [3, 17]}, "m")
    assert "--canonical-share" not in measure.train_command(dataclasses.asdict(train.TrainConfig(out="m")), "m")


def test_canonical_patch_only_sequences_carry_no_answer_loss():
    cfg = train.parse_config(["--out", "m", "--d-model", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1",
                              "--mlp", "64", "--canonical-share", "0.5", "--canonical-patch-only", "--patch-layers", "0-1"])
    assert cfg.canonical_patch_only
    assert "--canonical-share 0.5 --canonical-patch-only" in measure.train_command(
        dataclasses.asdict(cfg) | {"held_out": [3, 17]}, "m")
    model = train.build_model(cfg)
    ids = torch.randint(train.NUMBER_OFFSET, train.NUMBER_OFFSET + 200, (4, 2 + 6 * 13))
    with torch.no_grad():
        kept, _ = train.answer_loss(model, ids, 13, rows=torch.tensor([0, 2]))
        alone, _ = train.answer_loss(model, ids[[0, 2]], 13)
        whole, _ = train.answer_loss(model, ids, 13)
    assert torch.allclose(kept, alone, atol=1e-5) and not torch.allclose(kept, whole, atol=1e-5)
    with pytest.raises(ValueError, match="at least one sequence"):
        train.answer_loss(model, ids, 13, rows=torch.tensor([], dtype=torch.long))


def test_fourier_periods_set_the_number_rows_and_reach_the_retrain_command(tmp_path):
    cfg = train.parse_config(["--out", str(tmp_path / "m"), "--d-model", "16", "--heads", "2", "--kv-heads", "1",
                              "--fourier-periods", "4,10/3"])
    assert cfg.fourier_periods == (4.0, 10 / 3)
    model = train.build_model(cfg)
    row = model.model.embed_tokens.weight[train.NUMBER_OFFSET + 5, :4]  # the number 5
    angles = 2 * torch.pi * 5 / torch.tensor([4.0, 10 / 3])
    assert torch.allclose(row, 0.05 * torch.cat([angles.cos(), angles.sin()]), atol=1e-6)
    command = measure.train_command({**dataclasses.asdict(cfg), "held_out": [3, 17]}, "OUT")
    assert train.parse_config(shlex.split(command)[3:]).fourier_periods == cfg.fourier_periods
    assert "--fourier-periods" not in measure.train_command({**dataclasses.asdict(train.TrainConfig(out="x")),
                                                            "held_out": [3, 17]}, "OUT")


@pytest.mark.parametrize("argv, bad", [
    (["--steps", "-5"], "-5"),
    (["--steps", "ten"], "ten"),
    (["--head-dropout", "1.5"], "1.5"),
    (["--heads", "3"], "3"),
    (["--held-out", "2,3"], "(2, 3)"),
    (["--init-from", "/nonexistent/organism"], "/nonexistent/organism"),
    (["--bogus-option", "1"], "--bogus-option"),
    (["--patch-layers", "4-2"], "4-2"),
    (["--patch-layers", "two"], "two"),
    (["--patch-layers", "2-8"], "2-8"),
    (["--patch-weight", "-1"], "-1"),
    (["--patch-weight", "0"], "0"),
    (["--group-layers", "0-9"], "0-9"),
    (["--group-dropout", "0.5", "--group-layers", "0-2", "--group-max", "4"], "--group-max 4"),
    (["--group-max", "0"], "0"),
    (["--group-positions", "middle"], "middle"),
    (["--group-order", "random"], "random"),
    (["--canonical-share", "1"], "1.0"),
    (["--canonical-share", "-0.1"], "-0.1"),
    (["--patch-samples", "0"], "0"),
    (["--canonical-patch-only", "--patch-layers", "2-4"], "--canonical-share > 0"),
    (["--canonical-patch-only", "--canonical-share", "0.1"], "--patch-layers"),
    (["--patch-above-dropout", "--patch-layers", "2-4"], "--group-dropout > 0"),
    (["--patch-above-dropout", "--group-dropout", "0.5"], "--patch-layers"),
    (["--fourier-periods", "2,0,3"], "'0'"),
    (["--fourier-periods", "2,a/3"], "'a/3'"),
    (["--fourier-periods", "2,3/0"], "'3/0'"),
    (["--d-model", "8", "--heads", "2", "--kv-heads", "1", "--fourier-periods", "2,3,4,5,6"], "at most 4 periods"),
])
def test_invalid_arguments_exit_2_with_message(argv, bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        train.parse_config(["--out", str(tmp_path / "m"), *argv])
    assert exc.value.code == 2
    assert bad in capsys.readouterr().err


def test_cli_rejects_negative_steps_without_traceback(tmp_path):
    out = tmp_path / "m"
    proc = subprocess.run([sys.executable, "-m", "organisms.train", "--out", str(out), "--steps", "-3"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 2
    assert "-3" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_sigterm_leaves_no_weights(tmp_path):
    out = tmp_path / "m"
    proc = subprocess.Popen([sys.executable, "-m", "organisms.train", "--out", str(out), *TINY],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=_env())
    seen = []
    for line in proc.stderr:  # wait for the event itself: training has started (no deadline)
        seen.append(line)
        if "step " in line:
            break
    else:
        pytest.fail(f"training ended before its first step line: {''.join(seen)[-2000:]}")
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=600)[1]  # a hang guard only: it exits within a second of the signal
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_old_output(tmp_path, monkeypatch):
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")

    def broken_write(model, record, directory):
        (directory / "model.safetensors").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(train, "_write_model", broken_write)
    cfg = train.parse_config(["--out", str(out), "--steps", "2", "--batch", "2", "--d-model", "16", "--layers", "1",
                              "--heads", "2", "--kv-heads", "1", "--mlp", "16"])
    with pytest.raises(OSError, match="disk full"):
        train.train(cfg, log=sys.stderr)
    assert (out / "model.safetensors").read_text() == "old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_retraining_into_a_directory_keeps_its_card_and_notes(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "model.safetensors").write_text("old weights")
    (out / "MODEL_CARD.md").write_text("card")
    (out / "TRAINING_NOTES.md").write_text("notes")
    cfg = train.parse_config(["--out", str(out), "--steps", "2", "--batch", "2", "--d-model", "16", "--layers", "1",
                              "--heads", "2", "--kv-heads", "1", "--mlp", "16"])
    train.train(cfg, log=sys.stderr)
    assert (out / "model.safetensors").read_bytes() != b"old weights"
    assert (out / "MODEL_CARD.md").read_text() == "card" and (out / "TRAINING_NOTES.md").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_family_rejects_overflow():
    with pytest.raises(ValueError, match="exceeds 999"):
        Family(a_max=9, b_max=200)
    with pytest.raises(ValueError, match="held-out"):
        Family(held_out=CANONICAL)


# ---------------------------------------------------------------- auxiliary patching objective

def test_short_training_with_patch_objective_lowers_both_losses(tmp_path):
    cfg = train.parse_config(["--out", str(tmp_path / "m"), "--steps", "40", "--batch", "16", "--d-model", "32",
                              "--layers", "3", "--heads", "2", "--kv-heads", "1", "--mlp", "64", "--lr", "3e-3",
                              "--head-dropout", "0.2", "--patch-layers", "1-2", "--patch-weight", "0.5",
                              "--log-every", "10"])
    assert cfg.patch_layers == (1, 2) and cfg.patch_weight == 0.5
    record = train.train(cfg, log=sys.stderr)
    assert record["final_loss"] < record["first_loss"] - 0.5
    assert record["final_patch_loss"] < record["first_patch_loss"] - 0.5
    _, info = measure.load(tmp_path / "m")
    assert info["config"]["patch_layers"] == [1, 2]
    assert "--patch-layers 1-2 --patch-weight 0.5" in measure.train_command(info["config"], "out")
    assert "--patch-samples" not in measure.train_command(info["config"], "out")
    assert "--patch-samples 4" in measure.train_command({**info["config"], "patch_samples": 4}, "out")


def test_b_formats_of_the_patching_objective_are_the_claim_packs(tmp_path):
    """--patch-formats trains B in the claim pack's formats (one drawn per step), and the card's
    command reproduces it; an unknown format is refused naming the valid ones."""
    from organisms.tokenizer import build_tokenizer
    from mechclaims_icl.tasks import probe_text

    tok = build_tokenizer()
    for fmt in ("post", "newline", "neutral-line"):
        assert train.b_prefix(fmt) == tok(probe_text(fmt, 15)).input_ids[:-3]  # B without "15", ",", " "
    cfg = train.parse_config(["--out", str(tmp_path / "m"), "--steps", "6", "--batch", "8", "--d-model", "32",
                              "--layers", "2", "--heads", "2", "--kv-heads", "1", "--mlp", "64",
                              "--patch-layers", "0-1", "--patch-formats", "post,newline,neutral-line"])
    assert cfg.patch_formats == ("post", "newline", "neutral-line")
    record = train.train(cfg, log=sys.stderr)
    assert record["final_patch_loss"] is not None
    assert "--patch-formats post,newline,neutral-line" in measure.train_command(record["config"], "out")
    assert "--patch-formats" not in measure.train_command(dataclasses.asdict(train.TrainConfig(out="m")), "m")
    with pytest.raises(SystemExit):
        train.parse_config(["--out", "m", "--patch-formats", "post,tab"])


@pytest.mark.parametrize("samples", [1, 3])
def test_patch_loss_is_the_measured_patching_protocol(models, samples):
    """The training-time patch equals the measurement's: A's resid_pre at the position before a
    line's y, written into B's last position at the same layer (no dropout, eval mode); with
    several samples per sequence, each prompt B reads from its own sequence."""
    import numpy as np

    from organisms.data import training_batch

    model, info = models["organism"]
    family = measure.family_of(info)
    rng = np.random.default_rng(0)
    batch = training_batch(rng, 6, 13, family, 0.0)
    plan = train.patch_plan(rng, batch, (2, 4), family, samples)
    assert list(plan.seq) == [r for r in range(6) for _ in range(samples)]
    assert set(plan.layer) <= {2, 3, 4} and all(p not in batch.xs[s] for p, s in zip(plan.p, plan.seq))
    assert all(int(t) - train.NUMBER_OFFSET == batch.a[s] * p + batch.b[s] for t, p, s in zip(plan.target, plan.p, plan.seq))
    ids = torch.from_numpy(batch.ids)
    with torch.no_grad():
        _, _, hidden = train.answer_loss(model, ids, 13, hidden_states=True)
        loss, _ = train.patch_loss(model, hidden, plan)
        expected = []
        for r in range(6 * samples):
            seq, layer, pos = int(plan.seq[r]), int(plan.layer[r]), train.y_pos(int(plan.line[r])) - 1
            vec = model(input_ids=ids[seq:seq + 1, :pos + 1], output_hidden_states=True).hidden_states[layer][:, -1]
            h = model.model.layers[layer].register_forward_pre_hook(
                train.replace_last_position(torch.tensor([0]), vec), with_kwargs=True)
            try:
                logits = model(input_ids=plan.b_ids[r:r + 1]).logits[:, -1]
            finally:
                h.remove()
            expected.append(torch.nn.functional.cross_entropy(logits, plan.target[r:r + 1]))
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-4)


@pytest.mark.parametrize("group_layers, order", [("1-4", "prefix"), ("0-4", "any")])
def test_the_layer_above_the_removed_ones_is_above_the_highest_removed_layer(models, group_layers, order):
    """A prefix from layer 1 removes layers 1..k (the layer above is k + 1); in any order the layer
    above is one past the highest removed layer; with nothing removed it is the group's first layer."""
    model, _ = models["organism"]
    first = int(group_layers.split("-")[0])
    cfg = train.parse_config(["--out", "m", "--group-dropout", "0.7", "--group-layers", group_layers,
                              "--group-max", "4", "--group-order", order])
    dropout = train.HeadDropout(model, 0.0, 0.0, torch.Generator().manual_seed(0), cfg.group_dropout,
                                cfg.group_layers, cfg.group_max, group_order=cfg.group_order)
    try:
        dropout.resample(400)
        above = dropout.first_layer_above_removed()
        removed = (dropout.masks[:, :, 0, :, 0] == 0).all(-1).numpy()  # [layers, batch]
        for row in range(400):
            layers = removed[:, row].nonzero()[0]
            assert above[row] == (layers.max() + 1 if layers.size else first)
        if order == "prefix":
            assert set(above.tolist()) == {1, 2, 3, 4, 5}
            assert not removed[0].any()
    finally:
        dropout.remove()


def test_patch_above_dropout_draws_layers_above_the_removed_prefix_and_idles_the_rest(models):
    """With prefix grouped dropout, a sequence that lost layers 0..k-1 is patched at a layer above
    k-1 only; one that lost every layer below the range's end carries no patching loss."""
    import numpy as np

    from organisms.data import training_batch

    model, info = models["organism"]
    family = measure.family_of(info)
    cfg = train.parse_config(["--out", "m", "--group-dropout", "0.9", "--group-layers", "0-4", "--group-max", "4",
                              "--group-order", "prefix", "--patch-layers", "2-4", "--patch-above-dropout"])
    assert "--patch-above-dropout" in measure.train_command(dataclasses.asdict(cfg) | {"held_out": [3, 17]}, "m")
    dropout = train.HeadDropout(model, 0.0, 0.0, torch.Generator().manual_seed(0), cfg.group_dropout,
                                cfg.group_layers, cfg.group_max, group_order=cfg.group_order)
    try:
        with pytest.raises(ValueError, match="call resample first"):
            dropout.first_layer_above_removed()
        dropout.resample(400)
        above = dropout.first_layer_above_removed()
        dropped = (dropout.masks[:, :, 0, :, 0] == 0).all(-1).sum(0).numpy()  # k per sequence
        assert (above == dropped).all() and set(above.tolist()) == {0, 1, 2, 3, 4}
        rng = np.random.default_rng(0)
        batch = training_batch(rng, 400, 13, family, 0.0)
        plan = train.patch_plan(rng, batch, cfg.patch_layers, family, 2, above=above)
        k = above[plan.seq]
        assert (plan.active == (k <= 3)).all()
        assert (plan.layer[plan.active] > k[plan.active]).all() and set(plan.layer) <= {2, 3, 4}
        assert set(plan.layer[k == 2]) == {3, 4} and set(plan.layer[k == 3]) == {4}
        eight = training_batch(rng, 8, 13, family, 0.0)
        ids = torch.from_numpy(eight.ids)
        small = train.patch_plan(np.random.default_rng(1), eight, cfg.patch_layers, family, 1,
                                 above=np.full(8, 5))
        assert not small.active.any()
        dropout.disable()
        with torch.no_grad():
            _, _, hidden = train.answer_loss(model, ids, 13, hidden_states=True)
            loss, acc = train.patch_loss(model, hidden, small)
        assert loss.item() == 0.0 and acc.item() == 0.0
        half = train.patch_plan(np.random.default_rng(1), eight, cfg.patch_layers, family, 1,
                                above=np.array([0, 5] * 4))
        full = dataclasses.replace(half, active=None)
        with torch.no_grad():
            rows = torch.from_numpy(half.active)
            only, _ = train.patch_loss(model, hidden, half)
            per_row = [train.patch_loss(model, hidden, dataclasses.replace(
                full, seq=full.seq[[r]], line=full.line[[r]], layer=full.layer[[r]], p=full.p[[r]],
                b_ids=full.b_ids[[r]], target=full.target[[r]]))[0] for r in range(8) if rows[r]]
        assert torch.allclose(only, torch.stack(per_row).mean(), atol=1e-5)
    finally:
        dropout.remove()

