"""docs/writing-claims.md documents the public API by call: every documented call of an export
names its parameters as the export's signature does (positional ones in order)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import mechclaims

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-claims.md"
CALL = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)\(([^`]*)\)")


def _arguments(text: str) -> list[str]:
    """The top-level comma-separated arguments of a documented call."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def _problems(name: str, text: str) -> list[str]:
    obj = getattr(mechclaims, name)
    params = list(inspect.signature(obj).parameters.values())
    names = {p.name for p in params}
    varkw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    out, index, last = [], 0, -1
    for arg in _arguments(text):
        if arg in ("...", "") or arg.startswith("**"):
            continue
        if arg.startswith("*"):
            if not any(p.kind is p.VAR_POSITIONAL for p in params):
                out.append(f"{name}: documented {arg}, but it takes no *args")
            continue
        keyword = re.match(r"([A-Za-z_]\w*)\s*=", arg)
        if keyword:
            if keyword.group(1) not in names and not varkw:
                out.append(f"{name}: documented keyword {keyword.group(1)!r}, signature {list(names)}")
            elif keyword.group(1) in positional:  # a field a positional call can reach: in its place
                place = positional.index(keyword.group(1))
                if place < last:
                    out.append(f"{name}: documented {keyword.group(1)!r} out of the signature's order {positional}")
                last = place
            continue
        if not re.fullmatch(r"[A-Za-z_]\w*", arg):
            index += 1  # an example value in that place, not a parameter name
            continue
        if index >= len(positional) or positional[index] != arg:
            want = positional[index] if index < len(positional) else "nothing"
            out.append(f"{name}: documented positional {arg!r} at {index}, signature has {want!r}")
        index += 1
    return out


def test_every_documented_call_of_an_export_matches_its_signature():
    checked, problems = 0, []
    for name, text in CALL.findall(DOC.read_text()):
        if name in mechclaims.__all__:
            checked += 1
            problems += _problems(name, text)
    assert checked >= 25, checked  # the page documents the API by its calls
    assert problems == []


def test_the_check_catches_a_misnamed_or_misordered_parameter():
    assert _problems("beats_random", "observed, controls") == []
    assert _problems("beats_random", "observed, null") != []  # negative controls
    assert _problems("at_least", "effect, threshold, what, inclusive=False") == []
    assert _problems("at_least", "threshold, effect, what") != []
    assert _problems("bootstrap_mean", "values, seed=0, strict=True") != []  # not a keyword it takes
    assert _problems("AblateMLP", 'layers, means=None, keep_bos=True, mode="mean"') == []
    assert _problems("AblateMLP", 'layers, means=None, mode="mean", keep_bos=True') != []  # positional order


def undocumented(text: str, names) -> list[str]:
    """The names that ``text`` never shows as code (`name` or `name(...)`)."""
    return [name for name in names if not re.search(rf"`{re.escape(name)}[`(]", text)]


def test_every_export_is_named_in_the_guide():
    missing = undocumented(DOC.read_text(), mechclaims.__all__)
    assert not missing, f"exported but not documented in docs/writing-claims.md: {missing}"


def test_the_guide_check_finds_an_export_named_only_in_prose():
    """Negative control: a name in plain words, or as part of a longer name, is not documentation."""
    assert undocumented("run_pass ends a pass; `run_pass_fast(x)`, `holm(p)`", ["run_pass", "holm"]) == ["run_pass"]
