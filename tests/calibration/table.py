"""Regenerate the calibration table of docs/statistics.md (between its markers).

    .venv/bin/python tests/calibration/table.py            # 1000 replications per cell, about 8 minutes on 2 cores
    .venv/bin/python tests/calibration/table.py --reps 200 # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import cells  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "statistics.md"
BEGIN, END = "<!-- calibration table: begin -->", "<!-- calibration table: end -->"


def render(reps: int) -> str:
    start = time.perf_counter()
    rows = cells.cells(reps=reps)
    agreement = cells.agreement(reps=reps)
    beats = cells.beats_random_null(reps=reps)
    fwer = cells.holm_fwer()
    lines = [
        f"{reps} replications per cell, fixed seeds (`tests/calibration/cells.py`); the truth sits exactly at "
        "each rule's threshold. Coverage: share of intervals holding the truth (nominal level in brackets). "
        "Supported: share a rule at the truth calls supported, its error rate (nominal in brackets). Refuted: "
        "share it calls refuted.",
        "",
        "| constructor | data | rule | n | coverage | supported | refuted |",
        "|---|---|---|---|---|---|---|",
        *(c.row() for c in rows),
        beats.row(),
        "",
        "`significant` and `at_least(., 0)` on one `paired_increase` agree in "
        + ", ".join(f"{share:.1%} ({name})" for name, share in agreement.items()) + ".",
        f"Holm at 0.05 over 10 true nulls: family-wise error {fwer:.1%} (20,000 families).",
        f"Computed in {time.perf_counter() - start:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    text = DOC.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{DOC} lacks the markers {BEGIN} and {END}; put them where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(args.reps)}\n{END}{tail}")
    print(f"wrote the table into {DOC}")


if __name__ == "__main__":
    main()
