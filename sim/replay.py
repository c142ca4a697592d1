"""Build a simulated cluster and run one event loop over it: the whole cluster, or one instance of it (a
shard, see sim/shards.py). `sim.run.simulate` is the entry point; this module is what it and the shards share.

`cfg` below is a `sim.run.SimConfig` (not imported: sim/run.py imports this module).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import simpy

from sim.cluster import Cluster, Link
from sim.contention import ContentionModel, NoContention
from sim.gpu_instance import GpuInstance, Timeline
from sim.hardware import GpuSpec, get_gpu
from sim.latency import LatencySource, PdmuxFitLatency, RooflineLatency
from sim.measured_latency import MeasuredLatency
from sim.profile_table import ProfileTableLatency
from sim.model_spec import ModelSpec, get_model, kv_capacity_blocks
from sim.progress import run_reporting
from sim.sampling import estimator_for
from yoda.disaggregation import DisaggDecode, DisaggPrefill
from yoda.dispatcher import make_dispatcher
from yoda.partitions import PartitionMenu
from yoda.policies import make_scheduler
from yoda.request import Request, RequestRecord
from yoda.scheduler import SchedulerConfig


Progress = Callable[[float, int], None]  # (simulated seconds, requests finished)


def make_latency(name: str, model: ModelSpec, gpu: GpuSpec) -> LatencySource:
    if name == "measured":
        return MeasuredLatency(model, gpu)
    if name == "roofline":
        return RooflineLatency(model, gpu)
    if name == "pdmux":
        return PdmuxFitLatency.for_gpu(gpu, model)
    if Path(name).is_dir():
        return ProfileTableLatency(name)
    raise ValueError(f"latency source must be 'measured', 'roofline', 'pdmux' or a profile directory, got {name!r}")


def _schedulers(cfg, sched_cfg: SchedulerConfig, estimator_factory, count: int):
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


def build(cfg, env: simpy.Environment, block_size: int = 16, only: int | None = None) -> Cluster:
    """The simulated cluster; with `only`, just that instance (a shard of a cluster whose instances never
    interact, see sim/shards.py)."""
    if only is not None and not 0 <= only < cfg.num_instances:
        raise ValueError(f"instance {only} is not in a cluster of {cfg.num_instances}")
    gpu = get_gpu(cfg.gpu)
    model = get_model(cfg.model, tp=cfg.tp)
    latency = make_latency(cfg.latency, model, gpu)
    if isinstance(latency, PdmuxFitLatency) and cfg.policy == "chunked":
        latency.check_chunk_tokens(int(cfg.policy_options.get("token_budget", 512)))
    contention = ContentionModel.for_mode(cfg.contention_mode) if cfg.contention else NoContention()
    kv_blocks = cfg.kv_blocks or kv_capacity_blocks(model, gpu, block_size)
    sched_cfg = SchedulerConfig(num_sms=gpu.num_sms, num_layers=model.num_layers, kv_blocks=kv_blocks,
                                block_size=block_size, max_batch=cfg.max_batch,
                                output_len_oracle=cfg.output_len_oracle)
    menu = PartitionMenu(gpu.num_sms, cfg.policy_options.get("granularity", 8), cfg.policy_options.get("step_sms", 16))
    key = (cfg.latency, cfg.contention, cfg.contention_mode, cfg.gpu, cfg.model, cfg.tp, menu, cfg.estimator_noise,
           cfg.estimator_optimism)

    def estimator_factory():
        return estimator_for(key, latency, contention, gpu, model, menu, cfg.estimator_noise, cfg.estimator_optimism)

    schedulers = _schedulers(cfg, sched_cfg, estimator_factory, cfg.num_instances if only is None else 1)
    indices = range(cfg.num_instances) if only is None else (only,)
    instances = [GpuInstance(env, i, s, latency, contention, gpu, model, cfg.record_timeline, cfg.check_every,
                             cfg.max_decode_steps, cfg.compact_records)
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
    gave_up_at_s: float | None = None  # the watch stopped the run here (records unfinished)


def sum_counters(counters: Iterable[dict[str, int]]) -> dict[str, int]:
    """Key-wise sum of schedulers' (or shards') counters, keys in first-seen order."""
    total: dict[str, int] = {}
    for c in counters:
        for key, value in c.items():
            total[key] = total.get(key, 0) + value
    return total


Watch = Callable[[float, Sequence[RequestRecord]], bool]  # (now, records new since the last call) -> stop


def run_part(requests: Sequence[Request], cfg, block_size: int, only: int | None = None,
             progress: Progress | None = None, watch: Watch | None = None, watch_every_s: float = 1.0) -> RunPart:
    """Replay `requests` (in arrival order) through the cluster, or through instance `only` alone;
    `progress(simulated s, requests finished)` is called now and then when given. `watch(now, new records)`
    is called at least every `watch_every_s` simulated seconds (after an event, never adding one); when it
    returns True the run stops there, unfinished (`RunPart.gave_up_at_s`)."""
    env = simpy.Environment()
    cluster = build(cfg, env, block_size, only)
    env.process(cluster.replay_open_loop(requests))
    gave_up_at = None
    if watch is not None:
        gave_up_at = _run_watching(env, cluster, watch, watch_every_s)
    elif progress is None:
        env.run()
    else:
        run_reporting(env, lambda: sum(r.finished_at is not None for r in cluster.records()), progress)
    records = cluster.records()
    unfinished = [r.request_id for r in records if r.finished_at is None]
    if unfinished and gave_up_at is None:
        raise RuntimeError(f"simulation ended with {len(unfinished)} unfinished requests (first: {unfinished[:5]})")
    counters = sum_counters(getattr(g.scheduler, "counters", {}) for g in cluster.instances)
    counters.update(sim_decisions=sum(g.num_decisions for g in cluster.instances),
                    sim_launches=sum(g.scheduler.num_steps for g in cluster.instances))
    if cluster.num_transfers:
        counters.update(kv_transfers=cluster.num_transfers, kv_transferred_gb=round(cluster.transferred_bytes / 1e9, 3))
    return RunPart(records, [g.timeline for g in cluster.instances], counters, env.now, gave_up_at)


def _run_watching(env: simpy.Environment, cluster: Cluster, watch: Watch, every_s: float) -> float | None:
    """env.run(), asking `watch` after the first event at or past each `every_s` mark (the same events in
    the same order); the simulated time it said stop at, or None when the run ended on its own."""
    from simpy.core import EmptySchedule

    lists = [g.scheduler.records for g in cluster.prefill]  # each instance's records, in arrival order
    seen = [0] * len(lists)
    step, next_check = env.step, env.now + every_s
    try:
        while True:
            step()
            if env.now >= next_check:
                new = []
                for k, records in enumerate(lists):
                    new += records[seen[k]:]
                    seen[k] = len(records)
                if watch(env.now, new):
                    return env.now
                next_check = env.now + every_s
    except EmptySchedule:
        return None
