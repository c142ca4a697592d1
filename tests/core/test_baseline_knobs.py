"""The knobs real systems expose, on the baselines: chunked prefill's per-request chunk cap and partial-prefill
limits (vLLM), and admission as a layer (FCFS as shipped, or Yoda's TTFT-deadline order)."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from yoda.backend import Launch
from yoda.baselines import ChunkedPrefill, PrefillFirst, StaticSplit, TemporalSplit
from yoda.estimator import Estimator
from yoda.gang_scheduler import GangScheduler
from yoda.guard import GuardTable
from yoda.partitions import PartitionMenu
from yoda.request import SLO, Request
from yoda.scheduler import SchedulerConfig

NUM_SMS, NUM_LAYERS = 132, 8


def config(**kw) -> SchedulerConfig:
    return SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kw.pop("kv_blocks", 2048), block_size=16,
                           **kw)


def gang_estimator() -> Estimator:
    sizes = sorted(set(PartitionMenu(NUM_SMS).decode_sizes()) | set(PartitionMenu(NUM_SMS).prefill_sizes()))
    return Estimator(prefill_coef={s: {0: (0.0, 0.0, 50 * NUM_SMS / s, 2 * NUM_SMS / s)} for s in sizes},
                     decode_coef={s: (6.6 / s, 20 / s, 4 + 528 / s) for s in sizes},
                     decode_guard=GuardTable(decay=0.0), prefill_guard=GuardTable(decay=0.0))


def duration_s(launch: Launch) -> float:
    decode = 0.004 + 2e-8 * launch.decode_kv_len if launch.decode_ids else 0.0
    frac = (launch.layer_end - launch.layer_start) / launch.num_layers if launch.prefill else 0.0
    return decode + (0.002 + 5e-5 * launch.num_prefill_tokens) * NUM_SMS / launch.num_sms * frac


def drive(sched, requests) -> list[Launch]:
    """Synchronous steps (every launch of a step ends before the next step), arrivals between steps;
    invariants checked after every step. Returns the launches."""
    pending, now, launches = sorted(requests, key=lambda r: r.arrival_at), 0.0, []
    while pending or sched.has_work():
        while pending and pending[0].arrival_at <= now:
            sched.on_arrival(pending.pop(0), now)
        plan = sched.schedule(now, {})
        if not plan:
            assert pending, f"stalled at {now}: {sorted(sched.states)} left"
            now = pending[0].arrival_at
            continue
        now += max(duration_s(launch) for launch in plan)
        for launch in plan:
            sched.on_launch_done(launch, now)
        sched.check_invariants()
        launches += plan
    return launches


def workload(n: int, seed: int, rate: float, max_prompt: int = 900) -> list[Request]:
    rng, at, out = random.Random(seed), 0.0, []
    for i in range(n):
        at += rng.expovariate(rate)
        out.append(Request(i, at, rng.randint(20, max_prompt), rng.randint(1, 40)))
    return out


def assert_all_served(sched, requests) -> None:
    assert not sched.has_work()
    by_id = {r.request_id: r for r in sched.records}
    assert all(len(by_id[r.request_id].token_at) == r.output_len for r in requests)


def first_launch_chunks(sched, requests, now=0.0):
    for r in requests:
        sched.on_arrival(r, now)
    (launch,) = sched.schedule(now, {})
    return {c.request_id: c.num_new for c in launch.prefill}


LONG_AND_SHORT = [Request(0, 0.0, 10_000, 4), Request(1, 0.0, 100, 4)]


def test_without_a_cap_a_long_prompt_takes_the_whole_iteration():
    sched = ChunkedPrefill(config(), SLO(), token_budget=2048)
    assert first_launch_chunks(sched, LONG_AND_SHORT) == {0: 2048}


def test_the_chunk_cap_lets_a_short_prompt_share_the_iteration_with_a_long_one():
    sched = ChunkedPrefill(config(), SLO(), token_budget=2048, long_prefill_token_threshold=512)
    assert first_launch_chunks(sched, LONG_AND_SHORT) == {0: 512, 1: 100}


def test_partial_prefill_limits_pass_over_a_second_long_prompt_until_raised():
    reqs = [Request(0, 0.0, 10_000, 4), Request(1, 0.0, 8_000, 4), Request(2, 0.0, 100, 4)]
    one = ChunkedPrefill(config(), SLO(), token_budget=2048, long_prefill_token_threshold=512)
    # one partial prefill at a time: the second long prompt is passed over, the short one behind it goes
    assert first_launch_chunks(one, reqs) == {0: 512, 2: 100}
    assert [s.id for s in one.waiting] == [1]
    two = ChunkedPrefill(config(), SLO(), token_budget=2048, long_prefill_token_threshold=512,
                         max_num_partial_prefills=3, max_long_partial_prefills=2)
    assert first_launch_chunks(two, reqs) == {0: 512, 1: 512, 2: 100}
    longs_one = ChunkedPrefill(config(), SLO(), token_budget=2048, long_prefill_token_threshold=512,
                               max_num_partial_prefills=3, max_long_partial_prefills=1)
    assert first_launch_chunks(longs_one, reqs) == {0: 512, 2: 100}
    short_partial = [Request(0, 0.0, 10_000, 4), Request(1, 0.0, 400, 4)]  # not long, but left partial
    assert first_launch_chunks(ChunkedPrefill(config(), SLO(), token_budget=700, long_prefill_token_threshold=512,
                                              max_num_partial_prefills=2), short_partial) == {0: 512, 1: 188}


def test_bad_chunk_limits_are_refused():
    with pytest.raises(ValueError, match="max_long_partial_prefills"):
        ChunkedPrefill(config(), SLO(), max_num_partial_prefills=1, max_long_partial_prefills=2)
    with pytest.raises(ValueError, match="admission"):
        ChunkedPrefill(config(), SLO(), admission="lifo")


@settings(max_examples=25, deadline=None)
@given(st.integers(64, 1024), st.integers(16, 600), st.integers(1, 4), st.sampled_from(["fcfs", "deadline"]),
       st.integers(0, 5))
def test_capped_chunked_prefill_serves_everything_within_budget_and_cap(budget, cap, partial, admission, seed):
    sched = ChunkedPrefill(config(max_batch=32), SLO(ttft_ms_per_token=0.5), token_budget=budget,
                           long_prefill_token_threshold=cap, max_num_partial_prefills=partial,
                           max_long_partial_prefills=partial, admission=admission)
    requests = workload(n=25, seed=seed, rate=60.0)
    launches = drive(sched, requests)
    assert_all_served(sched, requests)
    for launch in launches:
        if launch.prefill:
            assert launch.num_prefill_tokens + len(launch.decode_ids) <= budget
            assert max(c.num_new for c in launch.prefill) <= cap


# Admission as a layer: at 1.2 s, D (100 tokens, arrived 0.0) has missed its 1 s TTFT; A (16K tokens, 4 s
# target), B (200 tokens) and C (6K tokens) can still make theirs. Deadlines: B 1.9 s, C 2.5 s, A 4.1 s.
SLO_MIXED = SLO(ttft_ms=1000, ttft_ms_per_token=0.25)
WAITING = [Request(0, 0.0, 100, 4), Request(1, 0.1, 16_000, 4), Request(2, 0.9, 200, 4), Request(3, 1.0, 6_000, 4)]
D, A, B, C = 0, 1, 2, 3


def admitted_after_first_decision(sched):
    for r in WAITING:
        sched.on_arrival(r, r.arrival_at)
    launches = sched.schedule(1.2, {})
    order = [c.request_id for launch in launches for c in launch.prefill]
    return [s.id for s in sched.prefilling], order


def test_deadline_admission_orders_a_baseline_queue_as_yoda_does():
    yoda = GangScheduler(config(), SLO_MIXED, gang_estimator(), prefill_tokens=8192)
    yoda_admitted, _ = admitted_after_first_decision(yoda)
    assert yoda_admitted == [B, C, A] and [s.id for s in yoda.late] == [D]
    chunked = ChunkedPrefill(config(), SLO_MIXED, token_budget=8192, admission="deadline")
    admitted, chunk_order = admitted_after_first_decision(chunked)
    assert admitted == yoda_admitted and chunk_order == [B, C, A]
    assert [s.id for s in chunked.late] == [D]
    chunked.check_invariants()


def test_fcfs_admission_is_as_shipped():
    chunked = ChunkedPrefill(config(), SLO_MIXED, token_budget=8192)
    admitted, chunk_order = admitted_after_first_decision(chunked)
    assert admitted == [D, A] and chunk_order == [D, A]


def test_deadline_admission_puts_a_short_prompt_ahead_of_an_admitted_long_one():
    sched = ChunkedPrefill(config(), SLO_MIXED, token_budget=512, admission="deadline")
    sched.on_arrival(Request(0, 0.0, 16_000, 4), 0.0)
    (launch,) = sched.schedule(0.0, {})
    sched.on_launch_done(launch, 0.05)
    sched.on_arrival(Request(1, 0.05, 300, 4), 0.05)
    (launch,) = sched.schedule(0.05, {})
    assert [c.request_id for c in launch.prefill] == [1, 0]  # FCFS would give the long one the budget
    assert {c.request_id: c.num_new for c in launch.prefill} == {1: 300, 0: 212}


@pytest.mark.parametrize("make", [
    lambda adm: ChunkedPrefill(config(max_batch=16), SLO_MIXED, token_budget=256, admission=adm,
                               long_prefill_token_threshold=128, max_num_partial_prefills=2),
    lambda adm: PrefillFirst(config(max_batch=16), SLO_MIXED, max_prefill_tokens=1024, admission=adm),
    lambda adm: StaticSplit(config(max_batch=16), SLO_MIXED, decode_sms=48, chunk_tokens=512, admission=adm),
    lambda adm: TemporalSplit(config(max_batch=16), SLO_MIXED, layers_per_group=3, admission=adm),
], ids=["chunked", "prefill_first", "static_split", "temporal"])
def test_every_baseline_serves_everything_with_deadline_admission(make):
    sched = make("deadline")
    requests = workload(n=40, seed=3, rate=80.0, max_prompt=2000)
    drive(sched, requests)
    assert_all_served(sched, requests)
