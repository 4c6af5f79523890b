"""Claim 3 of the post: the two-stage mechanism (claims-spec §4).

Reading attention causally: (1) a head at y_i attends to its own x_i; (2) MLPs
turn x and y into features of the transformation; (3) a head at the position
before y_j attends to earlier y_i (i < j) and adds the transformation feature.

* ``C3.x-to-y``: the pre-registered heads put more attention from y_i onto x_i
  than causal-uniform attention does (paired interval over sequences, lower bound
  >= ``min_excess``) and more than randomly drawn sets of as many heads
  (permutation p < 0.05).
* ``C3.y-to-prey``: the heads with the largest causal effect (mean direct logit
  attribution to the correct y_j, EXPLORATION split) do the same from the
  position before y_j onto earlier y tokens.
* ``C3.mlp``: mean-ablating the MLPs of the layers between the two head stages
  (every position but BOS; means from the EXPLORATION split) lowers accuracy
  by at least ``min_drop`` (paired lower bound).  As many MLPs outside the band
  (:func:`control_layers`) are ablated too and reported beside it.

Attention masses come from :func:`mechclaims_icl.claim2.read_sequences` (hook
``blocks.{L}.attn.hook_pattern``, ``[batch, head, query, key]``), reduced to
per-head role masses inside the hook by :func:`mechclaims.role_mass`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .claim2 import Reading, _reading_arrays, _reading_from, read_sequences
from mechclaims import ConfigError, cached
from mechclaims import top_heads
from mechclaims_icl.fits import RoleAttention, role_attention
from mechclaims import head_z, mlp_out, resid_pre
from mechclaims import AblateMLP
from mechclaims import all_of, at_least, significant
from mechclaims import Effect, Finding
from .roles import Roles, roles
from .scores import FINAL_SCALE, scores_from
from mechclaims import paired_increase, proportion_of

# One-sided, the level the lower bound of a 95% interval keeps (mechclaims.significant's default).
ALPHA = 0.025


@dataclass(frozen=True)
class C3Params:
    """Pre-registered values of one target (``[c3]`` of its expectations)."""

    x_to_y_heads: tuple[tuple[int, int], ...]
    n_causal_heads: int
    mlp_layers: tuple[int, ...]
    min_excess: float = 0.1
    min_drop: float = 0.3


@dataclass(frozen=True)
class Exploration:
    """What the exploration split gives the claims: its reading, head attributions, MLP means."""

    reading: Reading
    dla: np.ndarray  # [n_layers, n_heads] mean direct logit attribution to the correct y at ``dla_example``
    mlp_means: dict[int, torch.Tensor]
    dla_example: int


def explore(
    model: Any, prompts: Any, *, dla_example: int, resid_layers: Sequence[int] = (), attention: bool = False,
) -> Exploration:
    """One forward per exploration prompt: the claim-2 reading, per-head direct logit
    attribution at the position before y_``dla_example`` (equal, causally, to the last
    position of a prompt with that many examples) and every MLP's mean output.
    Memoised in the model's activation store."""
    items = list(getattr(prompts, "prompts", prompts))
    tokens = [roles(model.tokenizer, p).tokens for p in items]
    inputs = {"tokens": tokens, "dla_example": dla_example, "resid_layers": sorted(int(layer) for layer in resid_layers),
              "attention": attention}

    def compute() -> dict[str, np.ndarray]:
        found = _explore(model, items, dla_example=dla_example, resid_layers=resid_layers, attention=attention)
        arrays = {f"reading.{name}": a for name, a in _reading_arrays(found.reading).items()}
        arrays["dla"] = found.dla
        arrays["mlp_means"] = torch.stack([found.mlp_means[layer] for layer in sorted(found.mlp_means)]).float().numpy()
        return arrays

    arrays = cached(model, "claim3.explore", inputs, compute, tokens=sum(len(t) for t in tokens))
    reading = _reading_from({name[len("reading."):]: a for name, a in arrays.items() if name.startswith("reading.")})
    dtype = model.cfg.dtype
    means = {layer: torch.from_numpy(row).to(dtype) for layer, row in enumerate(arrays["mlp_means"])}
    return Exploration(reading, arrays["dla"], means, dla_example)


