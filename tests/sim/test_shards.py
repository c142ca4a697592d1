"""Round-robin clusters run one instance per process (sim/shards.py) and give the one-process records."""
import dataclasses

import pytest

from sim.run import SimConfig, simulate
from sim.shards import round_robin_shard, run_sharded, shardable
from traces import retime_poisson, shared_system_prompt

import numpy as np


def _trace(n: int = 90, rate: float = 12.0):
    return retime_poisson(shared_system_prompt(n, 2.0, rng=3), rate, np.random.default_rng(1))


def _outcome(result):
    records = [(r.request_id, r.instance, r.token_at, r.finished_at, r.reused_len, r.num_preemptions,
                r.rejected_reason) for r in result.records]
    timelines = [None if t is None else dataclasses.asdict(t) for t in result.timelines]
    return records, result.metrics, timelines, result.sim_end_s


@pytest.mark.parametrize("policy", ["yoda", "chunked", "static_split"])
def test_sharded_run_equals_one_process(policy):
    cfg = SimConfig(policy=policy, num_instances=3, dispatcher="round_robin", kv_blocks=2000, block_size=16)
    requests = _trace()
    one = simulate(requests, cfg)
    sharded = simulate(requests, cfg, workers=2)
    assert _outcome(sharded) == _outcome(one)
    assert {r.instance for r in one.records} == {0, 1, 2}


def test_round_robin_shards_are_what_the_dispatcher_sends():
    cfg = SimConfig(policy="prefill_first", num_instances=3, dispatcher="round_robin", block_size=16)
    requests = _trace(40)
    ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    instance = {r.request_id: r.instance for r in simulate(requests, cfg).records}
    for i in range(3):
        assert {r.request_id for r in round_robin_shard(ordered, i, 3)} == {
            rid for rid, at in instance.items() if at == i}


def test_only_uncoupled_clusters_are_sharded():
    assert shardable(SimConfig(policy="yoda", num_instances=2, dispatcher="round_robin"))
    assert not shardable(SimConfig(policy="yoda", num_instances=2, dispatcher="slo_aware"))
    assert not shardable(SimConfig(policy="disagg", num_instances=2, dispatcher="round_robin"))
    assert not shardable(SimConfig(policy="yoda", num_instances=1, dispatcher="round_robin"))
    with pytest.raises(ValueError, match="round-robin"):
        run_sharded(_trace(5), SimConfig(policy="yoda", num_instances=2, dispatcher="slo_aware"), 16, 2)
    # a coupled cluster asked for workers runs in one process, as before
    cfg = SimConfig(policy="chunked", num_instances=2, dispatcher="least_loaded", block_size=16)
    requests = _trace(30)
    assert _outcome(simulate(requests, cfg, workers=2)) == _outcome(simulate(requests, cfg))
