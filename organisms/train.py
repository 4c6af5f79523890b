"""Train a small LlamaForCausalLM on the in-context linear-function task.

    python -m organisms.train --out fixtures/organism --head-dropout 0.25 --layer-dropout 0.15

Weights are written to a temporary directory next to --out and moved into place only when
training and saving are complete, so an interrupted run never leaves half-written weights;
the markdown files of the directory it replaces (model card, training notes) are kept.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from .data import CANONICAL, Family, training_batch, y_pos
from .tokenizer import (BOS_ID, COMMA_ID, EOS_ID, MAX_NUMBER, NEWLINE_ID, NUMBER_OFFSET, OPEN_ID, PAD_ID, SPACE_ID,
                        VOCAB_SIZE, build_tokenizer)

TRAINING_INFO = "training.json"
NUMBER_INITS = ("fourier", "random")
# Periods of the sinusoidal features given to number tokens by --number-init fourier.
FOURIER_PERIODS = (2, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 100,
                   125, 150, 200, 250, 300, 400, 500, 600, 750, 1000, 1500, 2000)


@dataclass
class TrainConfig:
    """Everything that determines a training run."""

    out: str
    seed: int = 0
    steps: int = 3000
    batch: int = 32
    lines: int = 13
    lr: float = 2e-3
    weight_decay: float = 0.01
    d_model: int = 128
    layers: int = 8
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 256
    head_dropout: float = 0.0
    layer_dropout: float = 0.0
    group_dropout: float = 0.0
    group_layers: tuple[int, int] | None = None
    group_max: int = 4
    group_positions: str = "all"
    group_order: str = "any"
    dropout_ramp: float = 0.0
    noise: float = 0.1
    canonical_share: float = 0.0
    canonical_patch_only: bool = False
    a_max: int = Family.a_max  # the task family's defaults, kept in one place (data.Family)
    b_max: int = Family.b_max
    held_out: tuple[int, int] = Family.held_out
    number_init: str = "fourier"
    fourier_periods: tuple[float, ...] = FOURIER_PERIODS
    patch_layers: tuple[int, int] | None = None
    patch_weight: float = 1.0
    patch_samples: int = 1
    patch_above_dropout: bool = False
    patch_formats: tuple[str, ...] = ("newline",)
    init_from: str | None = None
    threads: int = 1
    log_every: int = 50

    def family(self) -> Family:
        return Family(a_max=self.a_max, b_max=self.b_max, held_out=tuple(self.held_out))


# ---------------------------------------------------------------- argument parsing

def _checked(kind: type, ok, what: str):
    """An argparse type: parse with ``kind``, accept when ``ok(value)``, else name ``what``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_probability = _checked(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pair 'a,b' of integers such as 3,17, got {text!r}") from None
    return a, b


def _periods(text: str) -> tuple[float, ...]:
    """'2,2.5,10/3' -> (2.0, 2.5, 3.333...): positive numbers or fractions p/q."""
    values = []
    for item in text.split(","):
        num, _, den = item.strip().partition("/")
        try:
            value = float(num) / float(den or 1)
        except (ValueError, ZeroDivisionError):
            value = float("nan")
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of positive periods such as 2,2.5,10/3, got {item.strip()!r} in {text!r}")
        values.append(value)
    return tuple(values)


def _layer_range(text: str) -> tuple[int, int]:
    """'2-4' -> (2, 4); '3' -> (3, 3)."""
    try:
        lo, _, hi = text.partition("-")
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer range such as 2-4 (or one layer such as 3), got {text!r}") from None
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"expected a layer range FIRST-LAST with 0 <= FIRST <= LAST, got {text!r}")
    return first, last


def _probes() -> dict[str, str]:
    from mechclaims_icl.tasks import PROBES

    return PROBES


def _formats(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in _probes()]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct formats among {', '.join(_probes())}, "
                                         "comma-separated (e.g. post,newline)")
    return names


