"""A researcher's own project, outside this repository, with mechclaims installed from its wheel:
its own targets (a directory, and a GGUF file), its own pack of one claim and a negative control,
and the post's pack, all run from the project's directory with no file of the repository copied
into it (the model weights aside: the directory target is a copy of an organism)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow  # a wheel, a venv and three claim runs

REPO = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[tool.mechclaims]
expectations = "expectations"     # pre-registrations of installed packs' claims (the post's)

[tool.mechclaims.targets.mine]
path = "models/mine"

[tool.mechclaims.targets.mine-gguf]
gguf = "models/tiny.gguf"
"""

# The pack: "a head attends from each token to the one before it" (previous-token heads), and its
# negative control, "the same head attends as much two tokens back".
PACK = '''\
import numpy as np
from mechclaims import Key, PromptSet, attention_mass, register_section, role_weights, uniform_pattern

register_section("prev", {"head": Key(list, why="[layer, head] chosen on the exploration split"),
                          "min_excess": Key(float, 0.0, 1.0, "attention above uniform (lower bound)")})
LENGTH = 24


def prompts(model, n, seed, split, back=1):
    rng = np.random.default_rng([seed, {"exploration": 1, "confirmation": 2}[split]])
    rows = [[model.tokenizer.bos_token_id, *rng.integers(20, model.cfg.d_vocab, LENGTH).tolist()] for _ in range(n)]
    queries = list(range(1 + back, LENGTH + 1))
    return PromptSet.from_tokens(rows, {"query": [queries] * n, "key": [[q - back for q in queries]] * n})


def excess(model, ps):
    """Per sequence and head: attention from each query to its key, and the same under uniform attention."""
    tokens = ps.tensor(model)
    weights = role_weights([(q, [k]) for q, k in zip(ps.roles["query"][0], ps.roles["key"][0])], tokens.shape[1])
    return attention_mass(model, tokens, weights), float((weights * uniform_pattern(tokens.shape[1])).sum())
'''

TESTS = '''\
import numpy as np
import pytest
from prev import excess, prompts

from mechclaims import at_least, paired_increase


def attend(target, back, expectations, claim):
    layer, head = expectations.get("prev", "head", list)
    masses, uniform = excess(target.model, prompts(target.model, 40, claim.seed, "confirmation", back))
    more = paired_increase(np.full(masses.shape[0], uniform), masses[:, layer, head])
    claim.judge(at_least(more, expectations.get("prev", "min_excess", float), "attention above uniform"))


@pytest.mark.claim(id="P.previous-token", targets=["mine"])
def test_the_head_attends_to_the_previous_token(target, expectations, claim):
    attend(target, 1, expectations, claim)


@pytest.mark.claim(id="P.two-back", targets=["mine"])
def test_the_head_attends_as_much_two_tokens_back(target, expectations, claim):
    attend(target, 2, expectations, claim)
'''

DISCOVER = '''\
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from prev import excess, prompts

from mechclaims import load_target, paired_increase, preregister, top_heads

target = load_target(sys.argv[1])
masses, uniform = excess(target.model, prompts(target.model, 40, 0, "exploration"))
(layer, head), = top_heads(masses.mean(0), 1)
more = paired_increase(np.full(masses.shape[0], uniform), masses[:, layer, head])
print(preregister(Path(__file__).parent, target, source="exploration split, seed 0, 40 sequences",
                  verdicts={"P.previous-token": "supported", "P.two-back": "refuted"},
                  sections={"prev": {"head": [layer, head], "min_excess": round(max(0.0, more.ci.low / 2), 3)}},
                  comment=f"head L{layer}H{head}: {more}"))
'''


def _run(installed: Path, project: Path, *args: str, tool: str = "python") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHCLAIMS_")}
    return subprocess.run([str(installed / "bin" / tool), *args], cwd=project, capture_output=True, text=True,
                          timeout=1800, env={**env, "HF_HUB_OFFLINE": "1"})


def _verdicts(project: Path) -> dict[str, str]:
    report = json.loads((project / "reports" / "latest" / "claims.json").read_text())
    return {f"{c['id']} [{c['target']}]": c["verdict"] for c in report["claims"]}


def test_a_project_of_its_own_registers_discovers_and_confirms(installed, tmp_path):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT)
    shutil.copytree(REPO / "fixtures" / "organism", project / "models" / "mine")
    write_tiny_gguf(project / "models" / "tiny.gguf", "Q8_0")
    (project / "prev").mkdir()
    (project / "prev" / "prev.py").write_text(PACK)
    (project / "prev" / "test_prev.py").write_text(TESTS)
    (project / "prev" / "discover.py").write_text(DISCOVER)
    (project / "prev" / "conftest.py").write_text("")

    # every target resolves from the project: its own two, and the packages'
    listing = _run(installed, project, "targets", tool="mechclaims")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert f"weights: present: {project / 'models' / 'mine'}" in listing.stdout
    assert "mine-gguf: GGUF file" in listing.stdout and "gguf/" in listing.stdout.split("mine-gguf:")[1]

    # the project's pack: discovery through load_target, then confirmation with its negative control
    found = _run(installed, project, "prev/discover.py", "mine")
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.strip() == str(project / "prev" / "expectations" / "mine.toml")  # its own pack: beside it
    own = _run(installed, project, "-m", "pytest", "prev", "--mechclaims-target", "mine", "-p", "no:cacheprovider")
    assert own.returncode == 0, own.stdout[-3000:] + own.stderr[-2000:]
    assert _verdicts(project) == {"P.previous-token [mine]": "supported", "P.two-back [mine]": "refuted"}

    # the post's pack, installed: discovery writes into the project's expectations/, and the run
    # judges the installed claims against it
    post = _run(installed, project, "-m", "mechclaims_icl.discover", "--target", "mine", "--n-pairs", "60")
    assert post.returncode == 0, post.stderr[-3000:]
    assert (project / "expectations" / "mine.toml").is_file()
    run = _run(installed, project, "-m", "pytest", "--pyargs", "mechclaims_icl.claims", "--mechclaims-target", "mine",
               "-p", "no:cacheprovider")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    verdicts = _verdicts(project)
    assert len(verdicts) == 16 and all(k.endswith("[mine]") for k in verdicts)
    report = json.loads((project / "reports" / "latest" / "claims.json").read_text())
    assert report["run"]["expectations"]["mine"]["path"] == str(project / "expectations" / "mine.toml")
    assert not list(project.rglob("test_claim*.py"))  # nothing of the repository was copied
