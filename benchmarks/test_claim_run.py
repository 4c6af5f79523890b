"""The default claim run (`make claims`: every claim on `organism`) end to end.

Each round is a fresh process (`pytest claims/ --mechclaims-target organism`), so
the timings include interpreter start, model loading and every forward pass.
Recorded in each benchmark's extra_info: peak RSS of the run (and of a process
that only imports the libraries the run imports, the baseline), forward calls and tokens processed
against the tokens the claim set needs, and the bytes the activation cache held.

    pytest benchmarks/ --benchmark-json reports/benchmarks.json
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 2


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Exit status and peak RSS (KiB) of a child process."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def _claim_argv(report_dir: Path, cache: str, cache_dir: Path, target: str) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "claims/", "--mechclaims-target", target, "-q", "-p", "no:cacheprovider",
        "--mechclaims-report-dir", str(report_dir), "--mechclaims-cache", cache, "--mechclaims-cache-dir", str(cache_dir),
    ]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The runs' environment: offline, and with Python's default bytecode cache, as a
    user's shell has it (an inherited PYTHONDONTWRITEBYTECODE would recompile every
    source module in every round, about 1 s that no cache of mechclaims can save)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def baseline_rss(env) -> int:
    """Peak RSS of a process that imports the libraries a claim run imports and runs
    nothing: torch, transformers with its Llama modelling code, transformer-lens, the
    plugin, scipy.stats and matplotlib's Agg canvas (the report's plots). What a run
    takes above it is the run's own memory: weights, activations, passes, report."""
    code = ("import torch, transformers, transformers.models.llama.modeling_llama, transformer_lens.model_bridge, "
            "mechclaims.plugin, scipy.stats, matplotlib.figure, matplotlib.backends.backend_agg")
    status, rss = _run([sys.executable, "-c", code], env)
    assert status == 0
    return rss


def _weights_bytes(target: str) -> int:
    from mechclaims.loading import resolve

    return sum(p.stat().st_size for p in resolve(target).path.glob("*.safetensors"))


def _bench(benchmark, tmp_path, env, baseline_rss, *, cache: str, warm: bool, target: str = "organism",
           rounds: int = ROUNDS) -> dict:
    cache_dir = tmp_path / "activations"
    reports = tmp_path / "reports"
    peaks: list[int] = []

    def setup():
        if not warm:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return (), {}

    def run():
        status, rss = _run(_claim_argv(reports, cache, cache_dir, target), env)
        assert status == 0, f"claim run exited {status}; see {reports}/latest"
        peaks.append(rss)

    if warm:  # fill the cache once, outside the timed rounds
        run()
        peaks.clear()
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    record = json.loads((reports / "latest" / "claims.json").read_text())
    stats = record["run"]["activation_cache"]["stats"][target]
    weights = _weights_bytes(target)
    info = benchmark.extra_info
    info.update(
        target=target, cache=cache, warm=warm,
        peak_rss_mib=round(max(peaks) / 1024, 1),
        baseline_rss_mib=round(baseline_rss / 1024, 1),
        run_rss_above_baseline_mib=round((max(peaks) - baseline_rss) / 1024, 1),
        weights_mib=round(weights / 2**20, 2),
        cached_activations_mib=round(stats["bytes_in_memory"] / 2**20, 2),
        rss_budget_mib=round(2 * (weights + stats["bytes_in_memory"]) / 2**20, 1),
        forward_calls=record["run"]["forwards"][target]["calls"],
        tokens_processed=stats["tokens_processed"],
        tokens_needed=stats["tokens_needed"],
        disk_hits=stats["disk_hits"],
        boot_seconds=record["run"]["targets"][target]["boot_seconds"],
        verdicts={c["id"]: c["verdict"] for c in record["claims"]},
    )
    return info


@pytest.mark.benchmark(group="claim-run")
def test_claim_run_memory_cache(benchmark, tmp_path, env, baseline_rss):
    info = _bench(benchmark, tmp_path, env, baseline_rss, cache="memory", warm=False)
    assert info["tokens_processed"] <= 1.5 * info["tokens_needed"]


@pytest.mark.benchmark(group="claim-run")
def test_claim_run_cold_disk_cache(benchmark, tmp_path, env, baseline_rss):
    info = _bench(benchmark, tmp_path, env, baseline_rss, cache="disk", warm=False)
    assert info["disk_hits"] == 0


@pytest.mark.benchmark(group="claim-run")
def test_claim_run_warm_disk_cache(benchmark, tmp_path, env, baseline_rss):
    info = _bench(benchmark, tmp_path, env, baseline_rss, cache="disk", warm=True)
    assert info["tokens_processed"] == 0 and info["disk_hits"] > 0
    assert info["boot_seconds"] is None  # every pass and score from the cache: the weights never loaded


@pytest.mark.benchmark(group="claim-run-largest")
def test_claim_run_largest_cpu_model(benchmark, tmp_path, env, baseline_rss):
    """SmolLM2-135M (513 MiB of fp32 weights): peak RSS against 2 x (weights + cached activations)."""
    info = _bench(benchmark, tmp_path, env, baseline_rss, cache="memory", warm=False, target="smollm2-135m", rounds=1)
    assert info["tokens_processed"] <= 1.5 * info["tokens_needed"]