def b_prefix(fmt: str) -> list[int]:
    """Token ids of prompt B in format ``fmt`` up to its number: BOS and the text before ``{p}``."""
    from .tokenizer import build_tokenizer

    return build_tokenizer()(_probes()[fmt].split("{p}")[0]).input_ids


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig(out="")
    p = argparse.ArgumentParser(
        prog="python -m organisms.train",
        description="Train a small Llama on BOS \\n (x, y)\\n ... with y = a*x + b.",
    )
    p.add_argument("--out", required=True, help="output HF directory (replaced only when training completes; "
                                                "its markdown files, such as the model card, are kept)")
    p.add_argument("--seed", type=_non_negative_int, default=d.seed)
    p.add_argument("--steps", type=_positive_int, default=d.steps)
    p.add_argument("--batch", type=_positive_int, default=d.batch, help="sequences per step")
    p.add_argument("--lines", type=_positive_int, default=d.lines, help="lines (x, y) per training sequence")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--d-model", type=_positive_int, default=d.d_model)
    p.add_argument("--layers", type=_positive_int, default=d.layers)
    p.add_argument("--heads", type=_positive_int, default=d.heads)
    p.add_argument("--kv-heads", type=_positive_int, default=d.kv_heads)
    p.add_argument("--mlp", type=_positive_int, default=d.mlp, help="MLP intermediate size")
    p.add_argument("--head-dropout", type=_probability, default=d.head_dropout,
                   help="probability of zeroing each head's output per (sequence, layer, head)")
    p.add_argument("--layer-dropout", type=_probability, default=d.layer_dropout,
                   help="probability of zeroing all heads of a layer per (sequence, layer)")
    p.add_argument("--group-dropout", type=_probability, default=d.group_dropout,
                   help="probability per sequence of zeroing all heads of k layers together, k drawn uniformly "
                        "from 1..--group-max and the layers from --group-layers (trains redundancy against "
                        "cumulative ablation of several layers)")
    p.add_argument("--group-layers", type=_layer_range, default=None, metavar="FIRST-LAST",
                   help="layers the grouped dropout draws from (default: all)")
    p.add_argument("--group-max", type=_positive_int, default=d.group_max,
                   help="largest number of layers the grouped dropout zeroes together")
    p.add_argument("--group-positions", choices=GROUP_POSITIONS, default=d.group_positions,
                   help="where the grouped dropout zeroes the heads: at every position, or only at the query "
                        "positions (the one before each y; as the claims ablate heads at A's last position)")
    p.add_argument("--group-order", choices=GROUP_ORDERS, default=d.group_order,
                   help="which k layers the grouped dropout zeroes: any k of --group-layers, or the first k of them "
                        "(prefix: the cumulative condition of the post's chain, earliest layers first)")
    p.add_argument("--dropout-ramp", type=_probability, default=d.dropout_ramp,
                   help="fraction of the steps over which the dropout probabilities rise linearly from 0")
    p.add_argument("--noise", type=_probability, default=d.noise, help="fraction of lines with y jittered by +-1")
    p.add_argument("--canonical-share", type=_probability, default=d.canonical_share, metavar="F",
                   help=f"probability that a training sequence is the canonical task y = {CANONICAL[0]}x + "
                        f"{CANONICAL[1]} rather than a uniform draw from the family (default 0: uniform)")
    p.add_argument("--canonical-patch-only", action="store_true",
                   help="the canonical sequences drawn by --canonical-share serve only as sources of the patching "
                        "objective: their own y tokens carry no loss, so the model's prior over tasks stays uniform")
    p.add_argument("--a-max", type=_positive_int, default=d.a_max, help="a ranges over 1..a_max")
    p.add_argument("--b-max", type=_non_negative_int, default=d.b_max, help="b ranges over 0..b_max")
    p.add_argument("--held-out", type=_pair, default=d.held_out, help="(a, b) pair never trained on, as 'a,b'")
    p.add_argument("--number-init", choices=NUMBER_INITS, default=d.number_init,
                   help="initialisation of the number tokens' embedding and unembedding rows")
    p.add_argument("--fourier-periods", type=_periods, default=d.fourier_periods, metavar="P1,P2,...",
                   help="periods of the cos/sin features of --number-init fourier (numbers or fractions p/q; "
                        "two dimensions each, at most d_model/2 periods; default: 32 periods from 2 to 2000, "
                        "the first d_model/2 of them in a model narrower than 64)")
    p.add_argument("--patch-layers", type=_layer_range, default=None, metavar="FIRST-LAST",
                   help="auxiliary patching objective (plants the task-formation stage): each sequence's residual "
                        "entering a layer L drawn from FIRST..LAST, at the position before the y of one of its "
                        "later lines, replaces the last position of a no-context prompt <bos> \\n (p, at the same "
                        "layer, whose answer is trained towards a*p+b; off by default")
    p.add_argument("--patch-weight", type=_positive_float, default=d.patch_weight,
                   help="weight of the auxiliary patching loss (with --patch-layers)")
    p.add_argument("--patch-samples", type=_positive_int, default=d.patch_samples, metavar="K",
                   help="patched prompts B per training sequence (with --patch-layers): K draws of (line, layer, p) "
                        "from the same forward pass of A; more signal for the patching loss at the cost of K short "
                        "forward passes of B")
    p.add_argument("--patch-above-dropout", action="store_true",
                   help="draw each patched layer L above the layers whose heads the grouped dropout removed at the "
                        "source position (a residual with every earlier layer's heads removed cannot carry the "
                        "task); a sequence with no such layer in --patch-layers carries no patching loss")
    p.add_argument("--patch-formats", type=_formats, default=d.patch_formats, metavar="F[,F...]",
                   help="formats of the no-context prompt B (with --patch-layers), one drawn per step: "
                        f"{', '.join(_probes())} (mechclaims_icl.tasks.PROBES); default newline, <bos> \\n (p, ")
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="continue from the weights of an organism directory (its architecture is kept)")
    p.add_argument("--threads", type=_positive_int, default=d.threads, help="torch CPU threads")
    p.add_argument("--log-every", type=_positive_int, default=d.log_every, help="progress line every N steps")
    return p


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse and validate the command line; invalid values exit with code 2 and a message."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    cfg = TrainConfig(**{k: v for k, v in vars(ns).items()})
    if cfg.d_model % cfg.heads:
        parser.error(f"--d-model {cfg.d_model} is not divisible by --heads {cfg.heads}: pick heads dividing d_model")
    if cfg.heads % cfg.kv_heads:
        parser.error(f"--heads {cfg.heads} is not divisible by --kv-heads {cfg.kv_heads}: pick kv-heads dividing heads")
    try:
        cfg.family()
    except ValueError as exc:
        parser.error(f"invalid task family (--a-max {cfg.a_max}, --b-max {cfg.b_max}, --held-out {cfg.held_out}): {exc}")
    if cfg.init_from is not None and not (Path(cfg.init_from) / "model.safetensors").is_file():
        parser.error(f"--init-from {cfg.init_from} has no model.safetensors: give a directory written by this command")
    if cfg.canonical_patch_only and (cfg.canonical_share == 0 or cfg.patch_layers is None):
        parser.error(f"--canonical-patch-only needs --canonical-share > 0 (got {cfg.canonical_share}) and --patch-layers "
                     f"(got {cfg.patch_layers}): it makes canonical sequences sources of the patching objective only")
    if cfg.patch_above_dropout and (cfg.group_dropout == 0 or cfg.patch_layers is None):
        parser.error(f"--patch-above-dropout needs --group-dropout > 0 (got {cfg.group_dropout}) and --patch-layers "
                     f"(got {cfg.patch_layers}): it draws the patched layer above the grouped dropout's layers")
    if cfg.patch_layers is not None and cfg.patch_layers[1] >= cfg.layers:
        parser.error(f"--patch-layers {cfg.patch_layers[0]}-{cfg.patch_layers[1]} names a layer beyond the model's "
                     f"{cfg.layers} layers (0..{cfg.layers - 1})")
    if cfg.group_layers is not None and cfg.group_layers[1] >= cfg.layers:
        parser.error(f"--group-layers {cfg.group_layers[0]}-{cfg.group_layers[1]} names a layer beyond the model's "
                     f"{cfg.layers} layers (0..{cfg.layers - 1})")
    first, last = cfg.group_layers if cfg.group_layers is not None else (0, cfg.layers - 1)
    if cfg.group_dropout > 0 and cfg.group_max > last - first + 1:
        parser.error(f"--group-max {cfg.group_max} exceeds the {last - first + 1} layers of --group-layers "
                     f"{first}-{last}: pick at most {last - first + 1}")
    if tuple(cfg.fourier_periods) != FOURIER_PERIODS and 2 * len(cfg.fourier_periods) > cfg.d_model:
        parser.error(f"--fourier-periods gives {len(cfg.fourier_periods)} periods, {2 * len(cfg.fourier_periods)} "
                     f"dimensions, more than --d-model {cfg.d_model}: give at most {cfg.d_model // 2} periods")
    if cfg.lines > cfg.family().n_x:
        parser.error(f"--lines {cfg.lines} exceeds the {cfg.family().n_x} distinct x values")
    return cfg


