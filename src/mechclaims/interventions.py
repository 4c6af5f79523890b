"""Interventions as data on TransformerBridge hooks.

An intervention is a frozen description: which hook, which batch rows, which
position, what value.  :func:`run_with` turns a list of them into hook
functions, runs ONE forward pass and always removes the hooks (TransformerLens'
``model.hooks`` context removes them in ``finally``).  Hook names are
TransformerLens' own: ``blocks.{L}.hook_resid_pre`` and ``blocks.{L}.attn.hook_z``
(shape ``[batch, pos, n_heads, d_head]``: one slot per *query* head, so head
ablation is exact under grouped-query attention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from .errors import ConfigError
from .hooks import head_z, mlp_out, resid_pre
from .passes import Hook, run_pass
from .store import Forward, Request, store_of, tensor_digest

ABLATION_MODES = ("zero", "mean")


@dataclass(frozen=True, eq=False)
class SetResidual:
    """Overwrite ``resid_pre`` of ``layer`` at sequence ``position`` in batch ``rows``.

    ``position`` is an index (``values``: ``[len(rows), d_model]``) or a slice
    (``values``: ``[len(rows), len(positions), d_model]``).
    """

    layer: int
    position: int | slice
    values: torch.Tensor
    rows: slice = field(default_factory=lambda: slice(None))

    def key(self) -> str:
        """Identity for the activation store (the values are hashed)."""
        return f"SetResidual({self.layer},{_index_key(self.position)},{_index_key(self.rows)},{tensor_digest(self.values)})"

    def hooks(self) -> list[Hook]:
        def patch(resid: torch.Tensor, hook: Any) -> torch.Tensor:
            resid[self.rows, self.position] = self.values.to(device=resid.device, dtype=resid.dtype)  # the hooked layer's device
            return resid

        return [(resid_pre(self.layer), patch)]


@dataclass(frozen=True, eq=False)
class AblateHeads:
    """Replace the outputs (``hook_z``) of ``heads`` with zero or their mean.

    ``position`` is a sequence index (``-1``: the last) or ``None`` for all
    positions.  ``means`` maps a layer to a ``[n_heads, d_head]`` tensor, the
    heads' mean output over a reference prompt set disjoint from the one being
    ablated (see :func:`head_means`); it is required for ``mode="mean"``.
    """

    heads: tuple[tuple[int, int], ...]
    mode: str = "zero"
    position: int | None = -1
    means: dict[int, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ABLATION_MODES:
            raise ConfigError(f"ablation mode {self.mode!r} is not one of {', '.join(ABLATION_MODES)}")
        if self.mode == "mean":
            missing = sorted({layer for layer, _ in self.heads} - set(self.means or {}))
            if missing:
                raise ConfigError(
                    f"mean ablation needs head means for layers {missing}; compute them with "
                    "mechclaims.interventions.head_means on a disjoint reference prompt set"
                )

    @classmethod
    def layers(cls, layers: Iterable[int], n_heads: int, **kwargs: Any) -> "AblateHeads":
        """Every head of each of ``layers``."""
        return cls(tuple((layer, h) for layer in layers for h in range(n_heads)), **kwargs)

    def key(self) -> str:
        """Identity for the activation store (mean values are hashed)."""
        means = "" if self.means is None else ",".join(
            f"{layer}:{tensor_digest(self.means[layer])}" for layer in sorted(self.means)
        )
        return f"AblateHeads({sorted(self.heads)},{self.mode},{self.position},{means})"

    def hooks(self) -> list[Hook]:
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            by_layer.setdefault(layer, []).append(head)
        return [(head_z(layer), self._hook(layer, heads)) for layer, heads in sorted(by_layer.items())]

    def _hook(self, layer: int, heads: list[int]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        index = torch.tensor(heads)
        pos = slice(None) if self.position is None else self.position

        def ablate(z: torch.Tensor, hook: Any) -> torch.Tensor:
            if self.mode == "zero":
                z[:, pos, index] = 0.0
            else:
                z[:, pos, index] = self.means[layer][index].to(z.dtype).to(z.device)
            return z

        return ablate


@dataclass(frozen=True, eq=False)
class AblateMLP:
    """Replace the MLP outputs (``hook_mlp_out``) of ``layers`` with their mean, or zero.

    ``means`` maps a layer to a ``[d_model]`` tensor, the MLP's mean output over a
    reference prompt set disjoint from the one being ablated; it is required unless
    ``means`` is ``None`` and ``mode="zero"``. Every position but the first (BOS, whose
    activations are atypical) is ablated unless ``keep_bos`` is False.
    """

    layers: tuple[int, ...]
    means: dict[int, torch.Tensor] | None = field(default=None, repr=False)
    keep_bos: bool = True
    mode: str = "mean"

    def __post_init__(self) -> None:
        if self.mode not in ABLATION_MODES:
            raise ConfigError(f"MLP ablation mode {self.mode!r} is not one of {', '.join(ABLATION_MODES)}")
        missing = sorted(set(self.layers) - set(self.means or {})) if self.mode == "mean" else []
        if missing:
            raise ConfigError(f"MLP mean ablation needs means for layers {missing}; compute them on a disjoint "
                              "reference prompt set (hook mechclaims.hooks.mlp_out), or pass mode='zero'")

    def hook_names(self) -> list[str]:
        return [mlp_out(layer) for layer in self.layers]

    def key(self) -> str:
        """Identity for the activation store (the means are hashed)."""
        if self.mode == "zero":
            return f"AblateMLP({sorted(self.layers)},{self.keep_bos},zero)"
        means = ",".join(f"{layer}:{tensor_digest(self.means[layer])}" for layer in sorted(self.layers))
        return f"AblateMLP({sorted(self.layers)},{self.keep_bos},{means})"

    def hooks(self) -> list[tuple[str, Callable[[torch.Tensor, Any], torch.Tensor]]]:
        start = 1 if self.keep_bos else 0

        def make(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def ablate(act: torch.Tensor, hook: Any) -> torch.Tensor:
                if self.mode == "zero":
                    act[:, start:] = 0.0
                else:
                    act[:, start:] = self.means[layer].to(act.dtype).to(act.device)
                return act

            return ablate

        return [(mlp_out(layer), make(layer)) for layer in self.layers]


Intervention = SetResidual | AblateHeads | AblateMLP


def _index_key(index: int | slice | None) -> str:
    if isinstance(index, slice):
        return f"{index.start}:{index.stop}:{index.step}"
    return str(index)


def forward(
    model: Any,
    tokens: torch.Tensor,
    *,
    names: Sequence[str] = (),
    position: int | None = -1,
    interventions: Sequence[Intervention] = (),
    logits: str = "all",
    tail: int | None = None,
) -> Forward:
    """ONE forward pass with ``interventions``, keeping ``logits`` and the activations at ``names``.

    ``logits``: ``"all"`` ``[batch, pos, vocab]``, ``"last"`` ``[batch, vocab]``,
    ``"argmax"`` ``[batch, pos]`` token ids, or ``"none"``; ``tail`` limits
    ``"all"`` and ``"argmax"`` to the last ``tail`` positions.  The pass computes
    logits only where they are kept (HF ``logits_to_keep``): a full-vocabulary
    unembedding of every position is most of a long pass's memory.  Activations keep only
    ``position`` (``None``: every position), so a residual sweep of a long
    prompt stores ``[batch, d_model]`` per layer rather than the whole sequence.
    When the model has an activation store attached (:func:`mechclaims.store.attach`),
    a pass already computed is served from it; interventions without a ``key()``
    are never cached.  Hooks are always removed after the pass.
    """
    request = Request(tokens, tuple(dict.fromkeys(names)), position, tuple(interventions), logits, tail)
    store = store_of(model)
    compute = lambda: _compute(model, request)  # noqa: E731
    if store is None or not all(hasattr(iv, "key") for iv in interventions):
        return compute()
    return store.get(request, compute)


def _compute(model: Any, request: Request) -> Forward:
    stored: dict[str, torch.Tensor] = {}
    position = request.position
    # Where the caller works: the tokens' device (the embedding's under a device map). Layers placed on
    # other devices hand their activations back there, so a claim never meets two devices.
    home = request.tokens.device

    def keeper(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            stored[name] = (act if position is None else act[:, position]).detach().to(home, copy=True)
            return act

        return keep

    # Without logits, the pass ends once every activation asked for is kept: later layers would be wasted.
    # No key-value cache: a pass that is not decoded further would only build one.
    stop = request.logits == "none"
    out = run_pass(
        model, request.tokens, [(name, keeper(name)) for name in request.names], interventions=request.interventions,
        stop_after=request.names if stop else (), require=() if stop else request.names,
        logits_to_keep=request.logits_to_keep(),
    )
    if request.logits == "none":
        return Forward(None, stored)
    kept = {"all": out, "last": out[:, -1], "argmax": out.argmax(-1)}[request.logits]
    return Forward(kept.to(home), stored)


def run_with(
    model: Any, tokens: torch.Tensor, interventions: Sequence[Intervention] = (), *, logits: str = "all",
    tail: int | None = None,
) -> torch.Tensor:
    """Logits of one forward pass with ``interventions`` applied (see :func:`forward`)."""
    return forward(model, tokens, interventions=interventions, logits=logits, tail=tail).logits


def capture(
    model: Any,
    tokens: torch.Tensor,
    names: Sequence[str],
    *,
    position: int | None = -1,
    interventions: Sequence[Intervention] = (),
    logits: str = "all",
    tail: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the activations at ``names`` (only ``position``; ``None`` keeps all)."""
    out = forward(
        model, tokens, names=names, position=position, interventions=interventions, logits=logits, tail=tail
    )
    return out.logits, out.acts


def head_means(model: Any, tokens: torch.Tensor, layers: Iterable[int], *, position: int | None = -1) -> dict[int, torch.Tensor]:
    """Mean ``hook_z`` per head over a reference batch: ``{layer: [n_heads, d_head]}``.

    With ``position=-1`` the mean is over the last position of each prompt (the
    role being ablated); with ``None`` over every position of every prompt.
    """
    layers = list(layers)
    _, z = capture(model, tokens, [head_z(layer) for layer in layers], position=position)
    means = {}
    for layer in layers:
        act = z[head_z(layer)]
        means[layer] = act.reshape(-1, *act.shape[-2:]).mean(0)
    return means
