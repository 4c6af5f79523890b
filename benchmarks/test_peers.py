"""Claim 1's patch sweep side by side with the way a user would write it without mechclaims,
and the claim run against this machine's float32 matmul peak. Writes ``reports/peers.json``
besides the usual pytest-benchmark output:

    pytest benchmarks/test_peers.py [--benchmark-json reports/benchmarks.json]

The sweep: the same prompt pairs, every layer, A's last-position ``resid_pre`` written into B's
last position, B's greedy answer (every digit). The answers of every way must be equal.

* ``mechclaims``: ``mechclaims_icl.patching.patch_sweep`` (A's residuals in one batched pass,
  B's prefix cached once and decoded for every layer as one batch).
* ``nnsight``: nnsight 0.8 (``model.trace`` / ``tracer.invoke`` / ``.save()``), an invoke per
  layer in one batched pass per generated digit (:func:`nnsight_sweep`).
* ``transformer_lens``: TransformerLens 4.3 hooks as the post used them: ``run_with_cache`` on A,
  then ``run_with_hooks`` per layer and prompt, one full pass per generated digit.

The reading: Claim 2's teacher-forced reading of P(correct y_j) and greedy correctness at every
example j of every sequence, two ways (the values must agree):

* ``mechclaims``: ``mechclaims_icl.claim2.read_sequences`` (one forward per sequence, batched,
  the unembedding only at the positions read).
* ``per_example``: one TransformerLens forward per (sequence, example), on the sequence's tokens
  up to the token after y_j (the j earlier examples, x_j and y_j), read from its full logits.

The roofline runs ``pytest claims/`` on ``$MECHCLAIMS_ROOFLINE_TARGET`` (default
``smollm2-135m``) with the activation cache off, counts its floating-point work from the run's
own accounting (``run.forwards``) and divides by its wall time and by the measured peak.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from mechclaims import load_target
from mechclaims import encode, token_batches
from mechclaims.hooks import resid_pre
from mechclaims.loading import resolve
from mechclaims.targets import TARGETS
from mechclaims_icl import claim2
from mechclaims_icl.answers import NumberReader, answer_steps, numbers_are_single_tokens
from mechclaims_icl.roles import roles
from mechclaims_icl.patching import patch_sweep
from mechclaims import split_seed
from mechclaims_icl.tasks import CANONICAL, make_patch_pairs, make_prompts

from roofline import matmul_peak_gflops, run_flops

ROOT = Path(__file__).resolve().parents[1]
PEERS_JSON = ROOT / "reports" / "peers.json"
N_PAIRS = {"organism": 20, "smollm2-135m": 10}
N_SEQUENCES = {"organism": 40, "smollm2-135m": 8}  # Claim 2 sequences of claim2.N_EXAMPLES examples
WAYS = ("mechclaims", "nnsight", "transformer_lens")
RESULTS: dict[str, dict[str, tuple[float, np.ndarray]]] = {}


def transformer_lens_sweep(model, pairs) -> np.ndarray:
    """The post's loop: per prompt, A's residuals from run_with_cache; per layer, B decoded with
    run_with_hooks, the hook overwriting B's last prompt position at every pass."""
    tokenizer, n_layers = model.tokenizer, model.cfg.n_layers
    answers = np.full((n_layers, len(pairs)), -1, dtype=np.int64)
    names = {resid_pre(layer) for layer in range(n_layers)}
    with torch.no_grad():
        for i, pair in enumerate(pairs.pairs):
            _, cache = model.run_with_cache(torch.tensor([encode(tokenizer, pair.a.text)]),
                                            names_filter=lambda name: name in names)
            b = torch.tensor([encode(tokenizer, pair.b_text)])
            position = b.shape[1] - 1
            for layer in range(n_layers):
                value = cache[resid_pre(layer)][0, -1]

                def patch(resid, hook, value=value):
                    resid[0, position] = value
                    return resid

                tokens, reader = b, NumberReader(tokenizer, 1)
                for _ in range(answer_steps(tokenizer)):
                    logits = model.run_with_hooks(tokens, fwd_hooks=[(resid_pre(layer), patch)])
                    nxt = logits[0, -1].argmax()
                    if not reader.add([int(nxt)]):
                        break
                    tokens = torch.cat([tokens, nxt.view(1, 1)], dim=1)
                answers[layer, i] = reader.numbers()[0]
    return answers


