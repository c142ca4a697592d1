"""One-call GPU check of the executor: partitions, per-partition decode/prefill times, both lanes at once,
decode-graph containment, and roofline floors (HBM bandwidth and bf16 peak measured on the device).

    python -m executor.gpu_check --out results/gpu_check [--num-layers 8] [--quick]

Random weights of the model's shape (default Llama-3-8B), first --num-layers layers only: per-layer costs
scale by num_hidden_layers / num_layers (reported as `layer_scale`). Writes gpu_check.json (all numbers,
rewritten after each section) and gpu_check.md. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from executor.attn_metadata import SeqSlice, build_attn_metadata
from executor.config import head_dim, load_config
from executor.kv_pool import KVPool
from yoda.backend import DECODE, PREFILL


def layer_params(config) -> int:
    """Weights of one decoder layer's GEMMs (q, k, v, o, gate, up, down)."""
    h, d = config.hidden_size, head_dim(config)
    attn = h * (config.num_attention_heads + 2 * config.num_key_value_heads) * d + config.num_attention_heads * d * h
    return attn + 3 * h * config.intermediate_size


def decode_bytes(config, num_layers: int, batch: int, context_len: int, elem_bytes: int = 2) -> int:
    """HBM bytes one decode step must read at least: weights of the layers + LM head, and every KV entry."""
    kv = 2 * batch * context_len * config.num_key_value_heads * head_dim(config) * num_layers
    return elem_bytes * (num_layers * layer_params(config) + config.vocab_size * config.hidden_size + kv)


def prefill_flops(config, num_layers: int, num_tokens: int) -> float:
    """GEMM FLOPs plus causal attention FLOPs of a fresh prompt (no cached prefix), last-token LM head."""
    attn = 4 * config.num_attention_heads * head_dim(config) * num_tokens * (num_tokens + 1) / 2
    return num_layers * (2 * num_tokens * layer_params(config) + attn) + 2 * config.hidden_size * config.vocab_size


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--group-sms", type=int, default=8)
    p.add_argument("--batches", type=_ints, default=[1, 16, 64, 256])
    p.add_argument("--contexts", type=_ints, default=[1024, 4096, 16384, 32768])
    p.add_argument("--prefill-tokens", type=_ints, default=[512, 2048, 8192, 16384])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="batches 1,64; contexts 4096; prefill 2048,8192")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.contexts, args.prefill_tokens, args.reps = [1, 64], [4096], [2048, 8192], 3
    return args


def _time_ms(fn: Callable[[], object], stream, reps: int, warmup: int = 1) -> float:
    """Mean GPU time of fn() on `stream` (None: the current stream), by CUDA events around `reps` calls."""
    stream = stream or torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(reps):
            fn()
        end.record()
    end.synchronize()
    return begin.elapsed_time(end) / reps


