"""The residual patching experiment of Claim 1, batched.

For every layer L, B's ``resid_pre`` of layer L at B's last position is
overwritten with A's at A's last position, and B's answer is read.

The patch touches only B's last position, so everything before it is the same
in every patched copy of B.  :func:`decode_patched` therefore runs B's prompt
up to its last token ONCE per pair (a prefill into the key-value cache), then
one batched step of B's last token with one row per (pair, layer), the hook at
layer L writing only its own rows, and one cached step per further answer
token (digit-by-digit tokenisers), rows whose number has ended leaving the
batch and its cache.  Equal to the per-layer loop of full
forward passes that :func:`patch_sweep_loop` keeps as the reference (tested).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mechclaims import device_of, encode, token_batches
from .answers import OUTCOMES, NumberReader, answer_steps, classify, decode_numbers
from mechclaims import ConfigError, cached, release_memory
from mechclaims import Intervention, SetResidual, forward, resid_pre
from mechclaims import Effect
from mechclaims import proportion_of
from .tasks import PatchSet


@dataclass(frozen=True)
class Sweep:
    """Patched answers and their outcome classes, ``[n_layers, n_pairs]``."""

    layers: tuple[int, ...]
    answers: np.ndarray
    outcomes: np.ndarray

    def rate(self, *names: str) -> list[Effect]:
        """Per layer, the share of patched answers whose outcome is one of ``names``."""
        codes = [OUTCOMES.index(n) for n in names]
        return [proportion_of(np.isin(row, codes)) for row in self.outcomes]

    def task_flags(self) -> np.ndarray:
        """``[n_layers, n_pairs]``: the patched answer is ≈ a*p or exactly a*p + b."""
        return np.isin(self.outcomes, [OUTCOMES.index("approx"), OUTCOMES.index("exact")])

    def rates(self) -> dict[str, list[Effect]]:
        return {name: self.rate(name) for name in OUTCOMES}


def last_resid(
    model: Any, texts: Sequence[str], layers: Sequence[int], interventions: Sequence[Intervention] = ()
) -> torch.Tensor:
    """``resid_pre`` at each prompt's last position: ``[n_prompts, len(layers), d_model]``."""
    encoded = [encode(model.tokenizer, t) for t in texts]
    out = torch.empty(len(texts), len(layers), model.cfg.d_model, dtype=model.cfg.dtype)
    names = [resid_pre(layer) for layer in layers]
    for rows, tokens in token_batches(model, encoded, logits=1):
        acts = forward(model, tokens, names=names, position=-1, interventions=interventions, logits="none").acts
        out[rows] = torch.stack([acts[n].cpu() for n in names], dim=1)
    return out


