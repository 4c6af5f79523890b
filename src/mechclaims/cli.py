"""The ``mechclaims`` command: ``report RUN`` re-renders claims.md and index.html
from a claims.json; ``compare RUN_A RUN_B`` lists changes and exits 1 on a regression."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import MechclaimsError
from .report.claims_json import render_views
from .report.compare import compare
from .report.reading import read_run, resolve_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mechclaims", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="re-render claims.md and index.html next to a run's claims.json")
    rep.add_argument("run", type=Path, help="run directory (reports/<run-id>) or its claims.json")
    cmp_ = sub.add_parser("compare", help="changed verdicts and figures between two runs")
    cmp_.add_argument("run_a", type=Path, help="the reference run (e.g. the last accepted one)")
    cmp_.add_argument("run_b", type=Path, help="the new run")
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            record = read_run(args.run)
            for out in render_views(resolve_run(args.run).parent, record):
                print(out)
            return 0
        changes = compare(read_run(args.run_a), read_run(args.run_b))
    except MechclaimsError as exc:
        print(f"mechclaims: error: {exc}", file=sys.stderr)
        return 2
    for change in changes:
        print(change.describe())
    regressions = sum(c.regressed for c in changes)
    print(f"{len(changes)} changed, {regressions} regressed")
    return 1 if regressions else 0


if __name__ == "__main__":
    raise SystemExit(main())
