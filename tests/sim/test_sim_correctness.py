"""Simulator correctness: exact latencies of a lone request, conservation, Little's law, KV reuse against
the trace statistics, chunked prefill's TBT bound, and determinism."""
import dataclasses
import json

import numpy as np
import pytest
import simpy

from sim.cluster import Link
from sim.hardware import get_gpu
from sim.latency import LAYER_GROUP_LAUNCH_S
from sim.model_spec import get_model
from sim.run import SimConfig, build, make_latency, simulate
from traces import SAMPLE_DIR, load_trace, retime_poisson, shared_system_prompt, trace_stats
from yoda.request import SLO, Request
from yoda.scheduler import REJECT_TOO_LONG

GPU, MODEL = get_gpu("h100"), get_model("llama3-8b")
PROMPT, OUTPUT = 3000, 6

# options that make a 3000-token prompt one prefill launch (chunked, static split) on the whole GPU
LONE = {
    "chunked": dict(policy_options={"token_budget": 4096}),
    "prefill_first": {},
    "yoda": {},
    "static_split": dict(policy_options={"chunk_tokens": 4096}),
    "temporal": dict(policy_options={"layers_per_group": 4}),
    "disagg": dict(num_instances=2),
}


def lone_expected(policy: str, source, num_groups: int = 1) -> list[float]:
    """Token times of one request arriving at 0 on an idle GPU: prefill on the whole GPU, then decode steps
    on the decode partition (the whole GPU, or the static split's half), each attending prompt + k tokens."""
    prefill = source.prefill_s([PROMPT], [0], GPU.num_sms)
    if policy == "temporal":  # 8 layer groups of 4 layers, each paying the launch overhead
        t = sum(source.prefill_s([PROMPT], [0], GPU.num_sms) * 4 / 32 + LAYER_GROUP_LAUNCH_S for _ in range(8))
    else:  # layer groups split the prefill's time exactly; each pays the launch overhead
        t = prefill + num_groups * LAYER_GROUP_LAUNCH_S
    if policy == "disagg":  # the prompt's KV streams to the decode instance while it is computed; the user
        kv_bytes = PROMPT * MODEL.kv_bytes_per_token  # sees the first token once the decode instance has it
        t = max(Link().transfer_s(kv_bytes), t + Link().transfer_s(kv_bytes / MODEL.num_layers))
    times = [t]
    decode_sms = GPU.num_sms // 2 if policy == "static_split" else GPU.num_sms
    for k in range(1, OUTPUT):
        t += source.decode_s(1, PROMPT + k, decode_sms)
        times.append(t)
    return times


@pytest.mark.parametrize("latency", ["roofline", "pdmux"])
@pytest.mark.parametrize("policy", sorted(LONE))
def test_lone_request_latencies_equal_the_latency_source(policy, latency):
    source = make_latency(latency, MODEL, GPU)
    res = simulate([Request(0, 0.0, PROMPT, OUTPUT)], SimConfig(policy=policy, latency=latency, **LONE[policy]))
    (rec,) = res.records
    # yoda launches even a lone prefill in layer groups of about one TBT (so a short one could preempt it)
    timeline = res.timelines[0]
    num_groups = sum(1 for at, b in zip(timeline.at, timeline.decode_batch) if b == 0 and at < rec.ttft_s)
    assert num_groups >= 1 and (policy == "yoda" or policy == "temporal" or num_groups == 1)
    expected = lone_expected(policy, source, num_groups)
    if policy not in ("temporal", "disagg"):  # temporal pays the launch overhead once per layer group
        assert rec.ttft_s == pytest.approx(source.prefill_s([PROMPT], [0], GPU.num_sms)
                                           + num_groups * LAYER_GROUP_LAUNCH_S, rel=1e-9)
    assert rec.token_at == pytest.approx(expected, rel=1e-9)
    assert rec.finished_at == rec.token_at[-1]


def test_conservation_with_rejections():
    reqs = shared_system_prompt(60, 20.0, rng=3)
    too_long = [Request(1000 + i, 0.1 * i, 5000, 100) for i in range(3)]  # 5100 tokens > the 4800-token cache
    res = simulate(reqs + too_long, SimConfig(policy="yoda", kv_blocks=300, block_size=16, check_every=5))
    m = res.metrics
    assert m["num_requests"] == len(reqs) + 3 == m["completed"] + m["rejected"]
    assert m["rejected"] == 3
    assert {r.request_id for r in res.records if r.rejected_reason == REJECT_TOO_LONG} == {1000, 1001, 1002}
    assert len({r.request_id for r in res.records}) == len(res.records)


def number_in_system_integral(records, t0: float, t1: float) -> float:
    """Integral over [t0, t1] of the number of requests that have arrived and not finished."""
    return sum(max(0.0, min(r.finished_at, t1) - max(r.arrival_at, t0)) for r in records)


def test_littles_law_in_steady_state():
    reqs = shared_system_prompt(700, 8.0, rng=11)  # stable: about 18 requests in the system
    res = simulate(reqs, SimConfig(policy="chunked", policy_options={"token_budget": 1024}))
    recs = res.records
    assert all(r.finished for r in recs)
    t0, t1 = reqs[100].arrival_at, reqs[600].arrival_at  # skip warm-up and drain
    in_window = [r for r in recs if t0 <= r.arrival_at < t1]
    arrival_rate = len(in_window) / (t1 - t0)
    mean_e2e = float(np.mean([r.e2e_s for r in in_window]))
    mean_in_system = number_in_system_integral(recs, t0, t1) / (t1 - t0)
    assert mean_in_system > 10  # a busy system, not a trivially empty one
    assert mean_in_system == pytest.approx(arrival_rate * mean_e2e, rel=0.05)


