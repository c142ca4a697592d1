"""The GPU sections of `python -m executor.gpu_check`: device facts and peaks, partitions realised, decode
and prefill time per partition size, both lanes at once against each alone, decode-graph containment.

    check = Check(args, results, save)      # args as executor.gpu_check parses them
    check.run(); check.release()

Random weights of the model's shape, first --num-layers layers only: per-layer costs scale by
num_hidden_layers / num_layers (reported as `layer_scale`). CUDA only.
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Callable

import torch

from executor.attn_metadata import SeqSlice, build_attn_metadata
from executor.config import head_dim, load_config
from executor.kv_pool import KVPool
from executor.memory_plan import fixed_rows, kv_blocks_within, layer_params
from yoda.backend import DECODE, PREFILL


def decode_bytes(config, num_layers: int, batch: int, context_len: int, elem_bytes: int = 2) -> int:
    """HBM bytes one decode step must read at least: weights of the layers + LM head, and every KV entry."""
    kv = 2 * batch * context_len * config.num_key_value_heads * head_dim(config) * num_layers
    return elem_bytes * (num_layers * layer_params(config) + config.vocab_size * config.hidden_size + kv)


def prefill_flops(config, num_layers: int, num_tokens: int) -> float:
    """GEMM FLOPs plus causal attention FLOPs of a fresh prompt (no cached prefix), last-token LM head."""
    attn = 4 * config.num_attention_heads * head_dim(config) * num_tokens * (num_tokens + 1) / 2
    return num_layers * (2 * num_tokens * layer_params(config) + attn) + 2 * config.hidden_size * config.vocab_size


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


def driver_version() -> str | None:
    try:
        from cuda.bindings import driver
        err, version = driver.cuDriverGetVersion()
        return f"{version // 1000}.{version % 1000 // 10}"
    except Exception:  # bindings missing or old: the version is informational
        return None


class Check:
    """The device under test and the results: `setup` and every later section run through `section`, which
    catches its error (the others still run), frees what it left on the GPU and rewrites the JSON."""

    # device first: its 2 GiB copy buffers are freed before setup sizes the KV pool from free memory
    SECTIONS = ("device", "setup", "partitions", "decode", "prefill", "both_lanes", "graph_containment")

    def __init__(self, args: argparse.Namespace, results: dict, save: Callable[[], None],
                 deadline: float | None = None) -> None:
        self.args, self.results, self.save = args, results, save
        self.deadline = deadline  # time.perf_counter() after which the remaining sections are skipped
        self.decode_ms: dict[tuple[int, int, int], float] = {}
        self.prefill_ms: dict[tuple[int, int], float] = {}
        self.hbm_gbps, self.peak_tflops = 3000.0, 700.0  # until `device` measures them

    def section(self, name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as e:  # keep the other sections' numbers
            self.results[name] = {"error": f"{type(e).__name__}: {e}"}
        torch.cuda.empty_cache()  # a section's temporaries leave the card before the next one allocates
        print(f"[gpu_check] {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        self.save()

    def run(self) -> None:
        for name in self.SECTIONS:
            if name not in ("device", "setup") and "error" in self.results.get("setup", {}):
                self.results[name] = {"skipped": "setup failed"}
                continue
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self.results[name] = {"skipped": "out of the device run's time for these sections"}
                continue
            self.section(name, getattr(self, name))

    def release(self) -> None:
        """Drop the model, pool, graphs and streams so later steps (calibration) get the whole card."""
        for attr in ("graphs", "pool", "model", "parts"):
            self.__dict__.pop(attr, None)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    # ---- sections --------------------------------------------------------------------------------
    def setup(self) -> dict:
        """Partitions, model (first num_layers layers) and a KV pool sized by executor.memory_plan."""
        from executor.decode_graph import DecodeGraphs
        from executor.model import build_model
        from executor.partitions import PartitionManager

        args, t0 = self.args, time.perf_counter()
        self.parts = PartitionManager.create("cuda", group_sms=args.group_sms)
        partition_s = time.perf_counter() - t0
        self.model = build_model(args.model, "cuda", torch.bfloat16, num_layers=args.num_layers)
        self.config, bs = self.model.config, args.block_size
        need = max(args.batches) * (max(args.contexts) + bs) // bs + max(args.prefill_tokens) // bs + 1
        free = torch.cuda.mem_get_info()[0]
        fixed = sum(fixed_rows(self.config, args.num_layers, 2, max(args.batches), max(args.prefill_tokens),
                               include_weights=False).values())
        self.num_blocks = min(need, kv_blocks_within(free, self.config, bs, 2, args.num_layers, fixed))
        self.pool = KVPool.for_model(self.config, self.num_blocks, bs, torch.bfloat16, "cuda")
        self.graphs = DecodeGraphs(self.model, self.pool, max(args.batches), max(args.contexts) + bs,
                                   buckets=args.batches)
        return {"partition_setup_s": partition_s, "kv_blocks": self.num_blocks, "kv_blocks_wanted": need,
                "layer_scale": load_config(args.model).num_hidden_layers / args.num_layers,
                "free_gib_before_pool": free / 2**30, "partition_failures": self.parts.failures,
                "allocated_gib": torch.cuda.memory_allocated() / 2**30}

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
                "memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
                "driver": driver_version()}

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
                "failures": self.parts.failures,
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
