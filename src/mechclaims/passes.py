"""One forward pass with hooks: the runner every reading of activations goes through.

:func:`run_pass` installs ``(hook name, function)`` pairs on a TransformerBridge, runs one
pass without gradients or a key-value cache, and always removes the hooks and releases the
pass's memory. ``stop_after`` ends the pass once every named hook has fired, so the layers
above the last one a reading needs are never run. A name the model does not have is refused
(:class:`~mechclaims.ConfigError`), and a needed hook that never fires (the pass ended before it)
raises :class:`HookNeverFired` naming it: a reading is never left half-filled.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Iterable, Sequence

import torch

from . import memory
from .errors import ConfigError
from .hooks import resid_pre

Hook = tuple[str, Callable[[torch.Tensor, Any], Any]]


class HookNeverFired(ConfigError):
    """A hook the pass needed did not fire: the pass ended before reaching it."""


class _EndPass(Exception):
    """Raised by the stop hook once everything the pass needed has fired."""


def run_pass(
    model: Any,
    tokens: torch.Tensor,
    hooks: Sequence[Hook] = (),
    *,
    interventions: Sequence[Any] = (),
    stop_after: Iterable[str] = (),
    require: Iterable[str] = (),
    **forward_kwargs: Any,
) -> Any:
    """Run ``model`` once on ``tokens`` with ``hooks`` and the hooks of ``interventions``.

    ``stop_after``: hook names; the pass ends once each has fired (after every hook installed on
    it), and ``None`` is returned in place of the model's output. ``require``: hook names that
    must fire even though the pass runs to the end. ``forward_kwargs`` go to the model call
    (``logits_to_keep`` for one); ``use_cache`` is off.

    Raises :class:`HookNeverFired` listing every name in ``stop_after`` or ``require`` whose hook
    did not fire.
    """
    stops = list(dict.fromkeys(stop_after))
    needed = list(dict.fromkeys([*stops, *require]))
    fired: set[str] = set()

    def mark(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def seen(act: torch.Tensor, hook: Any) -> torch.Tensor:
            fired.add(name)
            if stops and fired.issuperset(stops):
                raise _EndPass
            return act

        return seen

    installed = [hook for iv in interventions for hook in iv.hooks()] + list(hooks)
    installed += [(name, mark(name)) for name in needed]  # last: a name's own hooks run before its mark
    out = None
    try:
        with torch.no_grad(), ExitStack() as stack:
            try:
                stack.enter_context(model.hooks(fwd_hooks=installed))
            except KeyError as error:  # TransformerBridge refuses a name it does not have
                raise ConfigError(
                    f"{error.args[0] if error.args else error}: build hook names with mechclaims.hooks "
                    f"(such as {resid_pre(0)!r}), for layers below model.cfg.n_layers = {model.cfg.n_layers}"
                ) from None
            out = model(tokens, use_cache=False, **forward_kwargs)
    except _EndPass:
        out = None
    finally:
        memory.release_memory()
    missing = [name for name in needed if name not in fired]
    if missing:
        raise HookNeverFired(
            f"hooks never fired: {missing}; the pass ended (stop_after={stops}) or ran out before reaching them: "
            "stop after the last hook the reading needs")
    return out
