"""Pre-registration files: every error names the file, the key and the valid values."""

from __future__ import annotations

import pytest

from mechclaims_icl.expectations import task as task_of
from mechclaims import ConfigError
from mechclaims.expectations import load


def _write(tmp_path, text):
    path = tmp_path / "organism.toml"
    path.write_text(text)
    return path


def test_missing_file_means_every_claim_is_expected_supported(tmp_path):
    exp = load(tmp_path / "nope.toml", "organism")
    assert exp.verdict("C1.onset") == "supported"


def test_values_are_read_and_checked(tmp_path):
    exp = load(_write(tmp_path, '[c1]\nonset = 3\nstage1 = [1, 2]\nmargin = 0.1\n'), "organism")
    assert exp.layer("c1", "onset", n_layers=8) == 3
    assert exp.get("c1", "margin", float) == 0.1
    assert exp.layers("c1", "stage1", n_layers=8) == (1, 2)


def test_missing_key_names_file_section_and_type(tmp_path):
    exp = load(_write(tmp_path, "[c1]\n"), "organism")
    with pytest.raises(ConfigError, match=r"organism.toml: \[c1\] onset is missing; add it .* \(a int\)"):
        exp.layer("c1", "onset", n_layers=8)


def test_wrong_type_names_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"\[c1\] onset = 'three' has type str; expected a int"):
        load(_write(tmp_path, '[c1]\nonset = "three"\n'), "organism")


def test_out_of_range_layer_and_head_name_the_valid_range(tmp_path):
    exp = load(_write(tmp_path, "[c1]\nonset = 12\nstage1 = [1, 9]\n"), "organism")
    with pytest.raises(ConfigError, match=r"\[c1\] onset: layer 12 is out of range; organism has layers 0..7"):
        exp.layer("c1", "onset", n_layers=8)
    with pytest.raises(ConfigError, match=r"\[c1\] stage1: layer 9 is out of range; organism has layers 0..7"):
        exp.layers("c1", "stage1", n_layers=8)


def test_a_file_for_another_target_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="target = 'smollm2-135m' but the file is for 'organism'"):
        load(_write(tmp_path, 'target = "smollm2-135m"\n'), "organism")


def test_invalid_toml_says_so(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "[c1\n"), "organism")


def test_the_task_of_claims_2_and_3_defaults_to_the_canonical_one(tmp_path):
    from mechclaims_icl.tasks import CANONICAL, AffineTask

    path = tmp_path / "organism.toml"
    path.write_text('target = "organism"\n')
    assert task_of(load(path, "organism")) == CANONICAL
    path.write_text("[task]\na = 1\nb = 0\n")
    assert task_of(load(path, "organism")) == AffineTask(1, 0)
    path.write_text("[task]\na = 0\nb = 0\n")
    with pytest.raises(ConfigError, match=r"\[task\]"):
        task_of(load(path, "organism"))


def test_every_shipped_expectations_file_reads_back_for_claims_2_and_3():
    from pathlib import Path

    from mechclaims_icl import claim2, claim3

    shapes = {"llama-3-8b": (32, 32), "organism": (8, 4), "organism-control": (8, 4), "smollm2-135m": (30, 9)}
    claims_dir = Path(__file__).resolve().parents[1] / "claims" / "expectations"
    for name, (n_layers, n_heads) in shapes.items():
        exp = load(claims_dir / f"{name}.toml", name)
        claim2.params_from(exp, n_layers)
        claim3.params_from(exp, n_layers, n_heads)
        assert all(exp.verdict(cid) for cid in ("C2.log-additive", "C3.mlp"))
    llama = load(claims_dir / "llama-3-8b.toml", "llama-3-8b")
    assert claim2.params_from(llama, 32).c_expected == pytest.approx(0.693)
    assert claim3.params_from(llama, 32, 32).x_to_y_heads[0] == (9, 23)


@pytest.mark.parametrize("text, match", [
    ("[c1]\nmargin = inf\n", r"\[c1\] margin = inf is not a finite number"),
    ("[c1]\nmargin = nan\n", r"\[c1\] margin = nan is not a finite number"),
    ("[c1]\nthreshold = nan\n", r"\[c1\] threshold = nan is not a finite number"),
    ("[c1]\nmargin = 1.0\n", r"\[c1\] margin = 1.0 is out of range; expected 0.01 to 0.25"),
    ("[c1]\nonset_tolerance = 1000000\n", r"onset_tolerance = 1000000 is out of range; expected 0 to 3"),
    ("[c1]\nmin_pairs = 1000000000\n", r"min_pairs = 1000000000 is out of range; expected 1 to 20000"),
    ("[c1]\nmin_pair = 200\n", r"\[c1\] min_pair is not a known key; did you mean 'min_pairs'\?"),
    ("[c4]\nonset = 1\n", r"unknown key or section 'c4'; did you mean 'c3'\?"),
    ("[c2]\nmax_prompts = true\n", r"max_prompts = True has type bool"),
])
def test_vacuous_non_finite_unknown_and_unbounded_values_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load(_write(tmp_path, text), "organism")


