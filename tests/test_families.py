"""Any causal LM TransformerBridge supports, not only Llama: tiny random GPT-2, GPT-NeoX, Qwen2
and Gemma checkpoints, written here, are registered by configuration, loaded through the one
loader, and run through the post's whole claim pack with no claim errored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from tiny import write_tiny_family

from mechclaims.expectations import merge_write
from mechclaims.targets import read_shape

pytestmark = pytest.mark.slow  # end-to-end claim runs: the quick tier (make test-quick) leaves them out

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("gpt2", "gpt_neox", "qwen2", "gemma")
CLAIM_IDS = ("C0.in-context", "C1.onset", "C1.ablate-10-11", "C1.backup-13", "C1.ablate-13", "C1.backup-15",
             "C1.ablate-15", "C1.parity-late", "C1.redundancy", "C1.onset-robust", "C2.log-additive", "C2.parity-by-n",
             "C2.feature-linear", "C3.x-to-y", "C3.y-to-prey", "C3.mlp")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shape_of_any_family_is_read_from_its_config(tmp_path, family):
    shape = read_shape(write_tiny_family(tmp_path / family, family, n_layers=3))
    assert (shape.n_layers, shape.n_heads, shape.d_model, shape.d_vocab) == (3, 4, 32, 1009)
    assert shape.n_key_value_heads == (2 if family in ("qwen2", "gemma") else 4)
    assert shape.d_mlp == (128 if family == "gpt2" else 64)  # GPT-2: 4 x d_model when n_inner is unset


def test_the_posts_pack_runs_on_every_family_with_no_claim_errored(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(REPO / "claims", project / "claims", ignore=shutil.ignore_patterns("*.toml", "__pycache__"))
    (project / "pyproject.toml").write_text("".join(
        f'[tool.mechclaims.targets.tiny-{f.replace("_", "-")}]\npath = "models/{f}"\n' for f in FAMILIES))
    organism = tomllib.loads((REPO / "claims" / "expectations" / "organism.toml").read_text())
    organism["c1"].pop("min_pairs")
    for family in FAMILIES:
        write_tiny_family(project / "models" / family, family, n_layers=8)
        # a random model cannot do the task: C0 is refuted and every claim resting on it not applicable
        merge_write(project / "claims" / "expectations" / f"tiny-{family.replace('_', '-')}.toml",
                    f"tiny-{family.replace('_', '-')}", source="the organism's layers, on a random model",
                    verdicts={cid: "refuted" if cid == "C0.in-context" else "not-applicable" for cid in CLAIM_IDS},
                    sections={name: organism[name] for name in ("task", "c1", "c2", "c3")},
                    registered={"n_layers": 8})  # a pre-registration names its model (here: its size)
    targets = [a for f in FAMILIES for a in ("--mechclaims-target", f"tiny-{f.replace('_', '-')}")]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", *targets, "--mechclaims-n-prompts", "20", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MECHCLAIMS_CACHE_DIR": str(project / ".cache")},
    )
    claims = json.loads((project / "reports" / "latest" / "claims.json").read_text())["claims"]
    verdicts = {(c["target"], c["id"]): c["verdict"] for c in claims}
    assert len(verdicts) == 4 * len(CLAIM_IDS), proc.stdout[-3000:]
    assert "errored" not in verdicts.values(), [(k, c["message"]) for k, c in zip(verdicts, claims)
                                                 if c["verdict"] == "errored"]
    assert proc.returncode == 0, proc.stdout[-3000:]


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_readers_and_interventions_work_on_every_family(tmp_path, family, monkeypatch):
    """What the claims would do on a model that could do the task: each hook fires, the in-hook
    attention reduction equals the whole pattern read, and ablating heads or MLPs changes the logits."""
    import numpy as np
    import torch

    import mechclaims as mc

    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(write_tiny_family(tmp_path / family, family, n_layers=3)))
    model = mc.load_target("organism", cache_dir=tmp_path / "cache").model
    tokens = torch.randint(20, 200, (3, 10), generator=torch.Generator().manual_seed(0))
    weights = mc.role_weights([(q, [q - 2]) for q in range(4, 10)], 10)
    names = [mc.attn_pattern(layer) for layer in range(3)]
    full = mc.forward(model, tokens, names=names, position=None, logits="none").acts
    want = np.stack([np.einsum("bhqk,qk->bh", full[n].float().numpy(), weights) for n in names], axis=1)
    np.testing.assert_allclose(mc.attention_mass(model, tokens, weights), want, rtol=1e-5, atol=1e-6)
    assert mc.residual_at(model, tokens, 2, -1).shape == (3, 32)
    clean = mc.forward(model, tokens, logits="last").logits
    for iv in (mc.AblateHeads(((1, 0), (2, 3)), position=None), mc.AblateMLP((1,), mode="zero")):
        assert not torch.allclose(mc.forward(model, tokens, logits="last", interventions=[iv]).logits, clean), iv
