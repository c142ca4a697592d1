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


def markdown(r: dict) -> str:
    """The GPU sections' results as markdown (partial results too: a section's error is shown as is)."""
    lines = ["# executor GPU check", ""]
    dev = r.get("device", {})
    setup = r.get("setup", {})
    lines += [f"- device: {dev.get('name')} ({dev.get('num_sms')} SMs), torch {dev.get('torch')}, "
              f"CUDA {dev.get('cuda')}",
              f"- HBM copy {dev.get('hbm_copy_gbps', 0):.0f} GB/s, "
              f"bf16 matmul {dev.get('bf16_matmul_tflops', 0):.0f} TFLOP/s",
              f"- model {r['args']['model']}, {r['args']['num_layers']} layers "
              f"(x{setup.get('layer_scale', 1):.1f} to full depth), KV blocks {setup.get('kv_blocks')}"
              + (f", setup error `{setup['error']}`" if "error" in setup else ""), ""]
    parts = r.get("partitions", {})
    lines += [f"## Partitions ({parts.get('reason') or 'green contexts'})", "",
              "| lane | planned SMs | realised | create ms |", "|---|---|---|---|"]
    lines += [f"| {s['lane']} | {s['planned_sms']} | {s['realised_sms']} | {1e3 * s['create_s']:.2f} |"
              for s in parts.get("streams", [])]
    lines += [f"- failed: {f}" for f in parts.get("failures", [])]
    for name, cols in (("decode", ("decode_sms", "batch", "context", "ms", "floor_ratio")),
                       ("prefill", ("prefill_sms", "tokens", "ms", "peak_fraction")),
                       ("both_lanes", ("prefill_sms", "decode_sms", "prefill_slowdown", "decode_slowdown"))):
        rows = r.get(name)
        lines += ["", f"## {name}", ""]
        if not isinstance(rows, list):
            lines.append(f"`{rows}`")
            continue
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |"
                  for row in rows]
    lines += ["", "## decode graph containment", "", f"`{r.get('graph_containment')}`", ""]
    return "\n".join(lines)


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
    (out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