@torch.no_grad()
def _explore(
    model: Any, items: list, *, dla_example: int, resid_layers: Sequence[int] = (), attention: bool = False,
) -> Exploration:
    """:func:`explore` without the store."""
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    dla = np.zeros((len(items), n_layers, model.cfg.n_heads))
    sums = torch.zeros(n_layers, d_model, dtype=torch.float64)
    count = [0]
    tokenizer = model.tokenizer

    def probe(rows: list[int], rs: list[Roles]) -> list:
        pos = torch.tensor([r.pre_y[dla_example] for r in rs])
        first = [tokenizer(str(items[i].examples[dla_example][1]), add_special_tokens=False)["input_ids"][0] for i in rows]
        acts: dict[str, torch.Tensor] = {}

        def at(name: str) -> Callable:
            def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
                acts[name] = act[torch.arange(act.shape[0], device=act.device), pos.to(act.device)].detach()
                if name == FINAL_SCALE:
                    dla[rows] = scores_from(model, acts, first, n_layers - 1)[0]
                return act

            return keep

        def mean_of(layer: int) -> Callable:
            def add(act: torch.Tensor, hook: Any) -> torch.Tensor:
                sums[layer] += act[:, 1:].double().sum(dim=(0, 1)).cpu()
                if layer == 0:
                    count[0] += act.shape[0] * (act.shape[1] - 1)
                return act

            return add

        names = [head_z(layer) for layer in range(n_layers)] + [resid_pre(n_layers - 1), FINAL_SCALE]
        return [(n, at(n)) for n in names] + [(mlp_out(layer), mean_of(layer)) for layer in range(n_layers)]

    reading = read_sequences(model, items, resid_layers=resid_layers, attention=attention, probes=[probe])
    dtype = model.cfg.dtype
    means = {layer: (sums[layer] / count[0]).to(dtype) for layer in range(n_layers)}
    return Exploration(reading, dla.mean(0), means, dla_example)


