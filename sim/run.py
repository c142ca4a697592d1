"""Build a simulated cluster from a `SimConfig` and replay requests through it.

    from sim.run import SimConfig, simulate
    result = simulate(requests, SimConfig(policy="yoda", gpu="h100", model="llama3-8b"))
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import simpy

from sim.cluster import Cluster, Link
from sim.contention import ContentionModel, NoContention
from sim.gpu_instance import GpuInstance, Timeline
from sim.hardware import GpuSpec, get_gpu
from sim.latency import LatencySource, PdmuxFitLatency, RooflineLatency
from sim.profile_table import ProfileTableLatency
from sim.model_spec import ModelSpec, get_model, kv_capacity_blocks
from sim.sampling import estimator_for
from sim.shards import run_sharded, shardable
from yoda.disaggregation import DisaggDecode, DisaggPrefill
from yoda.dispatcher import make_dispatcher
from yoda.metrics import compute_metrics
from yoda.partitions import PartitionMenu
from yoda.policies import make_scheduler, policy_names
from yoda.request import SLO, Request, RequestRecord
from yoda.scheduler import SchedulerConfig


@dataclass(frozen=True)
class SimConfig:
    policy: str = "yoda"
    gpu: str = "h100"
    model: str = "llama3-8b"
    tp: int = 1
    num_instances: int = 1
    num_prefill_instances: int | None = None  # disagg: xP (default half, at least 1)
    dispatcher: str = "slo_aware"
    latency: str = "roofline"  # roofline | pdmux | path to a calibration profile directory
    contention: bool = True
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


def make_latency(name: str, model: ModelSpec, gpu: GpuSpec) -> LatencySource:
    if name == "roofline":
        return RooflineLatency(model, gpu)
    if name == "pdmux":
        return PdmuxFitLatency.for_gpu(gpu, model)
    if Path(name).is_dir():
        return ProfileTableLatency(name)
    raise ValueError(f"latency source must be 'roofline', 'pdmux' or a profile directory, got {name!r}")


def _schedulers(cfg: SimConfig, sched_cfg: SchedulerConfig, estimator_factory, count: int):
    menu_keys = ("granularity", "step_sms")
    if cfg.policy != "disagg":
        options = dict(cfg.policy_options)
        if cfg.policy != "yoda":
            options = {k: v for k, v in options.items() if k not in menu_keys}
        make = (lambda: make_scheduler(cfg.policy, sched_cfg, cfg.slo, estimator=estimator_factory(), **options)
                ) if cfg.policy == "yoda" else (lambda: make_scheduler(cfg.policy, sched_cfg, cfg.slo, **options))
        return [make() for _ in range(count)]
    num_p = cfg.num_prefill_instances or max(1, cfg.num_instances // 2)
    if not 0 < num_p < cfg.num_instances:
        raise ValueError(f"disagg needs 1 <= prefill instances < {cfg.num_instances}, got {num_p}")
    # policy options configure the prefill side (chunk knobs, admission); decode instances take none
    options = {k: v for k, v in cfg.policy_options.items() if k not in menu_keys}
    return ([DisaggPrefill(sched_cfg, cfg.slo, **options) for _ in range(num_p)]
            + [DisaggDecode(sched_cfg, cfg.slo) for _ in range(cfg.num_instances - num_p)])


def auto_block_size(requests: Sequence[Request]) -> int:
    """The trace's own hash block size (coarse blocks keep the simulator fast; prefix matching stays exact)."""
    sizes = {r.hash_block_size for r in requests if r.block_hashes}
    return min(max(min(sizes), 16), 512) if sizes else 16