def per_example_reading(model, prompts) -> tuple[np.ndarray, np.ndarray]:
    """P(correct y_j) and greedy correctness ``[n_seq, K]``, one forward per (sequence, example j)
    on the sequence's tokens up to the token after y_j; read from the full logits."""
    tokenizer = model.tokenizer
    single = numbers_are_single_tokens(tokenizer)
    n_seq, k = len(prompts), len(prompts.prompts[0].examples)
    p_correct, correct = np.full((n_seq, k), np.nan), np.zeros((n_seq, k), dtype=bool)
    with torch.no_grad():
        for i, prompt in enumerate(prompts.prompts):
            r = roles(tokenizer, prompt)
            for j, span in enumerate(r.y):
                tokens = torch.tensor([r.tokens[: span[-1] + 2]])
                logp = torch.log_softmax(model(tokens)[0].float(), dim=-1)
                best = logp.argmax(-1)
                p_correct[i, j] = float(sum(logp[t - 1, r.tokens[t]] for t in span).exp())
                ok = all(int(best[t - 1]) == r.tokens[t] for t in span)
                if ok and not single:  # the number ends after y_j, as greedy decoding would read it
                    ok = not tokenizer.decode([int(best[span[-1]])]).strip().isdigit()
                correct[i, j] = ok
    return p_correct, correct


def nnsight_sweep(model, pairs, path) -> np.ndarray:
    """nnsight 0.8 as its documentation teaches batched patching: one trace saves A's layer inputs
    (``model.model.layers[L].input``); then one trace per generated digit holds an invoke per
    layer, each writing A's value into B's last prompt position, so every layer runs in one batch."""
    import nnsight
    from nnsight import TransformersModel

    lm = TransformersModel(str(path), task="text-generation", dispatch=True)
    tokenizer, n_layers = model.tokenizer, model.cfg.n_layers
    answers = np.full((n_layers, len(pairs)), -1, dtype=np.int64)
    a_ids = [encode(tokenizer, pair.a.text) for pair in pairs.pairs]
    b_ids = [encode(tokenizer, pair.b_text) for pair in pairs.pairs]
    source = torch.empty(len(pairs), n_layers, model.cfg.d_model)
    with torch.no_grad():
        for rows, tokens in token_batches(model, a_ids):
            with lm.trace(tokens):
                saved = nnsight.save([])
                for layer in range(n_layers):
                    saved.append(lm.model.layers[layer].input[:, -1])
            source[rows] = torch.stack([t.float() for t in saved], dim=1)
        for rows, base in token_batches(model, b_ids):
            position = base.shape[1] - 1
            tokens = [base] * n_layers
            readers = [NumberReader(tokenizer, len(rows)) for _ in range(n_layers)]
            alive = list(range(n_layers))
            for _ in range(answer_steps(tokenizer)):
                with lm.trace() as tracer:
                    nxt = nnsight.save([])
                    for layer in alive:
                        with tracer.invoke(tokens[layer]):
                            lm.model.layers[layer].input[:, position] = source[rows, layer]
                            nxt.append(lm.lm_head.output[:, -1].argmax(-1))
                still = []
                for layer, ids in zip(alive, nxt):
                    if readers[layer].add(ids.tolist()):
                        still.append(layer)
                    tokens[layer] = torch.cat([tokens[layer], ids[:, None]], dim=1)
                alive = still
                if not alive:
                    break
            for layer in range(n_layers):
                answers[layer, rows] = readers[layer].numbers()
    return answers


SWEEPS = {
    "mechclaims": lambda model, pairs, path: patch_sweep(model, pairs).answers,
    "nnsight": nnsight_sweep,
    "transformer_lens": lambda model, pairs, path: transformer_lens_sweep(model.bridge, pairs),
}


@pytest.fixture(scope="module", params=list(N_PAIRS))
def peer(request):
    pytest.importorskip("nnsight", reason="the peers benchmark needs nnsight: pip install -e '.[bench]'")
    loaded = load_target(request.param)
    pairs = make_patch_pairs(CANONICAL, n_pairs=N_PAIRS[request.param], n_examples=12,
                             seed=split_seed(0, "confirmation"))
    loaded.model.bridge  # booted before timing  # noqa: B018
    return loaded, pairs, resolve(request.param).path  # nnsight loads the same directory


