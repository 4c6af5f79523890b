"""Pre-registration files: what each target is expected to show, written down
before the confirming run.

One TOML file per target, ``claims/expectations/<target>.toml``::

    target = "organism"
    source = "how these values were obtained (discovery command, split, seed)"

    [verdicts]            # expected verdict per claim id; absent ids expect "supported"
    "C1.redundancy" = "refuted"

    [registered]          # the model the values were found on (written by discovery)
    weights = "sha256:..."
    n_layers = 8

    [induction]           # a section a claim pack owns: its keys, types and ranges
    heads = [[1, 0]]      # are registered with mechclaims.register_section

The core knows only ``target``, ``source``, ``[verdicts]`` and ``[registered]``; every
other section belongs to a claim pack, which declares it with :func:`register_section`
(a pack installed as a package does so through the ``mechclaims.packs`` entry-point group,
whose objects map section names to their keys).

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
from .results import INCONCLUSIVE, NOT_APPLICABLE, REFUTED, SUPPORTED, UNDECIDED

EXPECTABLE = (SUPPORTED, REFUTED, INCONCLUSIVE, NOT_APPLICABLE, UNDECIDED)


@dataclass(frozen=True)
class Expectations:
    """A target's pre-registered expectations, validated on access."""

    target: str
    path: Path | None
    source: str = ""
    verdicts: Mapping[str, str] = field(default_factory=dict)
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sha256: str | None = None  # of the file's bytes, recorded in the report

    @classmethod
    def read(cls, path: Path, target: str) -> "Expectations":
        """The pre-registration of ``target`` in ``path``, checked (a missing file: no expectations)."""
        return load(Path(path), target)

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


LAYERS = Key(list, why="layer numbers, checked against the model's layers")
LAYER = Key(int, 0, 4096, "a layer number, checked against the model's layers")
RATE = Key(float, 0.01, 0.99, "a rate threshold strictly between 0 and 1")
SHARE = Key(float, 0.01, 1.0, "a share of at most 1")

# The model a pre-registration was made on (written by discovery; by hand for a published
# model): a run on other weights or another shape is an error unless the user allows it
# (--mechclaims-allow-other-model), and then the report records it.
REGISTERED: dict[str, Key] = {
    "weights": Key(str, why="the weights' fingerprint, as the report's sha256_or_revision"),
    "n_layers": Key(int, 1, 100000, "layers"), "n_heads": Key(int, 1, 100000, "heads per layer"),
    "d_model": Key(int, 1, 10**7, "residual width"), "d_vocab": Key(int, 1, 10**8, "vocabulary size"),
}

# Every key a pre-registration may hold, by section; anything else is refused, naming the
# nearest valid key (a typo would otherwise silently run on the default). Packs add theirs.
_SECTIONS: dict[str, dict[str, Key]] = {"registered": REGISTERED}
_CORE_TOP_LEVEL = ("target", "source", "verdicts")
PACK_GROUP = "mechclaims.packs"
_packs_loaded = False


def register_section(name: str, keys: Mapping[str, Key]) -> None:
    """Declare the ``[name]`` section of expectations files and the keys it may hold.

    Registering the same keys again is harmless; different keys under a taken name are an
    error (two packs would read one section two ways)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"section name {name!r} is not an identifier; use letters, digits and _ (e.g. 'induction')")
    if name in _CORE_TOP_LEVEL:
        raise ConfigError(f"section name {name!r} is the core's; choose another (taken: {', '.join(_CORE_TOP_LEVEL)})")
    for key, rule in keys.items():
        if not isinstance(rule, Key):
            raise ConfigError(f"[{name}] {key}: {rule!r} is not a mechclaims.Key; declare it as Key(type, low, high, why)")
    if name in _SECTIONS and dict(_SECTIONS[name]) != dict(keys):
        raise ConfigError(f"section [{name}] is already registered with other keys ({', '.join(_SECTIONS[name])}); "
                          "give the pack's section its own name")
    _SECTIONS[name] = dict(keys)


def sections() -> dict[str, dict[str, Key]]:
    """Every registered section, the installed packs' included (loaded once)."""
    global _packs_loaded
    if not _packs_loaded:
        _packs_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=PACK_GROUP):
            try:
                declared = ep.load()
            except Exception as exc:  # a broken pack names itself
                raise ConfigError(f"entry point {ep.name} = {ep.value!r} in group {PACK_GROUP!r} failed to load: "
                                  f"{type(exc).__name__}: {exc}; fix or uninstall the package that declares it") from None
            for name, keys in dict(declared).items():
                register_section(name, keys)
    return _SECTIONS


