"""Fit the policy's estimator from a latency source and its guard from a contention model.

The estimator is separate from the simulator's ground truth: it is a least-squares fit on samples of the
source, each with measurement noise (relative, Gaussian: the measured tables' spread, at least 3%), so
policies run against model error as they would on hardware. `optimism` biases every sample low (0.1: the
estimator predicts 10% under the truth) to test the guard against estimation error. The guard holds the
contention model's worst-case slowdown over the coarse grid of DESIGN.md 4.3.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from functools import lru_cache

from sim.contention import ContentionModel
from sim.hardware import GpuSpec
from sim.latency import LatencySource
from sim.model_spec import ModelSpec
from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.estimator import Estimator, Sample
from yoda.guard import BATCH_GRID, CONTEXT_GRID, PREFILL_TOKENS_GRID, REUSED_TOKENS_GRID, GuardTable
from yoda.partitions import PartitionMenu

PREFILL_NEW = (256, 512, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 65536)
PREFILL_REUSED = (0, 2048, 8192, 32768)
PREFILL_BATCH = (1, 2, 4)
DECODE_BATCH = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)
DECODE_CTX = (256, 1024, 4096, 16384)
MIXED_NEW = (64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
MIXED_REUSED = (0, 2048, 8192)
MIN_SAMPLE_NOISE = 0.03  # issue 17: fit on samples at least this noisy (relative standard deviation)


@lru_cache(maxsize=1)
def sample_noise() -> float:
    """Relative noise of a timing sample: the largest median spread (std / median) of one layer's GEMMs in
    the shipped measured tables (0.4-1.4%), floored at MIN_SAMPLE_NOISE."""
    from sim.operator_tables import TABLES, OperatorTable

    spreads = [OperatorTable(name).relative_spread(tp) for names in TABLES.values() for name in names
               for tp in (1, 2, 4, 8)]
    return max(MIN_SAMPLE_NOISE, *spreads)


def perturb(samples: list[Sample], noise: float, optimism: float = 0.0, seed: int = 0) -> list[Sample]:
    """Each latency times (1 - optimism) and a Gaussian factor of relative std `noise` (clipped at 0.5)."""
    if not 0 <= optimism < 1 or noise < 0:
        raise ValueError(f"optimism must be in [0, 1) and noise >= 0, got {optimism}, {noise}")
    rng = random.Random(seed)
    return [s._replace(latency_s=s.latency_s * (1 - optimism) * max(0.5, rng.gauss(1.0, noise))) for s in samples]


def source_samples(source: LatencySource, menu: PartitionMenu) -> list[Sample]:
    """Solo latencies of the source over a grid, for every partition size of the menu."""
    samples = []
    for sms in menu.prefill_sizes():
        for n, r, b in itertools.product(PREFILL_NEW, PREFILL_REUSED, PREFILL_BATCH):
            if n * b <= 65536:
                samples.append(Sample("prefill", sms, n, r, b, 0, source.prefill_s([n] * b, [r] * b, sms)))
    for sms in menu.decode_sizes():
        for b, ctx in itertools.product(DECODE_BATCH, DECODE_CTX):
            samples.append(Sample("decode", sms, 0, 0, b, b * ctx, source.decode_s(b, b * ctx, sms)))
    # fused iterations run on the whole GPU (chunked prefill, Yoda's piggyback)
    for n, r, b, ctx in itertools.product(MIXED_NEW, MIXED_REUSED, DECODE_BATCH, DECODE_CTX):
        samples.append(Sample("mixed", menu.num_sms, n, r, b, b * ctx,
                              source.mixed_s([n], [r], b, b * ctx, menu.num_sms)))
    return samples


def contention_guards(contention: ContentionModel, menu: PartitionMenu, gpu: GpuSpec,
                      model: ModelSpec) -> tuple[GuardTable, GuardTable]:
    """Worst-case slowdown of each lane beside the other, per grid cell (decode guard, prefill guard)."""
    decode_guard, prefill_guard = GuardTable(), GuardTable()
    L = model.num_layers
    for split in menu.splits:
        for pn, pr, b, ctx in itertools.product(PREFILL_TOKENS_GRID, REUSED_TOKENS_GRID, BATCH_GRID, CONTEXT_GRID):
            prefill = Launch(PREFILL, split.prefill_sms, prefill=(PrefillChunk(0, pr, pn),), layer_end=L, num_layers=L)
            decode = Launch(DECODE, split.decode_sms, decode_ids=tuple(range(b)), decode_kv_len=b * ctx, num_layers=L)
            decode_guard.set_worst(GuardTable.cell(split.decode_sms, pn, pr, b, ctx),
                                   contention.slowdown(decode, prefill, gpu, model))
            prefill_guard.set_worst(GuardTable.cell(split.prefill_sms, pn, pr, b, ctx),
                                    contention.slowdown(prefill, decode, gpu, model))
    decode_guard.default = decode_guard.worst
    prefill_guard.default = prefill_guard.worst
    return decode_guard, prefill_guard


def fit_estimator(source: LatencySource, contention: ContentionModel, gpu: GpuSpec, model: ModelSpec,
                  menu: PartitionMenu, noise: float | None = None, optimism: float = 0.0, seed: int = 0) -> Estimator:
    """Estimator fitted on noisy samples of `source` (noise None: sample_noise()), guards from `contention`."""
    samples = perturb(source_samples(source, menu), sample_noise() if noise is None else noise, optimism, seed)
    est = Estimator.fit(samples).refit_all(samples)
    est.decode_guard, est.prefill_guard = contention_guards(contention, menu, gpu, model)
    return est


_FITTED: dict[tuple, Estimator] = {}


def estimator_for(key: tuple, source, contention, gpu, model, menu, noise: float | None = None,
                  optimism: float = 0.0) -> Estimator:
    """Fit once per `key` (latency source, GPU, model, menu, noise, optimism) in a process; each run gets its
    own copy because schedulers refine the guards online."""
    if key not in _FITTED:
        _FITTED[key] = fit_estimator(source, contention, gpu, model, menu, noise, optimism)
    fitted = _FITTED[key]
    # the coefficients are shared read-only; only the guards change while a run refines them
    return dataclasses.replace(fitted, decode_guard=fitted.decode_guard.copy(), prefill_guard=fitted.prefill_guard.copy())
