"""CPU pre-flight of a GPU run: what would break on the device, found without one.

    python -m executor.gpu_check --preflight [--json] [--out DIR]

Three sections, each isolated (an error is that section's result) and written to DIR/preflight.json as it
ends: `kernels` compiles every Triton kernel the executor launches at Llama-3-8B and Qwen2 shapes for sm_90
(executor.kernel_report: registers, spills, shared memory); `memory` checks the plan of an H200 and an H100
for Llama-3-8B (executor.memory_plan: weights + KV pool + graphs + logits + workspace, headroom stated);
`partitions` builds the partition menu against cuda-bindings' real API with the driver faked
(executor.fake_driver): all partitions, one refused partition, refused leftover SMs. `ok` is false on any
spill, compile error, over-budget plan or partition failure that is not isolated.
"""
from __future__ import annotations

import platform
import time
from typing import Callable

from executor.config import load_config
from executor.memory_plan import GIB, H100_BYTES, H200_BYTES, kv_bytes_per_block, plan_memory

KERNEL_MODELS = ("llama3-8b", "qwen2.5-7b")
MEMORY_MODEL = "llama3-8b"
GPUS = {"H200": H200_BYTES, "H100": H100_BYTES}
MIN_KV_TOKENS = 256 * 1024  # the largest decode batch (256) at 1K tokens each, at least
SECTIONS = ("versions", "kernels", "memory", "partitions")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "transformers", "cuda.bindings", "simpy"):
        try:
            module = __import__(name, fromlist=["__version__"])
            out[name] = getattr(module, "__version__", "?")
        except ImportError:
            out[name] = None
    return out


def kernels(models: tuple[str, ...] = KERNEL_MODELS) -> dict:
    from executor.kernel_report import kernel_report

    rows = kernel_report(list(models))
    return {"target": "sm_90", "rows": rows, "ok": all(r["ok"] for r in rows),
            "max_spill_bytes": max((r.get("spill_bytes", 0) for r in rows), default=0)}


def memory(model: str = MEMORY_MODEL, max_batch: int = 256) -> dict:
    config = load_config(model)
    per_token = kv_bytes_per_block(config, 1, 2)
    plans = {}
    for gpu, capacity in GPUS.items():
        plan = plan_memory(config, capacity, max_batch=max_batch)
        kv_tokens = plan.kv_blocks * 16
        plans[gpu] = {**plan.as_dict(), "kv_tokens": kv_tokens, "ok": plan.fits and kv_tokens >= MIN_KV_TOKENS}
    # what per-graph fp32 logits would have cost (one buffer per (decode partition, bucket), 8 partitions)
    from executor.decode_graph import batch_buckets
    per_graph = 8 * sum(batch_buckets(max_batch)) * config.vocab_size * 4
    return {"model": model, "kv_bytes_per_token": per_token, "plans": plans,
            "per_graph_logits_gib_avoided": per_graph / GIB, "ok": all(p["ok"] for p in plans.values())}


def partitions() -> dict:
    try:
        from cuda.bindings import driver
    except ImportError as e:
        return {"skipped": f"cuda.bindings not importable ({e})", "ok": True}
    from executor.fake_driver import FakeDriver
    from executor.partitions import build_green

    cases = {"all": {}, "one_refused": {"refuse": lambda sms: sms == 48},
             "leftover_refused": {"refuse": lambda sms: sms % 8 != 0}}
    out, ok = {}, True
    for name, fake in cases.items():
        build = build_green(FakeDriver(driver, num_sms=132, **fake), 0, None, 8, wrap=lambda raw: raw)
        out[name] = {"pairs": [(p.prefill_sms, p.decode_sms) for p in build.pairs], "failures": build.failures}
        ok &= len(build.pairs) == (6 if name == "one_refused" else 7)
    return {**out, "ok": ok}


def run_preflight(save: Callable[[dict], None] = lambda results: None) -> dict:
    """Every section, isolated; `save(results)` after each. results['ok'] is the verdict."""
    results: dict = {}
    steps = {"versions": versions, "kernels": kernels, "memory": memory, "partitions": partitions}
    for name in SECTIONS:
        t0 = time.perf_counter()
        try:
            results[name] = steps[name]()
        except Exception as e:  # the other sections still run
            results[name] = {"error": f"{type(e).__name__}: {e}", "ok": False}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        save(results)
    results["ok"] = all(results[name].get("ok", True) for name in SECTIONS)
    save(results)
    return results


def summary(results: dict) -> str:
    """Markdown: one row per kernel, one per memory plan, one per partition case."""
    lines = ["# executor pre-flight (CPU)", "", f"- verdict: {'OK' if results.get('ok') else 'FAIL'}",
             f"- versions: {results.get('versions')}", "", "## Kernels (sm_90)", "",
             "| kernel | models | launch | aligned | regs | spill B | shared B |", "|---|---|---|---|---|---|---|"]
    k = results.get("kernels", {})
    for r in k.get("rows", []):
        lines.append(f"| {r['kernel']} | {','.join(r['models'])} | {r['launch']} | {r['aligned']} | "
                     f"{r.get('registers', '-')} | "
                     f"{r.get('spill_bytes', r.get('error', '-'))} | {r.get('shared_bytes', '-')} |")
    if "error" in k:
        lines.append(f"`{k['error']}`")
    m = results.get("memory", {})
    lines += ["", f"## Memory plan ({m.get('model')}, full depth)", "",
              "| GPU | capacity GiB | weights | KV pool | graphs | prefill act | logits | workspace | headroom | ok |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for gpu, p in m.get("plans", {}).items():
        cells = ("capacity_gib", "weights_gib", "kv_pool_gib", "decode_graphs_gib", "prefill_activations_gib",
                 "prefill_logits_gib", "workspace_gib", "headroom_gib")
        lines.append(f"| {gpu} | " + " | ".join(f"{p[c]:.1f}" for c in cells) + f" | {p['ok']} |")
    if "error" in m:
        lines.append(f"`{m['error']}`")
    lines += ["", "## Partitions (faked driver)", ""]
    for name, case in results.get("partitions", {}).items():
        if isinstance(case, dict):
            lines.append(f"- {name}: {len(case['pairs'])} pairs {case['pairs']}; failures: {case['failures']}")
        elif name in ("skipped", "error"):
            lines.append(f"- {name}: {case}")
    return "\n".join(lines) + "\n"
