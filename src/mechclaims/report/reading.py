"""Reading a stored ``claims.json`` back, with clear errors for broken or foreign files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results import REFUTED, SCHEMA_VERSION, UNDECIDED, VERDICTS

NEGATIVE_CONTROL = "negative control"


def expected_label(claim: dict[str, Any]) -> str:
    """A claim's pre-registered verdict as the report shows it: ``refuted (negative control)`` for a
    claim registered to be refuted (its run shows that the claim code can fail), ``-`` for none."""
    expected = claim.get("expected")
    if expected is None:
        return "-"
    if expected == UNDECIDED:
        return f"{UNDECIDED} at discovery (not judged)"
    return f"{expected} ({NEGATIVE_CONTROL})" if expected == REFUTED else str(expected)


def resolve_run(path: Path) -> Path:
    """A run directory or a ``claims.json`` path, as the JSON file's path."""
    path = Path(path)
    return path / "claims.json" if path.is_dir() else path


def read_run(path: Path) -> dict[str, Any]:
    """Load and check a claims.json (schema version 1)."""
    file = resolve_run(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such claims.json; pass a run directory under reports/ or its claims.json")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc}); the file is truncated or corrupt") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{file}: expected a JSON object with schema_version, run and claims")
    version = record.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{file}: schema_version {version!r} is not supported; this mechclaims reads version {SCHEMA_VERSION}"
        )
    for key in ("run", "claims"):
        if key not in record:
            raise ConfigError(f"{file}: missing key {key!r}; a claims.json has schema_version, run and claims")
    if not isinstance(record["run"], dict):
        raise ConfigError(f"{file}: 'run' must be an object, got {type(record['run']).__name__}")
    if not isinstance(record["claims"], list):
        raise ConfigError(f"{file}: 'claims' must be a list, got {type(record['claims']).__name__}")
    if not isinstance(record["run"].get("complete", False), bool):
        raise ConfigError(f"{file}: run.complete must be true or false, got {record['run']['complete']!r}")
    seen: dict[tuple[str, str | None], int] = {}
    for i, claim in enumerate(record["claims"]):
        _check_claim(file, i, claim)
        key = (claim["id"], claim["target"])
        if key in seen:
            raise ConfigError(f"{file}: claims[{i}] repeats claim id {key[0]!r} on target {key[1]!r} "
                              f"(also claims[{seen[key]}]); every (id, target) is one claim: give each test its own id")
        seen[key] = i
    return record


def _check_claim(file: Path, i: int, claim: Any) -> None:
    """One claim entry: the fields compare and the views read, of the types they must have."""
    where = f"{file}: claims[{i}]"
    if not isinstance(claim, dict):
        raise ConfigError(f"{where} must be an object, got {type(claim).__name__}")
    missing = [k for k in ("id", "target", "verdict") if k not in claim]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    if not isinstance(claim["id"], str) or not claim["id"]:
        raise ConfigError(f"{where}.id must be a non-empty string, got {claim['id']!r}")
    if not isinstance(claim["target"], (str, type(None))):
        raise ConfigError(f"{where}.target must be a string or null, got {claim['target']!r}")
    if claim["verdict"] not in VERDICTS:
        raise ConfigError(f"{where}.verdict {claim['verdict']!r} is not one of {', '.join(VERDICTS)}")
    if claim.get("expected") is not None and claim["expected"] not in (*VERDICTS, UNDECIDED):
        raise ConfigError(f"{where}.expected {claim['expected']!r} is not one of {', '.join(VERDICTS)}, "
                          f"{UNDECIDED} or null")
    for key in ("statistic", "threshold", "pvalue"):
        value = claim.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{key} must be a number or null, got {value!r}")
    if not isinstance(claim.get("figures", {}), (dict, type(None))):
        raise ConfigError(f"{where}.figures must be an object, got {type(claim['figures']).__name__}")
    if not isinstance(claim.get("plots", []), (list, type(None))):
        raise ConfigError(f"{where}.plots must be a list, got {type(claim['plots']).__name__}")
    if not isinstance(claim.get("rules", []), list):
        raise ConfigError(f"{where}.rules must be a list, got {type(claim['rules']).__name__}")


def preregistration(entry: Any) -> str:
    """A target's ``run.expectations`` entry as the views show it: the file and the start of its
    SHA-256, ``exploratory`` for a run against none, ``-`` where the record has none."""
    if not isinstance(entry, dict):
        return "-"
    if entry.get("exploratory"):
        return "none (exploratory run)"
    digest = str(entry.get("sha256") or "")
    text = f"{entry.get('path')} (sha256 {digest[:16]})" if digest else str(entry.get("path") or "-")
    also = entry.get("also") if isinstance(entry.get("also"), list) else []
    return text + "".join(f"; also {preregistration(more)}" for more in also)
