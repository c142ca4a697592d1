"""The simulator against the CPU executor on real timings (the figure the CI test used to assert).

    python -m benchmarks.validate_cpu [--repeats 5] [--out results]

Measures the quick CPU grid now, serves 20 chat requests 5 times (a calibration round before each), replays
them in the simulator on that profile and prints per-request median / P90 errors; writes
results/validate_cpu.json. The figure depends on the machine's load: it is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from calibration import measure
from calibration.validate import ValidateConfig, validate
from executor.runner import clamp_lengths, open_backend
from traces import sharegpt_like

KEYS = ("median_ttft_abs_err", "median_tbt_abs_err", "median_e2e_abs_err", "p90_ttft_abs_err", "p90_e2e_abs_err")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    started = time.perf_counter()
    requests = clamp_lengths(sharegpt_like(6, 1.0, rng=0, think_time_s=1.0), 512, 8)[:20]
    with tempfile.TemporaryDirectory() as tmp:
        measure.calibrate(tmp, open_backend("tiny"), "quick", reps=3, progress=False)
        report = validate(requests, ValidateConfig(profile=tmp, policy="yoda", goodput=False, repeats=args.repeats,
                                                   interleave=True)).report
    row = {k: report[k] for k in KEYS}
    print("| metric | error |\n|---|---|")
    for k, v in row.items():
        print(f"| {k} | {100 * v:.1f}% |")
    out = {"command": "python -m benchmarks.validate_cpu", "errors": row, "repeats": args.repeats,
           "clock": report.get("clock"), "machine": platform.processor() or platform.machine(),
           "wall_s": time.perf_counter() - started, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "validate_cpu.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
