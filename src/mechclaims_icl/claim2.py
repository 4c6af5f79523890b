"""Claim 2 of the post: Bayesian, log-additive updates (claims-spec §3).

One teacher-forced forward pass of a prompt with K examples gives, at every
example j (``n = j`` examples seen before it), the probability of the correct
y_j, whether its greedy prediction is right, whether the predicted number has
the right parity, and the residual stream at the position before y_j.  For
digit-by-digit tokenisers P(correct y_j) is the product of the digit
probabilities, each read with the earlier digits teacher-forced.  The same
forward can also collect attention masses between token roles for Claim 3
(:func:`read_sequences` with ``attention=True``).

Findings (pure numpy on a :class:`Reading`):

* ``C2.log-additive``: over the range before saturation (the rule of
  :func:`mechclaims_icl.fits.fit_range`, applied to the EXPLORATION split), the mean
  logit P(correct) grows linearly in n: slope > 0 (bootstrap CI over sequences),
  R^2 >= ``min_r2``, and the linear form beats linear-in-log(n + 1) on held-out
  sequences (paired CI of the error difference below 0).  The Bayesian reading
  c = sigmoid(slope) is reported with its interval; where a target pre-registers
  c (llama-3-8b: ln 2), its interval must lie within ±``c_margin`` of it.
* ``C2.parity-by-n``: the share of predictions with the right parity, by n; from
  ``parity_from`` examples on it is at least ``parity_threshold`` (lower bound),
  and with no example it is not (upper bound below).
* ``C2.feature-linear``: the projection of the residual at the position before
  y_j on a task direction (difference of mean residuals between task prompts and
  shuffled-label prompts, EXPLORATION split, pre-registered layer) grows
  linearly in n over the same range, judged as log-odds are: slope > 0 (CI),
  R^2 >= ``min_r2``, and linear beats linear-in-log(n + 1) on held-out sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from mechclaims import (Effect, Finding, all_of, at_least, at_most, attn_pattern, bootstrap_mean, cached, device_of, equivalent, final_norm, holds,
                        proportion_of, resid_pre, role_mass, role_weights, run_pass, token_batches,
                        uniform_pattern)

from .answers import numbers_are_single_tokens
from .claim0 import MIN_ACCURACY
from .fits import MIN_R2, SATURATION, fit_range, growth, logit, mean_curve, mean_difference, slope_c
from .roles import Roles, roles
from .tasks import Prompt, TaskPrompts

N_EXAMPLES = 16  # examples per Claim 2 sequence (the companion post saturates by ~14)


pattern_hook = attn_pattern  # the name this module's readers use


@dataclass(frozen=True)
class C2Params:
    """Pre-registered values of one target (``[c2]`` of its expectations)."""

    feature_layer: int
    parity_from: int
    n_examples: int = N_EXAMPLES
    fit_first: int = 0
    fit_last: int | None = None  # None: the saturation rule applied to the exploration split
    saturation: float = SATURATION
    min_r2: float = MIN_R2
    parity_threshold: float = 0.9
    c_expected: float | None = None
    c_margin: float = 0.1
    parity_reference: tuple[float, ...] = ()
    max_prompts: int | None = None  # cap on the sequences per split (slow targets)

    def n_prompts(self, requested: int) -> int:
        return requested if self.max_prompts is None else min(requested, self.max_prompts)


@dataclass(frozen=True)
class Reading:
    """What one teacher-forced forward per sequence shows, per example j (``[n_seq, K]``)."""

    p_correct: np.ndarray
    correct: np.ndarray
    parity_ok: np.ndarray
    resid: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [n_seq, K, d_model] before y_j
    x_to_y: np.ndarray | None = None  # [n_seq, n_layers, n_heads]: mass from y_i onto its own x_i
    y_to_prey: np.ndarray | None = None  # mass from the position before y_j onto earlier y_i
    uniform_x_to_y: np.ndarray | None = None  # [n_seq] the same under causal-uniform attention
    uniform_y_to_prey: np.ndarray | None = None

    @property
    def n_examples(self) -> int:
        return self.p_correct.shape[1]


def _number(tokenizer: Any, token: int, cache: dict[int, int | None]) -> int | None:
    if token not in cache:
        piece = tokenizer.decode([int(token)]).strip()
        cache[token] = int(piece) if piece.isdigit() else None
    return cache[token]


def role_links(r: Roles) -> tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]]]:
    """(y_i -> own x_i links, pre-y_j -> earlier y_i links) of one prompt's roles."""
    x_to_y = [(t, list(x)) for x, y in zip(r.x, r.y) for t in y]
    prey = [(r.pre_y[j], [t for y in r.y[:j] for t in y]) for j in range(1, len(r.y))]
    return x_to_y, prey


