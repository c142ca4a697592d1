"""The short calibration and validation of a first GPU run, without typer (the device image's CLI stack may
differ from ours); `python3 -m executor.gpu_check --device-run` runs each step in its own process.

    python3 -m calibration.short_run calibrate --out DIR/profile [--model llama3-8b --num-layers 8]
    python3 -m calibration.short_run validate --profile DIR/profile --out DIR/validate [--requests 24]

calibrate: `yoda calibrate --device cuda --grid quick` (calibration.measure.calibrate). validate: when simpy
imports, `yoda validate` on a short multi-turn trace (the simulator against the executor on the profile);
without simpy it says so and serves the trace on the executor with the profile's estimator instead.
Each step prints one JSON line (its summary) last and writes it to OUT/summary.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TRACE = "synthetic:sharegpt:8"  # 8 multi-turn sessions, cut to --requests and replayed at --rate
KEYS = ("completed", "rejected", "median_ttft_ms", "p99_ttft_ms", "median_tbt_ms", "p99_tbt_ms",
        "output_throughput", "kv_reuse_fraction")


def calibrate_step(args: argparse.Namespace) -> dict:
    from calibration.measure import calibrate
    from executor.runner import open_backend

    backend = open_backend(args.model, args.device, None, args.num_layers)
    summary = calibrate(args.out, backend, "quick", progress=False)
    return {k: summary[k] for k in ("measured", "num_points", "notes", "fit_reports", "wall_s")}


def _requests(args: argparse.Namespace):
    from executor.runner import clamp_lengths
    from sim.workloads import load_workload

    requests, desc = load_workload(TRACE, None, args.rate, None, "original", 1.0, 0, args.requests)
    return clamp_lengths(requests, args.max_prompt_len, args.max_output_len), desc


def validate_step(args: argparse.Namespace) -> dict:
    try:
        import simpy  # noqa: F401  (validate simulates with it)
    except ImportError as e:
        return {"validate": f"skipped: simpy not importable ({e}); served on the executor only",
                **serve_step(args)}
    from calibration.validate import ValidateConfig, validate, write_validation

    requests, desc = _requests(args)
    cfg = ValidateConfig(profile=str(args.profile), policy="yoda", model=args.model, device=args.device,
                         goodput=False, repeats=1)
    result = validate(requests, cfg, desc)
    write_validation(args.out, result)
    keys = ("median_ttft_abs_err", "p90_ttft_abs_err", "median_tbt_abs_err", "p90_tbt_abs_err", "num_requests",
            "executor_wall_s")
    return {"validate": "done", **{k: result.report.get(k) for k in keys},
            "measured": result.report.get("measured"), "predicted": result.report.get("predicted")}


def serve_step(args: argparse.Namespace) -> dict:
    from calibration.fit import load_estimator
    from executor.runner import RunConfig, open_backend, serve

    requests, _ = _requests(args)
    layers = json.loads((Path(args.profile) / "metadata.json").read_text()).get("num_layers")
    cfg = RunConfig(model=args.model, device=args.device, policy="yoda", profile=str(args.profile), num_layers=layers)
    backend = open_backend(cfg.model, args.device, None, layers)
    metrics = serve(requests, cfg, backend, load_estimator(args.profile), "profile").metrics
    return {"served": {k: metrics.get(k) for k in KEYS}, "num_requests": len(requests)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m calibration.short_run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("calibrate", "validate"))
    p.add_argument("--out", required=True)
    p.add_argument("--profile", help="validate: the profile calibrate wrote")
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--device", default="cuda", help="cuda (the device run) or cpu (tests)")
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--max-prompt-len", type=int, default=4096)
    p.add_argument("--max-output-len", type=int, default=64)
    args = p.parse_args(argv)
    if args.step == "validate" and not args.profile:
        p.error("validate needs --profile")
    t0 = time.perf_counter()
    try:
        summary = (calibrate_step if args.step == "calibrate" else validate_step)(args)
    except Exception as e:  # one line for the device run's log and summary
        summary = {"error": f"{type(e).__name__}: {e}"}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, default=str))
    return 1 if "error" in summary else 0


if __name__ == "__main__":
    sys.exit(main())