def test_kv_reuse_matches_the_trace_statistics_with_an_unbounded_cache():
    # the 600-request Mooncake sample at 1 request/s: prefills rarely overlap, so each request sees every
    # earlier prompt committed, as trace_stats' replay does. The simulator caps reuse at prompt_len - 1
    # (the last prompt token is always computed) and both key only full 512-token blocks, so the two
    # differ at most by one token per fully cached prompt whose length is a multiple of 512.
    reqs = retime_poisson(load_trace(SAMPLE_DIR / "mooncake_sample.jsonl").requests, 1.0, rng=0)
    expected = trace_stats(reqs)["reusable_token_fraction"]
    res = simulate(reqs, SimConfig(policy="chunked", kv_blocks=10**6))
    assert res.metrics["completed"] == len(reqs)
    assert res.metrics["kv_reuse_fraction"] == pytest.approx(expected, abs=0.01)
    assert abs(res.metrics["kv_reuse_fraction"] - expected) * res.metrics["total_input_tokens"] <= len(reqs)
    assert expected > 0.1  # the sample really shares prefixes


@pytest.mark.parametrize("budget", [256, 1024])
def test_chunked_max_tbt_gap_is_one_iteration_at_the_budget(budget):
    reqs = shared_system_prompt(150, 30.0, rng=5)
    res = simulate(reqs, SimConfig(policy="chunked", policy_options={"token_budget": budget}))
    source = make_latency("roofline", MODEL, GPU)
    gaps = [g for r in res.records for g in r.tbt_gaps_s()]
    timeline = res.timelines[0]
    max_batch = max(timeline.decode_batch)
    max_context = max(r.prompt_len + r.output_len for r in reqs)
    # the slowest iteration the budget allows: one chunk of `budget` new tokens after the longest context,
    # beside the largest decode batch each attending the longest context
    bound = source.mixed_s([budget], [max_context], max_batch, max_batch * max_context, GPU.num_sms)
    assert max(gaps) <= bound
    assert max(gaps) <= max(timeline.duration_s) + 1e-12  # every gap is one launch (one lane, back to back)
    assert max(p for p in timeline.prefill_tokens) <= budget


def records_json(res) -> str:
    return json.dumps([dataclasses.asdict(r) for r in res.records], sort_keys=True)


@pytest.mark.parametrize("policy", sorted(LONE))
def test_same_inputs_give_byte_identical_records(policy):
    reqs = shared_system_prompt(40, 15.0, rng=2)
    cfg = SimConfig(policy=policy, num_instances=2, kv_blocks=600, block_size=16, slo=SLO(ttft_ms=500, tbt_ms=50))
    a = records_json(simulate(reqs, cfg))
    simulate(shared_system_prompt(20, 30.0, rng=9), cfg)  # unrelated run in between: no state leaks
    b = records_json(simulate(list(reqs), cfg))
    assert a == b


def test_disagg_kv_streams_during_the_prefill_so_only_the_last_layer_waits():
    # DistServe / Mooncake send KV layer by layer while the prompt is computed: the second token of a long
    # prompt is not held back by the whole transfer (0.3 s here), only by the last layer's share
    prompt = 60000
    requests = [Request(0, 0.0, prompt, 3)]
    base = SimConfig(policy="disagg", num_instances=2, block_size=16, record_timeline=False,
                     latency="roofline")
    streamed = simulate(requests, base).records[0]
    after = simulate(requests, dataclasses.replace(base, kv_stream=False)).records[0]
    model, link = get_model(base.model), Link(base.link_gbps)
    whole = link.transfer_s(prompt * model.kv_bytes_per_token)
    last_layer = link.transfer_s(prompt * model.kv_bytes_per_token / model.num_layers)
    prefill_end = make_latency("roofline", model, GPU).prefill_s([prompt], [0], GPU.num_sms)
    # the user sees the first token when the decode instance has the KV
    assert after.token_at[0] >= prefill_end + whole
    assert prefill_end + last_layer <= streamed.token_at[0] < prefill_end + whole / 4
    assert streamed.token_at[1] - streamed.token_at[0] == pytest.approx(after.token_at[1] - after.token_at[0])


def test_disagg_moves_only_the_kv_blocks_the_decode_instance_lacks():
    # a follow-up on the same 16K-token document: its blocks stay cached at the decode instance after the
    # first request, so only the follow-up's own tail crosses the link
    doc = tuple(range(1, 33))  # 32 blocks of 512 tokens
    requests = [Request(0, 0.0, 16384 + 100, 4, block_hashes=doc + (100,)),
                Request(1, 5.0, 16384 + 200, 4, block_hashes=doc + (200,))]
    cfg = SimConfig(policy="disagg", num_instances=2, block_size=16, record_timeline=False)
    env = simpy.Environment()
    cluster = build(cfg, env, 16)
    env.process(cluster.replay_open_loop(requests))
    env.run()
    per_token = get_model(cfg.model).kv_bytes_per_token
    first = (16384 + 100 - 1) * per_token
    assert cluster.num_transfers == 2
    assert first <= cluster.transferred_bytes <= first + (200 + 16) * per_token
