"""mechclaims: mechanistic claims about language models, tested with statistics.

The public API is what this module exports (documented in docs/writing-claims.md);
every other module is internal and may change. A claim pack imports from here only.
"""

from .batching import encode
from .checks import all_of, at_least, at_most, equivalent, holds, holds_across, significant
from .errors import ConfigError, MechclaimsError, TargetError
from .expectations import Expectations, Key, register_section
from .fits import role_weights, top_heads, uniform_pattern
from .hooks import attn_pattern, head_z, mlp_out, resid_pre
from .interventions import AblateHeads, AblateMLP, SetResidual, forward, head_means
from .prompts import PromptSet
from .readers import attention_mass, greedy_tokens, residual_at, string_probability
from .recorder import ClaimRecorder
from .results import (
    ERRORED,
    NOT_APPLICABLE,
    REFUTED,
    SUPPORTED,
    ClaimResult,
    Effect,
    Finding,
    Interval,
    Rule,
)
from .settings import Settings, settings
from .stats import (
    beats_random,
    bootstrap_mean,
    equivalence,
    holm,
    onset,
    paired_increase,
    proportion,
    proportion_of,
    random_sets,
)
from .targets import TARGETS, LoadedTarget, load_target

__all__ = [
    # results
    "ClaimResult", "Effect", "Finding", "Interval", "Rule", "ERRORED", "NOT_APPLICABLE", "REFUTED", "SUPPORTED",
    # errors
    "ConfigError", "MechclaimsError", "TargetError",
    # targets and settings
    "LoadedTarget", "TARGETS", "load_target", "Settings", "settings",
    # pre-registration
    "Expectations", "Key", "register_section",
    # prompts, hooks, interventions
    "PromptSet", "encode", "resid_pre", "head_z", "attn_pattern", "mlp_out",
    "forward", "AblateHeads", "AblateMLP", "SetResidual", "head_means",
    # readers
    "greedy_tokens", "string_probability", "attention_mass", "residual_at",
    # statistics
    "proportion", "proportion_of", "equivalence", "paired_increase", "holm", "bootstrap_mean", "onset",
    "random_sets", "beats_random", "role_weights", "uniform_pattern", "top_heads",
    # checks and recording
    "at_least", "at_most", "equivalent", "significant", "holds", "all_of", "holds_across", "ClaimRecorder",
]

__version__ = "0.1.0"
