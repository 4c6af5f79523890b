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

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, did_you_mean
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
    sha256: str | None = None  # of the file's bytes, recorded in the report

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

    def _check_range(self, section: str, key: str, value: int, size: int, what: str) -> None:
        if not 0 <= value < size:
            raise ConfigError(
                f"{self.path or self.target}: [{section}] {key}: {what} {value} is out of range; "
                f"{self.target} has {what}s 0..{size - 1}"
            )


@dataclass(frozen=True)
class Key:
    """What a pre-registered value may be: its type and, for numbers, a closed range. A value
    outside the range would make its claim vacuous (a margin so wide that any change is
    "equivalent", a tolerance no onset can miss) or the run unbounded."""

    kind: type | tuple[type, ...]
    low: float | None = None
    high: float | None = None
    why: str = ""


_LAYERS = Key(list, why="layer numbers, checked against the model's layers")
_LAYER = Key(int, 0, 4096, "a layer number, checked against the model's layers")
_RATE = Key(float, 0.01, 0.99, "a rate threshold strictly between 0 and 1")
_SHARE = Key(float, 0.01, 1.0, "a share of at most 1")

# Every key a pre-registration may hold, by section; anything else is refused, naming the
# nearest valid key (a typo would otherwise silently run on the default).
KEYS: dict[str, dict[str, Key]] = {
    "task": {"a": Key(int, 1, 999, "the slope of y = a x + b"), "b": Key(int, 0, 999, "the intercept")},
    "c1": {
        "onset": _LAYER, "read_layer": _LAYER, "stage1": _LAYERS, "stage2": _LAYERS, "stage3": _LAYERS,
        "backup_layers": _LAYERS, "threshold": _RATE,
        "onset_tolerance": Key(int, 0, 3, "layers; a wider tolerance lets almost any onset pass"),
        "margin": Key(float, 0.01, 0.25, "an equivalence margin in accuracy; a wider one calls any change equivalent"),
        "backup_share": _SHARE,
        "min_pairs": Key(int, 1, 20000, "prompt pairs; more would run for days on a CPU"),
    },
    "c2": {
        "n_examples": Key(int, 2, 64, "examples per sequence"), "fit_first": Key(int, 0, 63, "an example index"),
        "fit_last": Key(int, 0, 63, "an example index"), "parity_from": Key(int, 0, 63, "an example index"),
        "feature_layer": _LAYER, "saturation": _RATE, "min_r2": Key(float, 0.5, 1.0, "a fit quality"),
        "parity_threshold": _RATE, "c_expected": Key(float, 0.01, 10.0, "a log-odds step"),
        "c_margin": Key(float, 0.01, 1.0, "an equivalence margin in log-odds"),
        "parity_reference": Key(list, why="reference rates"),
        "max_prompts": Key(int, 1, 10000, "prompts; more would run for days on a CPU"),
    },
    "c3": {
        "x_to_y_heads": Key(list, why="[layer, head] pairs"), "n_causal_heads": Key(int, 1, 64, "heads"),
        "mlp_layers": _LAYERS, "min_excess": _SHARE, "min_drop": _SHARE,
    },
    # The model a pre-registration was made on (written by discovery; by hand for a published
    # model): a run on other weights or another shape is an error unless the user allows it
    # (--mechclaims-allow-other-model), and then the report records it.
    "registered": {
        "weights": Key(str, why="the weights' fingerprint, as the report's sha256_or_revision"),
        "n_layers": Key(int, 1, 100000, "layers"), "n_heads": Key(int, 1, 100000, "heads per layer"),
        "d_model": Key(int, 1, 10**7, "residual width"), "d_vocab": Key(int, 1, 10**8, "vocabulary size"),
    },
}
TOP_LEVEL = ("target", "source", "verdicts", *KEYS)


def model_mismatch(exp: "Expectations", weights: str, shape: Mapping[str, int]) -> str | None:
    """Why the model at hand is not the one ``exp`` was registered on (None when it is, or when the
    file does not say): the first differing fingerprint or size."""
    registered = exp.sections.get("registered", {})
    actual = {"weights": weights, **shape}
    for key, value in registered.items():
        if key in actual and actual[key] != value:
            return (f"{exp.path}: registered on {key} = {value!r}, but this {exp.target} has {actual[key]!r}; "
                    "re-run discovery for this model, or pass --mechclaims-allow-other-model (recorded in the report)")
    return None


def _check_sections(path: Path, data: Mapping[str, Any]) -> None:
    """Refuse unknown sections and keys, wrong types, non-finite numbers and values out of range."""
    import math

    for name, value in data.items():
        if name not in TOP_LEVEL:
            raise ConfigError(f"{path}: unknown key or section {name!r}; {did_you_mean(name, TOP_LEVEL)}"
                              f"valid: {', '.join(TOP_LEVEL)}")
        if name in KEYS and not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} = {value!r}; expected a [{name}] table")
    for section, rules in KEYS.items():
        for key, value in data.get(section, {}).items():
            where = f"{path}: [{section}] {key}"
            if key not in rules:
                raise ConfigError(f"{where} is not a known key; {did_you_mean(key, rules)}valid keys: {', '.join(rules)}")
            rule = rules[key]
            kinds = rule.kind if isinstance(rule.kind, tuple) else (rule.kind,)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(f"{where} = {value!r} has type {type(value).__name__}; expected a {_names(rule.kind)} "
                                  f"({rule.why})")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where} = {value!r} is not a finite number; expected {rule.low} to {rule.high} "
                                  f"({rule.why})")
            if rule.low is not None and not rule.low <= value <= rule.high:
                raise ConfigError(f"{where} = {value!r} is out of range; expected {rule.low} to {rule.high} ({rule.why})")


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def load(path: Path, target: str) -> Expectations:
    """Read and check ``path``; a missing file means "no expectations" (all supported)."""
    if not path.is_file():
        if path.exists() or path.is_symlink():  # a directory, a dangling link: not "no expectations"
            raise ConfigError(f"{path}: not a readable file; the expectations of {target} must be a TOML file "
                              "(remove what is there, or write the file)")
        return Expectations(target=target, path=None)
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read; expectations are flat tables") from None
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
    _check_sections(path, data)
    sections = {k: v for k, v in data.items() if isinstance(v, dict) and k != "verdicts"}
    source = data.get("source", "")
    if not isinstance(source, str):
        raise ConfigError(f"{path}: source = {source!r}; expected a string saying how the values were obtained")
    return Expectations(target=target, path=path, source=source, verdicts=verdicts, sections=sections,
                        sha256=hashlib.sha256(raw).hexdigest())


def path_for(claims_dir: Path, target: str) -> Path:
    return claims_dir / "expectations" / f"{target}.toml"
