"""Simulate a cluster's instances in parallel processes when nothing couples them.

Under round-robin dispatch an instance's requests depend only on arrival order, not on any instance's
state, and without disaggregation no KV moves between instances. Each instance is then a simulation of
its own: request k (in arrival order) goes to instance k mod N, and running the instances in separate
event loops gives the same records as one loop (each instance sees the same events in the same order).

Workers are forked so they inherit the loaded requests and imported modules (spawning would re-import
numpy, scipy and simpy in each, about a second). Where fork is unavailable the cluster runs in one process.
"""
from __future__ import annotations

import multiprocessing
from array import array
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from sim.replay import RunPart, run_part, sum_counters
from yoda.request import Request

# what forked workers read: (requests in arrival order, config, block size); set only while a pool runs
_INPUT: tuple | None = None


def shardable(cfg) -> bool:
    """Whether the instances of `cfg`'s cluster never interact (see the module docstring)."""
    return cfg.num_instances > 1 and cfg.dispatcher == "round_robin" and cfg.policy != "disagg"


def round_robin_shard(requests: Sequence[Request], index: int, num_instances: int) -> list[Request]:
    """The requests RoundRobin sends to instance `index` (dispatch counts every request, in arrival order)."""
    return list(requests[index::num_instances])


def _run_shard(index: int):
    requests, cfg, block_size = _INPUT
    part = run_part(round_robin_shard(requests, index, cfg.num_instances), cfg, block_size, only=index)
    for record in part.records:  # an array of doubles pickles as one buffer, a list float by float
        record.token_at = array("d", record.token_at)
    return part


def run_sharded(requests: Sequence[Request], cfg, block_size: int, workers: int):
    """One RunPart for the whole cluster, from one event loop per instance in up to `workers` processes."""
    if not shardable(cfg):
        raise ValueError("only a round-robin cluster without disaggregation can be split into shards")
    if "fork" not in multiprocessing.get_all_start_methods():
        return run_part(requests, cfg, block_size)
    global _INPUT
    _INPUT = (requests, cfg, block_size)
    try:
        fork = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, cfg.num_instances), mp_context=fork) as pool:
            parts = list(pool.map(_run_shard, range(cfg.num_instances)))
    finally:
        _INPUT = None
    records = sorted((r for p in parts for r in p.records), key=lambda r: r.request_id)
    for record in records:
        record.token_at = record.token_at.tolist()
    return RunPart(records, [t for p in parts for t in p.timelines], sum_counters(p.counters for p in parts),
                   max(p.sim_end_s for p in parts))
