"""Immutable run settings with named profiles (``ci``, ``paper``).

A profile fixes how much evidence a claim run gathers; the seed travels with it so that a
report states exactly what produced it. Confidence levels are not a run setting: each
statistic states its own (``Effect.ci.level``; 0.95 unless a claim asks for another), and the
report shows it with every interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """How much evidence each claim gathers, and how it is judged."""

    profile: str = "ci"
    n_prompts: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_prompts < 1:
            raise ConfigError(f"n_prompts must be >= 1, got {self.n_prompts}")

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)


SPLITS = ("exploration", "confirmation")


def split_seed(seed: int, split: str) -> int:
    """The prompt seed of ``split`` under the run's ``seed``: ``2 * seed`` for exploration, ``2 * seed + 1``
    for confirmation, so the two splits never share a seed under any run seed."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return 2 * int(seed) + SPLITS.index(split)


PROFILES: dict[str, Settings] = {
    "ci": Settings(profile="ci", n_prompts=100),
    "paper": Settings(profile="paper", n_prompts=500),
}


def settings(profile: str = "ci", **changes: object) -> Settings:
    """The named profile, with ``changes`` applied (e.g. ``seed=1``)."""
    try:
        base = PROFILES[profile]
    except KeyError:
        raise ConfigError(
            f"unknown settings profile {profile!r}; valid profiles: {', '.join(PROFILES)}"
        ) from None
    return base.with_(**changes) if changes else base