class Check:
    """Holds the device under test and the results; each section fills one key of `results`."""

    def __init__(self, args: argparse.Namespace) -> None:
        from executor.decode_graph import DecodeGraphs
        from executor.model import build_model
        from executor.partitions import PartitionManager

        self.args, self.out = args, Path(args.out)
        self.results: dict = {"args": {k: v for k, v in vars(args).items()}}
        t0 = time.perf_counter()
        self.parts = PartitionManager.create("cuda", group_sms=args.group_sms)
        self.results["partition_setup_s"] = time.perf_counter() - t0
        self.model = build_model(args.model, "cuda", torch.bfloat16, num_layers=args.num_layers)
        self.config = self.model.config
        self.results["layer_scale"] = load_config(args.model).num_hidden_layers / args.num_layers
        bs = args.block_size
        per_block = KVPool.bytes_per_block(self.config, bs, torch.bfloat16)
        need = max(args.batches) * (max(args.contexts) + bs) // bs + max(args.prefill_tokens) // bs + 1
        free = torch.cuda.mem_get_info()[0]
        self.num_blocks = int(min(need, 0.6 * free // per_block))
        self.pool = KVPool.for_model(self.config, self.num_blocks, bs, torch.bfloat16, "cuda")
        self.graphs = DecodeGraphs(self.model, self.pool, max(args.batches), max(args.contexts) + bs,
                                   buckets=args.batches)
        self.decode_ms: dict[tuple[int, int, int], float] = {}
        self.prefill_ms: dict[tuple[int, int], float] = {}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))

    def section(self, name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as e:  # keep the other sections' numbers
            self.results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        self.save()

    # ---- sections --------------------------------------------------------------------------------
    def serve_trace(self) -> dict:
        """Serve a short multi-turn trace with the Yoda policy and with chunked prefill on this GPU."""
        from executor.runner import RunConfig, serve
        from traces import sharegpt_like
        requests = sharegpt_like(8, 2.0, rng=0)[:24]
        keys = ("completed", "rejected", "median_ttft_ms", "p99_ttft_ms", "median_tbt_ms", "p99_tbt_ms",
                "output_throughput", "kv_reuse_fraction", "scheduler_counters")
        out = {}
        for policy in ("yoda", "chunked"):
            cfg = RunConfig(model=self.args.model, device="cuda", policy=policy, num_layers=self.args.num_layers)
            metrics = serve(requests, cfg).metrics
            out[policy] = {k: metrics.get(k) for k in keys}
        return out

    def device(self) -> dict:
        props = torch.cuda.get_device_properties(0)
        x = torch.empty(1 << 29, dtype=torch.float16, device="cuda")  # 1 GiB
        y = torch.empty_like(x)
        copy_ms = _time_ms(lambda: y.copy_(x), None, 10)
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        mm_ms = _time_ms(lambda: a @ a, None, 10, warmup=3)
        self.hbm_gbps = 2 * x.numel() * 2 / copy_ms / 1e6  # read + write
        self.peak_tflops = 2 * 8192 ** 3 / mm_ms / 1e9
        return {"name": props.name, "num_sms": props.multi_processor_count, "torch": torch.__version__,
                "cuda": torch.version.cuda, "hbm_copy_gbps": self.hbm_gbps, "bf16_matmul_tflops": self.peak_tflops,
                "kv_blocks": self.num_blocks}

    def partitions(self) -> dict:
        infos = [i._asdict() for i in self.parts.infos]
        matmul = {}
        a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
        torch.cuda.current_stream().synchronize()
        for lane in (PREFILL, DECODE):
            for sms in self.parts.sm_options(lane):
                ms = _time_ms(lambda: a @ a, self.parts.stream_for(lane, sms), 3)
                matmul[f"{lane}:{sms}"] = 2 * 8192 ** 3 / ms / 1e9
        return {"partitioned": self.parts.is_partitioned, "reason": self.parts.reason, "streams": infos,
                "menu": [(p.prefill_sms, p.decode_sms) for p in self.parts.menu], "matmul_tflops": matmul}

    def _decode_batch(self, batch: int, context: int) -> tuple[list[int], list[SeqSlice], bool]:
        bs = self.args.block_size
        nb = -(-(context + 1) // bs)
        slices = [SeqSlice(context, 1, [(i * nb + j) % self.num_blocks for j in range(nb)]) for i in range(batch)]
        return [1] * batch, slices, batch * nb > self.num_blocks

    def decode(self) -> list[dict]:
        rows = []
        for sms, stream in self.parts.decode_streams().items():
            t0 = time.perf_counter()
            self.graphs.capture(sms, stream)
            capture_s = time.perf_counter() - t0
            for batch in self.args.batches:
                for context in self.args.contexts:
                    tokens, slices, aliased = self._decode_batch(batch, context)
                    with torch.cuda.stream(stream):
                        bucket = self.graphs.fill(tokens, slices)
                    ms = _time_ms(lambda: self.graphs.replay(sms, bucket), stream, self.args.reps)
                    self.decode_ms[(sms, batch, context)] = ms
                    floor = decode_bytes(self.config, self.model.num_layers, batch, context) / self.hbm_gbps / 1e6
                    rows.append({"decode_sms": sms, "batch": batch, "context": context, "ms": ms,
                                 "hbm_floor_ms": floor, "floor_ratio": ms / floor, "kv_aliased": aliased,
                                 "capture_s": capture_s})
        return rows

    def _prefill_fn(self, num_tokens: int) -> Callable[[], torch.Tensor]:
        table = [i % self.num_blocks for i in range(-(-num_tokens // self.args.block_size))]
        meta = build_attn_metadata([SeqSlice(0, num_tokens, table)], self.args.block_size, "cuda")
        ids = torch.randint(0, self.config.vocab_size, (num_tokens,), device="cuda")
        torch.cuda.current_stream().synchronize()  # inputs made here are read on a partition stream
        m = self.model
        return lambda: m.logits(m.run_layers(m.embed(ids), 0, m.num_layers, meta, self.pool)[-1:])

    def prefill(self) -> list[dict]:
        rows = []
        for sms in self.parts.sm_options(PREFILL):
            for n in self.args.prefill_tokens:
                ms = _time_ms(self._prefill_fn(n), self.parts.stream_for(PREFILL, sms), max(2, self.args.reps // 2))
                self.prefill_ms[(sms, n)] = ms
                flops = prefill_flops(self.config, self.model.num_layers, n)
                rows.append({"prefill_sms": sms, "tokens": n, "ms": ms, "tflops": flops / ms / 1e9,
                             "peak_fraction": flops / ms / 1e9 / self.peak_tflops})
        return rows

    def _mix_config(self) -> tuple[int, int, int]:
        batch = min(self.args.batches, key=lambda b: abs(b - 64))
        context = min(self.args.contexts, key=lambda c: abs(c - 4096))
        return batch, context, min(self.args.prefill_tokens, key=lambda n: abs(n - 8192))

    def both_lanes(self) -> list[dict]:
        """Each menu pair: prefill and decode at once on their partitions; slowdown = together / solo."""
        batch, context, n = self._mix_config()
        rows = []
        for pair in self.parts.menu:
            p_stream = self.parts.stream_for(PREFILL, pair.prefill_sms)
            d_stream = self.parts.stream_for(DECODE, pair.decode_sms)
            solo_p, solo_d = self.prefill_ms[(pair.prefill_sms, n)], self.decode_ms[(pair.decode_sms, batch, context)]
            steps = max(3, math.ceil(solo_p / solo_d))
            prefill_fn = self._prefill_fn(n)
            tokens, slices, _ = self._decode_batch(batch, context)
            with torch.cuda.stream(d_stream):
                bucket = self.graphs.fill(tokens, slices)
            d_stream.synchronize()  # per stream: a device sync need not cover green-context streams
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            with torch.cuda.stream(p_stream):
                ev[0].record()
                prefill_fn()
                ev[1].record()
            with torch.cuda.stream(d_stream):
                ev[2].record()
                for _ in range(steps):
                    self.graphs.replay(pair.decode_sms, bucket)
                ev[3].record()
            ev[1].synchronize()
            ev[3].synchronize()
            both_p, both_d = ev[0].elapsed_time(ev[1]), ev[2].elapsed_time(ev[3]) / steps
            rows.append({"prefill_sms": pair.prefill_sms, "decode_sms": pair.decode_sms, "prefill_tokens": n,
                         "decode_batch": batch, "decode_context": context, "prefill_solo_ms": solo_p,
                         "prefill_both_ms": both_p, "prefill_slowdown": both_p / solo_p, "decode_solo_ms": solo_d,
                         "decode_both_ms": both_d, "decode_slowdown": both_d / solo_d, "decode_steps": steps})
        return rows

    def graph_containment(self) -> dict:
        """A graph captured on the smallest decode partition, replayed from the full-GPU stream, should keep
        its partition's time (and be slower than the full-GPU graph when the step is compute-heavy)."""
        if not self.parts.is_partitioned:
            return {"skipped": self.parts.reason}
        small, full = min(self.parts.sm_options(DECODE)), self.parts.num_sms
        batch, context = max(self.args.batches), min(self.args.contexts)
        tokens, slices, _ = self._decode_batch(batch, context)
        own, other = self.parts.stream_for(DECODE, small), self.parts.stream_for(DECODE, full)
        with torch.cuda.stream(own):
            bucket = self.graphs.fill(tokens, slices)
        own.synchronize()
        t_own = _time_ms(lambda: self.graphs.replay(small, bucket), own, self.args.reps)
        t_other = _time_ms(lambda: self.graphs.replay(small, bucket), other, self.args.reps)
        t_full = _time_ms(lambda: self.graphs.replay(full, bucket), other, self.args.reps)
        separated = t_own > 1.15 * t_full
        return {"decode_sms": small, "batch": batch, "context": context, "own_stream_ms": t_own,
                "full_stream_ms": t_other, "full_gpu_graph_ms": t_full,
                "contained": (t_other > 0.85 * t_own) if separated else None,
                "note": "contained=None: the step is not SM-bound enough to tell" if not separated else ""}


def _markdown(r: dict) -> str:
    lines = ["# executor GPU check", ""]
    dev = r.get("device", {})
    lines += [f"- device: {dev.get('name')} ({dev.get('num_sms')} SMs), torch {dev.get('torch')}, "
              f"CUDA {dev.get('cuda')}",
              f"- HBM copy {dev.get('hbm_copy_gbps', 0):.0f} GB/s, "
              f"bf16 matmul {dev.get('bf16_matmul_tflops', 0):.0f} TFLOP/s",
              f"- model {r['args']['model']}, {r['args']['num_layers']} layers "
              f"(x{r.get('layer_scale', 1):.1f} to full depth)", ""]
    parts = r.get("partitions", {})
    lines += [f"## Partitions ({parts.get('reason') or 'green contexts'})", "",
              "| lane | planned SMs | realised | create ms |", "|---|---|---|---|"]
    lines += [f"| {s['lane']} | {s['planned_sms']} | {s['realised_sms']} | {1e3 * s['create_s']:.2f} |"
              for s in parts.get("streams", [])]
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


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        print("executor.gpu_check: CUDA is not available on this machine; nothing to check.")
        return 0
    check = Check(args)
    for name in ("device", "partitions", "decode", "prefill", "both_lanes", "graph_containment", "serve_trace"):
        check.section(name, getattr(check, name))
    (check.out / "gpu_check.md").write_text(_markdown(check.results))
    print(_markdown(check.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