FINAL = final_norm()  # the final-norm output that the unembedding reads


def _unembed(model: Any, final: torch.Tensor) -> torch.Tensor:
    w_u = model.W_U
    out = final.to(w_u.device) @ w_u  # in the model's dtype, as its own unembedding computes the logits
    bias = getattr(model, "b_U", None)
    return out if bias is None else out + bias.to(out.device)


def read_sequences(
    model: Any,
    prompts: TaskPrompts | Sequence[Prompt],
    *,
    resid_layers: Sequence[int] = (),
    attention: bool = False,
    examples: Sequence[int] | None = None,
    interventions: Sequence[Any] = (),
    probes: Sequence[Any] = (),
) -> Reading:
    """Teacher-forced readings of the examples of every prompt (one forward per prompt).

    ``examples``: the examples j whose prediction is read (default: all; empty:
    none, and the pass stops after the last layer it needs).  The unembedding is
    applied only at the positions read, which equals the model's own logits there
    (tested).  ``interventions`` (objects with ``hooks()``) apply to the pass.
    The reading is memoised in the model's activation store (:func:`mechclaims.cached`)
    unless ``probes`` are given or an intervention has no ``key()``.
    """
    items = list(prompts.prompts if isinstance(prompts, TaskPrompts) else prompts)
    rs = [roles(model.tokenizer, p) for p in items]
    args = dict(resid_layers=resid_layers, attention=attention, examples=examples, interventions=interventions)
    if probes:
        return _read_sequences(model, items, rs, probes=probes, **args)
    tokens = [r.tokens for r in rs]
    inputs = {
        "tokens": tokens,
        "resid_layers": sorted(int(layer) for layer in resid_layers),
        "attention": attention,
        "examples": None if examples is None else sorted(int(j) for j in examples),
        "interventions": interventions,
        "answers": [[y for _, y in p.examples] for p in items],
    }
    arrays = cached(model, "claim2.read_sequences", inputs,
                    lambda: _reading_arrays(_read_sequences(model, items, rs, **args)),
                    tokens=sum(len(t) for t in tokens))
    return _reading_from(arrays)


def _reading_arrays(r: Reading) -> dict[str, np.ndarray]:
    out = {"p_correct": r.p_correct, "correct": r.correct, "parity_ok": r.parity_ok}
    out.update({f"resid.{layer}": a for layer, a in r.resid.items()})
    for name in ("x_to_y", "y_to_prey", "uniform_x_to_y", "uniform_y_to_prey"):
        if getattr(r, name) is not None:
            out[name] = getattr(r, name)
    return out


def _reading_from(arrays: dict[str, np.ndarray]) -> Reading:
    resid = {int(name.split(".", 1)[1]): a for name, a in arrays.items() if name.startswith("resid.")}
    optional = {name: arrays.get(name) for name in ("x_to_y", "y_to_prey", "uniform_x_to_y", "uniform_y_to_prey")}
    return Reading(arrays["p_correct"], arrays["correct"], arrays["parity_ok"], dict(sorted(resid.items())), **optional)


