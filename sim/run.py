"""Build a simulated cluster from a `SimConfig` and replay requests through it.

    from sim.run import SimConfig, simulate
    result = simulate(requests, SimConfig(policy="yoda", gpu="h100", model="llama3-8b"))
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from sim.gpu_instance import Timeline
from sim.replay import Watch, build, make_latency, run_part  # noqa: F401  (build, make_latency: public here too)
from sim.shards import run_sharded, shardable
from yoda.metrics import compute_metrics
from yoda.policies import policy_names
from yoda.request import SLO, Request, RequestRecord


Progress = Callable[[float, int], None]  # (simulated seconds, requests finished)


@dataclass(frozen=True)
class SimConfig:
    policy: str = "yoda"
    gpu: str = "h100"
    model: str = "llama3-8b"
    tp: int = 1
    num_instances: int = 1
    num_prefill_instances: int | None = None  # disagg: xP (default half, at least 1)
    dispatcher: str = "slo_aware"
    latency: str = "measured"  # measured | roofline | pdmux | path to a calibration profile directory
    contention: bool = True
    contention_mode: str = "default"  # default | pessimistic (sim.contention.CONTENTION_MODES)
    estimator_noise: float | None = None  # relative noise of the estimator's samples (None: sim.sampling default)
    estimator_optimism: float = 0.0  # the policy's estimator predicts this share under the truth (guard tests)
    slo: SLO = field(default_factory=SLO)
    block_size: int | None = None  # KV block tokens; None: the trace's hash block size (16..512)
    kv_blocks: int | None = None  # override the capacity derived from GPU memory
    max_batch: int = 256
    policy_options: dict = field(default_factory=dict)
    link_gbps: float = 25.0
    kv_return: str = "move"
    kv_stream: bool = True  # disagg: KV streams layer by layer during the prefill (False: sent after it)
    check_every: int = 0  # run scheduler invariant checks every N launches (0: never)
    record_timeline: bool = True
    max_decode_steps: int = 64  # decode steps one simulated event may cover when nothing else is pending
    output_len_oracle: bool = False  # ablation: policies read true output lengths (yoda.output_predictor)
    compact_records: bool = False  # finished records' token_at become array('d') (4x less memory)

    def __post_init__(self) -> None:
        if self.policy not in policy_names():
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(policy_names())}")
        if self.num_instances < 1:
            raise ValueError("num_instances must be >= 1")
        if self.policy == "disagg" and self.num_instances < 2:
            raise ValueError("disagg needs at least 2 instances (xP:yD); use --instances 2 or more")


@dataclass
class SimResult:
    config: SimConfig
    records: list[RequestRecord]
    metrics: dict
    timelines: list[Timeline | None]
    wall_s: float
    sim_end_s: float
    gave_up_at_s: float | None = None  # a watch stopped the run (records unfinished)


def auto_block_size(requests: Sequence[Request]) -> int:
    """The trace's own hash block size (coarse blocks keep the simulator fast; prefix matching stays exact)."""
    sizes = {r.hash_block_size for r in requests if r.block_hashes}
    return min(max(min(sizes), 16), 512) if sizes else 16


def simulate(requests: Sequence[Request], cfg: SimConfig, workers: int = 1,
             progress: Progress | None = None, with_metrics: bool = True, watch: Watch | None = None) -> SimResult:
    """Replay `requests` through the simulated cluster. With `workers` > 1, a cluster whose instances never
    interact (round-robin dispatch, no disaggregation) runs one instance per process, up to `workers` at a
    time; the records are the same as in one process. `progress` (simulated s, requests finished) is
    called now and then (in one process only). `with_metrics=False` leaves the metrics out (only the
    counters and the run's identity), for callers that judge the records themselves (goodput probes).
    `watch(now, new records)` may stop the run early (sim.replay.run_part; one event loop, so it runs
    unsharded); `SimResult.gave_up_at_s` then says when, and the records are as far as the run got."""
    started = time.perf_counter()
    block_size = cfg.block_size or auto_block_size(requests)
    ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    if workers > 1 and shardable(cfg) and watch is None:
        part = run_sharded(ordered, cfg, block_size, workers)
    else:
        part = run_part(ordered, cfg, block_size, progress=progress, watch=watch)
    metrics = compute_metrics(part.records, cfg.slo) if with_metrics else {}
    metrics.update(policy=cfg.policy, gpu=cfg.gpu, model=cfg.model, tp=cfg.tp, num_instances=cfg.num_instances)
    metrics["scheduler_counters"] = part.counters
    return SimResult(cfg, part.records, metrics, part.timelines, time.perf_counter() - started, part.sim_end_s,
                     part.gave_up_at_s)


def simulate_probe(requests: Sequence[Request], cfg: SimConfig, criterion: str = "strict"):
    """One goodput probe: the records, or `yoda.goodput.GaveUp` as soon as the TTFT misses alone fail
    `criterion` (the probe fails either way; stopping there saves the rest of an overloaded run)."""
    from yoda.goodput import GaveUp, TtftMissWatch

    watch = TtftMissWatch.for_criterion(criterion, cfg.slo, len(requests))
    result = simulate(requests, cfg, with_metrics=False, watch=watch)
    if result.gave_up_at_s is None:
        return result.records
    return GaveUp(result.records, result.gave_up_at_s,
                  f"{watch.misses} of {len(requests)} requests past their TTFT target by then: P{cfg.slo.percentile:g} "
                  f"TTFT is over it from {watch.limit}")
