"""The GPU sections' results (`executor/device_check.py`, as `python -m executor.gpu_check` writes them to
gpu_check.json) as markdown; `executor/device_run.py` puts its summary above them."""
from __future__ import annotations


def sections_markdown(r: dict) -> str:
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
