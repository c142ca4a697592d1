"""Baseline schedulers (and PD disaggregation) driven directly by a tiny fake backend loop, and through
the simulator with small KV caches. Invariants are checked after every step."""
import random
from dataclasses import dataclass, field

import pytest
import simpy
from hypothesis import given, settings, strategies as st

from sim.run import SimConfig, build, simulate
from yoda.backend import DECODE, PREFILL, Launch
from yoda.baselines import ChunkedPrefill, PrefillFirst, StaticSplit, TemporalSplit
from yoda.request import SLO, Request
from yoda.scheduler import REJECT_KV_EXHAUSTED, REJECT_TOO_LONG, SchedulerConfig

NUM_SMS, NUM_LAYERS = 132, 8


def duration_s(launch: Launch) -> float:
    """Deterministic toy latencies: decode is memory-bound, prefill scales with tokens and SMs."""
    decode = 0.004 + 2e-8 * launch.decode_kv_len + 2e-5 * len(launch.decode_ids) if launch.decode_ids else 0.0
    frac = (launch.layer_end - launch.layer_start) / launch.num_layers if launch.prefill else 0.0
    prefill = (0.002 + 5e-5 * launch.num_prefill_tokens) * NUM_SMS / launch.num_sms * frac
    return decode + prefill


@dataclass
class Trace:
    launches: list[tuple[float, float, Launch]] = field(default_factory=list)  # (start, end, launch)
    decoding_at_start: list[int] = field(default_factory=list)  # requests in the decode batch at each launch


def drive(sched, requests, check: bool = True, max_events: int = 200_000) -> Trace:
    """Event loop: deliver arrivals and completions in time order, ask for a plan once per instant."""
    arrivals = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    running: dict[str, tuple[float, Launch]] = {}
    trace, i, now = Trace(), 0, 0.0
    for _ in range(max_events):
        ends = [end for end, _ in running.values()]
        nxt = min([*ends, arrivals[i].arrival_at if i < len(arrivals) else float("inf")])
        if nxt == float("inf"):
            break
        now = nxt
        for lane in sorted(running):
            end, launch = running[lane]
            if end == now:
                del running[lane]
                sched.on_launch_done(launch, now)
                if check:
                    sched.check_invariants()
        while i < len(arrivals) and arrivals[i].arrival_at == now:
            sched.on_arrival(arrivals[i], now)
            i += 1
        busy = {lane: launch for lane, (_, launch) in running.items()}
        num_decoding = len(sched.decoding) + len(sched.ready)
        for launch in sched.schedule(now, busy):
            assert launch.lane not in running, f"launch on busy lane {launch.lane}"
            running[launch.lane] = (now + duration_s(launch), launch)
            trace.launches.append((now, now + duration_s(launch), launch))
            trace.decoding_at_start.append(num_decoding)
        assert sum(l.num_sms for _, l in running.values()) <= NUM_SMS
        if check:
            sched.check_invariants()
        if not running and i == len(arrivals) and sched.has_work():
            raise AssertionError(f"scheduler stalled at {now:.4f}: nothing runs, no event is coming, "
                                 f"requests {sorted(sched.states)} are left")
    else:
        raise AssertionError("event budget exhausted")
    assert not running
    return trace


def assert_all_served(sched, requests) -> None:
    assert not sched.has_work(), f"requests left: {sorted(sched.states)}"
    recs = {r.request_id: r for r in sched.records}
    assert sorted(recs) == sorted(r.request_id for r in requests)
    for req in requests:
        rec = recs[req.request_id]
        if rec.rejected_reason == REJECT_KV_EXHAUSTED:  # its output outgrew the cache: a prediction miss
            assert rec.finished_at is not None and req.prompt_len + len(rec.token_at) == sched.kv.num_blocks * 16 + 1
            continue
        if rec.rejected_reason is not None:
            assert rec.finished_at is not None and not rec.token_at
            continue
        assert rec.finished, f"request {req.request_id} neither finished nor rejected"
        assert len(rec.token_at) == req.output_len, (req.request_id, len(rec.token_at), req.output_len)
        assert rec.token_at[0] > req.arrival_at
        assert all(a <= b for a, b in zip(rec.token_at, rec.token_at[1:]))
        assert rec.finished_at == rec.token_at[-1]


