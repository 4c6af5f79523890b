"""Claim 1 on the shipped organisms: what one supports, its twin refutes.

These are the real negative controls of the Claim 1 tests: the same claim code,
the same pre-registration procedure, two trained models that differ in dropout
only. `organism` forms the task at layer 3 and survives the cumulative ablation
of the heads of layers 1-2, then 3, the first delaying the task stage, the second
removing it while the answer stays, and a head of the next layer taking over each
time (the post's chain for two stages); ablating layer 4 as well costs it about
half of its answers (C1.ablate-15 and C1.redundancy refuted on both).
`organism-control` loses the task at the first stage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end claim runs: the quick tier (make test-quick) leaves them out

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "claims"


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[tuple[str, str], str]:
    """Verdicts of a claim run over Claims 0 and 1 on both organisms (confirmation split)."""
    out = tmp_path_factory.mktemp("organism-claims")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(CLAIMS_DIR / "test_claim0.py"), str(CLAIMS_DIR / "test_claim1.py"),
         "--mechclaims-target", "organism", "--mechclaims-target", "organism-control", "-q", "-p", "no:cacheprovider",
         "--mechclaims-report-dir", str(out)],
        cwd=CLAIMS_DIR.parent, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "latest" / "claims.json").read_text())
    return {(c["id"], c["target"]): c["verdict"] for c in record["claims"]}


@pytest.mark.parametrize("claim_id, organism, control", [
    ("C0.in-context", "supported", "supported"),
    ("C1.onset", "supported", "supported"),  # both form the task (layers 3 and 2)
    ("C1.backup-13", "supported", "supported"),  # a head gains attribution in both; only the organism keeps the answer
    ("C1.ablate-10-11", "supported", "refuted"),
    ("C1.ablate-13", "supported", "refuted"),
    ("C1.backup-15", "supported", "refuted"),
    ("C1.ablate-15", "refuted", "refuted"),
    ("C1.redundancy", "refuted", "refuted"),
])
def test_the_control_refutes_the_chain_the_organism_supports(verdicts, claim_id, organism, control):
    assert (verdicts[claim_id, "organism"], verdicts[claim_id, "organism-control"]) == (organism, control)


def test_every_claim_1_verdict_on_both_organisms_is_recorded(verdicts):
    claims = {claim for claim, _ in verdicts}
    assert {"C1.onset", "C1.backup-13", "C1.backup-15", "C1.parity-late", "C1.redundancy"} <= claims
    assert all((claim, target) in verdicts for claim in claims for target in ("organism", "organism-control"))