# Keys and values one decode block may hold (the prefix's cache repeated once per
# patched layer): on CPU this bounds the sweep's transient memory (about twice
# this, while a step appends to the cache), on a GPU it leaves room beside
# llama-3-8b's 16 GB of bf16 weights. Measured on SmolLM2's Claim 1 (docs/performance.md):
# 256 MiB blocks take 608 s and peak at 1.71 GB, 64 MiB blocks 872 s and 1.34 GB.
KV_BLOCK_BYTES = {"cpu": 256 * 2**20}
KV_BLOCK_BYTES_ACCELERATOR = 8 * 2**30


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys and values one token of one row adds to the cache."""
    cfg = model.cfg
    d_head = cfg.d_model // cfg.n_heads
    return 2 * cfg.n_layers * cfg.n_key_value_heads * d_head * torch.empty((), dtype=_dtype(cfg.dtype)).element_size()


def _dtype(dtype: Any) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))


def patch_sweep(
    model: Any,
    pairs: PatchSet,
    *,
    layers: Sequence[int] | None = None,
    a_interventions: Sequence[Intervention] = (),
    source: torch.Tensor | None = None,
    max_rows: int = 2048,
) -> Sweep:
    """Patch A's last-position residual into B at every layer, batched across layers.

    ``a_interventions`` apply to A's run (e.g. head ablations), so ablation then
    patching composes.  ``source`` (``[n_pairs, len(layers), d_model]``) is A's
    residual when the caller already captured it; otherwise it is captured here.
    ``max_rows`` bounds the (pair, layer) rows of one decode step; the key-value
    memory of a step is bounded as well (``KV_BLOCK_BYTES``).
    """
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    if max_rows < 1:
        raise ConfigError(f"max_rows must be >= 1, got {max_rows}; it bounds the rows of one decode step")
    if source is None:
        source = last_resid(model, pairs.a_texts, layers, a_interventions)
    encoded = [encode(model.tokenizer, t) for t in pairs.b_texts]
    answers = np.full((len(layers), len(pairs)), -1, dtype=np.int64)
    for rows, base in token_batches(model, encoded, whole=True):  # decode_patched bounds its own blocks
        answers[:, rows] = decode_patched(model, base, source[rows], layers, max_rows=max_rows)
    return _sweep(layers, answers, pairs)


def decode_patched(
    model: Any, base: torch.Tensor, values: torch.Tensor, layers: Sequence[int], *, max_rows: int = 2048
) -> np.ndarray:
    """B's greedy answers with ``values[i, k]`` written into ``resid_pre`` of
    ``layers[k]`` at B's last position: ``[len(layers), n]`` (``-1``: no number).

    ``base`` is ``[n, T]`` equal-length B prompts.  Memoised in the model's
    activation store by the digests of ``base`` and ``values``.
    """
    layers = tuple(layers)
    n, length = base.shape
    tokens = n * (length - 1) + n * len(layers)  # the prefill and the patched last token; later digits extra

    def compute() -> dict[str, np.ndarray]:
        return {"answers": _decode_patched(model, base, values, layers, max_rows)}

    inputs = {"base": base, "values": values, "layers": layers}
    return cached(model, "patching.decode", inputs, compute, tokens=tokens)["answers"]


def _decode_patched(model: Any, base: torch.Tensor, values: torch.Tensor, layers: tuple[int, ...], max_rows: int) -> np.ndarray:
    device = device_of(model)
    budget = KV_BLOCK_BYTES.get(device.type, KV_BLOCK_BYTES_ACCELERATOR)
    steps = answer_steps(model.tokenizer)
    per_row = kv_bytes_per_token(model) * (base.shape[1] + steps)
    rows_cap = max(1, min(max_rows, budget // per_row))
    n, k_all = base.shape[0], len(layers)
    per_pair = min(k_all, rows_cap)  # layers decoded together for one pair
    pairs_per_block = max(1, rows_cap // per_pair)
    out = np.full((k_all, n), -1, dtype=np.int64)
    base = base.to(device)
    for p0 in range(0, n, pairs_per_block):
        block = slice(p0, min(p0 + pairs_per_block, n))
        prefix = _prefill(model, base[block, :-1])
        for l0 in range(0, k_all, per_pair):
            chunk = range(l0, min(l0 + per_pair, k_all))
            out[l0 : chunk.stop, block] = _decode_block(model, prefix, base[block, -1:], values[block], layers, chunk, steps)
            release_memory()
    return out


def _prefill(model: Any, tokens: torch.Tensor) -> Any:
    """The key-value cache of ``tokens`` (B's prompt without its last token)."""
    with torch.no_grad():
        _, cache = model(tokens, return_type="logits_and_cache", logits_to_keep=1)
    seen = 0 if cache is None else cache.get_seq_length()
    if seen != tokens.shape[1]:
        from importlib.metadata import version

        raise ConfigError(
            f"the key-value cache holds {seen} positions after a prefill of {tokens.shape[1]}: this "
            f"transformer-lens ({version('transformer-lens')}) does not fill the cache of this transformers "
            f"({version('transformers')}); install the versions pyproject.toml allows "
            "(`pip install -e .`; transformers < 5.24 with transformer-lens 4.3)"
        )
    return cache


def _decode_block(
    model: Any, prefix: Any, last: torch.Tensor, values: torch.Tensor, layers: tuple[int, ...], chunk: range, steps: int
) -> np.ndarray:
    """Answers ``[len(chunk), n]``: rows ordered (pair, layer), so layer ``k`` of
    the chunk is every ``len(chunk)``-th row from ``k``."""
    width = len(chunk)
    cache = copy.deepcopy(prefix)
    cache.batch_repeat_interleave(width)
    patches = [
        SetResidual(layers[li], -1, values[:, li].to(last.device), slice(k, None, width)) for k, li in enumerate(chunk)
    ]
    reader = NumberReader(model.tokenizer, last.shape[0] * width)
    current = last.repeat_interleave(width, dim=0)
    active = np.arange(last.shape[0] * width)  # rows still decoding; a row whose number ended leaves the batch
    with torch.no_grad():
        for step in range(steps):
            hooks = [hook for patch in patches for hook in patch.hooks()] if step == 0 else []
            with model.hooks(fwd_hooks=hooks):
                logits, cache = model(current, past_key_values=cache, return_type="logits_and_cache", logits_to_keep=1)
            nxt = logits[:, -1].argmax(-1)
            if not reader.add(nxt.tolist(), active):
                break
            going = reader.alive[active]
            if not going.all():
                keep = torch.from_numpy(np.flatnonzero(going)).to(nxt.device)
                cache.batch_select_indices(keep)
                nxt, active = nxt[keep], active[going]
            current = nxt[:, None]
    return reader.numbers().reshape(-1, width).T


def patch_sweep_loop(model: Any, pairs: PatchSet, *, layers: Sequence[int] | None = None,
                     a_interventions: Sequence[Intervention] = ()) -> Sweep:
    """The naive reference: one forward per (layer, prompt)."""
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    answers = np.full((len(layers), len(pairs)), -1, dtype=np.int64)
    for i, pair in enumerate(pairs.pairs):
        source = last_resid(model, [pair.a.text], layers, a_interventions)[0]
        tokens = torch.tensor([encode(model.tokenizer, pair.b_text)], device=device_of(model))
        for li, layer in enumerate(layers):
            patch = SetResidual(layer, tokens.shape[1] - 1, source[li : li + 1].to(tokens.device))
            answers[li, i] = decode_numbers(model, tokens, [patch])[0]
    return _sweep(layers, answers, pairs)


def _sweep(layers: tuple[int, ...], answers: np.ndarray, pairs: PatchSet) -> Sweep:
    outcomes = classify(answers, pairs.p[None, :], pairs.q[None, :], pairs.task.a, pairs.task.b)
    return Sweep(layers, answers, outcomes)
