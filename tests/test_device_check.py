"""benchmarks/device-check, the prepared GPU check, run here through its CPU mode (the same
runs and comparisons with ``--device cpu``) and without CUDA (it says so and stops)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from test_bf16 import EDGE  # a claim on its rule's edge on the organism, which bfloat16 may leave undecided

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device-check"


def test_without_cuda_it_says_so_and_stops(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU machine: the real check is the next test's command with --device cuda")
    proc = subprocess.run([str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"torch {torch.__version__} (CUDA build None); sees CUDA: False" in proc.stdout
    record = json.loads((tmp_path / "device-check.json").read_text())
    assert record["machine"]["cuda_available"] is False and record["runs"] == {}
    assert record["machine"]["packages"]["transformer-lens"].startswith("4.3")


@pytest.mark.slow
def test_the_check_runs_compares_and_records_on_the_cpu(tmp_path):
    # The budget is the check's own guard on a GPU machine, not part of what this test checks: set out
    # of reach here (a loaded machine ran the three runs past 450 s). The timeout only guards a hang:
    # the three runs take about 90 s unloaded.
    proc = subprocess.run([str(SCRIPT), str(tmp_path), "--device", "cpu", "--targets", "organism", "--budget", "1e9"],
                          capture_output=True, text=True, timeout=1800)
    record = json.loads((tmp_path / "device-check.json").read_text())
    assert set(record["runs"]) == {"cpu-float32", "device-float32", "device-bfloat16"}
    for name, run in record["runs"].items():
        assert len(run["verdicts"]) == 16 and run["wall_s"] > 0, (name, proc.stdout[-3000:])
        assert run["peak_gpu_bytes"] == {"organism": None}  # no GPU: nothing to measure
    edge = {f"{claim} [organism]" for claim in EDGE}
    differ = record["comparisons"]["cpu-float32 vs device-bfloat16"]["verdicts_differ"]
    assert set(differ) <= edge and all(after == "inconclusive" for _, after in differ.values()), differ
    assert record["comparisons"]["cpu-float32 vs device-float32"]["verdicts_differ"] == {}
    assert record["runs"]["cpu-float32"]["exit_status"] == record["runs"]["device-float32"]["exit_status"] == 0
    assert record["runs"]["device-bfloat16"]["exit_status"] == (1 if differ else 0)
    assert proc.returncode == (1 if differ else 0), proc.stdout + proc.stderr


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
