"""Cluster dispatchers: round robin, least loaded, SLO-aware with session affinity; and through the simulator."""
import pytest

from sim.run import SimConfig, simulate
from yoda.baselines import ChunkedPrefill
from yoda.dispatcher import (DISPATCHERS, LeastLoaded, RoundRobin, SloAware, make_dispatcher,
                             pending_prefill_tokens, reusable_tokens)
from yoda.kv_cache import chain_keys
from yoda.request import SLO, Request
from yoda.scheduler import SchedulerConfig


def instance(kv_blocks: int = 256):
    return ChunkedPrefill(SchedulerConfig(num_sms=132, num_layers=4, kv_blocks=kv_blocks, block_size=16), SLO())


def req(i: int, prompt_len: int = 320, hashes=(), output_len: int = 10) -> Request:
    return Request(i, 0.0, prompt_len, output_len, block_hashes=tuple(hashes), hash_block_size=16)


def cache_prefix(sched, hashes, num_tokens: int, seq_id: int = -1) -> None:
    """Leave `hashes`' prefix cached (committed, unreferenced) in the instance's KV cache."""
    chain = chain_keys(req(0, num_tokens, hashes).block_keys(16))
    sched.kv.allocate(seq_id, num_tokens, chain)
    sched.kv.commit(seq_id)
    sched.kv.free(seq_id)


def test_round_robin_cycles():
    rr, scheds = RoundRobin(), [instance() for _ in range(3)]
    assert [rr.pick(req(i), scheds, 0.0) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_loaded_counts_queued_prefill_and_decodes():
    scheds = [instance() for _ in range(3)]
    scheds[0].on_arrival(req(1, 500), 0.0)
    scheds[1].on_arrival(req(2, 100), 0.0)
    assert pending_prefill_tokens(scheds[0]) == 500
    assert LeastLoaded().pick(req(9), scheds, 0.0) == 2
    scheds[2].on_arrival(req(3, 100), 0.0)
    assert LeastLoaded().pick(req(9), scheds, 0.0) == 1  # tie on 100 tokens: lowest index


def test_reusable_tokens_follow_the_cached_prefix_and_leave_one_token():
    s = instance()
    hashes = tuple(range(40))
    cache_prefix(s, hashes, 320)
    assert reusable_tokens(s, req(1, 640, hashes)) == 320
    assert reusable_tokens(s, req(1, 320, hashes)) == 319  # the last prompt token is always computed
    assert reusable_tokens(s, req(1, 640, (99,) + hashes[1:])) == 0  # prefix-chained: first block differs


def test_slo_aware_prefers_the_instance_holding_the_session_prefix():
    scheds = [instance() for _ in range(3)]
    hashes = tuple(range(100, 140))
    cache_prefix(scheds[2], hashes, 512)
    d = SloAware()
    assert d.pick(req(1, 600, hashes), scheds, 0.0) == 2
    assert d.num_affinity_hits == 1
    assert d.pick(req(2, 600, tuple(range(500, 540))), scheds, 0.0) == 0  # no reuse anywhere: least cost
    assert d.num_affinity_hits == 1


def test_slo_aware_leaves_a_much_busier_instance_despite_affinity():
    scheds = [instance(kv_blocks=2048) for _ in range(2)]
    hashes = tuple(range(100, 140))
    cache_prefix(scheds[1], hashes, 512)
    for i in range(6):
        scheds[1].on_arrival(req(10 + i, 4000), 0.0)  # 24K tokens queued there
    assert SloAware().pick(req(1, 600, hashes), scheds, 0.0) == 0


@pytest.mark.parametrize("queued, holder_wins", [(5, True), (12, False)])
def test_slo_aware_prices_the_queue_as_separate_prompts(queued, holder_wins):
    """Yoda instances (their own prefill estimates): a 16K-token document cached on instance 1 and a follow-up
    question on it. Behind 5 queued 2K prompts (10K tokens, linear) the follow-up stays with its document
    rather than recompute 16K tokens on the idle instance; pricing queue + request as one 10K prompt attending
    to the document (the old formula) sent it away. Behind 24K queued tokens it leaves."""
    import simpy

    from sim.replay import build

    cluster = build(SimConfig(policy="yoda", num_instances=2, record_timeline=False), simpy.Environment())
    scheds = [i.scheduler for i in cluster.instances]
    doc = tuple(range(1000, 2000))
    cache_prefix(scheds[1], doc, 16000)
    for i in range(queued):
        scheds[1].on_arrival(req(10 + i, 2000), 0.0)
    d = SloAware()
    assert d.pick(req(1, 16200, doc), scheds, 0.0) == (1 if holder_wins else 0)
    assert d.num_affinity_hits == int(holder_wins)


def test_slo_aware_avoids_an_instance_without_free_kv():
    scheds = [instance(kv_blocks=64), instance(kv_blocks=64)]
    scheds[0].kv.allocate(999, 60 * 16)  # 4 blocks left
    assert SloAware().pick(req(1, 320, output_len=200), scheds, 0.0) == 1


def test_unknown_dispatcher_lists_the_choices():
    assert set(DISPATCHERS) == {"round_robin", "least_loaded", "slo_aware"}
    assert isinstance(make_dispatcher("slo_aware"), SloAware)
    with pytest.raises(ValueError, match="round_robin, least_loaded, slo_aware"):
        make_dispatcher("random")


def sessions(num_sessions: int = 6, turns: int = 3):
    """Multi-turn sessions: turn k's prompt extends turn k-1's (same leading hash ids)."""
    out, rid = [], 0
    for s in range(num_sessions):
        hashes = tuple(range(10_000 * (s + 1), 10_000 * (s + 1) + 200))
        for t in range(turns):
            prompt_len = 600 + 500 * t
            out.append(Request(rid, 0.05 * s + 1.5 * t, prompt_len, 30, session_id=f"s{s}", turn=t + 1,
                               block_hashes=hashes[: -(-prompt_len // 16)], hash_block_size=16))
            rid += 1
    return out


@pytest.mark.parametrize("name", sorted(DISPATCHERS))
def test_every_dispatcher_serves_everything_across_instances(name):
    requests = sessions()
    res = simulate(requests, SimConfig(policy="chunked", num_instances=3, dispatcher=name, block_size=16,
                                       kv_blocks=2000, check_every=1))
    assert res.metrics["completed"] == len(requests)
    assert sorted(r.request_id for r in res.records) == [r.request_id for r in requests]
    used = {r.instance for r in res.records}
    assert used <= {0, 1, 2} and len(used) >= 2, f"instance per record: {used}"


def test_slo_aware_keeps_sessions_on_their_instance_in_the_simulator():
    requests = sessions()
    res = simulate(requests, SimConfig(policy="chunked", num_instances=3, dispatcher="slo_aware", block_size=16))
    by_session: dict[str, set[int]] = {}
    for r in res.records:
        by_session.setdefault(r.session_id, set()).add(r.instance)
    assert all(len(v) == 1 for v in by_session.values()), by_session
    # every follow-up turn reuses the previous turn's prompt: its full 16-token blocks (592 and 1088 tokens)
    assert res.metrics["reused_prompt_tokens"] == 6 * (600 // 16 * 16 + 1100 // 16 * 16)
