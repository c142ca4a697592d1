"""The one device command: `python3 -m executor.gpu_check --device-run --out DIR` from the repo root, on a GPU
image with torch and triton but no simpy, fastapi or pydantic, and no `yoda` script; about 8 minutes on one
H200 (--budget-s, default 480).

Steps, each isolated and written as it ends (DIR/device_run.json, DIR/device_run.md; the GPU sections also
DIR/gpu_check.json): versions; the GPU sections of executor.device_check (device facts, HBM bandwidth and bf16
peak, partitions realised, decode and prefill time per partition size, both lanes together vs alone, graph
containment); then, in their own processes so each gets the whole card, `calibration.short_run calibrate`
(the quick CUDA grid) and `calibration.short_run validate` (simulator vs executor when simpy imports, else the
executor alone, said so). Pure-Python wheels in .whl/ (e.g. simpy) are put on the steps' PYTHONPATH. A step
that would not fit the time left is skipped and listed. The summary markdown is printed last.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from executor.gpu_check_report import sections_markdown

# seconds each step may take at most (the H200 estimates: sections ~2-3 min of 8 layers of Llama-3-8B with
# 8 partitions each way, the quick grid ~2-3 min with graph captures, a 24-request trace ~1 min)
SECTIONS_S, CALIBRATE_S, VALIDATE_S = 170.0, 200.0, 100.0


def _python_path(root: Path, wheels: Path) -> str:
    """The repo root, then every carried pure-Python wheel (importable as a zip) of `wheels`."""
    parts = [str(root)] + [str(w) for w in sorted(wheels.glob("*.whl"))] if wheels.is_dir() else [str(root)]
    return os.pathsep.join(parts + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


def _subprocess_step(name: str, argv: list[str], timeout_s: float, out: Path, env: dict) -> dict:
    """Run `python3 -m calibration.short_run ...`, log to OUT/NAME.log; its last JSON line is the result."""
    log = out / f"{name}.log"
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "calibration.short_run", *argv], capture_output=True,
                              text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        log.write_text(f"{e.stdout or ''}\n{e.stderr or ''}")
        return {"error": f"timed out after {timeout_s:.0f} s"}
    log.write_text(done.stdout + "\n" + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"error": f"exit {done.returncode}: {done.stderr[-500:]}"}
    result["process_s"] = round(time.perf_counter() - t0, 1)
    return result


def markdown(results: dict) -> str:
    lines = ["# Device run", "", f"- versions: {results.get('versions')}",
             f"- wall: {results.get('wall_s', 0):.0f} s of {results['args']['budget_s']:.0f} s budget", ""]
    lines += ["| step | seconds | result |", "|---|---|---|"]
    for name, step in results.get("steps", {}).items():
        brief = {k: v for k, v in step.items() if k not in ("seconds", "measured", "predicted", "fit_reports")}
        lines.append(f"| {name} | {step.get('seconds', '-')} | `{json.dumps(brief, default=str)[:300]}` |")
    for step in results.get("steps", {}).values():
        for r in step.get("fit_reports", []) or []:
            lines.append(f"- fit {r.get('phase')}: held-out mean |error| {r.get('mean_abs_err', 0):.1%}, "
                         f"max {r.get('max_abs_err', 0):.1%}")
    gpu = results.get("gpu_check")
    return "\n".join(lines) + "\n\n" + (sections_markdown(gpu) if gpu else "")


def device_run(args: argparse.Namespace) -> int:
    import torch

    from executor.device_check import Check
    from executor.preflight import versions

    started, out, root = time.perf_counter(), Path(args.out), Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": _python_path(root, root / ".whl"), "PYTHONUNBUFFERED": "1"}
    results: dict = {"args": vars(args), "versions": versions(), "steps": {}}
    gpu: dict = {"args": vars(args)}
    results["gpu_check"] = gpu

    def save() -> None:
        results["wall_s"] = time.perf_counter() - started
        (out / "device_run.json").write_text(json.dumps(results, indent=1, default=str))
        (out / "gpu_check.json").write_text(json.dumps(gpu, indent=1, default=str))
        (out / "device_run.md").write_text(markdown(results))

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    save()
    t0 = time.perf_counter()
    check = Check(args, gpu, save, deadline=started + min(SECTIONS_S, left() - CALIBRATE_S - VALIDATE_S))
    check.run()
    check.release()
    del check
    gc.collect()
    torch.cuda.empty_cache()
    results["steps"]["gpu_sections"] = {"seconds": round(time.perf_counter() - t0, 1),
                                        "errors": [k for k, v in gpu.items() if isinstance(v, dict) and "error" in v]}
    save()
    profile = out / "profile"
    common = ["--model", args.model, "--num-layers", str(args.num_layers)]
    plan = [("calibrate", ["calibrate", "--out", str(profile), *common], CALIBRATE_S),
            ("validate", ["validate", "--profile", str(profile), "--out", str(out / "validate"), *common], VALIDATE_S)]
    for name, argv, cap in plan:
        budget = min(cap, left() - 10)
        if budget < 30 or (name == "validate" and "error" in results["steps"].get("calibrate", {})):
            results["steps"][name] = {"skipped": f"{left():.0f} s left" if budget < 30 else "calibration failed"}
        else:
            step_t0 = time.perf_counter()
            results["steps"][name] = _subprocess_step(name, argv, budget, out, env)
            results["steps"][name]["seconds"] = round(time.perf_counter() - step_t0, 1)
        save()
    print(markdown(results))
    return 0