def workload(n: int = 40, seed: int = 0, rate: float = 20.0, max_prompt: int = 900, max_output: int = 60):
    """Requests with shared 16-token-block prefixes (4 system prompts) at Poisson times."""
    rng = random.Random(seed)
    systems = [tuple(range(1000 * k, 1000 * k + rng.randint(2, 12))) for k in range(4)]
    at, out = 0.0, []
    for i in range(n):
        at += rng.expovariate(rate)
        prompt_len = rng.randint(20, max_prompt)
        system = rng.choice(systems)
        hashes = (system + tuple(range(10**6 + 100 * i, 10**6 + 100 * i + 100)))[: -(-prompt_len // 16)]
        out.append(Request(i, at, prompt_len, rng.randint(1, max_output), block_hashes=hashes, hash_block_size=16))
    return out


def config(kv_blocks: int = 1024, **kw) -> SchedulerConfig:
    return SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kv_blocks, block_size=16, **kw)


POLICIES = {
    "chunked": lambda cfg: ChunkedPrefill(cfg, SLO(), token_budget=256),
    "prefill_first": lambda cfg: PrefillFirst(cfg, SLO()),
    "static_split": lambda cfg: StaticSplit(cfg, SLO(), decode_sms=48, chunk_tokens=512),
    "temporal": lambda cfg: TemporalSplit(cfg, SLO(), layers_per_group=3),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_request_is_served(policy):
    sched = POLICIES[policy](config(max_batch=8))
    requests = workload()
    drive(sched, requests)
    assert_all_served(sched, requests)
    assert sum(r.reused_len for r in sched.records) > 0  # the shared system prompts were reused


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_preemption_under_kv_pressure_still_serves_everything(policy):
    # 40 blocks of 16 tokens: a few requests' prompts + outputs fill it, decode growth must preempt
    sched = POLICIES[policy](config(kv_blocks=40))
    requests = workload(n=24, seed=3, rate=200.0, max_prompt=250, max_output=200)
    drive(sched, requests)
    assert_all_served(sched, requests)
    assert sum(r.num_preemptions for r in sched.records) > 0


@pytest.mark.parametrize("oracle", [False, True])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_too_long_requests_are_rejected_with_a_reason(policy, oracle):
    sched = POLICIES[policy](config(kv_blocks=20, output_len_oracle=oracle))  # 320 tokens
    requests = [Request(0, 0.0, 300, 22), Request(1, 0.01, 100, 10), Request(2, 0.02, 300, 20),
                Request(3, 0.03, 321, 1)]
    drive(sched, requests)
    assert_all_served(sched, requests)
    by_id = {r.request_id: r for r in sched.records}
    if oracle:  # the ablation reads the output length and refuses at arrival
        assert by_id[0].rejected_reason == REJECT_TOO_LONG and by_id[0].finished_at == 0.0
    else:  # only the prompt is known: request 0 runs until its 22nd token finds no room, then is rejected
        assert by_id[0].rejected_reason == REJECT_KV_EXHAUSTED and len(by_id[0].token_at) == 21
    assert by_id[3].rejected_reason == REJECT_TOO_LONG  # its prompt alone exceeds the cache
    assert by_id[1].finished and by_id[2].finished  # 320 tokens fill the cache exactly


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_request_that_needs_the_whole_cache_is_served(policy):
    # 1590 + 5 tokens need all 100 blocks; the 1% admission watermark must not keep it out of an empty cache
    sched = POLICIES[policy](config(kv_blocks=100))
    requests = [Request(0, 0.0, 1590, 5)]
    drive(sched, requests)
    assert_all_served(sched, requests)


# with max_batch=1 two requests used to be admitted (the cap did not count `ready`): the one in `ready`
# held KV that no victim search considers, and the decoding one preempted itself with nothing left to run
@pytest.mark.parametrize("policy", ["prefill_first", "static_split"])
def test_single_request_batches_do_not_stall_under_kv_pressure(policy):
    sched = POLICIES[policy](config(kv_blocks=20, max_batch=1))
    requests = [Request(0, 0.0, 144, 82), Request(1, 0.0, 170, 110)]  # 9 + 11 blocks: the cache is full
    drive(sched, requests)
    assert_all_served(sched, requests)


@st.composite
def random_workloads(draw):
    n = draw(st.integers(1, 14))
    prefixes = [draw(st.integers(0, 10**6)) * 1000 for _ in range(2)]
    at, out = 0.0, []
    for i in range(n):
        at += draw(st.sampled_from([0.0, 0.0005, 0.005, 0.05]))
        prompt_len = draw(st.integers(1, 500))
        num_blocks = -(-prompt_len // 16)
        shared = draw(st.integers(0, num_blocks))
        base = draw(st.sampled_from(prefixes))
        hashes = tuple(base + j for j in range(shared)) + tuple(10**10 * (i + 1) + j for j in range(num_blocks - shared))
        out.append(Request(i, at, prompt_len, draw(st.integers(1, 80)), block_hashes=hashes, hash_block_size=16))
    return out


@settings(max_examples=60, deadline=None)
@given(requests=random_workloads(), policy=st.sampled_from(sorted(POLICIES)),
       kv_blocks=st.sampled_from([8, 20, 40, 400]), max_batch=st.sampled_from([2, 3, 256]))
def test_random_workloads_are_served_with_invariants_after_every_step(requests, policy, kv_blocks, max_batch):
    sched = POLICIES[policy](config(kv_blocks=kv_blocks, max_batch=max_batch))
    drive(sched, requests)
    assert_all_served(sched, requests)


@pytest.mark.parametrize("budget", [64, 256, 1000])
def test_chunked_prefill_never_exceeds_its_token_budget(budget):
    sched = ChunkedPrefill(config(max_batch=32), SLO(), token_budget=budget)
    requests = workload(n=30, seed=1, rate=50.0)
    trace = drive(sched, requests)
    assert_all_served(sched, requests)
    mixed = 0
    for _, _, launch in trace.launches:
        assert launch.lane == DECODE and launch.num_sms == NUM_SMS
        assert launch.layer_start == 0 and (not launch.prefill or launch.layer_end == NUM_LAYERS)
        if launch.prefill:
            assert launch.num_prefill_tokens + len(launch.decode_ids) <= budget
            mixed += bool(launch.decode_ids)
    assert mixed > 0  # prefill chunks rode along with decodes


def test_static_split_respects_its_sms_and_synchronises():
    sched = StaticSplit(config(), SLO(), decode_sms=40, chunk_tokens=512)
    requests = workload(n=30, seed=2)
    trace = drive(sched, requests)
    assert_all_served(sched, requests)
    by_start: dict[float, list[Launch]] = {}
    for start, _, launch in trace.launches:
        by_start.setdefault(start, []).append(launch)
    both = 0
    for start, launches in by_start.items():
        lanes = {l.lane: l for l in launches}
        assert len(lanes) == len(launches)
        if DECODE in lanes:
            assert lanes[DECODE].num_sms == 40 and not lanes[DECODE].prefill
        if PREFILL in lanes:
            assert lanes[PREFILL].num_sms == (NUM_SMS - 40 if DECODE in lanes else NUM_SMS)
        both += len(lanes) == 2
    assert both > 0
    # synchronised: nothing starts while a launch of the previous step still runs
    for s, e, _ in trace.launches:
        assert not any(s2 < s < e2 for s2, e2, _ in trace.launches), "a step started before the last one ended"


def test_temporal_split_alternates_decode_steps_and_layer_groups():
    sched = TemporalSplit(config(), SLO(), layers_per_group=3)
    requests = workload(n=30, seed=4)
    trace = drive(sched, requests)
    assert_all_served(sched, requests)
    launches = [l for _, _, l in trace.launches]
    assert all(l.num_sms == NUM_SMS and l.lane == DECODE for l in launches)
    assert all(not (l.prefill and l.decode_ids) for l in launches)  # never fused
    for l in launches:
        if l.prefill:
            assert l.layer_end - l.layer_start <= 3
    interleaved = 0
    for k in range(1, len(launches)):
        prev, cur = launches[k - 1], launches[k]
        if prev.prefill and cur.prefill and trace.decoding_at_start[k]:
            pytest.fail(f"launch {k}: two prefill groups in a row while {trace.decoding_at_start[k]} decode")
        if prev.prefill and cur.decode_ids and launches[k + 1 if k + 1 < len(launches) else k].prefill:
            interleaved += 1
    assert interleaved > 0
    # layer groups of one job are contiguous: each job covers [0, L) in order
    expect = 0
    for l in (l for l in launches if l.prefill):
        assert l.layer_start == expect
        expect = 0 if l.layer_end == NUM_LAYERS else l.layer_end


def test_prefill_first_prefills_before_decoding():
    sched = PrefillFirst(config(), SLO())
    requests = [Request(0, 0.0, 100, 20), Request(1, 0.001, 200, 5)]
    trace = drive(sched, requests)
    assert_all_served(sched, requests)
    first_two = [l for _, _, l in trace.launches[:2]]
    assert first_two[0].prefill and not first_two[0].decode_ids
    # request 1 arrived during request 0's prefill: its prefill goes before any decode step
    assert first_two[1].prefill and first_two[1].prefill[0].request_id == 1


# ---- through the simulator ---------------------------------------------------------------------------
SIM_POLICIES = ["chunked", "prefill_first", "static_split", "temporal", "yoda", "disagg"]


@pytest.mark.parametrize("policy", SIM_POLICIES)
def test_simulated_small_cache_serves_everything(policy):
    requests = workload(n=30, seed=5, rate=100.0, max_prompt=300, max_output=150)
    cfg = SimConfig(policy=policy, num_instances=2 if policy == "disagg" else 1, kv_blocks=48, block_size=16,
                    check_every=1, slo=SLO(ttft_ms=2000, tbt_ms=100))
    res = simulate(requests, cfg)
    recs = {r.request_id: r for r in res.records}
    assert len(recs) == len(requests)
    for req in requests:
        rec = recs[req.request_id]
        assert rec.finished and len(rec.token_at) == req.output_len
    assert res.metrics["completed"] + res.metrics["rejected"] == len(requests)
    assert res.metrics["num_preemptions"] > 0


def test_disagg_moves_every_request_through_a_decode_instance():
    requests = workload(n=30, seed=6, rate=30.0)
    cfg = SimConfig(policy="disagg", num_instances=3, num_prefill_instances=1, block_size=16, kv_blocks=1000,
                    check_every=1)
    env = simpy.Environment()
    cluster = build(cfg, env, 16)
    decoded_on: dict[int, set[int]] = {}
    prefilled_on: dict[int, set[int]] = {}
    for g in cluster.instances:
        def on_done(launch, now, index=g.index):
            for rid in launch.decode_ids:
                decoded_on.setdefault(rid, set()).add(index)
            for c in launch.prefill:
                prefilled_on.setdefault(c.request_id, set()).add(index)
        g.on_launch_done = on_done
    env.process(cluster.replay_open_loop(requests))
    env.run()
    recs = {r.request_id: r for r in cluster.records()}
    prefill_ids = {g.index for g in cluster.prefill}
    decode_ids = {g.index for g in cluster.decode}
    assert len(cluster.decode) == 2 and len(prefill_ids) == 1
    for req in requests:
        rec = recs[req.request_id]
        assert rec.finished and len(rec.token_at) == req.output_len
        assert prefilled_on[req.request_id] <= prefill_ids | decode_ids
        assert prefill_ids & prefilled_on[req.request_id], "first prefill must run on a prefill instance"
        if req.output_len > 1:
            assert decoded_on.get(req.request_id), f"request {req.request_id} never decoded"
            assert decoded_on[req.request_id] <= decode_ids
        else:
            assert req.request_id not in decoded_on
    assert cluster.num_transfers >= sum(r.output_len > 1 for r in requests)
    for g in cluster.instances:
        assert not g.scheduler.has_work()
        g.scheduler.kv.check_invariants()


def _decoding_alone(kv_blocks: int, cached_prompt: int = 0):
    """A PrefillFirst scheduler that may run multi-step decodes, with request 1 (a 100-token prompt)
    prefilled and ready to decode; first, request 0 (`cached_prompt` tokens with block hashes) ran and
    finished, leaving its prompt's blocks cached."""
    s = PrefillFirst(SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kv_blocks, block_size=16),
                     SLO(ttft_ms=1000, tbt_ms=50))
    s.max_decode_steps = 64
    requests = [Request(1, 0.0, 100, 200)]
    if cached_prompt:
        blocks = cached_prompt // 16
        requests.insert(0, Request(0, 0.0, cached_prompt, 1, block_hashes=tuple(range(1, blocks + 1)),
                                   hash_block_size=16))
    for r in requests:
        s.on_arrival(r, 0.0)
        (launch,) = s.schedule(0.0, {})
        s.on_launch_done(launch, 0.01)  # a one-token output finishes at its prefill
    return s


def test_multi_step_decode_reserves_growth_from_empty_blocks_and_a_cut_run_gives_back_the_rest():
    # ample empty blocks: the run's growth is taken at launch, and no more
    s = _decoding_alone(kv_blocks=100)
    (launch,) = s.schedule(0.02, {})
    assert launch.num_steps == 64
    context = 100 + 1  # the prompt and the token its prefill emitted
    assert len(s.kv.block_table(1)) == -(-(context + 63) // 16)
    # an arrival cut the run after 5 steps: one-step launches would hold blocks for 105 tokens (7 blocks,
    # as before the run), so the 4 blocks reserved for steps that did not run are free again
    ends = tuple(0.02 + 0.01 * (j + 1) for j in range(5))
    s.on_launch_done(Launch(DECODE, launch.num_sms, decode_ids=launch.decode_ids,
                            decode_kv_len=launch.decode_kv_len, num_layers=NUM_LAYERS, num_steps=5,
                            step_ends=ends), ends[-1])
    assert len(s.kv.block_table(1)) == -(-(context + 4) // 16) == 7 and s.kv.num_free_blocks == 100 - 7
    s.check_invariants()
    # and the next run reserves its growth again
    (launch,) = s.schedule(ends[-1], {})
    assert launch.num_steps == 64 and len(s.kv.block_table(1)) == -(-(context + 5 + 63) // 16)
    # few empty blocks, the rest cached prefixes: the run stops where its request needs a block, so
    # decode_batch takes it then (evicting a cached prefix, as one step would), not the run up front
    s = _decoding_alone(kv_blocks=30, cached_prompt=320)
    cached, empty = s.kv.num_cached_blocks, s.kv.num_empty_blocks
    assert cached == 20 and empty == 30 - 20 - 7 == 3 < -(-(context + 63) // 16) - 7
    (launch,) = s.schedule(0.02, {})
    assert launch.num_steps == 7 * 16 - context + 1 and len(s.kv.block_table(1)) == 7
    assert s.kv.num_cached_blocks == cached


def test_a_multi_step_decode_run_goes_on_past_a_finishing_request():
    s = PrefillFirst(SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=200, block_size=16),
                     SLO(ttft_ms=1000, tbt_ms=50))
    s.max_decode_steps = 64
    for r in (Request(1, 0.0, 100, 200), Request(2, 0.0, 100, 11)):
        s.on_arrival(r, 0.0)
    (prefill,) = s.schedule(0.0, {})
    s.on_launch_done(prefill, 0.01)  # both emit their first token
    (run,) = s.schedule(0.01, {})
    # request 2 has 10 tokens to go: it leaves after 10 steps, the run goes on with request 1
    assert run.num_steps == 64 and run.decode_departures == ((10, 101),)
    assert run.decode_segments() == [(10, 2, 202), (54, 1, 101 + 10)]
    # request 2's KV is reserved up to its last token only (steps 0..9 write tokens 101..110)
    assert len(s.kv.block_table(2)) == -(-110 // 16)
    ends = tuple(0.01 + 0.02 * (j + 1) for j in range(64))
    s.on_launch_done(Launch(DECODE, run.num_sms, decode_ids=run.decode_ids, decode_kv_len=run.decode_kv_len,
                            num_layers=NUM_LAYERS, num_steps=64, step_ends=ends,
                            decode_departures=run.decode_departures), ends[-1])
    short, long_ = s.records[1], s.records[0]
    assert len(short.token_at) == 11 and short.token_at[1:] == list(ends[:10]) and short.finished_at == ends[9]
    assert 2 not in s.kv and s.decoding == [s.states[1]]
    assert s.states[1].num_generated == 1 + 64 and s.decode_kv_len == 101 + 64 and long_.finished_at is None
    s.check_invariants()


def test_launch_departures_are_checked():
    with pytest.raises(ValueError):  # the last step is not a departure: the run would end there
        Launch(DECODE, 8, decode_ids=(1, 2), decode_kv_len=10, num_steps=4, decode_departures=((4, 5),))
    with pytest.raises(ValueError):  # someone must stay in the batch
        Launch(DECODE, 8, decode_ids=(1,), decode_kv_len=10, num_steps=4, decode_departures=((2, 10),))


@given(st.integers(50, 400), st.lists(st.integers(1, 600), max_size=6), st.integers(-25, 5), st.integers(0, 15))
def test_admission_is_called_blocked_exactly_when_admission_would_refuse(kv_blocks, admitted_lens, offset, extra):
    """`admission_blocked` (what Yoda's split and decode runs consult) and `try_admit` (what admits) agree,
    watermark included: the head's need is drawn around the free blocks, where the watermark decides."""
    s = PrefillFirst(SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kv_blocks, block_size=16,
                                     watermark=0.05), SLO())
    for i, n in enumerate(admitted_lens):
        s.on_arrival(Request(i, 0.0, n, 4), 0.0)
        s.try_admit(s.waiting.popleft(), 0.0)  # fills KV; one that does not fit is simply dropped here
    head_len = (s.kv.num_free_blocks + offset) * 16 - extra
    if head_len < 1 or s.kv.blocks_for(head_len + 4) > kv_blocks:
        return  # no such prompt, or one rejected outright at arrival (it never waits)
    s.on_arrival(Request(99, 0.0, head_len, 4), 0.0)
    blocked = s.admission_blocked()
    assert blocked == (not s.try_admit(s.waiting[0], 0.0))