def build(cfg: SimConfig, env: simpy.Environment, block_size: int = 16, only: int | None = None) -> Cluster:
    """The simulated cluster; with `only`, just that instance (a shard of a cluster whose instances never
    interact, see sim/shards.py)."""
    if only is not None and not 0 <= only < cfg.num_instances:
        raise ValueError(f"instance {only} is not in a cluster of {cfg.num_instances}")
    gpu = get_gpu(cfg.gpu)
    model = get_model(cfg.model, tp=cfg.tp)
    latency = make_latency(cfg.latency, model, gpu)
    contention = ContentionModel() if cfg.contention else NoContention()
    kv_blocks = cfg.kv_blocks or kv_capacity_blocks(model, gpu, block_size)
    sched_cfg = SchedulerConfig(num_sms=gpu.num_sms, num_layers=model.num_layers, kv_blocks=kv_blocks,
                                block_size=block_size, max_batch=cfg.max_batch)
    menu = PartitionMenu(gpu.num_sms, cfg.policy_options.get("granularity", 8), cfg.policy_options.get("step_sms", 16))
    key = (cfg.latency, cfg.contention, cfg.gpu, cfg.model, cfg.tp, menu)

    def estimator_factory():
        return estimator_for(key, latency, contention, gpu, model, menu)

    schedulers = _schedulers(cfg, sched_cfg, estimator_factory, cfg.num_instances if only is None else 1)
    indices = range(cfg.num_instances) if only is None else (only,)
    instances = [GpuInstance(env, i, s, latency, contention, gpu, model, cfg.record_timeline, cfg.check_every,
                             cfg.max_decode_steps)
                 for i, s in zip(indices, schedulers)]
    return Cluster(env, instances, make_dispatcher(cfg.dispatcher), model.kv_bytes_per_token,
                   Link(cfg.link_gbps), cfg.kv_return, model.num_layers if cfg.kv_stream else 0)


@dataclass
class RunPart:
    """What one event loop produced: the whole cluster's, or one shard's (sim/shards.py)."""

    records: list[RequestRecord]
    timelines: list[Timeline | None]
    counters: dict[str, int]
    sim_end_s: float


def sum_counters(counters: Iterable[dict[str, int]]) -> dict[str, int]:
    """Key-wise sum of schedulers' (or shards') counters, keys in first-seen order."""
    total: dict[str, int] = {}
    for c in counters:
        for key, value in c.items():
            total[key] = total.get(key, 0) + value
    return total


def run_part(requests: Sequence[Request], cfg: SimConfig, block_size: int, only: int | None = None) -> RunPart:
    """Replay `requests` (in arrival order) through the cluster, or through instance `only` alone."""
    env = simpy.Environment()
    cluster = build(cfg, env, block_size, only)
    env.process(cluster.replay_open_loop(requests))
    env.run()
    records = cluster.records()
    unfinished = [r.request_id for r in records if r.finished_at is None]
    if unfinished:
        raise RuntimeError(f"simulation ended with {len(unfinished)} unfinished requests (first: {unfinished[:5]})")
    counters = sum_counters(getattr(g.scheduler, "counters", {}) for g in cluster.instances)
    if cluster.num_transfers:
        counters.update(kv_transfers=cluster.num_transfers, kv_transferred_gb=round(cluster.transferred_bytes / 1e9, 3))
    return RunPart(records, [g.timeline for g in cluster.instances], counters, env.now)


def simulate(requests: Sequence[Request], cfg: SimConfig, workers: int = 1) -> SimResult:
    """Replay `requests` through the simulated cluster. With `workers` > 1, a cluster whose instances never
    interact (round-robin dispatch, no disaggregation) runs one instance per process, up to `workers` at a
    time; the records are the same as in one process."""
    started = time.perf_counter()
    block_size = cfg.block_size or auto_block_size(requests)
    ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    if workers > 1 and shardable(cfg):
        part = run_sharded(ordered, cfg, block_size, workers)
    else:
        part = run_part(ordered, cfg, block_size)
    metrics = compute_metrics(part.records, cfg.slo)
    metrics.update(policy=cfg.policy, gpu=cfg.gpu, model=cfg.model, tp=cfg.tp, num_instances=cfg.num_instances)
    metrics["scheduler_counters"] = part.counters
    return SimResult(cfg, part.records, metrics, part.timelines, time.perf_counter() - started, part.sim_end_s)