@pytest.mark.parametrize("content", [b"\xff\xfe[c1]\n", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n"])
def test_non_utf8_or_deeply_nested_toml_is_one_line(tmp_path, content):
    path = tmp_path / "organism.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="organism.toml") as info:
        load(path, "organism")
    assert "\n" not in str(info.value)


def test_a_directory_or_dangling_link_is_not_an_absent_file(tmp_path):
    (tmp_path / "organism.toml").mkdir()
    with pytest.raises(ConfigError, match="not a readable file"):
        load(tmp_path / "organism.toml", "organism")
    (tmp_path / "other.toml").symlink_to(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not a readable file"):
        load(tmp_path / "other.toml", "organism")


def test_a_projects_own_directory_comes_before_an_installed_packs(tmp_path):
    """[tool.mechclaims] expectations = DIR: a target's file there wins; a target only the pack
    pre-registers keeps the pack's; a target neither has is written (and looked for) in DIR."""
    from mechclaims.expectations import path_for, project_dir

    pack, own = tmp_path / "pack", tmp_path / "project" / "expectations"
    (pack / "expectations").mkdir(parents=True)
    own.mkdir(parents=True)
    (pack / "expectations" / "a.toml").write_text("")
    (pack / "expectations" / "b.toml").write_text("")
    (own / "b.toml").write_text("")
    assert path_for(pack, "a", own=own) == pack / "expectations" / "a.toml"
    assert path_for(pack, "b", own=own) == own / "b.toml"
    assert path_for(pack, "c", own=own) == own / "c.toml"
    assert path_for(pack, "c") == pack / "expectations" / "c.toml"  # without a project directory
    (tmp_path / "project" / "pyproject.toml").write_text('[tool.mechclaims]\nexpectations = "expectations"\n')
    assert project_dir(tmp_path / "project" / "pyproject.toml") == own
    (tmp_path / "project" / "pyproject.toml").write_text('[tool.mechclaims]\nexpectations = 3\n')
    with pytest.raises(ConfigError, match=r"\[tool.mechclaims\] expectations = 3; expected a directory"):
        project_dir(tmp_path / "project" / "pyproject.toml")


def test_discovery_never_writes_into_the_installed_pack(tmp_path):
    """From a project that holds no copy of the post's claims and names no expectations directory,
    discovery stops before loading anything, saying what to add."""
    import subprocess
    import sys

    (tmp_path / "pyproject.toml").write_text("")
    out = subprocess.run([sys.executable, "-m", "mechclaims_icl.discover", "--target", "organism"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "pre-registrations are not written there" in out.stderr
    assert '[tool.mechclaims] expectations = "expectations"' in out.stderr and "--out FILE" in out.stderr


def test_a_discovery_script_finds_writes_and_reads_its_files_through_the_public_api(tmp_path, monkeypatch, as_organism):
    """configure_project sees the project's targets; expectations_path finds the file (the project's own
    directory for claims outside the project); preregister writes it with [registered]; Expectations.read
    reads it back."""
    from mechclaims import (TARGETS, Expectations, configure_project, expectations_path, load_target, preregister,
                            register_section)
    from mechclaims import Key

    from mechclaims.registry import unload_config

    project, pack = tmp_path / "project", tmp_path / "installed" / "claims"
    for directory in (project / "sub", project / "claims", pack):
        directory.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[tool.mechclaims]\nexpectations = "prereg"\n[tool.mechclaims.targets.mine]\npath = "weights"\n')
    monkeypatch.chdir(project / "sub")
    try:
        assert configure_project() == project / "pyproject.toml" and "mine" in TARGETS
    finally:  # the project's target leaves the registry with the test
        unload_config(project / "pyproject.toml")
    assert "mine" not in TARGETS
    assert expectations_path(pack, "organism") == (project / "prereg" / "organism.toml").resolve()
    assert expectations_path(pack, "organism", "4x+17").name == "organism@4x+17.toml"
    assert expectations_path(project / "claims", "organism") == project / "claims" / "expectations" / "organism.toml"
    register_section("api_pack", {"heads": Key(list, why="heads")})
    loaded = load_target("organism")
    written = preregister(pack, loaded, source="exploration", verdicts={"P.x": "refuted"}, sections={"api_pack": {"heads": [[1, 2]]}})
    assert written == expectations_path(pack, "organism")
    exp = Expectations.read(written, "organism")
    assert exp.verdict("P.x") == "refuted" and exp.get("api_pack", "heads", list) == [[1, 2]]
    assert exp.sections["registered"]["n_layers"] == loaded.model.cfg.n_layers
    elsewhere = preregister(None, loaded, path=tmp_path / "out.toml", source="s", verdicts={}, sections={})
    assert Expectations.read(elsewhere, "organism").sections["registered"]
    with pytest.raises(ConfigError, match="needs claims_dir .* or path"):
        preregister(None, loaded, source="s", verdicts={}, sections={})
