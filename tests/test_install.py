"""mechclaims installed from its wheel (not editable) into a fresh virtual environment: the
post's targets come from the pack's entry point, and the organisms from the pack's own data,
wherever the command runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_the_pack_targets_and_the_organisms(installed, tmp_path):
    python = installed / "bin" / "python"
    where = subprocess.run([python, "-c", "import mechclaims, mechclaims_icl.targets as t; "
                            "print(mechclaims.__file__); print(t.shipped_fixtures())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert str(installed) in where[0] and "site-packages" in where[0]  # not the checkout
    assert where[1].endswith("site-packages/mechclaims_icl/fixtures")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHCLAIMS_")}
    listing = subprocess.run([installed / "bin" / "mechclaims", "targets"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=env)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    for name in ("organism", "organism-control"):
        block = listing.stdout.split(f"\n{name}:")[1].split("\n\n")[0] if f"\n{name}:" in listing.stdout else ""
        assert f"weights: present: {where[1]}/{name}" in block, listing.stdout
    assert "registered by: package mechclaims (entry point icl = mechclaims_icl.targets:TARGETS)" in listing.stdout


def test_an_installed_organism_loads_and_answers(installed, tmp_path):
    code = ("import mechclaims; t = mechclaims.load_target('organism'); "
            "print(t.info.source, t.info.n_layers, mechclaims.greedy_tokens(t.model, "
            "mechclaims.PromptSet.from_texts(t.tokenizer, ['(1, 5)\\n(2, 7)\\n(3, ']).tensor(t.model), last=1).shape)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHCLAIMS_")}
    out = subprocess.run([installed / "bin" / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env={**env, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:2] == ["fixture:organism", "8"]


def test_the_posts_claims_install_and_collect_from_any_directory(installed, tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHCLAIMS_")}
    out = subprocess.run([installed / "bin" / "python", "-m", "pytest", "--pyargs", "mechclaims_icl.claims",
                          "--collect-only", "-q", "--mechclaims-target", "organism", "-p", "no:cacheprovider"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**env, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "test_claim1.py::test_patching_makes_b_answer_about_a_times_p_from_the_preregistered_layer[organism]" in out.stdout
    assert "16 tests collected" in out.stdout
