"""Multi-unit launches in the simulator: multi-step decode runs (also beside a prefill, slowed by contention),
prefill layer groups that are cut at a layer boundary when something happens, and KV growth reserved
ahead of a run. These only make the simulation faster where they cannot change what the policy sees;
the tests pin down where that holds exactly and what the policy still reacts to."""
import numpy as np
import pytest
import simpy

from sim.run import SimConfig, build, simulate
from yoda.backend import DECODE, PREFILL
from yoda.request import SLO, Request


def run_logged(requests, cfg):
    """Simulate and return (records by id, every finished launch as (end time, launch))."""
    env = simpy.Environment()
    cluster = build(cfg, env, cfg.block_size or 16)
    done = []
    for g in cluster.instances:
        g.on_launch_done = lambda launch, now: done.append((now, launch))
    env.process(cluster.replay_open_loop(sorted(requests, key=lambda r: (r.arrival_at, r.request_id))))
    env.run()
    return {r.request_id: r for r in cluster.records()}, done


@pytest.mark.parametrize("policy", ["chunked", "prefill_first"])
def test_multi_step_runs_give_the_token_times_of_single_steps(policy):
    # with ample KV, runs past block boundaries (growth reserved up front) change nothing a request sees
    rng = np.random.default_rng(3)
    requests = [Request(i, i * 0.25, int(rng.integers(50, 2000)), int(rng.integers(20, 300))) for i in range(60)]
    base = dict(policy=policy, block_size=16, record_timeline=False, check_every=1)
    single, single_launches = run_logged(requests, SimConfig(**base, max_decode_steps=1))
    multi, multi_launches = run_logged(requests, SimConfig(**base, max_decode_steps=64))
    assert len(multi_launches) < len(single_launches) / 3
    assert any(l.num_steps > 16 for _, l in multi_launches), "runs should cross 16-token block boundaries"
    assert any(l.decode_departures for _, l in multi_launches), "runs should go on past finishing requests"
    for rid, rec in single.items():
        assert len(multi[rid].token_at) == len(rec.token_at) == requests[rid].output_len
        assert multi[rid].token_at == pytest.approx(rec.token_at, rel=0, abs=1e-9)


def test_chunked_prefill_iterations_of_one_long_prompt_run_as_one_launch_with_single_step_results():
    # long prompts take many budget-sized chunks; the iterations that continue one prompt with an
    # unchanged decode batch are one launch, cut when a request arrives, with the token times of
    # one-iteration launches
    rng = np.random.default_rng(5)
    requests = [Request(i, i * 0.4, int(rng.integers(1500, 6000)), int(rng.integers(20, 150))) for i in range(24)]
    base = dict(policy="chunked", block_size=16, record_timeline=False, check_every=1,
                policy_options={"token_budget": 256})
    single, single_launches = run_logged(requests, SimConfig(**base, max_decode_steps=1))
    multi, multi_launches = run_logged(requests, SimConfig(**base, max_decode_steps=64))
    mixed_runs = [l for _, l in multi_launches if l.prefill and l.num_steps > 1]
    assert mixed_runs and any(l.decode_ids for l in mixed_runs) and any(not l.decode_ids for l in mixed_runs)
    assert len(multi_launches) < len(single_launches) / 3
    for rid, rec in single.items():
        assert multi[rid].reused_len == rec.reused_len
        assert len(multi[rid].token_at) == len(rec.token_at) == requests[rid].output_len
        assert multi[rid].token_at == pytest.approx(rec.token_at, rel=0, abs=1e-9)


def test_yoda_decode_runs_beside_a_prefill_and_step_ends_follow_contention():
    # one decoding request, then a long prompt: decode runs several steps beside the prefill lane
    requests = [Request(0, 0.0, 512, 400), Request(1, 0.5, 60000, 4)]
    cfg = SimConfig(policy="yoda", block_size=16, record_timeline=False, check_every=1)
    records, done = run_logged(requests, cfg)
    env = simpy.Environment()
    g = build(cfg, env, 16).instances[0]
    beside = []
    for end, launch in done:
        if launch.lane != DECODE or launch.num_steps < 2:
            continue
        ends = launch.step_ends
        assert len(ends) == launch.num_steps and ends[-1] == end
        steps = [b - a for a, b in zip(ends, ends[1:])]
        assert all(s > 0 for s in steps)
        # each step's solo time: its batch (which shrinks where the 4-token request finishes) and KV
        solo = [g.latency.decode_s(b, kv + j * b, launch.num_sms)
                for n, b, kv in launch.decode_segments() for j in range(n)][1:]
        cap = 1 + g.gpu.max_contention_slowdown
        assert all(lo * 0.999 <= s <= lo * cap * 1.001 for s, lo in zip(steps, solo))
        prefill_running = any(l.lane == PREFILL and e - 1e-9 > ends[0] and e < end + 1.0 for e, l in done)
        if prefill_running and any(s > lo * 1.001 for s, lo in zip(steps, solo)):
            beside.append(launch)
    assert beside, "some multi-step decode ran beside a prefill and was slowed by it"
    tokens = records[0].token_at
    assert len(tokens) == 400 and all(b > a for a, b in zip(tokens, tokens[1:]))