def registered_model(loaded: Any) -> dict[str, Any]:
    """What ``[registered]`` records of a loaded target: its weights' fingerprint and sizes."""
    cfg = loaded.model.cfg
    return {"weights": loaded.info.sha256_or_revision, "n_layers": int(cfg.n_layers), "n_heads": int(cfg.n_heads),
            "d_model": int(cfg.d_model), "d_vocab": int(cfg.d_vocab)}


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

    known = sections()
    top_level = (*_CORE_TOP_LEVEL, *known)
    for name, value in data.items():
        if name not in top_level:
            raise ConfigError(f"{path}: unknown key or section {name!r}; {did_you_mean(name, top_level)}"
                              f"valid: {', '.join(top_level)} (a claim pack declares its sections with "
                              "mechclaims.register_section)")
        if name in known and not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} = {value!r}; expected a [{name}] table")
    for section, rules in known.items():
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


def path_for(claims_dir: Path, target: str, variant: str | None = None, *, own: Path | None = None) -> Path:
    """``claims_dir/expectations/TARGET.toml`` (``TARGET@VARIANT.toml`` for a variant's own file); the
    one place such a path is built. A name that could lead outside that directory is refused.

    ``own`` is the project's own directory of pre-registrations (``[tool.mechclaims] expectations``,
    :func:`project_dir`), for claims that come from an installed pack: ``own/TARGET.toml`` when it
    exists, or when the pack has no file for the target either (where discovery writes one)."""
    from .registry import check_name

    check_name(target)
    name = target if variant is None else f"{target}@{variant}"
    if "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"expectations variant {variant!r} of {target!r} cannot be a file name; use no '/' or '\\'")
    packed = Path(claims_dir) / "expectations" / f"{name}.toml"
    if own is not None and ((Path(own) / f"{name}.toml").exists() or not packed.exists()):
        return Path(own) / f"{name}.toml"
    return packed


PROJECT_KEY = "expectations"


def own_dir(claims_dir: Path, pyproject: Path | None) -> Path | None:
    """The project's own directory of pre-registrations for the claims in ``claims_dir``: its
    ``[tool.mechclaims] expectations`` when the claims are not the project's own (an installed
    pack's, outside the project's directory, whose files the project cannot write); else None,
    and a pack of the project keeps its files beside its claims."""
    own = project_dir(pyproject)
    if own is None or not Path(claims_dir).exists():
        return own
    inside = Path(claims_dir).resolve().is_relative_to(Path(pyproject).resolve().parent)
    return None if inside else own


def project_dir(pyproject: Path | None) -> Path | None:
    """``[tool.mechclaims] expectations`` of ``pyproject``: the project's own directory of
    pre-registrations (relative to the file), or None when unset."""
    from .registry import tool_table

    value = tool_table(pyproject).get(PROJECT_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{pyproject}: [tool.mechclaims] {PROJECT_KEY} = {value!r}; expected a directory, e.g. "
                          f'{PROJECT_KEY} = "expectations"')
    return (Path(pyproject).parent / value).resolve()


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to an expectations file; use numbers, "
                      "strings, booleans or lists of them")


