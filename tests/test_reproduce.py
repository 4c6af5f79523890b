"""A refuted or errored claim prints the command that runs it again: that command, run, gives
the same verdict and figure, and selects that claim alone."""

from __future__ import annotations

import json
import shlex

from mechclaims.report import reproduce

SEEDED = '''
import pytest
from mechclaims import proportion


@pytest.mark.claim(id="T.seeded")
def test_seeded(target, claim, mechclaims_settings):
    effect = claim.record(proportion(mechclaims_settings.seed % 7, 10), threshold=0.5)
    assert effect.ci.low >= 0.5, claim.evidence()


@pytest.mark.claim(id="T.other")
def test_other(target, claim):
    claim.record(proportion(9, 10), threshold=0.5)
'''


def _claims(pytester):
    return json.loads((pytester.path / "reports" / "latest" / "claims.json").read_text())["claims"]


def test_the_printed_command_reproduces_the_refuted_claim_alone(pytester, as_organism):
    pytester.makepyfile(test_seeded=SEEDED)
    first = pytester.runpytest("--mechclaims-exploratory", "--mechclaims-target", "organism",
                               "--mechclaims-seed", "3", "--mechclaims-n-prompts", "20")
    lines = [line.strip() for line in first.outlines if line.strip().startswith("reproduce: ")]
    assert len(lines) == 1  # the refuted claim only, not the supported one
    command = lines[0].removeprefix("reproduce: ")
    assert command == ("pytest 'test_seeded.py::test_seeded[organism]' --mechclaims-target organism "
                       "--mechclaims-seed 3 --mechclaims-profile ci --mechclaims-n-prompts 20 -k T.seeded")
    argv = shlex.split(command)[1:]
    again = pytester.runpytest("--mechclaims-exploratory", *argv)
    [claim] = _claims(pytester)
    before = next(c for c in json.loads(
        (sorted(p for p in (pytester.path / "reports").iterdir() if not p.is_symlink())[0] / "claims.json"
         ).read_text())["claims"] if c["id"] == "T.seeded")
    assert (claim["id"], claim["verdict"], claim["statistic"]) == ("T.seeded", "refuted", 0.3) == (
        before["id"], before["verdict"], before["statistic"])
    assert again.ret == first.ret == 1


def test_the_command_quotes_what_a_shell_would_split():
    claim = {"nodeid": "claims/test_x.py::test_y[my target]", "target": "my target", "id": "C 1", "verdict": "errored"}
    argv = shlex.split(reproduce.command(claim, {"seed": 5, "settings": {"profile": "paper", "n_prompts": 500}}))
    assert argv == ["pytest", "claims/test_x.py::test_y[my target]", "--mechclaims-target", "my target",
                    "--mechclaims-seed", "5", "--mechclaims-profile", "paper", "-k", "C 1"]
