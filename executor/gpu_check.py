"""One-call GPU check of the executor, and its CPU pre-flight.

    python -m executor.gpu_check --preflight [--json] [--out DIR]    # any machine: exit 1 if the GPU run would break
    python3 -m executor.gpu_check --device-run --out DIR              # on the GPU: everything below, <= 8 minutes
    python -m executor.gpu_check --out DIR [--num-layers 8] [--quick] # on the GPU: the executor sections only

--preflight: executor/preflight.py (Triton kernels compiled for sm_90 with spills read off the cubin, the
memory plan of an H200 and an H100, the partition builder against a faked driver). The GPU sections
(executor/device_check.py): device facts and measured HBM bandwidth and bf16 peak, partitions realised,
decode and prefill time per partition size, both lanes together vs alone, decode-graph containment; each
section isolated, gpu_check.json rewritten after each and gpu_check.md at the end. --device-run adds a
short calibration and validation (executor/device_run.py). Without CUDA the GPU modes say so and exit 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from executor.gpu_check_report import sections_markdown


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m executor.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preflight", action="store_true", help="CPU pre-flight: kernels, memory plan, partitions")
    p.add_argument("--json", action="store_true", help="--preflight: print the results as JSON")
    p.add_argument("--device-run", action="store_true", help="the whole device script (sections, calibration, "
                   "validation) sized for 8 minutes on one H200")
    p.add_argument("--out", help="directory for JSON and markdown (required except with --preflight)")
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--group-sms", type=int, default=8)
    p.add_argument("--batches", type=_ints, default=[1, 16, 64, 256])
    p.add_argument("--contexts", type=_ints, default=[1024, 4096, 16384])
    p.add_argument("--prefill-tokens", type=_ints, default=[512, 2048, 8192, 16384])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="batches 1,64; contexts 4096; prefill 2048,8192")
    p.add_argument("--budget-s", type=float, default=480.0, help="--device-run: wall-clock budget")
    args = p.parse_args(argv)
    if not args.preflight and not args.out:
        p.error("--out DIR is required (or use --preflight)")
    if args.quick:
        args.batches, args.contexts, args.prefill_tokens, args.reps = [1, 64], [4096], [2048, 8192], 3
    return args


def _preflight(args: argparse.Namespace) -> int:
    import os
    if "triton" not in sys.modules:  # NOTE: the interpreter's kernels cannot be compiled for a GPU
        os.environ.pop("TRITON_INTERPRET", None)
    from executor.preflight import run_preflight, summary

    out = Path(args.out) if args.out else None

    def save(results: dict) -> None:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "preflight.json").write_text(json.dumps(results, indent=1, default=str))

    results = run_preflight(save)
    if out is not None:
        (out / "preflight.md").write_text(summary(results))
    print(json.dumps(results, indent=1, default=str) if args.json else summary(results))
    return 0 if results["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.preflight:
        return _preflight(args)
    import torch

    if not torch.cuda.is_available():
        print("executor.gpu_check: CUDA is not available on this machine; nothing to check "
              "(use --preflight for the CPU checks).")
        return 0
    if args.device_run:
        from executor.device_run import device_run
        return device_run(args)
    from executor.device_check import Check

    out = Path(args.out)
    results: dict = {"args": vars(args)}

    def save() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))

    Check(args, results, save).run()
    (out / "gpu_check.md").write_text(sections_markdown(results))
    print(sections_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