@torch.no_grad()
def _read_sequences(
    model: Any, items: list[Prompt], rs: list[Roles], *, resid_layers: Sequence[int], attention: bool,
    examples: Sequence[int] | None, interventions: Sequence[Any], probes: Sequence[Any] = (),
) -> Reading:
    """:func:`read_sequences` without the store, on prompts ``items`` with token roles ``rs``."""
    tokenizer = model.tokenizer
    n_seq, k = len(items), len(items[0].examples)
    if any(len(p.examples) != k for p in items):
        raise ValueError("read_sequences needs prompts with the same number of examples")
    read = list(range(k)) if examples is None else sorted(set(int(j) for j in examples))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    device = device_of(model)
    p_correct = np.full((n_seq, k), np.nan)
    correct = np.zeros((n_seq, k), dtype=bool)
    parity_ok = np.zeros((n_seq, k), dtype=bool)
    resid = {layer: np.zeros((n_seq, k, model.cfg.d_model), dtype=np.float32) for layer in resid_layers}
    masses = np.zeros((2, n_seq, n_layers, n_heads)) if attention else None
    uniform = np.zeros((2, n_seq)) if attention else None
    numbers: dict[int, int | None] = {}
    single = numbers_are_single_tokens(tokenizer)
    if read:
        stop_at = FINAL
    elif attention:
        stop_at = pattern_hook(n_layers - 1)
    elif resid_layers:
        stop_at = resid_pre(max(resid_layers))
    else:
        raise ValueError("read_sequences was asked to read nothing")
    # logits=0: the pass stops before the unembedding (the final norm's output is unembedded here)
    for rows, tokens in token_batches(model, [r.tokens for r in rs], logits=0):
        length = tokens.shape[1]
        weights = []
        if attention:
            both = [role_links(rs[i]) for i in rows]
            weights = [np.stack([role_weights(b[w], length) for b in both]) for w in (0, 1)]
            base = uniform_pattern(length)
            for w in (0, 1):
                uniform[w, rows] = (weights[w] * base).sum(axis=(1, 2))
        final: dict[str, torch.Tensor] = {}
        hooks = []
        for layer in resid_layers:
            pre = torch.tensor([rs[i].pre_y for i in rows], device=device)

            def keep(act: torch.Tensor, hook: Any, layer: int = layer, pre: torch.Tensor = pre) -> torch.Tensor:
                got = torch.gather(act, 1, pre.to(act.device)[:, :, None].expand(-1, -1, act.shape[-1]))
                resid[layer][rows] = got.float().cpu().numpy()
                return act

            hooks.append((resid_pre(layer), keep))
        if attention:
            for layer in range(n_layers):
                def reduce(pattern: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:
                    pat = pattern.float().cpu().numpy()
                    for w in (0, 1):
                        masses[w, rows, layer] = role_mass(pat, weights[w])
                    return pattern

                hooks.append((pattern_hook(layer), reduce))
        if read:
            def keep_final(act: torch.Tensor, hook: Any) -> torch.Tensor:
                final["x"] = act.detach()
                return act

            hooks.append((FINAL, keep_final))

        for probe in probes:
            hooks += probe(rows, [rs[i] for i in rows])
        run_pass(model, tokens, hooks, interventions=interventions, stop_after=[stop_at])
        if not read:
            continue
        for b, i in enumerate(rows):
            r, toks = rs[i], rs[i].tokens
            spans = [list(r.y[j]) for j in read]
            # every position whose prediction is read: each digit of y_j and the token after it
            where = sorted({t - 1 for span in spans for t in span} | {span[-1] for span in spans})
            index = {t: n for n, t in enumerate(where)}
            logits = _unembed(model, final["x"][b, where]).float()
            logp = torch.log_softmax(logits, dim=-1)
            best = logits.argmax(-1).cpu().numpy()
            for j, span in zip(read, spans):
                p_correct[i, j] = float(np.exp(sum(float(logp[index[t - 1], toks[t]]) for t in span)))
                ok = all(best[index[t - 1]] == toks[t] for t in span)
                if ok and not single:  # the number ends there, as greedy decoding would read it
                    ok = _number(tokenizer, int(best[index[span[-1]]]), numbers) is None
                correct[i, j] = ok
                guess = _number(tokenizer, int(best[index[span[-1] - 1]]), numbers)
                parity_ok[i, j] = guess is not None and guess % 2 == items[i].examples[j][1] % 2
    if attention:
        return Reading(
            p_correct, correct, parity_ok, resid,
            x_to_y=masses[0], y_to_prey=masses[1], uniform_x_to_y=uniform[0], uniform_y_to_prey=uniform[1],
        )
    return Reading(p_correct, correct, parity_ok, resid)


def shuffled_labels(prompts: TaskPrompts, seed: int) -> list[Prompt]:
    """The same prompts with each prompt's y values permuted among its examples (the task broken)."""
    rng = np.random.default_rng([seed, 2])
    out = []
    for p in prompts.prompts:
        xs = [x for x, _ in p.examples]
        ys = [y for _, y in p.examples]
        order = rng.permutation(len(ys))
        out.append(Prompt(tuple(zip(xs, [ys[o] for o in order])), p.query, p.answer))
    return out


# --------------------------------------------------------------------------- precondition and range


def precondition(reading: Reading, n_examples: int) -> tuple[bool, Effect]:
    """The target answers y_j right after ``n_examples`` examples (lower bound above C0's MIN_ACCURACY)."""
    if not 0 <= n_examples < reading.n_examples:
        raise ValueError(f"n_examples {n_examples} outside 0..{reading.n_examples - 1}")
    accuracy = proportion_of(reading.correct[:, n_examples])
    return accuracy.ci.low > MIN_ACCURACY, accuracy


def fitted_range(p: C2Params, exploration: Reading) -> tuple[int, int]:
    """The pre-registered ``(first, last)`` or, without ``fit_last``, the rule on the exploration split."""
    if p.fit_last is not None:
        return p.fit_first, p.fit_last
    return fit_range(exploration.p_correct.mean(0), saturation=p.saturation, first=p.fit_first)


# --------------------------------------------------------------------------- findings


def _curve(x, mean, low, high, fit=None, *, ylabel: str) -> dict:
    c = {"x": list(map(float, x)), "y": list(map(float, mean)), "ci_low": list(map(float, low)),
         "ci_high": list(map(float, high)), "xlabel": "examples seen (n)", "ylabel": ylabel}
    if fit is not None:
        c["fit"] = list(map(float, fit))
    return c


def _linear_growth(g: Any, min_r2: float) -> list[Finding]:
    """The rules of linear growth (:meth:`mechclaims_icl.fits.Growth.linear`): a slope above 0 and linear
    beating log(n+1) on held-out sequences (both intervals), and R^2 at least ``min_r2`` (a point figure)."""
    return [at_least(g.slope, 0.0, "slope"),
            at_most(g.heldout, 0.0, "held-out error, linear minus log"),
            holds(g.r2 >= min_r2, f"R^2 {g.r2:.3f} >= {min_r2:g}", g.slope)]


def log_additive(reading: Reading, p: C2Params, span: tuple[int, int], *, seed: int = 0) -> Finding:
    """C2.log-additive on ``reading`` over examples ``span`` (inclusive)."""
    first, last = span
    values = logit(reading.p_correct)
    n = np.arange(reading.n_examples)
    g = growth(n[first : last + 1], values[:, first : last + 1], seed=seed)
    c = slope_c(g.slope)
    parts = _linear_growth(g, p.min_r2)
    c_text = ""
    if p.c_expected is not None:
        parts.append(equivalent(c, p.c_margin, "c = sigmoid(slope)", center=p.c_expected))
        c_text = f"; c must lie within {p.c_expected:.3g} ± {p.c_margin:g}"
    mean, low, high = mean_curve(values, seed=seed)
    pm, pl, ph = mean_curve(reading.p_correct, seed=seed)
    return replace(
        all_of(*parts),
        message=f"logit P(correct) over n = {first}..{last} (mean P reaches {p.saturation:g} at {last} or never): slope "
        f"{g.slope}, R^2 {g.r2:.3f} (needs >= {p.min_r2:g}; log(n+1) fit R^2 {g.r2_log:.3f}); held-out error linear "
        f"minus log {g.heldout} (needs CI below 0); AIC {g.aic:.1f} vs {g.aic_log:.1f}; c = sigmoid(slope) {c}{c_text}",
        figures={
            "fit_range": [first, last],
            "c": c,
            "r2": g.r2, "r2_log": g.r2_log, "heldout_error_difference": g.heldout, "aic": g.aic, "aic_log": g.aic_log,
            "c_expected": p.c_expected,
            "curves": {
                "log-odds of the correct y_n": _curve(
                    n, mean, low, high, g.intercept + g.slope.statistic * n, ylabel="mean logit P(correct y_n)"
                ),
                "P(correct y_n)": _curve(n, pm, pl, ph, ylabel="mean P(correct y_n)"),
            },
        },
    )


def parity_by_n(reading: Reading, p: C2Params, *, level: float = 0.95, seed: int = 0) -> Finding:
    """C2.parity-by-n: right parity from ``parity_from`` examples on, not before any example.

    The later share is the mean over sequences of each sequence's share (sequences are the
    independent units; :func:`mechclaims.bootstrap_mean`: exact when every sequence is all right
    or all wrong, bootstrap-t otherwise, and no bound when every sequence has the same share)."""
    k = reading.n_examples
    if not 0 <= p.parity_from < k:
        raise ValueError(f"parity_from {p.parity_from} outside 0..{k - 1}")
    by_n = [proportion_of(reading.parity_ok[:, n], level=level) for n in range(k)]
    per_seq = reading.parity_ok[:, p.parity_from :].mean(1)
    later = bootstrap_mean(per_seq, level=level, seed=seed)
    curves = {
        "correct parity by examples seen": {
            "x": list(range(k)), "y": [e.statistic for e in by_n], "ci_low": [e.ci.low for e in by_n],
            "ci_high": [e.ci.high for e in by_n], "xlabel": "examples seen (n)", "ylabel": "share with the right parity",
        }
    }
    if p.parity_reference:
        curves["correct parity in the post (llama-3-8b, spec §2)"] = {
            "x": list(range(len(p.parity_reference))), "y": list(p.parity_reference),
            "xlabel": "examples seen (n)", "ylabel": "share of odd predictions",
        }
    return replace(
        all_of(at_least(later, p.parity_threshold, f"right parity from n = {p.parity_from} on"),
               at_most(by_n[0], p.parity_threshold, "right parity with no example")),
        message=f"right parity from n = {p.parity_from} on: {later} per-sequence mean (lower bound must be > "
        f"{p.parity_threshold:g}); with no example {by_n[0]} (upper bound must be <= {p.parity_threshold:g})",
        figures={"by_n": [e.statistic for e in by_n], "n0": by_n[0], "curves": curves},
    )


def feature_direction(task: Reading, shuffled: Reading, layer: int, first: int = 1) -> np.ndarray:
    """Unit task direction at ``layer``: task minus shuffled-label mean residual before y_j, j >= ``first``."""
    return mean_difference(task.resid[layer][:, first:], shuffled.resid[layer][:, first:])


def feature_linear(
    reading: Reading, direction: np.ndarray, layer: int, p: C2Params, span: tuple[int, int], *, seed: int = 0
) -> Finding:
    """C2.feature-linear: the projection on the task direction grows linearly in n over ``span``."""
    first, last = span
    proj = reading.resid[layer].astype(float) @ np.asarray(direction, dtype=float)
    n = np.arange(reading.n_examples)
    g = growth(n[first : last + 1], proj[:, first : last + 1], seed=seed)
    mean, low, high = mean_curve(proj, seed=seed)
    return replace(
        all_of(*_linear_growth(g, p.min_r2)),
        message=f"projection on the layer-{layer} task direction over n = {first}..{last}: slope {g.slope}, R^2 "
        f"{g.r2:.3f} (needs >= {p.min_r2:g}); log(n+1) fit R^2 {g.r2_log:.3f}; held-out error linear minus log "
        f"{g.heldout} (needs CI below 0)",
        figures={
            "layer": layer, "fit_range": [first, last], "r2": g.r2, "r2_log": g.r2_log,
            "heldout_error_difference": g.heldout,
            "curves": {
                "task feature before y_n": _curve(
                    n, mean, low, high, g.intercept + g.slope.statistic * n,
                    ylabel=f"projection on the task direction (layer {layer})",
                )
            },
        },
    )


def params_from(exp: Any, n_layers: int) -> C2Params:
    """Read and range-check the ``[c2]`` section of a target's expectations."""
    n_examples = exp.get("c2", "n_examples", int, default=N_EXAMPLES)
    fit_last = exp.get("c2", "fit_last", int, default=None)
    fit_first = exp.get("c2", "fit_first", int, default=0)
    parity_from = exp.get("c2", "parity_from", int)
    for key, value in (("fit_first", fit_first), ("fit_last", fit_last), ("parity_from", parity_from)):
        if value is not None and not 0 <= value < n_examples:
            from mechclaims import ConfigError

            raise ConfigError(f"{exp.path or exp.target}: [c2] {key} = {value} is outside 0..{n_examples - 1}")
    c_expected = exp.get("c2", "c_expected", float, default=None)
    return C2Params(
        feature_layer=exp.layer("c2", "feature_layer", n_layers),
        parity_from=parity_from,
        n_examples=n_examples,
        fit_first=fit_first,
        fit_last=fit_last,
        saturation=exp.get("c2", "saturation", float, default=SATURATION),
        min_r2=exp.get("c2", "min_r2", float, default=MIN_R2),
        parity_threshold=exp.get("c2", "parity_threshold", float, default=0.9),
        c_expected=c_expected,
        c_margin=exp.get("c2", "c_margin", float, default=0.1),
        parity_reference=tuple(float(v) for v in exp.get("c2", "parity_reference", list, default=[])),
        max_prompts=exp.get("c2", "max_prompts", int, default=None),
    )
