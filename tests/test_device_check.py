"""benchmarks/device-check, the prepared GPU check, run here through its CPU mode (the same
runs and comparisons with ``--device cpu``) and without CUDA (it says so and stops)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device-check"


def test_without_cuda_it_says_so_and_stops(tmp_path):
    if torch.cuda.is_available():
        return  # a GPU machine: the real check is the next test's command with --device cuda
    proc = subprocess.run([str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"torch {torch.__version__} (CUDA build None); sees CUDA: False" in proc.stdout
    record = json.loads((tmp_path / "device-check.json").read_text())
    assert record["machine"]["cuda_available"] is False and record["runs"] == {}
    assert record["machine"]["packages"]["transformer-lens"].startswith("4.3")


def test_the_check_runs_compares_and_records_on_the_cpu(tmp_path):
    proc = subprocess.run([str(SCRIPT), str(tmp_path), "--device", "cpu", "--targets", "organism"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "device-check.json").read_text())
    assert set(record["runs"]) == {"cpu-float32", "device-float32", "device-bfloat16"}
    for run in record["runs"].values():
        assert run["exit_status"] == 0 and len(run["verdicts"]) == 16 and run["wall_s"] > 0
        assert run["peak_gpu_bytes"] == {"organism": None}  # no GPU: nothing to measure
    assert {name: c["verdicts_differ"] for name, c in record["comparisons"].items()} == {
        "cpu-float32 vs device-float32": {}, "cpu-float32 vs device-bfloat16": {}}
    assert "0 regressed" in record["comparisons"]["cpu-float32 vs device-bfloat16"]["compare_output"]


def test_a_verdict_that_differs_on_the_device_is_named(tmp_path):
    """Negative control of the comparison: one flipped verdict is reported, with both sides."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check", SCRIPT.with_name("device_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    claim = {"id": "C0.in-context", "target": "organism", "verdict": "supported", "statistic": 0.95}
    runs = {}
    for name, verdict in (("cpu", "supported"), ("dev", "refuted")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "claims.json").write_text(json.dumps(
            {"schema_version": 1, "run": {}, "claims": [dict(claim, verdict=verdict)]}))
        runs[name] = {"report": f"{name}/claims.json", "verdicts": {"C0.in-context [organism]": verdict}}
    result = module.compare(runs["cpu"], runs["dev"], "dev", tmp_path)
    assert result["verdicts_differ"] == {"C0.in-context [organism]": ["supported", "refuted"]}
    assert "supported -> refuted" in result["compare_output"]
