"""Pre-registration files: what each target is expected to show, written down
before the confirming run.

One TOML file per target, ``claims/expectations/<target>.toml``::

    target = "organism"
    source = "how these values were obtained (discovery command, split, seed)"

    [verdicts]            # expected verdict per claim id; absent ids expect "supported"
    "C1.redundancy" = "refuted"

    [c1]                  # read by the Claim 1 tests
    onset = 3             # expected first layer of the ≈ a*p stage
    ...

    [task]                # the task of the Claim 2 and 3 tests (default a = 2, b = 3)
    a = 1
    b = 0

    [c2]                  # read by the Claim 2 tests, [c3] by the Claim 3 tests
    ...

A claim expected to be ``refuted`` is a negative control: the plugin marks it
``xfail(strict=True)``, so a claim run exits 0 exactly when every verdict
matches its pre-registration.  Every error names the file, the key, what was
found and what is valid.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .results import NOT_APPLICABLE, REFUTED, SUPPORTED
from .tasks import CANONICAL, AffineTask

EXPECTABLE = (SUPPORTED, REFUTED, NOT_APPLICABLE)


@dataclass(frozen=True)
class Expectations:
    """A target's pre-registered expectations, validated on access."""

    target: str
    path: Path | None
    source: str = ""
    verdicts: Mapping[str, str] = field(default_factory=dict)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def verdict(self, claim_id: str) -> str:
        """The expected verdict of ``claim_id`` (``supported`` unless stated)."""
        return self.verdicts.get(claim_id, SUPPORTED)

    def get(self, section: str, key: str, kind: type | tuple[type, ...], *, default: Any = ...) -> Any:
        """``[section] key`` checked against ``kind``; a missing key without default is an error."""
        where = f"{self.path or self.target}: [{section}] {key}"
        table = self.sections.get(section, {})
        if key not in table:
            if default is not ...:
                return default
            raise ConfigError(f"{where} is missing; add it to the expectations file (a {_names(kind)})")
        value = table[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{where} = {value!r} has type bool; expected a {_names(kind)}")
        if not isinstance(value, kind):
            raise ConfigError(f"{where} = {value!r} has type {type(value).__name__}; expected a {_names(kind)}")
        return value

    def task(self) -> AffineTask:
        """The task the target's Claim 2 and 3 tests run on: ``[task] a, b`` (default y = 2x + 3)."""
        a = self.get("task", "a", int, default=CANONICAL.a)
        b = self.get("task", "b", int, default=CANONICAL.b)
        if a < 1 or b < 0:
            raise ConfigError(f"{self.path or self.target}: [task] a = {a}, b = {b}; expected a >= 1 and b >= 0")
        return AffineTask(a, b)

    def layer(self, section: str, key: str, n_layers: int) -> int:
        """A layer index, checked to lie in ``0..n_layers-1``."""
        value = self.get(section, key, int)
        self._check_range(section, key, value, n_layers, "layer")
        return value

    def layers(self, section: str, key: str, n_layers: int) -> tuple[int, ...]:
        values = self.get(section, key, list)
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{self.path or self.target}: [{section}] {key} holds {value!r}; expected layer numbers")
            self._check_range(section, key, value, n_layers, "layer")
        return tuple(values)

    def head(self, section: str, key: str, n_layers: int, n_heads: int) -> tuple[int, int]:
        value = self.get(section, key, list)
        if len(value) != 2:
            raise ConfigError(f"{self.path or self.target}: [{section}] {key} = {value!r}; expected [layer, head]")
        layer, head = value
        self._check_range(section, key, layer, n_layers, "layer")
        self._check_range(section, key, head, n_heads, "head")
        return layer, head

    def _check_range(self, section: str, key: str, value: int, size: int, what: str) -> None:
        if not 0 <= value < size:
            raise ConfigError(
                f"{self.path or self.target}: [{section}] {key}: {what} {value} is out of range; "
                f"{self.target} has {what}s 0..{size - 1}"
            )


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def load(path: Path, target: str) -> Expectations:
    """Read and check ``path``; a missing file means "no expectations" (all supported)."""
    if not path.is_file():
        return Expectations(target=target, path=None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    if data.get("target", target) != target:
        raise ConfigError(f"{path}: target = {data['target']!r} but the file is for {target!r}; fix the target key")
    verdicts = data.get("verdicts", {})
    if not isinstance(verdicts, dict):
        raise ConfigError(f"{path}: [verdicts] must be a table of claim id = verdict")
    for claim_id, verdict in verdicts.items():
        if verdict not in EXPECTABLE:
            raise ConfigError(
                f"{path}: [verdicts] {claim_id!r} = {verdict!r}; valid expected verdicts: {', '.join(EXPECTABLE)}"
            )
    sections = {k: v for k, v in data.items() if isinstance(v, dict) and k != "verdicts"}
    source = data.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{path}: source = {source!r}; expected a string saying how the values were obtained")
    return Expectations(target=target, path=path, source=source, verdicts=verdicts, sections=sections)


def path_for(claims_dir: Path, target: str) -> Path:
    return claims_dir / "expectations" / f"{target}.toml"
