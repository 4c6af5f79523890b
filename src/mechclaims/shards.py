"""Shards of a claim run, and merging their reports into one.

``--mechclaims-shard K/N`` runs the K-th of N shards (1-based). Tests are grouped by target (a
target's claims stay together, so each model loads once per run; a test without a target is its
own group), the groups sorted by name, and group ``i`` goes to shard ``i mod N + 1``: every shard
computes the same assignment from the same collection, with no coordinator. Any scheduler can run
the shards (a Slurm job array, a CI matrix, Ray); :func:`merge` makes one report of theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .errors import ConfigError
from .results import ERRORED, SCHEMA_VERSION

_SPEC = re.compile(r"([0-9]+)/([0-9]+)")


@dataclass(frozen=True)
class Shard:
    index: int  # 1..count
    count: int

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "count": self.count}


def parse(text: str) -> Shard:
    """``K/N`` with 1 <= K <= N, else a ConfigError naming the value and the form."""
    match = _SPEC.fullmatch(text.strip())
    if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConfigError(f"invalid shard {text!r}: expected K/N with 1 <= K <= N, e.g. 1/4 for the first of four")
    return Shard(int(match.group(1)), int(match.group(2)))


def assign(groups: Iterable[str], count: int) -> dict[str, int]:
    """Each group's shard (1-based): the groups sorted, then dealt round the shards."""
    return {group: i % count + 1 for i, group in enumerate(sorted(set(groups)))}


def merge(records: list[tuple[str, dict[str, Any]]], failed: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """One run record from the shard records ``(where, record)`` of one sharded run.

    Refused, in one line naming the shards: records of different commits, seeds or settings, or
    whose pre-registration of one target differs; a claim (id, target) reported twice; a shard
    of the K/N set missing (they are listed), given twice, or a record that is not a shard.

    ``failed`` are the shards that ran and wrote no report (``{"index", "count", "error",
    "targets"}``, from a scheduler that saw them fail): the merged run is incomplete, lists them
    errored with the error, and gives each of their targets that error (``run.target_errors``)."""
    if not records:
        raise ConfigError("nothing to merge: pass the report directories of every shard")
    shards = {(f["index"], f["count"]): f"failed shard {f['index']}/{f['count']}" for f in failed}
    for where, record in records:
        shard = record["run"].get("shard")
        if not isinstance(shard, dict):
            raise ConfigError(f"{where}: not a shard's report (run.shard is missing); run it with --mechclaims-shard K/N")
        key = (shard.get("index"), shard.get("count"))
        if key in shards:
            raise ConfigError(f"shard {key[0]}/{key[1]} is given twice: {shards[key]} and {where}")
        shards[key] = where
    counts = {count for _, count in shards}
    if len(counts) != 1:
        raise ConfigError(f"the reports are shards of different splits ({', '.join(f'{k}/{n}' for k, n in sorted(shards))}); "
                          "merge the shards of one run")
    (count,) = counts
    missing = [f"{k}/{count}" for k in range(1, count + 1) if (k, count) not in shards]
    if missing:
        raise ConfigError(f"shard(s) {', '.join(missing)} missing: merge needs all {count} shards of the run")
    by_index = sorted(records, key=lambda where_record: where_record[1]["run"]["shard"]["index"])
    first_where, first = records[0]
    for field in ("git_commit", "seed", "settings"):
        for where, record in records[1:]:
            if record["run"].get(field) != first["run"].get(field):
                raise ConfigError(f"{where} and {first_where} differ in run.{field} ({record['run'].get(field)!r} != "
                                  f"{first['run'].get(field)!r}); merge only shards of one run")
    expectations: dict[str, Any] = {}
    owner: dict[str, str] = {}
    claims: list[dict[str, Any]] = []
    seen: dict[tuple[Any, Any], str] = {}
    for where, record in records:
        for target, entry in (record["run"].get("expectations") or {}).items():
            if target in expectations and expectations[target].get("sha256") != entry.get("sha256"):
                raise ConfigError(f"{where} and {owner[target]} judged {target} against different pre-registrations "
                                  f"({entry.get('sha256')} != {expectations[target].get('sha256')})")
            expectations.setdefault(target, entry)
            owner.setdefault(target, where)
        for claim in record["claims"]:
            key = (claim.get("id"), claim.get("target"))
            if key in seen:
                raise ConfigError(f"claim {key[0]} on {key[1]} is reported twice: by {seen[key]} and by {where}")
            seen[key] = where
            claims.append(claim)
    run = dict(first["run"])
    run.update({
        "started": min(r["run"].get("started") or "" for _, r in records) or None,
        "finished": None if not all(r["run"].get("finished") for _, r in records)
        else max(r["run"]["finished"] for _, r in records),
        "complete": all(r["run"].get("complete") for _, r in records),
        "git_dirty": any(r["run"].get("git_dirty") for _, r in records),
        "expectations": expectations,
        "shard": None,
        "exit_status": None,  # the merge's own is exit_status(record)
        "shards": sorted([{**r["run"]["shard"], "report": where, "header": r["run"].get("header"),
                           "complete": r["run"].get("complete"), "exit_status": r["run"].get("exit_status")}
                          for where, r in by_index]
                         + [{"index": f["index"], "count": f["count"], "report": None, "complete": False,
                             "errored": f["error"]} for f in failed], key=lambda entry: entry["index"]),
    })
    if failed:
        run["complete"] = False
    for section in ("targets", "load_counts", "boots", "forwards", "target_errors", "expectation_overrides"):
        merged: dict[str, Any] = {}
        for _, record in records:
            value = record["run"].get(section)
            if isinstance(value, dict):
                merged.update(value)
        run[section] = merged
    for f in failed:
        for target in f.get("targets", ()):
            run["target_errors"].setdefault(target, f["error"])
    run["threads"] = {f"shard {r['run']['shard']['index']}/{count} {process}": plan for _, r in records
                      for process, plan in (r["run"].get("threads") or {}).items()}
    run["header"] = " || ".join(str(r["run"].get("header", "")) for _, r in by_index)
    return {"schema_version": SCHEMA_VERSION, "run": run, "claims": claims}


def exit_status(record: dict[str, Any]) -> int:
    """What a single run would exit with: 0 exactly when the run is complete, every verdict
    matches its pre-registration (an errored claim with no pre-registration fails too) and every
    shard's pytest exited 0 (a shard stopped by a usage error, such as a target with no
    pre-registration, may report no claim at all)."""
    claims = record["claims"]
    bad = any(c.get("as_expected") is False or (c.get("as_expected") is None and c.get("verdict") == ERRORED)
              for c in claims)
    failed_shard = any(s.get("exit_status") not in (None, 0) for s in record["run"].get("shards") or ())
    return 1 if bad or failed_shard or not record["run"].get("complete") else 0



def problems(record: dict[str, Any]) -> list[str]:
    """What fails a merged record, a line each: every verdict off its pre-registration
    (``UNEXPECTED``) and every shard whose pytest exited other than 0 (``FAILED``)."""
    lines = [f"UNEXPECTED {c['id']} [{c['target']}]: {c['verdict']} (pre-registered {c['expected']})"
             for c in record["claims"] if c.get("as_expected") is False]
    return lines + [f"FAILED shard {s['index']}/{s['count']} exited {s['exit_status']} (its report: {s.get('report')})"
                    for s in record["run"].get("shards") or () if s.get("exit_status") not in (None, 0)]
