"""Fixtures of the framework's own tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
# Imported once up front: pytester's in-process runs restore sys.modules after each
# run, and re-importing transformer_lens (through datasets/pyarrow) fails.
import transformer_lens.model_bridge  # noqa: F401

import mechclaims_icl.claim1  # noqa: F401,E402  (patched by tests; must stay one module object)

sys.path.insert(0, str(Path(__file__).parent))

from tiny import write_tiny_digit_llama, write_tiny_llama  # noqa: E402

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with the number tokenizer, saved as an HF directory."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def as_organism(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the `organism` target at the tiny checkpoint."""
    monkeypatch.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
    return tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tiny_llama: Path):
    """The tiny checkpoint loaded through the one loader (as the `organism` target)."""
    from mechclaims import load_target

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHCLAIMS_ORGANISM_DIR", str(tiny_llama))
        return load_target("organism").model


@pytest.fixture(scope="session")
def digit_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random Llama that spells numbers digit by digit (as SmolLM2 does), as the `organism` target."""
    from mechclaims import load_target

    path = write_tiny_digit_llama(tmp_path_factory.mktemp("digits") / "llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHCLAIMS_ORGANISM_DIR", str(path))
        return load_target("organism").model


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """Llama-3's own tokenizer, rebuilt from quicktok's bundled BPE ranks (tests/llama3_tokenizer.py),
    checked on known ids and kept in the mechclaims cache directory."""
    from llama3_tokenizer import build

    from mechclaims.targets import default_cache_dir

    return build(default_cache_dir())


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """A venv holding mechclaims' wheel (not editable), built from this checkout; its dependencies
    are this environment's, so nothing is downloaded."""
    import os
    import subprocess
    import sysconfig
    import venv

    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)  # pip and setuptools: this environment's
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies, appended after the venv's own site-packages: this environment's editable
    # mechclaims is a .pth there, which a path added this way does not run
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # built from a private copy: setuptools builds in the source tree (build/, *.egg-info), and two
    # pytest-xdist workers building in the checkout at once collide
    import shutil

    checkout = Path(__file__).resolve().parents[1]
    source = tmp_path_factory.mktemp("source")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("src", "claims", "fixtures"):
        shutil.copytree(checkout / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(checkout / name, source / name)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                   check=True, capture_output=True, text=True, timeout=600,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env_dir