# ---------------------------------------------------------------- model and head dropout

def build_model(cfg: TrainConfig) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    model = LlamaForCausalLM(config)
    if cfg.number_init == "fourier":
        init_number_rows(model, cfg.fourier_periods)
    return model


@torch.no_grad()
def init_number_rows(model: LlamaForCausalLM, periods: tuple[float, ...] = FOURIER_PERIODS, scale: float = 0.05) -> None:
    """Put cos/sin features of each number's value into the first dimensions of its
    embedding and unembedding rows (the remaining dimensions keep their random init)."""
    n = torch.arange(MAX_NUMBER + 1, dtype=torch.float64)[:, None]
    omega = 2 * math.pi / torch.tensor(periods, dtype=torch.float64)[None]
    feats = torch.cat([torch.cos(n * omega), torch.sin(n * omega)], dim=1).float() * scale
    width = min(feats.shape[1], model.config.hidden_size)
    rows = slice(NUMBER_OFFSET, NUMBER_OFFSET + MAX_NUMBER + 1)
    for weight in (model.model.embed_tokens.weight, model.lm_head.weight):
        weight[rows, :width] = feats[:, :width]


GROUP_POSITIONS = ("all", "query")
GROUP_ORDERS = ("any", "prefix")


class HeadDropout:
    """Zero per-head attention outputs (the input of o_proj) without rescaling.

    Each step draws a mask per (sequence, layer, head): a head is dropped with probability
    `head_p`, all heads of a layer are dropped together with probability `layer_p`, and with
    probability `group_p` a sequence loses all heads of k layers at once (k uniform in
    1..`group_max`, the layers drawn without replacement from `group_layers`, or with
    `group_order` "prefix" the first k of them), at every
    position or, with `group_positions` "query", only at the `query_positions` of a
    training sequence (a shorter input, such as the patching prompt B, is left alone).
    """

    def __init__(self, model: LlamaForCausalLM, head_p: float, layer_p: float, generator: torch.Generator,
                 group_p: float = 0.0, group_layers: tuple[int, int] | None = None, group_max: int = 1,
                 group_positions: str = "all", query_positions: tuple[int, torch.Tensor] | None = None,
                 group_order: str = "any"):
        self.head_p, self.layer_p, self.gen = head_p, layer_p, generator
        self.group_p, self.group_max = group_p, group_max
        if group_order not in GROUP_ORDERS:
            raise ValueError(f"group_order {group_order!r} is not one of {GROUP_ORDERS}")
        self.prefix = group_order == "prefix"
        if group_positions not in GROUP_POSITIONS:
            raise ValueError(f"group_positions {group_positions!r} is not one of {GROUP_POSITIONS}")
        if group_positions == "query" and query_positions is None:
            raise ValueError("group_positions 'query' needs query_positions (sequence length, positions)")
        self.query = query_positions if group_positions == "query" else None
        self.query_masks: torch.Tensor | None = None  # [layers, batch, 1, heads, 1], at the query positions only
        first, last = group_layers if group_layers is not None else (0, model.config.num_hidden_layers - 1)
        self.group_layers = torch.arange(first, last + 1)
        self.n_heads = model.config.num_attention_heads
        self.n_layers = model.config.num_hidden_layers
        self.masks: torch.Tensor | None = None  # [layers, batch, 1, heads, 1]
        self.grouped: torch.Tensor | None = None  # [layers, batch, heads], False where the grouped dropout zeroes
        self.handles = [
            layer.self_attn.o_proj.register_forward_pre_hook(self._hook(i))
            for i, layer in enumerate(model.model.layers)
        ] if (head_p > 0 or layer_p > 0 or group_p > 0) else []

    def _hook(self, layer: int):
        def hook(module, args):
            if self.masks is None:
                return None
            (x,) = args
            shape = x.shape
            mask = self.masks[layer]
            if shape[0] != mask.shape[0]:  # the patching prompts B, several per training sequence, in order
                if shape[0] % mask.shape[0]:
                    raise ValueError(f"a batch of {shape[0]} rows cannot share the dropout masks of "
                                     f"{mask.shape[0]} sequences: pass a multiple of the training batch")
                mask = mask.repeat_interleave(shape[0] // mask.shape[0], dim=0)
            x = x.view(shape[0], shape[1], self.n_heads, -1) * mask
            if self.query_masks is not None and shape[1] == self.query[0]:
                positions = self.query[1]  # x is the masked product, a fresh tensor: update it in place
                x[:, positions] = x[:, positions] * self.query_masks[layer]
            return (x.reshape(shape),)
        return hook

    def resample(self, batch: int, scale: float = 1.0) -> None:
        """Draw new masks; `scale` multiplies both dropout probabilities."""
        if not self.handles:
            return
        keep = torch.rand(self.n_layers, batch, self.n_heads, generator=self.gen) >= self.head_p * scale
        keep &= torch.rand(self.n_layers, batch, 1, generator=self.gen) >= self.layer_p * scale
        grouped = torch.ones_like(keep)
        if self.group_p > 0:
            hit = torch.rand(batch, generator=self.gen) < self.group_p * scale
            sizes = torch.randint(1, self.group_max + 1, (batch,), generator=self.gen)
            for row in hit.nonzero().flatten().tolist():
                if self.prefix:
                    order = torch.arange(int(sizes[row]))
                else:
                    order = torch.randperm(len(self.group_layers), generator=self.gen)[: int(sizes[row])]
                grouped[self.group_layers[order], row] = False
        self.grouped = grouped
        if self.query is None:
            self.masks = (keep & grouped).float()[:, :, None, :, None]
        else:
            self.masks = keep.float()[:, :, None, :, None]
            self.query_masks = grouped.float()[:, :, None, :, None]

    def first_layer_above_removed(self) -> np.ndarray:
        """Per sequence of the last draw, the layer just above the highest one whose heads the grouped
        dropout removed (at the query positions with `group_positions` "query"); the first group layer
        when it removed none. With "prefix" order from layer 0 this is the first layer it kept."""
        if self.grouped is None:
            raise ValueError("first_layer_above_removed needs a draw: call resample first (and pass a dropout > 0)")
        removed = ~self.grouped.any(dim=2)  # [layers, batch]
        depth = torch.arange(1, self.n_layers + 1)[:, None] * removed  # layer + 1 where removed, else 0
        highest = depth.max(dim=0).values
        return torch.where(removed.any(dim=0), highest, self.group_layers[0]).numpy()

    def disable(self) -> None:
        self.masks = self.query_masks = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.masks, self.query_masks, self.grouped = [], None, None, None


# ---------------------------------------------------------------- training loop

def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def dropout_scale(step: int, cfg: TrainConfig) -> float:
    """Dropout probabilities rise linearly from 0 over the first dropout_ramp of the steps."""
    ramp = cfg.dropout_ramp * cfg.steps
    return 1.0 if ramp < 1 else min(1.0, step / ramp)


def answer_loss(model: LlamaForCausalLM, ids: torch.Tensor, lines: int, hidden_states: bool = False,
                rows: torch.Tensor | None = None):
    """Cross-entropy on the y tokens only (of the sequences `rows` when given, else all); returns
    (loss, accuracy), plus the residual stream entering each layer (``hidden_states[L]``,
    L = 0..layers-1, every sequence) when asked."""
    targets_pos = torch.tensor([y_pos(i) for i in range(lines)])
    out = model.model(input_ids=ids, output_hidden_states=hidden_states)
    hidden = out.last_hidden_state[:, targets_pos - 1]
    targets = ids[:, targets_pos]
    if rows is not None:
        if not len(rows):
            raise ValueError("answer_loss needs at least one sequence in rows; got none (lower --canonical-share)")
        hidden, targets = hidden[rows], targets[rows]
    logits = model.lm_head(hidden).float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    acc = (logits.argmax(-1) == targets).float().mean()
    if hidden_states:
        return loss, acc, out.hidden_states
    return loss, acc


@dataclass
class PatchPlan:
    """Per patched prompt B: the training sequence it reads from, that sequence's source line
    (its y is the answer A would give), the patched layer, the query p of the no-context
    prompt B, B's token ids, the target a*p+b and whether the row carries loss (``None``: every row)."""

    seq: np.ndarray
    line: np.ndarray
    layer: np.ndarray
    p: np.ndarray
    b_ids: torch.Tensor
    target: torch.Tensor
    active: np.ndarray | None = None


def patch_plan(rng: np.random.Generator, batch, layers: tuple[int, int], family: Family,
               samples: int = 1, above: np.ndarray | None = None, prefix: list[int] | None = None) -> PatchPlan:
    """Draw, `samples` times per sequence, a source line in the second half of the sequence (so A
    has at least lines//2 examples), a layer in `layers` and a p in the family's x range not among
    the sequence's x values. Row r of the plan reads from sequence r // samples.

    With `above` (per sequence, the layer above the highest one whose heads the source position lost), the layer is
    drawn from those in `layers` above it; a sequence with none is inactive (no loss)."""
    n, lines = batch.xs.shape
    seq = np.repeat(np.arange(n), samples)
    m = len(seq)
    line = rng.integers(lines // 2, lines, m)
    active = None
    if above is None:
        layer = rng.integers(layers[0], layers[1] + 1, m)
    else:
        low = np.maximum(layers[0], np.asarray(above)[seq] + 1)
        active = low <= layers[1]
        layer = rng.integers(np.minimum(low, layers[1]), layers[1] + 1)
    pool = np.arange(family.x_min, family.x_max + 1)
    p = np.empty(m, dtype=np.int64)
    for r in range(m):
        free = pool[~np.isin(pool, batch.xs[seq[r]])]
        p[r] = free[rng.integers(len(free))]
    prefix = [BOS_ID, NEWLINE_ID, OPEN_ID] if prefix is None else prefix  # B = <bos> \n (p,  by default
    b_ids = np.stack([*(np.full(m, t) for t in prefix), NUMBER_OFFSET + p,
                      np.full(m, COMMA_ID), np.full(m, SPACE_ID)], axis=1)
    target = NUMBER_OFFSET + batch.a[seq] * p + batch.b[seq]
    return PatchPlan(seq, line, layer, p, torch.from_numpy(b_ids), torch.from_numpy(target), active)


def replace_last_position(rows: torch.Tensor, vectors: torch.Tensor):
    """Forward pre-hook on a decoder layer: the last position of `rows` gets `vectors` (differentiably;
    the claim pack's sweep writes the same position through a TransformerLens hook)."""
    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        hidden = hidden.clone()
        hidden[rows, -1] = vectors
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs
    return hook


def patch_loss(model: LlamaForCausalLM, hidden_states, plan: PatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch each sequence's residual entering its layer, at the position before the y of its
    source line, into the last position of its prompt B at the same layer; cross-entropy of B's
    answer against a*p+b, over the plan's active rows. Gradients flow through both runs. Returns
    (loss, accuracy); both are 0 when no row is active."""
    n = len(plan.line)
    seq = torch.from_numpy(plan.seq)
    src_pos = torch.from_numpy(np.array([y_pos(int(i)) - 1 for i in plan.line]))
    handles = []
    try:
        for layer in np.unique(plan.layer):
            rows = torch.from_numpy(np.flatnonzero(plan.layer == layer))
            vectors = hidden_states[int(layer)][seq[rows], src_pos[rows]]
            handles.append(model.model.layers[int(layer)].register_forward_pre_hook(
                replace_last_position(rows, vectors), with_kwargs=True))
        logits = model.lm_head(model.model(input_ids=plan.b_ids).last_hidden_state[:, -1]).float()
    finally:
        for h in handles:
            h.remove()
    assert logits.shape[0] == n
    if plan.active is not None:
        active = torch.from_numpy(plan.active)
        if not active.any():
            return logits.sum() * 0.0, torch.tensor(0.0)
        logits, target = logits[active], plan.target[active]
    else:
        target = plan.target
    loss = torch.nn.functional.cross_entropy(logits, target)
    acc = (logits.argmax(-1) == target).float().mean()
    return loss, acc


def train(cfg: TrainConfig, log=sys.stderr) -> dict:
    """Train and save to cfg.out (atomically). Returns the training record."""
    torch.set_num_threads(cfg.threads)
    gen = seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    family = cfg.family()
    prefixes = {fmt: b_prefix(fmt) for fmt in cfg.patch_formats}
    base = None
    if cfg.init_from is not None:
        model = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        mc = model.config
        cfg.d_model, cfg.layers, cfg.heads, cfg.kv_heads, cfg.mlp = (
            mc.hidden_size, mc.num_hidden_layers, mc.num_attention_heads, mc.num_key_value_heads, mc.intermediate_size)
        info = Path(cfg.init_from) / TRAINING_INFO
        base = json.loads(info.read_text()) if info.is_file() else None
    else:
        model = build_model(cfg)
    query = (y_pos(cfg.lines - 1) + 2, torch.tensor([y_pos(i) - 1 for i in range(cfg.lines)]))
    dropout = HeadDropout(model, cfg.head_dropout, cfg.layer_dropout, gen, cfg.group_dropout, cfg.group_layers,
                          cfg.group_max, cfg.group_positions, query, cfg.group_order)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train] {n_params / 1e6:.2f}M parameters, {cfg.steps} steps of {cfg.batch} x "
          f"{y_pos(cfg.lines - 1) + 2} tokens, threads={cfg.threads}", file=log, flush=True)
    start, cpu_start = time.time(), time.process_time()
    window_loss, window_acc, window_n, tokens = 0.0, 0.0, 0, 0
    window_patch, window_patch_acc = 0.0, 0.0
    first_patch_loss = last_patch_loss = None
    first_loss = last_loss = None
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = training_batch(rng, cfg.batch, cfg.lines, family, cfg.noise, cfg.canonical_share)
        ids = torch.from_numpy(batch.ids)
        dropout.resample(cfg.batch, dropout_scale(step, cfg))
        rows = None
        if cfg.canonical_patch_only:
            rows = torch.from_numpy(np.flatnonzero(~batch.meta["canonical"]))
        if cfg.patch_layers is not None:
            above = dropout.first_layer_above_removed() if cfg.patch_above_dropout else None
            # one format of B per step (equal lengths keep B's rows aligned with the dropout masks); a single
            # format draws nothing, so a configuration without --patch-formats trains exactly as before
            fmt = cfg.patch_formats[int(rng.integers(len(cfg.patch_formats)))] if len(cfg.patch_formats) > 1 \
                else cfg.patch_formats[0]
            plan = patch_plan(rng, batch, cfg.patch_layers, family, cfg.patch_samples, above, prefixes[fmt])
            loss, acc, hidden_states = answer_loss(model, ids, cfg.lines, hidden_states=True, rows=rows)
            p_loss, p_acc = patch_loss(model, hidden_states, plan)
            window_patch += p_loss.item()
            window_patch_acc += p_acc.item()
            loss_total = loss + cfg.patch_weight * p_loss
        else:
            loss, acc = answer_loss(model, ids, cfg.lines, rows=rows)
            loss_total = loss
        opt.zero_grad(set_to_none=True)
        loss_total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += ids.numel()
        window_loss += loss.item()
        window_acc += acc.item()
        window_n += 1
        if first_loss is None:
            first_loss = loss.item()
            if cfg.patch_layers is not None:
                first_patch_loss = window_patch
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.time() - start
            last_loss = window_loss / window_n
            patch_text = ""
            if cfg.patch_layers is not None:
                last_patch_loss = window_patch / window_n
                patch_text = f"patch-loss {last_patch_loss:.4f} patch-acc {window_patch_acc / window_n:.3f} "
            print(f"[train] step {step + 1}/{cfg.steps} loss {last_loss:.4f} y-acc {window_acc / window_n:.3f} "
                  f"{patch_text}lr {lr_at(step, cfg):.2e} {tokens / elapsed:,.0f} tok/s elapsed {elapsed:.0f}s",
                  file=log, flush=True)
            window_loss, window_acc, window_n = 0.0, 0.0, 0
            window_patch, window_patch_acc = 0.0, 0.0
    dropout.remove()
    model.eval()
    wall = time.time() - start
    record = {
        "config": {**asdict(cfg), "held_out": list(cfg.held_out),
                   "patch_layers": None if cfg.patch_layers is None else list(cfg.patch_layers),
                   "group_layers": None if cfg.group_layers is None else list(cfg.group_layers)},
        "family": family.to_dict(),
        "parameters": n_params,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "first_patch_loss": first_patch_loss,
        "final_patch_loss": last_patch_loss,
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(time.process_time() - cpu_start, 1),
        "torch": torch.__version__,
        "head_dropout_rescaling": False,
        "base": base,
    }
    save_atomically(model, record, Path(cfg.out))
    print(f"[train] done in {wall:.0f}s, saved to {cfg.out}", file=log, flush=True)
    return record


# ---------------------------------------------------------------- saving

def _write_model(model: LlamaForCausalLM, record: dict, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    build_tokenizer().save_pretrained(directory)
    (directory / TRAINING_INFO).write_text(json.dumps(record, indent=2) + "\n")


def save_atomically(model: LlamaForCausalLM, record: dict, target: Path) -> None:
    """Write into a temporary sibling directory, then swap it into place with os.replace. The
    markdown files of an existing target (its model card and training notes) are carried over."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = None
    try:
        _write_model(model, record, tmp)
        for doc in sorted(target.glob("*.md")) if target.is_dir() else ():
            shutil.copy2(doc, tmp / doc.name)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old / target.name, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        train(cfg)
    except KeyboardInterrupt:
        print(f"[train] interrupted: nothing written to {cfg.out}", file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
