"""The calibration bench: an executor Engine with its own KV cache that times one launch at a time (one per
lane for the contention grid), and the grids of shapes it measures (`GRIDS`: quick, coarse and full, per
device type). `calibration/measure.py` runs the grids through it; `calibration/contention.py` the
both-lanes cells.
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

from executor.engine import Engine
from executor.kv_pool import KVPool
from executor.runner import SPIN_S, Backend, kv_blocks_for
from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.kv_cache import KVCache, chain_keys
from yoda.partitions import PartitionMenu

DECODE_STEPS = 3  # timed decode steps per measurement (after one warm-up step); their mean is the value


@dataclass(frozen=True)
class Grid:
    prefill_new: tuple[int, ...]
    prefill_reused: tuple[int, ...]
    prefill_batch: tuple[int, ...]
    max_prefill_tokens: int  # cap on batch x new_len per launch
    decode_batch: tuple[int, ...]
    decode_context: tuple[int, ...]
    reps: int
    contention_prefill: tuple[int, ...] = ()  # CUDA only: prefill new tokens beside decode
    contention_batch: tuple[int, ...] = ()
    contention_context: tuple[int, ...] = ()
    # fused iterations (chunked prefill, Yoda's piggyback) on the whole device: a prefill chunk of each of
    # these sizes beside every other decode grid batch and context
    mixed_new: tuple[int, ...] = ()


# NOTE: batch sizes 1 and 3 with power-of-two lengths keep every (batch x new_len) total distinct:
# sim.profile_table keys its correction grid by the total, so equal totals of different shapes would mix.
GRIDS: dict[str, dict[str, Grid]] = {
    # CPU: prefill at batch 1 only. The paper's formula has no per-sequence term and the CPU reference
    # attention loops over sequences, so batched shapes would bend sim.profile_table's correction grid.
    "cpu": {
        "quick": Grid((1, 4, 16, 64, 128, 256, 384, 512, 768), (0, 128, 256, 512), (1,), 1024, (1, 2, 4, 8, 16),
                      (64, 256, 1024), 5, mixed_new=(16, 128)),
        "coarse": Grid((1, 4, 16, 32, 64, 128, 192, 256, 384, 512, 768, 1024), (0, 128, 256, 512, 1024), (1,), 1024,
                       (1, 2, 4, 8, 16, 32), (64, 256, 512, 1024, 2048), 7, mixed_new=(16, 128, 512)),
        "full": Grid((1, 4, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048), (0, 64, 128, 256, 512,
                     1024, 2048), (1,), 2048, (1, 2, 4, 8, 16, 32, 64), (32, 128, 256, 512, 1024, 2048), 9,
                     mixed_new=(16, 128, 512, 1024)),
    },
    "cuda": {
        "quick": Grid((1, 512, 2048, 8192), (0, 2048), (1,), 8192, (1, 32, 128), (2048,), 2, mixed_new=(512, 2048)),
        "coarse": Grid((1, 64, 256, 1024, 2048, 4096, 8192), (0, 8192), (1, 3), 12288, (1, 8, 32, 64, 128, 256),
                       (512, 2048, 8192), 3, (2048, 8192), (16, 64), (2048,), mixed_new=(256, 1024, 2048, 4096)),
        "full": Grid((1, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768), (0, 2048, 8192, 32768), (1, 3), 49152,
                     (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256), (256, 1024, 4096, 16384), 5,
                     (2048, 8192, 32768), (1, 16, 64, 256), (1024, 4096, 16384),
                     mixed_new=(128, 256, 512, 1024, 2048, 4096, 8192)),
    },
}


def grid_kv_blocks(grid: Grid, block_size: int) -> int:
    """KV blocks that hold the grid's largest prefill or decode batch with distinct blocks (+ slack)."""
    prefill = max(b * (n + r) for n in grid.prefill_new for r in grid.prefill_reused for b in grid.prefill_batch
                  if n * b <= grid.max_prefill_tokens)
    decode = max(b * (c + DECODE_STEPS + 8) for b in grid.decode_batch for c in grid.decode_context)
    return int(1.2 * max(prefill, decode) / block_size) + 64


def grid_for(device: str, name: str) -> Grid:
    if name not in GRIDS[device]:
        raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS[device])}")
    return GRIDS[device][name]


