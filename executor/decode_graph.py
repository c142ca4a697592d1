"""CUDA graphs of one decode step, captured per (decode partition, batch-size bucket).

A graph replays on the SMs of the green context it was captured in, whatever stream replays it, so each
decode partition gets its own set, captured on that partition's stream. All graphs read one set of static
input buffers (one decode launch runs at a time), share one memory pool and write their fp32 logits into
one static buffer: per-graph outputs would keep [bucket, vocab] fp32 alive for every (partition, bucket),
about 8.4 GiB at Llama-3's vocabulary (executor.memory_plan budgets the one buffer). A batch of b sequences replays
the smallest bucket >= b; padded rows decode a dummy token into the pool's scratch block.
CUDA only; needs the Triton kernels (the torch reference attention syncs with the host).
"""
from __future__ import annotations

from typing import Sequence

import torch

from executor.attn_metadata import AttnMetadata, SeqSlice, choose_num_splits
from executor.kv_pool import KVPool
from executor.model import DecoderModel


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, then every 16 up to max_batch (as SGLang/vLLM capture)."""
    small = [b for b in (1, 2, 4, 8) if b < max_batch]
    return sorted(set(small + list(range(16, max_batch + 1, 16)) + [max_batch]))


class DecodeGraphs:
    def __init__(self, model: DecoderModel, kv_pool: KVPool, max_batch: int, max_context_len: int,
                 buckets: Sequence[int] | None = None) -> None:
        if not model.use_triton:
            raise ValueError("decode graphs need the Triton kernels (use_triton=True)")
        self.model, self.kv_pool = model, kv_pool
        self.buckets = sorted(buckets) if buckets else batch_buckets(max_batch)
        self.max_batch = self.buckets[-1]
        self.max_context_len = max_context_len
        max_blocks = -(-max_context_len // kv_pool.block_size)
        device, bs = model.device, kv_pool.block_size
        scratch_slot = kv_pool.scratch_block * bs
        # static inputs; padded rows point at the scratch block
        self.token_ids = torch.zeros(self.max_batch, dtype=torch.int64, device=device)
        self.positions = torch.zeros(self.max_batch, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((self.max_batch,), scratch_slot, dtype=torch.int64, device=device)
        self.block_tables = torch.full((self.max_batch, max_blocks), kv_pool.scratch_block, dtype=torch.int32,
                                       device=device)
        self.seq_lens = torch.ones(self.max_batch, dtype=torch.int32, device=device)
        self.query_start = torch.arange(self.max_batch + 1, dtype=torch.int32, device=device)
        self.logits = torch.empty((self.max_batch, model.config.vocab_size), dtype=torch.float32, device=device)
        self.pool = None  # one memory pool for every graph, made at the first capture (CUDA only)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _metadata(self, batch: int, num_sms: int) -> AttnMetadata:
        num_splits = choose_num_splits(batch, self.model.num_kv_heads, self.max_context_len, num_sms)
        return AttnMetadata(self.positions[:batch], self.slot_mapping[:batch], self.block_tables[:batch],
                            self.seq_lens[:batch], self.query_start[:batch + 1], 1, num_splits)

    def capture(self, num_sms: int, stream: torch.cuda.Stream) -> None:
        """Capture every bucket on `stream` (the decode partition with `num_sms` SMs). Blocks until done."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        torch.cuda.synchronize()  # static inputs and weights made on other streams are ready
        with torch.cuda.stream(stream):
            for batch in reversed(self.buckets):  # largest first: later captures reuse its pool memory
                meta = self._metadata(batch, num_sms)
                out = self.logits[:batch]
                for _ in range(2):  # warm up: compile Triton kernels, settle cuBLAS workspaces
                    self.model.forward(self.token_ids[:batch], meta, self.kv_pool, out)
                stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                    self.model.forward(self.token_ids[:batch], meta, self.kv_pool, out)
                self._graphs[(num_sms, batch)] = (graph, out)
        stream.synchronize()

    def can_run(self, num_sms: int, batch: int) -> bool:
        return batch <= self.max_batch and (num_sms, self.buckets[-1]) in self._graphs

    def fill(self, token_ids: Sequence[int], slices: Sequence[SeqSlice]) -> int:
        """Write a batch into the static inputs on the current stream; returns its bucket. Padded rows point
        at the scratch block; table columns past a row's length keep stale ids (never read: seq_lens bound them)."""
        b = len(slices)
        bucket = next(x for x in self.buckets if x >= b)
        bs, scratch = self.kv_pool.block_size, self.kv_pool.scratch_block
        positions = [s.start_len for s in slices]
        if max(positions) >= self.max_context_len:
            raise ValueError(f"decode position {max(positions)} beyond captured context {self.max_context_len}")
        slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(slices, positions)]
        used = [p // bs + 1 for p in positions]  # blocks each row reads
        tables = torch.full((bucket, max(used)), scratch, dtype=torch.int32)
        for i, (s, n) in enumerate(zip(slices, used)):
            tables[i, :n] = torch.tensor(s.block_table[:n], dtype=torch.int32)
        pad = bucket - b
        pin = self.token_ids.is_cuda

        def put(dst: torch.Tensor, src: torch.Tensor) -> None:
            dst.copy_(src.pin_memory() if pin else src, non_blocking=True)

        put(self.token_ids[:bucket], torch.tensor(list(token_ids) + [0] * pad, dtype=torch.int64))
        put(self.positions[:bucket], torch.tensor(positions + [0] * pad, dtype=torch.int64))
        put(self.slot_mapping[:bucket], torch.tensor(slots + [scratch * bs] * pad, dtype=torch.int64))
        put(self.seq_lens[:bucket], torch.tensor([p + 1 for p in positions] + [1] * pad, dtype=torch.int32))
        put(self.block_tables[:bucket, :tables.shape[1]], tables)
        return bucket

    def run(self, num_sms: int, token_ids: Sequence[int], slices: Sequence[SeqSlice]) -> torch.Tensor:
        """Fill and replay on the current stream; [b, vocab] logits, a view of the graph's output buffer
        (read it before the next replay)."""
        return self.replay(num_sms, self.fill(token_ids, slices))[:len(slices)]

    def replay(self, num_sms: int, bucket: int) -> torch.Tensor:
        """Replay one captured graph on the current stream with the inputs as they are; [bucket, vocab] logits
        (a view of the one shared buffer: read it before the next replay of any graph)."""
        graph, logits = self._graphs[(num_sms, bucket)]
        graph.replay()
        return logits
