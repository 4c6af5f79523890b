"""mechclaims: mechanistic claims about language models, tested with statistics.

The public API is what this module exports; everything else is internal.
"""

from .errors import ConfigError, MechclaimsError, TargetError
from .results import (
    ERRORED,
    NOT_APPLICABLE,
    REFUTED,
    SUPPORTED,
    ClaimResult,
    Effect,
    Interval,
)
from .settings import Settings, settings
from .stats import proportion, proportion_of
from .targets import TARGETS, LoadedTarget, load_target

__all__ = [
    "ClaimResult",
    "ConfigError",
    "ERRORED",
    "Effect",
    "Interval",
    "LoadedTarget",
    "MechclaimsError",
    "NOT_APPLICABLE",
    "REFUTED",
    "SUPPORTED",
    "Settings",
    "TARGETS",
    "TargetError",
    "load_target",
    "proportion",
    "proportion_of",
    "settings",
]

__version__ = "0.1.0"