def causal_heads(exploration: Exploration, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest mean direct logit attribution on the exploration split."""
    return top_heads(exploration.dla, k)


def mlp_ablated(model: Any, prompts: Any, layers: Sequence[int], means: dict[int, torch.Tensor], example: int) -> np.ndarray:
    """Whether y_``example`` is predicted right (teacher-forced greedy) with the MLPs of ``layers`` mean-ablated."""
    ablation = AblateMLP(tuple(layers), {layer: means[layer] for layer in layers})
    return read_sequences(model, prompts, examples=[example], interventions=[ablation]).correct[:, example]


# --------------------------------------------------------------------------- findings


def _role_figures(result: RoleAttention, title: str, role: str) -> dict:
    labels = [f"L{layer}H{h}" for layer, h in result.heads]
    per = result.per_head
    return {
        "heads": labels,
        "uniform_baseline": result.uniform,
        "random_heads_mean": result.random_mean,
        "random_heads_95th": result.random_high,
        "random_heads_p": result.random_p,
        "mass": result.mass,
        "bars": {
            f"{title}: attention {role}": {
                "labels": [*labels, "these heads", "uniform", "random heads (mean)"],
                "values": [*(float(per[layer, h]) for layer, h in result.heads), result.mass.statistic,
                           result.uniform, result.random_mean],
                "ci_low": [*(float(per[layer, h]) for layer, h in result.heads), result.mass.ci.low,
                           result.uniform, result.random_mean],
                "ci_high": [*(float(per[layer, h]) for layer, h in result.heads), result.mass.ci.high,
                            result.uniform, result.random_high],
                "ylabel": f"mean attention {role}",
            }
        },
        "heatmaps": {
            f"{title}: attention {role} per head": {
                "matrix": per.tolist(), "xlabel": "head", "ylabel": "layer",
            }
        },
    }


def _role_finding(result: RoleAttention, p: C3Params, role: str, title: str, extra: str = "") -> Finding:
    heads = ", ".join(f"L{layer}H{h}" for layer, h in result.heads)
    against_random = Effect(result.mass.statistic, result.mass.ci, result.mass.n, result.random_p)
    return replace(
        all_of(at_least(result.excess, p.min_excess, "excess over uniform"),
               significant(against_random, f"mass against random sets of {len(result.heads)} heads", alpha=ALPHA)),
        message=f"{heads}: attention {role} {result.mass}; uniform baseline {result.uniform:.3g}, excess {result.excess} "
        f"(lower bound must be > {p.min_excess:g}); random sets of {len(result.heads)} heads: mean "
        f"{result.random_mean:.3g}, 95th percentile {result.random_high:.3g}, p = {result.random_p:.3g} "
        f"(must be < {ALPHA}){extra}",
        figures=_role_figures(result, title, role),
    )


def x_to_y(reading: Reading, p: C3Params, *, seed: int = 0) -> Finding:
    """C3.x-to-y on ``reading`` (masses from y_i onto its own x_i)."""
    result = role_attention(reading.x_to_y, reading.uniform_x_to_y, p.x_to_y_heads, seed=seed)
    return _role_finding(result, p, "from y_i to its own x_i", "C3.x-to-y")


def y_to_prey(reading: Reading, heads: Sequence[tuple[int, int]], dla: np.ndarray, p: C3Params, *, seed: int = 0) -> Finding:
    """C3.y-to-prey: the ``heads`` (largest causal effect) attend from before y_j to earlier y_i."""
    result = role_attention(reading.y_to_prey, reading.uniform_y_to_prey, heads, seed=seed)
    attribution = ", ".join(f"L{layer}H{h} {dla[layer, h]:.3g}" for layer, h in result.heads)
    finding = _role_finding(
        result, p, "from before y_j to earlier y_i", "C3.y-to-prey",
        f"; heads chosen by mean direct logit attribution on the exploration split ({attribution})",
    )
    figures = dict(finding.figures)
    figures["dla"] = [float(dla[layer, h]) for layer, h in result.heads]
    figures["heatmaps"] = {
        **figures["heatmaps"],
        "C3.y-to-prey: direct logit attribution per head (exploration)": {
            "matrix": np.asarray(dla).tolist(), "xlabel": "head", "ylabel": "layer",
        },
    }
    return replace(finding, figures=figures)


def control_layers(band: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """As many MLP layers outside ``band`` as it holds (fewer when the model lacks them):
    the layers after the band first, then those before it, never layer 0 (whose MLP
    acts on the embeddings of every model)."""
    band = set(band)
    after = [layer for layer in range(max(band) + 1, n_layers)]
    before = [layer for layer in range(min(band) - 1, 0, -1)]
    return tuple(sorted((after + before)[: len(band)]))


def mlp_needed(
    clean: np.ndarray, ablated: np.ndarray, p: C3Params, *,
    control: np.ndarray | None = None, control_layers: Sequence[int] = (),
) -> Finding:
    """C3.mlp: mean-ablating the MLPs between the head stages lowers accuracy by >= ``min_drop``.

    ``control`` (correctness with the MLPs of ``control_layers``, outside the band,
    mean-ablated) is reported beside it, as the specificity of the effect; it does
    not enter the decision.
    """
    drop = paired_increase(np.asarray(ablated, dtype=float), np.asarray(clean, dtype=float))
    before, after = proportion_of(clean), proportion_of(ablated)
    layers = "+".join(map(str, p.mlp_layers))
    labels = ["clean", f"MLPs {layers} mean-ablated"]
    shares = [before, after]
    figures: dict[str, Any] = {"mlp_layers": list(p.mlp_layers), "accuracy_clean": before, "accuracy_ablated": after}
    text = ""
    if control is not None and len(control_layers):
        other = proportion_of(control)
        control_drop = paired_increase(np.asarray(control, dtype=float), np.asarray(clean, dtype=float))
        names = "+".join(map(str, control_layers))
        labels.append(f"control: MLPs {names} mean-ablated")
        shares.append(other)
        figures.update(control_layers=list(control_layers), accuracy_control=other, control_drop=control_drop)
        text = f"; control, MLPs {names} outside the band: accuracy {other}, drop {control_drop}"
    figures["bars"] = {
        "C3.mlp: accuracy with and without the MLPs": {
            "labels": labels,
            "values": [e.statistic for e in shares],
            "ci_low": [e.ci.low for e in shares], "ci_high": [e.ci.high for e in shares],
            "ylabel": "accuracy",
        }
    }
    return replace(
        all_of(at_least(drop, p.min_drop, "paired accuracy drop"), significant(drop, "paired test", alpha=ALPHA)),
        message=f"mean-ablating MLPs {layers}: accuracy {before} -> {after}; paired drop {drop} (lower bound must be "
        f"> {p.min_drop:g}, paired p < {ALPHA}){text}",
        figures=figures,
    )


def _heads(exp: Any, key: str, n_layers: int, n_heads: int) -> tuple[tuple[int, int], ...]:
    values = exp.get("c3", key, list)
    where = f"{exp.path or exp.target}: [c3] {key}"
    out = []
    for value in values:
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{where} holds {value!r}; expected [layer, head] pairs")
        layer, head = value
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ConfigError(f"{where}: head {value} is out of range; {exp.target} has layers 0..{n_layers - 1}, heads 0..{n_heads - 1}")
        out.append((layer, head))
    if not out:
        raise ConfigError(f"{where} is empty; name at least one [layer, head]")
    return tuple(out)


def params_from(exp: Any, n_layers: int, n_heads: int) -> C3Params:
    """Read and range-check the ``[c3]`` section of a target's expectations."""
    k = exp.get("c3", "n_causal_heads", int)
    if not 1 <= k <= n_layers * n_heads:
        raise ConfigError(f"{exp.path or exp.target}: [c3] n_causal_heads = {k}; expected 1..{n_layers * n_heads}")
    return C3Params(
        x_to_y_heads=_heads(exp, "x_to_y_heads", n_layers, n_heads),
        n_causal_heads=k,
        mlp_layers=exp.layers("c3", "mlp_layers", n_layers),
        min_excess=exp.get("c3", "min_excess", float, default=0.1),
        min_drop=exp.get("c3", "min_drop", float, default=0.3),
    )
