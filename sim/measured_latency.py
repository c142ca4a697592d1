"""`--latency measured`: iteration times built from measured kernel times (sim.operator_tables).

Per layer: the four GEMMs read off the measured shapes (sim.operator_tables.GemmLibrary), the element-wise
operators (norms, RoPE, SiLU-mul, residual add) from the nearest table scaled by their width, two NCCL
all-reduces from the measured DGX table when tp > 1, and attention from FLOPs and bytes (no attention table
ships) with a per-kernel floor and a long-context efficiency loss. Per iteration: the LM head GEMM, the
embedding and a fixed step overhead.

SM partitions: each measured time splits into overhead + max(memory, compute), memory = its bytes at the
table GPU's HBM bandwidth, compute = its FLOPs at `GEMM_PEAK_MFU` of peak (both capped at the time). On s
SMs of the simulated GPU: overhead + max(memory * (table bandwidth / this GPU's) / bandwidth_share(s),
compute * waves(s) / waves(all SMs)), waves = ceil(ceil(M/128) * ceil(N/128) / SMs) (128x128 output
tiles). So the H200 (4.8 TB/s) from the H100 tables speeds up the memory-bound side only.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Callable, Sequence

import numpy as np

from sim.hardware import GpuSpec, get_gpu
from sim.latency import RooflineLatency
from sim.model_spec import ModelSpec, causal_attention_pairs
from sim.operator_tables import (ELEMENTWISE_OPS, GEMM_OPS, AllReduceTable, GemmLibrary, OperatorTable, Shape,
                                 tables_for)

# which measured GPU stands for each built-in GPU (same SMs and tensor cores; bandwidth is rescaled)
TABLE_GPU = {"h100": "h100", "h200": "h100", "h800": "h100", "a100": "a100"}
GEMM_PEAK_MFU = 0.75  # best bf16 share of peak the tables reach (H100 gate+up GEMM at 3872 tokens: 71%)
TILE = 128  # output tile edge of the cuBLAS kernels for wave counting (Hopper and Ampere bf16 GEMMs)
ATTENTION_MFU = 0.45  # FlashAttention-2 causal prefill, share of dense peak (as RooflineLatency)
ATTENTION_MBU = 0.80  # decode attention, share of HBM bandwidth (as RooflineLatency)
ATTENTION_FLOOR_S = 8e-6  # per attention kernel per layer: launch and tail of a small kernel (assumed)
LONG_CONTEXT_TOKENS = 131072  # attention efficiency halves at this context: issue 17 measured the roofline
# 12-32% too fast for a chunk after a 32K+ prefix; 1 + 32K / 128K = 1.25 sits in that range
STEP_OVERHEAD_S = 3e-4  # per iteration: sampling, metadata copies, graph launch (as RooflineLatency)


def measured_covers(gpu: GpuSpec) -> bool:
    return gpu.name.lower() in TABLE_GPU


def _nearest_table(tables: list[OperatorTable], model: ModelSpec) -> OperatorTable:
    return min(tables, key=lambda t: abs(math.log(t.shape.hidden / model.hidden))
               + abs(math.log(t.shape.intermediate / model.intermediate)))


class MeasuredLatency:
    """LatencySource from measured operator tables. Pure after construction (caches only)."""

    decode_linear_in_kv = True  # attention is floor + a bound side proportional to the KV length

    def __init__(self, model: ModelSpec, gpu: GpuSpec, tables: list[OperatorTable] | None = None) -> None:
        if tables is None:
            if not measured_covers(gpu):
                raise ValueError(f"no measured table covers GPU {gpu.name!r}; use --latency roofline")
            tables = tables_for(TABLE_GPU[gpu.name.lower()])
        self.model, self.gpu = model, gpu
        self.table_gpu = get_gpu(TABLE_GPU.get(gpu.name.lower(), gpu.name))
        nearest = _nearest_table(tables, model)
        if model.tp not in nearest.by_tp:
            raise ValueError(f"no measured table at tp={model.tp}; measured: {sorted(nearest.by_tp)}")
        self.tokens = nearest.tokens(model.tp)  # the grid every per-layer time is tabulated on
        self.library = GemmLibrary(tables)
        self.all_reduce = AllReduceTable() if model.tp > 1 else None
        self.shape = Shape(model.num_heads, model.num_kv_heads, model.hidden, model.intermediate)
        self._gemms = {op: self.library.gemm_ms(self.tokens, *kn) / 1e3
                       for op, kn in self.shape.gemms(model.tp).items()}
        self._elementwise = self._elementwise_s(nearest)
        emb = nearest.op_ms("emb", model.tp) / 1e3 * model.hidden / nearest.shape.hidden
        self._emb = (self.tokens.tolist(), emb.tolist())  # once per iteration, not per layer
        self._layers: dict[int, tuple[list[float], list[float]]] = {}  # num_sms -> (tokens, per-layer s)
        self._lm_head: dict[int, tuple[list[float], list[float]]] = {}
        self._decode_lines: dict[tuple[int, int], tuple[float, float]] = {}
        self._roofline = RooflineLatency(model, gpu)  # attention FLOPs and bytes per pair / token
        # per-call constants and memos (the simulator asks for every step of every chunked launch); each
        # memoised value is computed by the same expression as before, so times are bit-identical
        self._flops_per_pair = model.attention_flops_per_pair
        self._kv_bytes_per_token_layer = model.kv_bytes_per_token / model.num_layers
        self._attention_rates: dict[int, tuple[float, float]] = {}  # num_sms -> (usable FLOP/s, bytes/s)
        self._iteration_parts: dict[tuple[int, int, int], tuple[float, float, float]] = {}

    def _elementwise_s(self, table: OperatorTable) -> np.ndarray:
        src, tp = table.shape, self.model.tp
        width = {"input_layernorm": self.model.hidden / src.hidden, "post_attention_layernorm": self.model.hidden / src.hidden,
                 "add": self.model.hidden / src.hidden, "mlp_act": self.model.intermediate / src.intermediate,
                 "attn_rope": (self.model.num_heads + self.model.num_kv_heads) / (src.num_heads + src.num_kv_heads)}
        return sum(table.op_ms(op, tp) * width[op] for op in ELEMENTWISE_OPS) / 1e3

    # ---- SM-partition and bandwidth scaling of a measured GEMM ----------------------------------------
    def _scaled_s(self, seconds: np.ndarray, num_bytes: np.ndarray, compute: np.ndarray, waves: np.ndarray,
                  num_sms: int) -> np.ndarray:
        """measured = overhead + max(memory, compute); on `num_sms` SMs of this GPU the memory side stretches
        by the bandwidth ratio and share, the compute side by the wave count ratio."""
        t = self.table_gpu
        memory = np.minimum(seconds, num_bytes / t.hbm_bytes_per_s)
        overhead = seconds - np.maximum(memory, compute)
        bw = (t.hbm_bytes_per_s / self.gpu.hbm_bytes_per_s) / self.gpu.bandwidth_share(num_sms)
        return overhead + np.maximum(memory * bw, compute * waves)

    def _scaled_gemm_s(self, seconds: np.ndarray, k: int, n: int, num_sms: int) -> np.ndarray:
        m = self.tokens
        compute = np.minimum(seconds, 2.0 * m * k * n / (self.table_gpu.peak_flops * GEMM_PEAK_MFU))
        tiles = np.ceil(m / TILE) * math.ceil(n / TILE)
        waves = np.ceil(tiles / max(num_sms, 1)) / np.ceil(tiles / self.gpu.num_sms)
        return self._scaled_s(seconds, 2.0 * (k * n + m * k + m * n), compute, waves, num_sms)

    def _layer_curve(self, num_sms: int) -> tuple[list[float], list[float]]:
        curve = self._layers.get(num_sms)
        if curve is None:
            gemms = self.shape.gemms(self.model.tp)
            total = sum(self._scaled_gemm_s(self._gemms[op], *gemms[op], num_sms) for op in GEMM_OPS)
            num_bytes = self.tokens * self.model.activation_bytes_per_token_layer  # element-wise: memory only
            zero = np.zeros_like(self.tokens)
            elementwise = self._scaled_s(self._elementwise, num_bytes, zero, zero, num_sms)
            curve = self._layers[num_sms] = (self.tokens.tolist(), (total + elementwise).tolist())
        return curve

    def _lm_head_curve(self, num_sms: int) -> tuple[list[float], list[float]]:
        curve = self._lm_head.get(num_sms)
        if curve is None:
            k, n = self.model.hidden, self.model.vocab // self.model.tp
            seconds = self.library.gemm_ms(self.tokens, k, n) / 1e3
            curve = self._lm_head[num_sms] = (self.tokens.tolist(),
                                              self._scaled_gemm_s(seconds, k, n, num_sms).tolist())
        return curve

    @staticmethod
    def _lookup(curve: tuple[list[float], list[float]], m: float) -> float:
        xs, ys = curve
        if m >= xs[-1]:
            return ys[-1] * m / xs[-1]
        i = bisect_right(xs, m)
        if i == 0:
            return ys[0]
        return ys[i - 1] + (m - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1])

    # ---- attention and communication ------------------------------------------------------------------
    def _attention_rate(self, num_sms: int) -> tuple[float, float]:
        """(usable attention FLOP/s, usable attention bytes/s) on `num_sms` SMs."""
        rates = self._attention_rates.get(num_sms)
        if rates is None:
            gpu = self.gpu
            rates = (gpu.peak_flops * ATTENTION_MFU * gpu.compute_share(num_sms),
                     gpu.hbm_bytes_per_s * ATTENTION_MBU * gpu.bandwidth_share(num_sms))
            self._attention_rates[num_sms] = rates
        return rates

    def _prefill_attention_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        """One layer, all chunks: each chunk's kernel bound time, slowed by its context, plus the floor."""
        flops, bandwidth = self._attention_rate(num_sms)
        flops_per_pair, per_token_layer = self._flops_per_pair, self._kv_bytes_per_token_layer
        total = ATTENTION_FLOOR_S
        for n, r in zip(new_lens, reused_lens):
            compute = flops_per_pair * causal_attention_pairs(n, r) / flops
            memory = per_token_layer * (r + 2 * n) / bandwidth
            total += max(compute, memory) * (1.0 + (r + n) / LONG_CONTEXT_TOKENS)
        return total

    def _decode_attention_s(self, kv_len: int, num_sms: int) -> float:
        flops, bandwidth = self._attention_rate(num_sms)
        compute = self._flops_per_pair * kv_len / flops
        memory = self._kv_bytes_per_token_layer * kv_len / bandwidth
        return ATTENTION_FLOOR_S + max(compute, memory)

    def _all_reduce_s(self, num_tokens: int) -> float:
        if self.all_reduce is None:
            return 0.0
        return 2 * self.all_reduce.time_s(self.model.tp, num_tokens * self.model.hidden * self.model.dtype_bytes)

    def iteration_s(self, num_tokens: int, num_seqs: int, attention_s: float, num_sms: int) -> float:
        """All layers of `num_tokens` tokens with `attention_s` of attention per layer, LM head on `num_seqs`."""
        layer, lm_head, emb = self._iteration_parts_s(num_tokens, num_seqs, num_sms)
        return self.model.num_layers * (layer + attention_s) + lm_head + emb + STEP_OVERHEAD_S

    def _iteration_parts_s(self, num_tokens: int, num_seqs: int, num_sms: int) -> tuple[float, float, float]:
        """(per-layer time besides attention, LM head, embedding) of an iteration, memoised by shape."""
        key = (num_tokens, num_seqs, num_sms)
        parts = self._iteration_parts.get(key)
        if parts is None:
            num_sms = min(num_sms, self.gpu.num_sms)
            layer = self._lookup(self._layer_curve(num_sms), num_tokens) + self._all_reduce_s(num_tokens)
            emb = self._lookup(self._emb, num_tokens) if num_tokens else 0.0
            lm_head = self._lookup(self._lm_head_curve(num_sms), num_seqs) if num_seqs else 0.0
            parts = self._iteration_parts[key] = (layer, lm_head, emb)
        return parts

    # ---- LatencySource ---------------------------------------------------------------------------------
    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        attention = self._prefill_attention_s(new_lens, reused_lens, num_sms)
        return self.iteration_s(sum(new_lens), len(new_lens), attention, num_sms)

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        line = self._decode_lines.get((batch, num_sms))
        if line is None:
            at_zero = self.iteration_s(batch, batch, self._decode_attention_s(0, num_sms), num_sms)
            probe = 1 << 20
            slope = (self.iteration_s(batch, batch, self._decode_attention_s(probe, num_sms), num_sms) - at_zero) / probe
            line = self._decode_lines[(batch, num_sms)] = (at_zero, slope)
        return line[0] + line[1] * kv_len

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        if not new_lens:
            return self.decode_s(batch, kv_len, num_sms)
        attention = self._prefill_attention_s(new_lens, reused_lens, num_sms)
        if batch:
            attention += self._decode_attention_s(kv_len, num_sms)
        return self.iteration_s(sum(new_lens) + batch, len(new_lens) + batch, attention, num_sms)

    def chunk_step_s(self, num_new: int, start_len: int, batch: int, kv_len: int, num_sms: int
                     ) -> Callable[[int], float]:
        """Step j of a multi-step chunked launch with `batch` > 0 decode tokens: mixed_s([num_new],
        [start_len + j * num_new], batch, kv_len + j * batch, num_sms), the same arithmetic with the
        per-launch constants bound once (sim.gpu_instance asks for every step of every such launch)."""
        flops, bandwidth = self._attention_rate(num_sms)
        flops_per_pair, per_token_layer = self._flops_per_pair, self._kv_bytes_per_token_layer
        layer, lm_head, emb = self._iteration_parts_s(num_new + batch, 1 + batch, num_sms)
        num_layers, n, triangle = self.model.num_layers, num_new, num_new * (num_new + 1) / 2

        def step_s(j: int) -> float:
            r, kv = start_len + j * n, kv_len + j * batch
            compute = flops_per_pair * (n * r + triangle) / flops  # causal_attention_pairs(n, r)
            memory = per_token_layer * (r + 2 * n) / bandwidth
            attention = ATTENTION_FLOOR_S + max(compute, memory) * (1.0 + (r + n) / LONG_CONTEXT_TOKENS)
            attention += ATTENTION_FLOOR_S + max(flops_per_pair * kv / flops, per_token_layer * kv / bandwidth)
            return num_layers * (layer + attention) + lm_head + emb + STEP_OVERHEAD_S
        return step_s
