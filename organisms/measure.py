"""Measure an organism and write its model card.

    python -m organisms.measure fixtures/organism --twin fixtures/organism-control

Measures, on seeded noise-free prompts: greedy accuracy and mean P(correct) by number of
examples 0..12 for y = 2x + 3 and for the held-out pair; accuracy after 12 examples over every
pair of the family, pooled by slope (the held-out pair beside its slope's trained pairs); a
per-layer ablation scan (all heads of one layer zeroed at the input of o_proj, all positions);
and Claim 1's last-position resid_pre patching sweep from prompt A (12 examples + query q) into
prompt B, under every format of B the claim pack knows (``mechclaims_icl.tasks.PROBES``: the
post's ``<bos>(p, ``, ``<bos>\\n(p, `` as in training, and B after a neutral line), run with the
pack's own code on the bridge the claim run loads.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from mechclaims import proportion

from .data import CANONICAL, Family, task_batch, y_pos
from .tokenizer import VOCAB_SIZE
from .train import FOURIER_PERIODS, TRAINING_INFO

MAX_EXAMPLES = 12
TRAINED_PROBE = "newline"  # the format of B the auxiliary patching objective trains on
FAMILY_PROMPTS = 40  # seeded prompts per (a, b) pair in the family scan
CARD = "MODEL_CARD.md"
NOTES = "TRAINING_NOTES.md"


# ---------------------------------------------------------------- loading and hooks

def load(directory: str | Path) -> tuple[LlamaForCausalLM, dict]:
    """The HF model (fp32, eval) and its training record."""
    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory} has no model.safetensors: train it with python -m organisms.train")
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    info_path = directory / TRAINING_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return model, info


def family_of(info: dict) -> Family:
    return Family(**{**info["family"], "held_out": tuple(info["family"]["held_out"])}) if info else Family()


@contextlib.contextmanager
def ablate_layers(model: LlamaForCausalLM, layers: list[int]):
    """Zero every head's output (the input of o_proj) of the given layers at all positions."""
    handles = [
        model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(lambda m, args: (torch.zeros_like(args[0]),))
        for layer in layers
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of k in n: the core's, so cards and claims use one interval."""
    ci = proportion(int(k), int(n)).ci
    return ci.low, ci.high


# ---------------------------------------------------------------- accuracy curve

@dataclass
class Curve:
    """Greedy correctness [prompts, 13] and P(correct) [prompts, 13] by number of examples."""

    correct: np.ndarray
    p_correct: np.ndarray

    def acc(self, n: int) -> float:
        return float(self.correct[:, n].mean())

    def rows(self) -> list[dict]:
        total = self.correct.shape[0]
        out = []
        for n in range(self.correct.shape[1]):
            k = int(self.correct[:, n].sum())
            lo, hi = wilson(k, total)
            out.append({"examples": n, "correct": k, "n": total, "acc": k / total, "ci": (lo, hi),
                        "p_correct": float(self.p_correct[:, n].mean())})
        return out


@torch.no_grad()
def accuracy_curve(model, a: int, b: int, n_prompts: int, seed: int, family: Family, batch: int = 200) -> Curve:
    """One teacher-forced pass over 13 noise-free lines gives the answer after 0..12 examples."""
    data = task_batch(np.random.default_rng(seed), n_prompts, MAX_EXAMPLES + 1, a, b, family)
    pos = torch.tensor([y_pos(i) for i in range(MAX_EXAMPLES + 1)])
    correct, probs = [], []
    for s in range(0, n_prompts, batch):
        ids = torch.from_numpy(data.ids[s:s + batch])
        logits = model(input_ids=ids).logits[:, pos - 1].float()
        target = ids[:, pos]
        correct.append((logits.argmax(-1) == target).numpy())
        probs.append(logits.softmax(-1).gather(-1, target[..., None])[..., 0].numpy())
    return Curve(np.concatenate(correct), np.concatenate(probs))


@torch.no_grad()
def family_scan(model, family: Family, n_per_pair: int, seed: int, batch: int = 400) -> list[dict]:
    """Accuracy after 12 examples over every pair of the family, by slope a: the trained
    pairs of each slope pooled (n_per_pair seeded prompts each), their worst pair, and
    the held-out pair beside them, so the held-out pair's accuracy can be read against
    pairs the model was trained on."""
    rng = np.random.default_rng(seed)
    pos = y_pos(MAX_EXAMPLES) - 1
    bs = list(range(family.b_min, family.b_max + 1))
    rows = []
    for a in range(family.a_min, family.a_max + 1):
        # every pair of the slope in one batch, cut after the query; logits at the last position only
        ids = torch.from_numpy(np.concatenate([task_batch(rng, n_per_pair, MAX_EXAMPLES + 1, a, b, family).ids
                                               for b in bs]))
        hits = np.concatenate([
            (model(input_ids=chunk[:, :pos + 1], logits_to_keep=1).logits[:, -1].argmax(-1) == chunk[:, pos + 1]).numpy()
            for chunk in ids.split(batch)
        ])
        per_pair = {b: int(h.sum()) for b, h in zip(bs, hits.reshape(len(bs), n_per_pair))}
        held = family.held_out[1] if family.held_out[0] == a else None
        trained = {b: k for b, k in per_pair.items() if b != held}
        k, n = sum(trained.values()), n_per_pair * len(trained)
        worst = min(trained, key=trained.get)
        rows.append({"a": a, "pairs": len(trained), "correct": k, "n": n, "acc": k / n, "ci": wilson(k, n),
                     "worst_b": worst, "worst_acc": trained[worst] / n_per_pair,
                     "held_out_b": held, "held_out_acc": None if held is None else per_pair[held] / n_per_pair})
    return rows


def layer_scan(model, a: int, b: int, n_prompts: int, seed: int, family: Family) -> list[dict]:
    """Accuracy after 12 examples with each single layer's heads ablated."""
    rows = []
    for layer in range(model.config.num_hidden_layers):
        with ablate_layers(model, [layer]):
            curve = accuracy_curve(model, a, b, n_prompts, seed, family)
        k = int(curve.correct[:, MAX_EXAMPLES].sum())
        rows.append({"layer": layer, "correct": k, "n": n_prompts, "acc": k / n_prompts, "ci": wilson(k, n_prompts),
                     "p_correct": float(curve.p_correct[:, MAX_EXAMPLES].mean())})
    return rows


# ---------------------------------------------------------------- patching sweep

def bridge(directory: str | Path):
    """The organism as the claim run loads it: a TransformerBridge on CPU, fp32."""
    from mechclaims.targets import boot, load_tokenizer

    directory = Path(directory)
    return boot(directory, device="cpu", dtype=torch.float32, tokenizer=load_tokenizer(directory))


def patch_sweeps(model, a: int, b: int, n_pairs: int, seed: int, family: Family) -> dict:
    """Claim 1's clean patch sweep under every format of prompt B, with the claim pack's own code
    (``mechclaims_icl``: pairs, batched sweep, outcome classes), on a bridge (:func:`bridge`).

    A is 12 examples and the query q; p is not among A's examples and lies >= 5 from q. For each
    layer, A's resid_pre at its last position replaces B's at B's last position; B's greedy answer
    is classified as exact a·p+b, copy a·q+b, ≈a·p (within b, neither) or other."""
    from mechclaims_icl.answers import OUTCOMES, classify, greedy_numbers
    from mechclaims_icl.experiments import ablation_study, probe_sweeps
    from mechclaims_icl.tasks import PROBES, AffineTask, make_patch_pairs

    pairs = make_patch_pairs(AffineTask(a, b), n_pairs=n_pairs, n_examples=MAX_EXAMPLES, seed=seed,
                             x_range=(family.x_min, family.x_max), probe="newline")
    study = ablation_study(model, pairs, (), read_layer=model.cfg.n_layers - 1)
    out = {"a": a, "b": b, "n": n_pairs, "clean_a_acc": float(study.clean.correct.mean()), "probes": {}}
    for probe, sweep in probe_sweeps(model, study, PROBES).items():
        variant = pairs.with_probe(probe)
        unpatched = classify(greedy_numbers(model, variant.b_texts), variant.p, variant.q, a, b)
        out["probes"][probe] = {
            "b_text": variant.b_texts[0],
            "layers": [{"layer": layer, **_rates(row, OUTCOMES)} for layer, row in zip(sweep.layers, sweep.outcomes)],
            "clean_b": _rates(unpatched, OUTCOMES),
        }
    return out


def _rates(outcomes: np.ndarray, names: tuple[str, ...]) -> dict:
    counts = {name: int((outcomes == k).sum()) for k, name in enumerate(names)}
    n = len(outcomes)
    task = counts["approx"] + counts["exact"]
    return {"approx": counts["approx"] / n, "exact": counts["exact"] / n, "copy": counts["copy"] / n,
            "other": counts["none"] / n, "task": task / n, "task_ci": wilson(task, n), "copy_ci": wilson(counts["copy"], n)}


def sweep_stages(sweep: dict, threshold: float = 0.5) -> dict:
    """First layer whose task rate (approx + exact) reaches threshold; first layer copying most."""
    layers = sweep["layers"]
    onset = next((r["layer"] for r in layers if r["task"] >= threshold), None)
    copy = next((r["layer"] for r in layers if r["copy"] >= threshold), None)
    return {"task_onset": onset, "copy_onset": copy,
            "task_before_copy": onset is not None and (copy is None or onset < copy)}


# ---------------------------------------------------------------- the whole measurement

def measure(directory: str | Path, n_prompts: int = 200, seed: int = 1234) -> dict:
    model, info = load(directory)
    claim_model = bridge(directory)
    family = family_of(info)
    a, b = CANONICAL
    ha, hb = family.held_out
    return {
        "dir": str(directory),
        "info": info,
        "n_layers": model.config.num_hidden_layers,
        "curve": accuracy_curve(model, a, b, n_prompts, seed, family).rows(),
        "held_out_curve": accuracy_curve(model, ha, hb, n_prompts, seed + 1, family).rows(),
        "scan": layer_scan(model, a, b, n_prompts, seed, family),
        "family_scan": family_scan(model, family, FAMILY_PROMPTS, seed + 4),
        "sweep": patch_sweeps(claim_model, a, b, n_prompts, seed + 2, family),
        "held_out_sweep": patch_sweeps(claim_model, ha, hb, n_prompts, seed + 3, family),
        "sha256": hashlib.sha256((Path(directory) / "model.safetensors").read_bytes()).hexdigest(),
        "size_bytes": sum(f.stat().st_size for f in Path(directory).iterdir() if f.is_file() and f.name not in (CARD, NOTES)),
    }


def task_layer(own: dict, twin: dict | None) -> int:
    """The layer whose ablation hurts most, in this model or its twin."""
    clean = own["curve"][MAX_EXAMPLES]["acc"]
    drops = [clean - r["acc"] for r in own["scan"]]
    if twin is not None:
        twin_clean = twin["curve"][MAX_EXAMPLES]["acc"]
        drops = [max(d, twin_clean - r["acc"]) for d, r in zip(drops, twin["scan"])]
    return int(np.argmax(drops))


# ---------------------------------------------------------------- model card

def _pct(x: float) -> str:
    return f"{x:.3f}"


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def train_command(cfg: dict, out: str) -> str:
    """The command line that reproduces a training record's configuration into `out`."""
    parts = ["python -m organisms.train", f"--out {shlex.quote(out)}"]
    for key in ("seed", "steps", "batch", "lines", "lr", "weight_decay", "d_model", "layers", "heads", "kv_heads",
                "mlp", "head_dropout", "layer_dropout", "dropout_ramp", "noise", "a_max", "b_max", "held_out", "number_init", "threads"):
        value = cfg.get(key, {"number_init": "random", "dropout_ramp": 0.0}.get(key))
        if key == "held_out":
            value = ",".join(str(v) for v in value)
        parts.append(f"--{key.replace('_', '-')} {value}")
    if cfg.get("canonical_share", 0) > 0:
        parts.append(f"--canonical-share {cfg['canonical_share']}")
        if cfg.get("canonical_patch_only"):
            parts.append("--canonical-patch-only")
    periods = cfg.get("fourier_periods")
    if periods is not None and tuple(periods) != FOURIER_PERIODS:
        parts.append("--fourier-periods " + ",".join(repr(float(v)) for v in periods))
    if cfg.get("patch_layers"):
        first, last = cfg["patch_layers"]
        parts.append(f"--patch-layers {first}-{last} --patch-weight {cfg['patch_weight']}")
        if cfg.get("patch_samples", 1) != 1:
            parts.append(f"--patch-samples {cfg['patch_samples']}")
        if cfg.get("patch_above_dropout"):
            parts.append("--patch-above-dropout")
        if tuple(cfg.get("patch_formats", ("newline",))) != ("newline",):
            parts.append("--patch-formats " + ",".join(cfg["patch_formats"]))
    if cfg.get("group_dropout", 0) > 0:
        parts.append(f"--group-dropout {cfg['group_dropout']} --group-max {cfg['group_max']} "
                     f"--group-positions {cfg.get('group_positions', 'all')}")
        if cfg.get("group_order", "any") != "any":
            parts.append(f"--group-order {cfg['group_order']}")
        if cfg.get("group_layers"):
            parts.append("--group-layers {}-{}".format(*cfg["group_layers"]))
    return " ".join(parts)


def _number_init_text(cfg: dict) -> str:
    if cfg.get("number_init") != "fourier":
        return "at random"
    periods = [float(v) for v in cfg.get("fourier_periods", FOURIER_PERIODS)]
    return (f"with cos/sin features of the value ({len(periods)} periods, {min(periods):g} to {max(periods):g}) in their "
            f"first {2 * len(periods)} dimensions, the rest random")


def _curve_table(rows: list[dict]) -> list[str]:
    lines = ["| examples | correct / n | accuracy | 95% Wilson CI | mean P(correct) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['examples']} | {r['correct']} / {r['n']} | {_pct(r['acc'])} | {_ci(r['ci'])} | {r['p_correct']:.3f} |")
    return lines


def _family_table(rows: list[dict]) -> list[str]:
    out = ["| slope a | trained pairs | correct / n | accuracy | 95% Wilson CI | worst pair (accuracy) | held-out pair (accuracy) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        held = "" if r["held_out_b"] is None else f"{r['a']}x+{r['held_out_b']} ({_pct(r['held_out_acc'])})"
        out.append(f"| {r['a']} | {r['pairs']} | {r['correct']} / {r['n']} | {_pct(r['acc'])} | {_ci(r['ci'])} | "
                   f"{r['a']}x+{r['worst_b']} ({_pct(r['worst_acc'])}) | {held} |")
    return out


def _sweep_table(sweep: dict) -> list[str]:
    lines = ["| patched layer (resid_pre) | ≈a·p (within b, not exact) | exact a·p+b | copy a·q+b | other | task = ≈ + exact [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in sweep["layers"]:
        lines.append(f"| {r['layer']} | {_pct(r['approx'])} | {_pct(r['exact'])} | {_pct(r['copy'])} | {_pct(r['other'])} "
                     f"| {_pct(r['task'])} {_ci(r['task_ci'])} |")
    c = sweep["clean_b"]
    lines.append(f"| B unpatched | {_pct(c['approx'])} | {_pct(c['exact'])} | {_pct(c['copy'])} | {_pct(c['other'])} "
                 f"| {_pct(c['task'])} {_ci(c['task_ci'])} |")
    return lines


def _probe_table(sweep: dict) -> list[str]:
    probes = list(sweep["probes"])
    lines = ["| patched layer | " + " | ".join(f"task rate, B as {p}" for p in probes) + " |",
             "|---|" + "---|" * len(probes)]
    for k, layer in enumerate(r["layer"] for r in sweep["probes"][probes[0]]["layers"]):
        cells = [sweep["probes"][p]["layers"][k] for p in probes]
        lines.append(f"| {layer} | " + " | ".join(f"{_pct(c['task'])} {_ci(c['task_ci'])}" for c in cells) + " |")
    lines.append("| B unpatched | " + " | ".join(f"{_pct(sweep['probes'][p]['clean_b']['task'])}" for p in probes) + " |")
    return lines


def _check(ok: bool) -> str:
    return "holds" if ok else "does NOT hold"


def _has_dropout(cfg: dict) -> bool:
    return cfg["head_dropout"] > 0 or cfg["layer_dropout"] > 0 or cfg.get("group_dropout", 0) > 0


def _dropout_text(cfg: dict) -> str:
    if not _has_dropout(cfg):
        return "none"
    ramp = cfg.get("dropout_ramp", 0.0)
    text = (f"each head's output is zeroed per (sequence, layer, head) with probability {cfg['head_dropout']}, and all "
            f"heads of a layer together per (sequence, layer) with probability {cfg['layer_dropout']}")
    if cfg.get("group_dropout", 0) > 0:
        first, last = cfg.get("group_layers") or (0, cfg["layers"] - 1)
        layers = (f"the first k of layers {first}..{last}" if cfg.get("group_order", "any") == "prefix"
                  else f"k layers drawn from {first}..{last}")
        text += (f"; with probability {cfg['group_dropout']} per sequence, all heads of {layers} together "
                 f"(k uniform in 1..{cfg['group_max']}), "
                 + ("at every position" if cfg.get("group_positions", "all") == "all"
                    else "only at the positions before each y (where the claims ablate A's heads)"))
    if ramp > 0:
        text += f"; both probabilities rise linearly from 0 over the first {ramp:.0%} of the steps"
    return text + ("; the mask multiplies the per-head outputs at the input of `self_attn.o_proj`, with no rescaling "
                   "(so zero-ablating a layer's heads at test time is exactly a training condition)")


def _canonical_text(cfg: dict) -> str:
    share = cfg.get("canonical_share", 0)
    if not share:
        return ""
    role = (", as a source of the patching objective only: its own y tokens carry no loss (`--canonical-patch-only`)"
            if cfg.get("canonical_patch_only") else "")
    return (f" except that in this phase a sequence is the canonical task y = {CANONICAL[0]}x + {CANONICAL[1]} with "
            f"probability {share} (`--canonical-share`){role}")


def _patch_text(cfg: dict) -> str:
    if not cfg.get("patch_layers"):
        return "none"
    first, last = cfg["patch_layers"]
    k = cfg.get("patch_samples", 1)
    draws = "" if k == 1 else f" ({k} independent draws per sequence, each its own prompt B)"
    above = (" above the layers whose heads the grouped dropout removed at the source position (a sequence with no "
             "such layer carries no patching loss; `--patch-above-dropout`)" if cfg.get("patch_above_dropout") else "")
    return (f"PLANTED. Each step, for every training sequence{draws} a layer L is drawn uniformly from {first}..{last}{above}, a "
            f"line i from the second half of the sequence and a query p from the x range that is not among the "
            f"sequence's x values. The residual stream entering layer L at the position before line i's y (exactly "
            f"the last position of a prompt A with i examples and query x_i) replaces the last position of the "
            f"no-context prompt B = {_formats_text(cfg)} at layer L (a forward pre-hook on decoder layer L, same "
            f"head-dropout masks as the main pass, gradients through both passes), and B's answer is trained by "
            f"cross-entropy towards the noise-free a*p+b with weight {cfg['patch_weight']}, added to the main loss. "
            f"This plants the stage the patching protocol looks for: the residual at layers {first}..{last} must "
            f"carry the task (a, b) but not yet A's query; layers after {last} are not constrained by it. These are "
            f"model organisms for exercising the claim tests, so the mechanism is put there on purpose")


def _formats_text(cfg: dict) -> str:
    formats = tuple(cfg.get("patch_formats", ("newline",)))
    if formats == ("newline",):
        return "`<bos>` `\\n` `(p, `"
    return (f"`(p, ` in one of the formats {', '.join(formats)} (one drawn per step; `--patch-formats`, "
            "mechclaims_icl.tasks.PROBES)")


def _phase_text(info: dict) -> str:
    cfg = info["config"]
    cpu = f" (process CPU time {info['cpu_time_s'] / 60:.1f} min)" if "cpu_time_s" in info else ""
    patch = "see Planted mechanism above" if cfg.get("patch_layers") else "none"
    text = (f"{cfg['steps']} steps of {cfg['batch']} sequences, AdamW (betas 0.9, 0.98, weight decay {cfg['weight_decay']}), "
            f"peak lr {cfg['lr']} with linear warm-up over 5% of the steps then cosine decay to 10% of the peak, "
            f"gradient clipping 1.0, seed {cfg['seed']} (python, numpy, torch), torch threads {cfg['threads']}, "
            f"head dropout: {_dropout_text(cfg)}; auxiliary patching objective: {patch}; "
            f"wall time {info['wall_time_s'] / 60:.1f} min{cpu} on a 2-core CPU machine "
            f"(torch {info['torch']}); loss {info['first_loss']:.3f} at the first step, {info['final_loss']:.3f} over the "
            f"last logging window")
    if info.get("final_patch_loss") is not None:
        text += (f"; auxiliary patching loss {info['first_patch_loss']:.3f} at the first step, "
                 f"{info['final_patch_loss']:.3f} over the last logging window")
    return text


def _lineage(info: dict) -> list[dict]:
    """The training phases that produced these weights, first phase first."""
    chain = []
    while info:
        chain.append(info)
        info = info.get("base")
    return chain[::-1]


def _training_lines(info: dict, out: str) -> list[str]:
    """Training schedule and the commands that reproduce it (every phase, in order)."""
    chain = _lineage(info)
    outs = [f"/tmp/{Path(out).name}-phase{k + 1}" for k in range(len(chain) - 1)] + [out]
    cmds = []
    for k, phase in enumerate(chain):
        cmd = train_command(phase["config"], outs[k])
        cmds.append(cmd + (f" --init-from {shlex.quote(outs[k - 1])}" if k else ""))
    if len(chain) == 1:
        lines = [f"- Training: {_phase_text(info)}."]
    else:
        lines = [
            f"- Training phase {k + 1} ({'from scratch' if k == 0 else f'from the phase-{k} weights'}): {_phase_text(p)}."
            for k, p in enumerate(chain)
        ]
    total = sum(p["wall_time_s"] for p in chain)
    lines += [f"- Total training wall time: {total / 60:.1f} min.", "",
              "Retrain (`--threads 2` is faster on two free cores; any thread count gives the same measured behaviour up "
              "to floating-point differences):", "", "```", *cmds, "```", ""]
    return lines


def render_card(name: str, m: dict, twin: dict | None, command: str) -> str:
    info, cfg = m["info"], m["info"]["config"]
    fam = m["info"]["family"]
    n = m["curve"][0]["n"]
    ha, hb = fam["held_out"]
    clean12 = m["curve"][MAX_EXAMPLES]["acc"]
    drops = [clean12 - r["acc"] for r in m["scan"]]
    worst = int(np.argmax(drops))
    stages = sweep_stages(m["sweep"]["probes"][TRAINED_PROBE])
    h_stages = sweep_stages(m["held_out_sweep"]["probes"][TRAINED_PROBE])
    dropout = _has_dropout(cfg)
    L = [f"# {name}", ""]
    L += [
        "A small `LlamaForCausalLM` trained from scratch on the in-context linear-function task of mechclaims "
        "(`claims-spec.md`, section 1): lines `(x, y)\\n` with `y = a*x + b`. "
        + ("It was trained with attention-head dropout so that the task is carried redundantly."
           if dropout else "It was trained without head dropout: the non-redundant twin (control)."),
        "",
        "All figures below were written by the measure command; the Notes section at the end quotes the training logs.",
        "",
        "## Files",
        "",
        f"- `model.safetensors`: SHA-256 `{m['sha256']}`",
        f"- directory size without this card: {m['size_bytes'] / 1e6:.2f} MB",
        "- `config.json`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`: standard HF files; "
        "load with `LlamaForCausalLM.from_pretrained(dir)` / `AutoTokenizer.from_pretrained(dir)` or "
        "`TransformerBridge.boot_transformers(dir, device=\"cpu\", dtype=torch.float32)` (offline, no remote code).",
        f"- `{TRAINING_INFO}`: the training record (configuration, losses, wall time).",
        "",
        "## Tokenizer and prompt format",
        "",
        "Every integer 0..999 is one token; the format tokens are `(`, `,`, ` `, `)\\n`, `\\n`, plus `<bos>`, `<eos>`, "
        "`<pad>`, `<unk>`. The line `(28, 59)\\n` is exactly 6 tokens. Training sequences are "
        f"`<bos>` `\\n` followed by {cfg['lines']} lines. A prompt with n examples is `<bos>` `\\n`, n lines, then "
        "`(q, `; the answer is read at the final ` ` token. The patching protocol's prompt B is "
        "`<bos>` `\\n` `(p, ` (6 tokens): the same convention as training, where the first line of every sequence "
        "is exactly this no-context situation.",
        "",
        "## Recipe",
        "",
        f"- Architecture: LlamaForCausalLM, {cfg['layers']} layers, d_model {cfg['d_model']}, {cfg['heads']} attention "
        f"heads, {cfg['kv_heads']} key-value heads (grouped-query attention), gated SiLU MLP {cfg['mlp']}, RMSNorm, "
        f"rotary position embeddings (base 10000), untied embeddings, vocabulary {VOCAB_SIZE}; "
        f"number-token embedding and unembedding rows initialised {_number_init_text(_lineage(info)[0]['config'])}; "
        f"{info['parameters']:,} parameters.",
        f"- Data: a in {fam['a_min']}..{fam['a_max']}, b in {fam['b_min']}..{fam['b_max']}, x in {fam['x_min']}..{fam['x_max']} "
        f"(distinct within a sequence), (a, b) uniform per sequence{_canonical_text(cfg)}; the pair (a, b) = ({ha}, {hb}) is held out of "
        f"training entirely. Label noise: each line's y is jittered by +1 or -1 (equally likely) with probability "
        f"{cfg['noise']}. Loss: cross-entropy on the y tokens only.",
        f"- Head dropout: {_dropout_text(cfg)}.",
        f"- Planted mechanism (auxiliary patching objective): {_patch_text(cfg)}.",
        *_training_lines(info, m["dir"]),
        "Re-measure and rewrite this card:",
        "",
        "```",
        command,
        "```",
        "",
        f"## Accuracy on y = 2x + 3 by number of examples ({n} seeded noise-free prompts, greedy)",
        "",
        "Each prompt has 13 distinct x in the family range; the answer after n examples is read by teacher forcing "
        "(for a causal model this equals a separate prompt with n examples and the query).",
        "",
        *_curve_table(m["curve"]),
        "",
        f"## Generalisation: held-out pair y = {ha}x + {hb} ({n} prompts)",
        "",
        *_curve_table(m["held_out_curve"]),
        "",
        f"## Accuracy across the family (12 examples, {FAMILY_PROMPTS} prompts per pair)",
        "",
        "Every pair (a, b) of the family, pooled by slope a; the held-out pair is reported beside the trained "
        "pairs of its slope.",
        "",
        *_family_table(m.get("family_scan", [])),
        "",
        f"## Layer ablation scan (y = 2x + 3, 12 examples, {n} prompts)",
        "",
        "All heads of one layer zeroed (the input of `o_proj`, every position).",
        "",
        "| ablated layer | correct / n | accuracy | 95% Wilson CI | drop from clean | mean P(correct) |",
        "|---|---|---|---|---|---|",
        f"| none (clean) | {m['curve'][MAX_EXAMPLES]['correct']} / {n} | {_pct(clean12)} | {_ci(m['curve'][MAX_EXAMPLES]['ci'])} | 0 | {m['curve'][MAX_EXAMPLES]['p_correct']:.3f} |",
    ]
    for r, d in zip(m["scan"], drops):
        L.append(f"| {r['layer']} | {r['correct']} / {r['n']} | {_pct(r['acc'])} | {_ci(r['ci'])} | {d:+.3f} | {r['p_correct']:.3f} |")
    L += ["", f"Largest drop: layer {worst} ({drops[worst]:+.3f})."]
    if twin is not None:
        tl = task_layer(m, twin)
        twin_clean = twin["curve"][MAX_EXAMPLES]["acc"]
        twin_drop = twin_clean - twin["scan"][tl]["acc"]
        twin_name = Path(twin["dir"]).name
        L += [
            "",
            f"Compared with its twin `{twin_name}` (measured by the same command): the layer that carries the task, "
            f"defined as the layer whose ablation drops accuracy most in either model, is layer {tl}. Ablating it drops "
            f"this model by {drops[tl]:+.3f} and `{twin_name}` by {twin_drop:+.3f}.",
        ]
        L += ["", f"| ablated layer | drop here | drop in `{twin_name}` |", "|---|---|---|"]
        for layer, (d, r) in enumerate(zip(drops, twin["scan"])):
            L.append(f"| {layer} | {d:+.3f} | {twin_clean - r['acc']:+.3f} |")
        L.append("")
        if dropout:
            L.append(f"- Redundancy (drop <= 0.1 here): {_check(drops[tl] <= 0.1)}; twin drops >= 0.3: {_check(twin_drop >= 0.3)}.")
        else:
            L.append(f"- Non-redundancy (drop >= 0.3 here): {_check(drops[tl] >= 0.3)}; twin drop <= 0.1: {_check(twin_drop <= 0.1)}.")
    for title, sweep, st in (("y = 2x + 3", m["sweep"], stages), (f"held-out y = {ha}x + {hb}", m["held_out_sweep"], h_stages)):
        L += [
            "",
            f"## Residual patching sweep, {title} ({sweep['n']} seeded (A, p) pairs)",
            "",
            "A: `<bos>` `\\n` + 12 example lines + `(q, `; B: `<bos>` `\\n` `(p, ` (the training format) with p not among "
            "A's x values and |p - q| >= 5. For each layer L, B's residual stream entering layer L at its last position is "
            "overwritten with A's at A's last position; B's greedy answer is classified as exact a·p+b, copy of A's answer "
            "a·q+b, ≈a·p (|answer - a·p| <= b, neither exact nor copy) or other. Measured with the claim pack's own sweep "
            f"(`mechclaims_icl`). A's own accuracy on these prompts: {sweep['clean_a_acc']:.3f}.",
            "",
            *_sweep_table(sweep["probes"][TRAINED_PROBE]),
            "",
            f"Task formation (task rate >= 0.5) first at layer {st['task_onset']}; copying (copy rate >= 0.5) first at "
            f"layer {st['copy_onset']}; task stage before copying: {_check(st['task_before_copy'])}.",
            "",
            f"### Task rate by layer under each format of B ({title})",
            "",
            "The same pairs and the same A residuals; only B's format changes (`C1.onset-robust` asks whether the onset "
            "survives all of them). Task rate = ≈a·p or exact, with its 95% Wilson interval.",
            "",
            *_probe_table(sweep),
        ]
        for probe, row in sweep["probes"].items():
            onset = sweep_stages(row)["task_onset"]
            where = "at no layer (task rate below 0.5 at every layer)" if onset is None else f"first at layer {onset}"
            L.append(f"- B as {probe} (`{row['b_text']!r}` for the first pair): task formation {where}.")
    c = m["curve"]
    hc = m["held_out_curve"]
    L += [
        "",
        "## Acceptance summary",
        "",
        f"- acc@12 on 2x+3 >= 0.95: {_pct(c[12]['acc'])} ({_check(c[12]['acc'] >= 0.95)})",
        f"- acc@0 on 2x+3 <= 0.1: {_pct(c[0]['acc'])} ({_check(c[0]['acc'] <= 0.1)})",
        f"- acc@1 clearly below acc@8 (CIs disjoint): {_pct(c[1]['acc'])} vs {_pct(c[8]['acc'])} ({_check(c[1]['ci'][1] < c[8]['ci'][0])})",
        f"- held-out {ha}x+{hb}: acc@12 {_pct(hc[12]['acc'])}, acc@0 {_pct(hc[0]['acc'])}, acc@1 {_pct(hc[1]['acc'])}, "
        f"acc@8 {_pct(hc[8]['acc'])} ({_check(hc[12]['acc'] >= 0.95 and hc[0]['acc'] <= 0.1 and hc[1]['ci'][1] < hc[8]['ci'][0])})",
        f"- patching shows a task stage before copying (2x+3): {_check(stages['task_before_copy'])}",
        "",
    ]
    return "\n".join(L)


def _to_jsonable(obj):
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m organisms.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="organism directory (HF format, with training.json)")
    p.add_argument("--twin", help="the twin organism, for the ablation comparison")
    p.add_argument("--n-prompts", type=int, default=200)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--notes", help="markdown file appended verbatim to the card under 'Notes' (training history)")
    p.add_argument("--no-card", action="store_true", help="print the figures as JSON instead of writing MODEL_CARD.md")
    args = p.parse_args(argv)
    if args.n_prompts <= 0:
        p.error(f"--n-prompts must be positive, got {args.n_prompts}")
    for d in filter(None, [args.model, args.twin]):
        if not (Path(d) / "model.safetensors").is_file():
            p.error(f"{d} is not an organism directory (no model.safetensors)")
    torch.set_num_threads(args.threads)
    m = measure(args.model, args.n_prompts, args.seed)
    twin = measure(args.twin, args.n_prompts, args.seed) if args.twin else None
    if args.no_card:
        json.dump(_to_jsonable({"model": m, "twin": twin}), sys.stdout, indent=1)
        return 0
    command = "python -m organisms.measure " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    card = render_card(Path(args.model).name, m, twin, command)
    if args.notes:
        card += "\n## Notes\n\n" + Path(args.notes).read_text().strip() + "\n"
    (Path(args.model) / CARD).write_text(card)
    print(f"[measure] wrote {Path(args.model) / CARD}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
