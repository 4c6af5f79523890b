"""mechclaims: mechanistic claims about language models, tested with statistics.

The public API is what this module exports (documented in docs/writing-claims.md);
every other module is internal and may change. A claim pack imports from here only.

Names resolve on first use (PEP 562), so ``import mechclaims`` (which pytest does for
every run, through the plugin) imports neither torch nor scipy until a claim needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the internal module that defines it
_WHERE: dict[str, str] = {}
for _module, _names in {
    "batching": "at_prompt_end device_of encode token_batches",
    "checks": "all_of at_least at_most equivalent holds holds_across significant",
    "errors": "ConfigError MechclaimsError TargetError",
    "expectations": "Expectations Key LAYER LAYERS RATE SHARE expectations_path preregister register_section",
    "attention": "role_mass role_weights top_heads uniform_pattern",
    "hooks": "attn_pattern final_norm final_scale head_z mlp_out resid_pre",
    "interventions": "AblateHeads AblateMLP Intervention SetResidual forward head_means",
    "memory": "release_memory",
    "passes": "HookNeverFired run_pass",
    "prompts": "PromptSet",
    "readers": "attention_mass greedy_tokens residual_at string_probability",
    "recorder": "ClaimRecorder",
    "registry": "configure_project",
    "results": "ERRORED INCONCLUSIVE NOT_APPLICABLE REFUTED SUPPORTED UNDECIDED ClaimResult Effect Finding Interval "
               "Rule",
    "store": "Forward cached reading_key",
    "stats": "beats_random bootstrap_mean equivalence holm onset onset_layer onset_shift paired_increase proportion "
             "proportion_of random_sets",
    "loading": "load_target",
    "targets": "TARGETS LoadedTarget ModelShape Resolved TargetSpec from_dir from_gguf from_hf_cache override",
}.items():
    for _name in _names.split():
        _WHERE[_name] = _module
del _module, _names, _name

__all__ = [
    # results
    "ClaimResult", "Effect", "Finding", "Interval", "Rule", "ERRORED", "INCONCLUSIVE", "NOT_APPLICABLE", "REFUTED",
    "SUPPORTED", "UNDECIDED",
    # errors
    "ConfigError", "MechclaimsError", "TargetError",
    # targets and settings
    "LoadedTarget", "TARGETS", "load_target", "configure_project", "Settings", "settings", "split_seed",
    # shipping targets from a package (entry point mechclaims.targets): a spec and its resolver's sources
    "TargetSpec", "ModelShape", "Resolved", "from_dir", "from_hf_cache", "from_gguf", "override",
    # pre-registration
    "Expectations", "Key", "LAYER", "LAYERS", "RATE", "SHARE", "register_section", "preregister", "expectations_path",
    # prompts, hooks, interventions
    "PromptSet", "encode", "token_batches", "device_of", "at_prompt_end", "resid_pre", "head_z", "attn_pattern", "mlp_out",
    "final_norm", "final_scale",
    "forward", "Forward", "Intervention", "run_pass", "HookNeverFired", "cached", "reading_key", "release_memory",
    "AblateHeads", "AblateMLP", "SetResidual", "head_means",
    # readers
    "greedy_tokens", "string_probability", "attention_mass", "residual_at",
    # statistics
    "proportion", "proportion_of", "equivalence", "paired_increase", "holm", "bootstrap_mean", "onset", "onset_layer", "onset_shift",
    "random_sets", "beats_random", "role_weights", "role_mass", "uniform_pattern", "top_heads",
    # checks and recording
    "at_least", "at_most", "equivalent", "significant", "holds", "all_of", "holds_across", "ClaimRecorder",
]

__version__ = "0.1.0"

# ``settings`` is a function and a submodule's name: bound now (the module is light), so that the
# submodule's import (which sets ``mechclaims.settings`` to the module) cannot shadow the function.
from .settings import Settings, settings, split_seed  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mechclaims' has no attribute {name!r}; the public API is mechclaims.__all__ "
                             "(docs/writing-claims.md)")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    if name == "TARGETS":  # the registry, with every installed package's targets in it
        importlib.import_module(".registry", __name__).load_entry_points()
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see: the eager imports
    from .batching import at_prompt_end, device_of, encode, token_batches
    from .checks import all_of, at_least, at_most, equivalent, holds, holds_across, significant
    from .errors import ConfigError, MechclaimsError, TargetError
    from .expectations import (LAYER, LAYERS, RATE, SHARE, Expectations, Key, expectations_path, preregister,
                               register_section)
    from .attention import role_mass, role_weights, top_heads, uniform_pattern
    from .hooks import attn_pattern, final_norm, final_scale, head_z, mlp_out, resid_pre
    from .interventions import AblateHeads, AblateMLP, Intervention, SetResidual, forward, head_means
    from .memory import release_memory
    from .passes import HookNeverFired, run_pass
    from .prompts import PromptSet
    from .readers import attention_mass, greedy_tokens, residual_at, string_probability
    from .recorder import ClaimRecorder
    from .registry import configure_project
    from .results import (ERRORED, INCONCLUSIVE, NOT_APPLICABLE, REFUTED, SUPPORTED, UNDECIDED, ClaimResult, Effect,
                          Finding, Interval, Rule)
    from .store import Forward, cached, reading_key
    from .stats import (beats_random, bootstrap_mean, equivalence, holm, onset, onset_layer, onset_shift, paired_increase,
                        proportion, proportion_of, random_sets)
    from .loading import load_target
    from .targets import (TARGETS, LoadedTarget, ModelShape, Resolved, TargetSpec, from_dir, from_gguf, from_hf_cache,
                          override)