class Bench:
    """An Engine with its own KV cache, timing one launch at a time (or one per lane, for contention)."""

    def __init__(self, backend: Backend, block_size: int = 16, kv_blocks: int | None = None,
                 max_batch: int = 256, clock: str = "wall") -> None:
        self.backend, self.model = backend, backend.model
        self.clock = time.thread_time if clock == "cpu" else time.perf_counter
        kv_blocks = kv_blocks or kv_blocks_for(backend, [], block_size)
        self.cache = KVCache(kv_blocks, block_size)
        pool = KVPool.for_model(self.model.config, kv_blocks, block_size, self.model.dtype, backend.device)
        self.engine = Engine(self.model, pool, self.cache, backend.device, backend.partitions, use_cuda_graphs=True)
        self.engine.capture_decode_graphs(max_batch)
        self.is_cuda = backend.device.type == "cuda"
        self.menu = PartitionMenu(backend.num_sms)
        self._ids = itertools.count()
        self._chains = itertools.count(1)
        self._chain: list[int] = []
        self.max_len = self.model.config.max_position_embeddings

    # ---- requests ----------------------------------------------------------------------------------
    def add(self, num_tokens: int, room: int, shared_len: int = 0) -> int:
        """A request of `num_tokens` prompt tokens with KV blocks for `room` tokens; its first
        `shared_len` tokens' blocks are shared with the other requests of this call's chain."""
        rid = next(self._ids)
        vocab = self.model.config.vocab_size
        self.engine.add_request(rid, [(rid * 131 + 7 * i) % vocab for i in range(num_tokens)])
        self.cache.allocate(rid, room, self._chain[: shared_len // self.cache.block_size] if shared_len else ())
        self.cache.commit(rid)
        return rid

    def _new_chain(self, num_tokens: int) -> None:
        tag = next(self._chains) << 32
        self._chain = chain_keys([tag + i for i in range(num_tokens // self.cache.block_size)])

    def requests(self, batch: int, num_tokens: int, room: int, shared_len: int) -> tuple[list[int], bool]:
        """`batch` requests; prefixes of `shared_len` tokens share blocks when distinct ones do not fit."""
        self._new_chain(room)
        fits = batch * self.cache.blocks_for(room) <= 0.9 * self.cache.num_free_blocks
        share = 0 if fits else shared_len
        return [self.add(num_tokens, room, share) for _ in range(batch)], not fits

    def release(self, ids: list[int]) -> None:
        for rid in ids:
            self.engine.free(rid)
            self.cache.free(rid)

    def fits(self, batch: int, room: int, shared_len: int) -> bool:
        private = self.cache.blocks_for(room) - shared_len // self.cache.block_size
        return self.cache.blocks_for(room) + (batch - 1) * private <= 0.9 * self.cache.num_free_blocks

    # ---- timing ------------------------------------------------------------------------------------
    def run(self, launch: Launch) -> float:
        """Seconds one launch takes, as the runner sees it: CUDA event time, or on the CPU the runner's
        clock around start and poll (the launch runs inside start)."""
        t0 = self.clock()
        self.engine.start(launch, 0.0)
        while True:
            done = self.engine.poll(float("inf"))
            if done:
                return done[0][1] if self.is_cuda else self.clock() - t0
            time.sleep(SPIN_S)

    def prefill_launch(self, ids: list[int], new_len: int, reused_len: int, sms: int) -> Launch:
        layers = self.model.num_layers
        chunks = tuple(PrefillChunk(rid, reused_len, new_len) for rid in ids)
        return Launch(PREFILL, self.backend.stream_sms(PREFILL, sms), prefill=chunks, layer_end=layers,
                      num_layers=layers)

    def prefill_s(self, sms: int, new_len: int, reused_len: int, batch: int,
                  runs: int = 1) -> tuple[list[float], bool]:
        """Latencies of `runs` prefill launches after a warm-up launch (CUDA compiles new shapes; on the CPU
        the caches then hold this launch's data, as in serving, where a launch rarely follows a much
        larger one)."""
        total = new_len + reused_len
        ids, shared = self.requests(batch, total, total, reused_len)
        try:
            launch = self.prefill_launch(ids, new_len, reused_len, sms)
            self.run(launch)
            times = [self.run(launch) for _ in range(runs)]
        finally:
            self.release(ids)
        return times, shared

    def decode_ready(self, batch: int, context: int, steps: int) -> tuple[list[int], bool]:
        """`batch` requests that can decode: their last prompt token is prefilled (the rest of the KV is
        whatever the pool holds: timing only), with room for `steps` decode steps."""
        ids, shared = self.requests(batch, context, context + steps + 1, context)
        self.run(self.prefill_launch(ids, 1, context - 1, self.backend.num_sms))
        return ids, shared

    def decode_launch(self, ids: list[int], kv_len: int, sms: int, prefill: tuple[PrefillChunk, ...] = ()) -> Launch:
        layers = self.model.num_layers if prefill else 0
        return Launch(DECODE, self.backend.stream_sms(DECODE, sms), decode_ids=tuple(ids), decode_kv_len=kv_len,
                      prefill=prefill, layer_end=layers, num_layers=layers)

    def decode_s(self, sms: int, batch: int, context: int, steps: int = DECODE_STEPS,
                 prefill_new: int = 0) -> tuple[list[float], int, bool]:
        """Latencies of `steps` decode steps (after a warm-up step) and their mean total KV length. With
        `prefill_new`, each step is a fused iteration that also prefills a chunk of that many tokens (as
        chunked prefill runs them)."""
        ids, shared = self.decode_ready(batch, context, steps + 1)
        extra = self.requests(1, prefill_new, prefill_new, 0)[0] if prefill_new else []
        prefill = tuple(PrefillChunk(rid, 0, prefill_new) for rid in extra)
        try:
            times, kv = [], []
            for step in range(steps + 1):
                kv_len = batch * (context + 1 + step)
                times.append(self.run(self.decode_launch(ids, kv_len, sms, prefill)))
                kv.append(kv_len)
        finally:
            self.release(ids + extra)
        return times[1:], round(statistics.mean(kv[1:])), shared