def test_gang_steps_one_is_the_papers_one_iteration_gang():
    requests = [Request(0, 0.0, 512, 300), Request(1, 0.3, 30000, 4)]
    cfg = SimConfig(policy="yoda", block_size=16, record_timeline=False, policy_options={"gang_steps": 1})
    _, done = run_logged(requests, cfg)
    long_groups = [e for e, l in done if l.lane == PREFILL and l.prefill[0].request_id == 1]
    assert len(long_groups) > 10
    # while the long prompt prefills, every decode launch is one step
    beside = [l for e, l in done if l.lane == DECODE and long_groups[0] < e < long_groups[-1]]
    assert len(beside) > 10 and all(l.num_steps == 1 for l in beside)
    # and with the default gang, several
    _, done = run_logged(requests, SimConfig(policy="yoda", block_size=16, record_timeline=False))
    long_groups = [e for e, l in done if l.lane == PREFILL and l.prefill[0].request_id == 1]
    assert any(l.num_steps > 1 for e, l in done if l.lane == DECODE and long_groups[0] < e < long_groups[-1])


def test_an_arrival_cuts_a_prefill_group_at_the_next_layer_and_a_short_prompt_jumps_ahead():
    # a long prompt prefills alone in groups of many layers; a short one arrives in the middle of a group
    slo = SLO(ttft_ms=1000, tbt_ms=50, ttft_ms_per_token=0.25)
    long_req, short_req = Request(0, 0.0, 100000, 2), Request(1, 3.0, 800, 2)
    cfg = SimConfig(policy="yoda", block_size=16, record_timeline=False, check_every=1, slo=slo)
    records, done = run_logged([long_req, short_req], cfg)
    env = simpy.Environment()
    g = build(cfg, env, 16).instances[0]
    layers = g.model.num_layers
    groups = [(e, l) for e, l in done if l.lane == PREFILL and any(c.request_id == 0 for c in l.prefill)]
    cut = [(e, l) for e, l in groups if e >= short_req.arrival_at][0]  # the group running at the arrival
    per_layer = g.latency.prefill_s([c.num_new for c in cut[1].prefill], [c.start_len for c in cut[1].prefill],
                                    cut[1].num_sms) / layers
    assert cut[0] - short_req.arrival_at <= per_layer * 1.35 + 1e-3, "the group must stop at the next layer"
    # every layer of the long prompt ran exactly once, in order
    covered = {}
    for _, l in groups:
        for c in l.prefill:
            covered.setdefault((c.start_len, c.num_new), []).append((l.layer_start, l.layer_end))
    for spans in covered.values():
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == layers
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # the short prompt jumped ahead of the long one's remaining chunks and both met their TTFT
    assert records[1].token_at[0] < records[0].token_at[0]
    assert records[1].ttft_s <= slo.ttft_target_s(short_req.prompt_len)
    assert records[0].ttft_s <= slo.ttft_target_s(long_req.prompt_len)


def test_growth_reservation_never_overcommits_a_small_cache():
    requests = [Request(i, i * 0.01, 100 + 37 * (i % 5), 120) for i in range(24)]
    for policy in ("chunked", "yoda"):
        res = simulate(requests, SimConfig(policy=policy, kv_blocks=60, block_size=16, check_every=1,
                                           record_timeline=False))
        assert res.metrics["completed"] == len(requests)
        assert all(len(r.token_at) == 120 for r in res.records)


def _steps_after(done, at):
    """Step ends after `at` of the decode launch running at `at`."""
    (launch,) = [l for e, l in done if l.lane == DECODE and l.step_ends and l.step_ends[0] <= at < e]
    return sum(t > at for t in launch.step_ends)


def test_an_arrival_cuts_a_yoda_decode_run_alone_but_not_one_beside_a_running_prefill():
    cfg = SimConfig(policy="yoda", block_size=16, record_timeline=False, check_every=1)
    # alone on the GPU: the run stops at its next step so the arrival's prefill gets SMs
    _, done = run_logged([Request(0, 0.0, 512, 400), Request(1, 1.0, 200, 4)], cfg)
    assert _steps_after(done, 1.0) == 1
    # beside the long prompt's prefill: the partition stays, the run goes on; the new prompt waits for
    # the prefill lane, whose group stops at its next layer
    records, done = run_logged([Request(0, 0.0, 512, 400), Request(1, 0.3, 30000, 4),
                                Request(2, 1.0, 200, 4)], cfg)
    assert any(l.lane == PREFILL and l.prefill[0].request_id == 1 and e - 1e-9 <= 1.0 for e, l in done)
    assert _steps_after(done, 1.0) > 1
    assert len(records[0].token_at) == 400