@pytest.mark.benchmark(group="peers-sweep")
@pytest.mark.parametrize("way", WAYS)
def test_sweep(benchmark, peer, way):
    loaded, pairs, path = peer
    started = time.perf_counter()
    answers = benchmark.pedantic(SWEEPS[way], args=(loaded.model, pairs, path), rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    RESULTS.setdefault(loaded.name, {})[way] = (seconds, answers)
    benchmark.extra_info.update(n_pairs=len(pairs), n_layers=loaded.info.n_layers)
    assert answers.shape == (loaded.info.n_layers, len(pairs))


def test_the_ways_give_equal_answers_and_are_written(peer):
    loaded, pairs, _ = peer
    done = RESULTS.get(loaded.name, {})
    if set(done) != set(WAYS):
        pytest.skip("run the whole module: the sweeps of every way are compared here")
    reference = done["mechclaims"][1]
    equal = all(np.array_equal(answers, reference) for _, answers in done.values())
    entry = {f"{way}_s": round(seconds, 3) for way, (seconds, _) in done.items()}
    entry |= {"answers_equal": equal, "n_pairs": len(pairs), "n_layers": loaded.info.n_layers,
              "speedup": {way: round(done[way][0] / done["mechclaims"][0], 1) for way in WAYS if way != "mechclaims"}}
    _merge({"sweep": {loaded.name: entry}})
    assert equal, {way: int((answers != reference).sum()) for way, (_, answers) in done.items()}


READINGS = {
    "mechclaims": lambda model, prompts: (lambda r: (r.p_correct, r.correct))(claim2.read_sequences(model, prompts)),
    "per_example": lambda model, prompts: per_example_reading(model.bridge, prompts),
}
READ: dict[str, dict[str, tuple[float, tuple[np.ndarray, np.ndarray]]]] = {}


@pytest.fixture(scope="module")
def sequences(peer):
    loaded = peer[0]
    return make_prompts(CANONICAL, n_prompts=N_SEQUENCES[loaded.name], n_examples=claim2.N_EXAMPLES,
                        seed=split_seed(0, "confirmation"))


@pytest.mark.benchmark(group="peers-reading")
@pytest.mark.parametrize("way", list(READINGS))
def test_reading(benchmark, peer, sequences, way):
    loaded = peer[0]
    started = time.perf_counter()
    got = benchmark.pedantic(READINGS[way], args=(loaded.model, sequences), rounds=1, iterations=1)
    READ.setdefault(loaded.name, {})[way] = (time.perf_counter() - started, got)
    benchmark.extra_info.update(n_sequences=len(sequences), n_examples=claim2.N_EXAMPLES)
    assert got[0].shape == got[1].shape == (len(sequences), claim2.N_EXAMPLES)


def test_the_readings_agree_and_are_written(peer, sequences):
    loaded = peer[0]
    done = READ.get(loaded.name, {})
    if set(done) != set(READINGS):
        pytest.skip("run the whole module: the readings of every way are compared here")
    (fast_s, (p_fast, ok_fast)), (slow_s, (p_slow, ok_slow)) = done["mechclaims"], done["per_example"]
    # The same computation on differently shaped batches: float32 rounding only.
    gap = float(np.max(np.abs(p_fast - p_slow)))
    flips = int((ok_fast != ok_slow).sum())
    _merge({"reading": {loaded.name: {
        "mechclaims_s": round(fast_s, 3), "per_example_s": round(slow_s, 3),
        "speedup": round(slow_s / fast_s, 1), "n_sequences": len(sequences), "n_examples": claim2.N_EXAMPLES,
        "max_abs_p_difference": float(f"{gap:.3g}"), "correct_flags_differing": flips,
    }}})
    assert gap < 1e-4 and flips == 0, (gap, flips)
    # negative control: the tolerance tells a reading one example off from the right one
    assert np.max(np.abs(p_fast[:, 1:] - p_slow[:, :-1])) > 1e-2


def _merge(part: dict) -> None:
    record = json.loads(PEERS_JSON.read_text()) if PEERS_JSON.is_file() else {}
    for key, value in part.items():
        record[key] = {**record.get(key, {}), **value} if isinstance(value, dict) else value
    PEERS_JSON.parent.mkdir(parents=True, exist_ok=True)
    PEERS_JSON.write_text(json.dumps(record, indent=2) + "\n")


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_roofline(tmp_path):
    name = os.environ.get("MECHCLAIMS_ROOFLINE_TARGET", "smollm2-135m")
    threads = torch.get_num_threads()
    peak = matmul_peak_gflops(threads)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "claims/", "--mechclaims-target", name, "-q",
                           "-p", "no:cacheprovider", "--mechclaims-cache", "off", "--mechclaims-report-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    run = json.loads((tmp_path / "latest" / "claims.json").read_text())["run"]
    assert proc.returncode == 0, proc.stdout[-2000:]
    forwards, target = run["forwards"][name], run["targets"][name]
    flops = run_flops(TARGETS[name].known_shape, forwards)
    in_run = _seconds(run["started"], run["finished"])
    boot = target["boot_seconds"] or 0.0
    profile = {
        "process_s": round(wall, 1),
        "peak_rss_mib": round(peak_rss_mib),
        "interpreter_and_collection_s": round(wall - in_run, 1),
        "boot_s": round(boot, 1),
        "forward_passes_s": round(forwards["seconds"], 1),
        "outside_passes_s": round(in_run - boot - forwards["seconds"], 1),
        "flops": {k: float(f"{v:.4g}") for k, v in flops.items()},
    }
    profile["shares"] = {k.removesuffix("_s"): round(profile[k] / wall, 3) for k in
                         ("interpreter_and_collection_s", "boot_s", "forward_passes_s", "outside_passes_s")}
    achieved = flops["total"] / wall / 1e9
    _merge({"roofline": {
        "target": name, "threads": threads, "matmul_peak_gflops": round(peak, 1),
        "achieved_gflops": round(achieved, 2), "utilisation": round(achieved / peak, 4),
        "forward_passes_gflops": round(flops["total"] / forwards["seconds"] / 1e9, 2),
        "forwards": forwards, "profile": profile,
    }})
    assert 0 < achieved < peak * 1.05  # a rate above the measured peak would mean the counting is wrong