def _blocks(text: str) -> list[tuple[str | None, list[str]]]:
    """The file's lines split at each ``[section]`` header: (name or None for the top, lines).
    Comment lines right above a header belong to its section."""
    blocks: list[tuple[str | None, list[str]]] = [(None, [])]
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            above = blocks[-1][1]
            k = len(above)
            while k > 0 and above[k - 1].lstrip().startswith("#"):
                k -= 1
            lead, above[k:] = above[k:], []
            blocks.append((stripped[1:stripped.index("]")].strip().strip('"'), [*lead, line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def merge_write(
    path: Path, target: str, *, source: str, verdicts: Mapping[str, str], sections: Mapping[str, Mapping[str, Any]],
    comment: str = "", registered: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pack's pre-registration into ``path`` without clobbering anyone else's.

    The named ``sections`` (and ``[registered]``, when given) are replaced whole; the given
    ``verdicts`` are set and every other verdict kept; other sections, comments and the
    header stay as they were. The result is validated like any expectations file before
    it atomically replaces the old one, so a bad value leaves the old file in place.
    """
    from .files import write_text_atomic

    old = path.read_text(encoding="utf-8") if path.is_file() else None
    previous = load(path, target) if old is not None else None
    blocks = _blocks(old if old is not None else
                     f"target = {_toml_value(target)}\nsource = {_toml_value(source)}\n")
    owned = dict(sections) | ({"registered": registered} if registered is not None else {})
    kept_verdicts = dict(previous.verdicts) if previous else {}
    kept_verdicts.update(verdicts)
    for verdict in kept_verdicts.values():
        if verdict not in EXPECTABLE:
            raise ConfigError(f"verdict {verdict!r} cannot be pre-registered; valid: {', '.join(EXPECTABLE)}")
    rendered: dict[str, list[str]] = {
        "verdicts": ["[verdicts]", *(f"{_toml_value(cid)} = {_toml_value(v)}" for cid, v in kept_verdicts.items()), ""],
    }
    for i, (name, table) in enumerate(owned.items()):  # the note goes above the first section written
        note = [f"# {line}" for line in (f"{source}\n{comment}".strip().splitlines())] if i == 0 else []
        rendered[name] = [*note, f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None), ""]
    out: list[str] = []
    for name, lines in blocks:
        if name is None:
            out += lines if old is not None else lines + [""]
        elif name in rendered:
            out += rendered.pop(name)
        else:
            out += lines
    for lines in rendered.values():
        if out and out[-1].strip():  # a blank line keeps the comments above from joining the new section
            out.append("")
        out += lines
    text = "\n".join(out).rstrip("\n") + "\n"
    _check_sections(path, tomllib.loads(text))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    load(path, target)
    return path


def expectations_path(claims_dir: Path, target: str, variant: str | None = None, *,
                      directory: Path | None = None) -> Path:
    """The pre-registration file of ``target`` for the claims in ``claims_dir``:
    ``claims_dir/expectations/TARGET.toml`` (``TARGET@VARIANT.toml`` for a variant's own file), or
    the project's own directory's for an installed pack's claims.

    ``directory`` is that own directory as ``pytest_mechclaims_expectations_path`` receives it; by
    default it is read from the ``pyproject.toml`` at or above the working directory
    (``[tool.mechclaims] expectations``)."""
    if directory is None:
        from .registry import find_pyproject

        directory = own_dir(claims_dir, find_pyproject(Path.cwd()))
    return path_for(claims_dir, target, variant, own=directory)


def preregister(claims_dir: Path | None, target: Any, *, source: str, verdicts: Mapping[str, str],
                sections: Mapping[str, Mapping[str, Any]], comment: str = "", variant: str | None = None,
                path: Path | None = None) -> Path:
    """Write what a discovery script found on the exploration split as ``target``'s pre-registration
    for the claims in ``claims_dir``, and return the file's path.

    ``target`` is the :class:`~mechclaims.LoadedTarget` it was found on (``[registered]`` records its
    weights' fingerprint and sizes). The file is ``claims_dir/expectations/<target>.toml``; for an
    installed pack's claims, the project's own directory when its ``pyproject.toml`` (at or above
    the working directory) names one (``[tool.mechclaims] expectations``, :func:`own_dir`). Only the
    given sections and verdicts are replaced (:func:`merge_write`): what other packs wrote stays.
    ``variant`` writes the variant's own file (:func:`expectations_path`); ``path`` names the file outright
    (``claims_dir`` is then not needed).
    """
    if path is None and claims_dir is None:
        raise ConfigError("preregister needs claims_dir (the directory of the claim tests) or path (the file)")
    out = Path(path) if path is not None else expectations_path(claims_dir, target.name, variant)
    return merge_write(out, target.name, source=source, verdicts=verdicts, sections=sections, comment=comment,
                       registered=registered_model(target))
