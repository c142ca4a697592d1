"""Baselines behave as the systems they stand for: the decode batch cap counts every admitted request
(ready and prefilling included), and vLLM-like baselines preempt the newest running request, the one
asking for a block included. Small cases whose right answer is known."""
import pytest

from yoda.baselines import ChunkedPrefill, PrefillFirst, StaticSplit, TemporalSplit
from yoda.request import SLO, Request
from yoda.scheduler import SchedulerConfig

NUM_SMS, NUM_LAYERS = 132, 8


def drive(sched, requests, max_events: int = 100_000) -> None:
    """Toy event loop: deliver arrivals and launch completions in time order; fixed toy durations."""
    arrivals = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    running: dict = {}  # lane -> (end, launch)
    i = 0
    for _ in range(max_events):
        now = min([end for end, _ in running.values()] + [arrivals[i].arrival_at if i < len(arrivals) else 1e18])
        if now == 1e18:
            return
        for lane in sorted(running):
            if running[lane][0] == now:
                sched.on_launch_done(running.pop(lane)[1], now)
        while i < len(arrivals) and arrivals[i].arrival_at == now:
            sched.on_arrival(arrivals[i], now)
            i += 1
        for launch in sched.schedule(now, {lane: l for lane, (_, l) in running.items()}):
            running[launch.lane] = (now + 0.01 + 1e-5 * launch.num_prefill_tokens, launch)
        sched.check_invariants()
    raise AssertionError("event budget exhausted")


CAPPED = {
    "chunked": lambda cfg: ChunkedPrefill(cfg, SLO(), token_budget=512),
    "prefill_first": lambda cfg: PrefillFirst(cfg, SLO()),
    "static_split": lambda cfg: StaticSplit(cfg, SLO(), decode_sms=48, chunk_tokens=512),
    "temporal": lambda cfg: TemporalSplit(cfg, SLO(), layers_per_group=4),
}


def _cfg(kv_blocks: int, max_batch: int = 256) -> SchedulerConfig:
    return SchedulerConfig(num_sms=NUM_SMS, num_layers=NUM_LAYERS, kv_blocks=kv_blocks, block_size=16,
                           max_batch=max_batch)


@pytest.mark.parametrize("policy", sorted(CAPPED))
def test_batch_cap_counts_every_admitted_request(policy):
    # cap 2, five short prompts at once: one iteration's budget could admit all five
    sched = CAPPED[policy](_cfg(1000, max_batch=2))
    live = []
    check = sched.check_invariants

    def check_and_count():
        check()
        live.append(len(sched.decoding) + len(sched.ready) + len(sched.prefilling))
    sched.check_invariants = check_and_count
    requests = [Request(i, 0.0, 20, 30) for i in range(5)]
    drive(sched, requests)
    assert max(live) == 2
    recs = {r.request_id: r for r in sched.records}
    # requests 2..4 start prefill only once an earlier one has finished: no first token while the cap binds
    first_done = min(recs[0].finished_at, recs[1].finished_at)
    for rid in (2, 3, 4):
        assert recs[rid].token_at[0] > first_done


@pytest.mark.parametrize("policy", ["chunked", "prefill_first"])
def test_vllm_like_baselines_preempt_the_newest_running_request_even_the_requester(policy):
    # 4 blocks of 16: A (17 tokens) and B (31 tokens) take 2 blocks each. B, the newer one, needs a third
    # block first (its context reaches 33 after one decode step); vLLM pops the newest running request,
    # B itself, and A runs on untouched.
    sched = CAPPED[policy](_cfg(4))
    a, b = Request(0, 0.0, 17, 20), Request(1, 0.0, 31, 10)
    drive(sched, [a, b])
    recs = {r.request_id: r for r in sched.records}
    assert recs[0].num_preemptions == 0
    assert recs[1].num_preemptions >= 1
    assert len(recs[0].token_at) == 20 and len(recs[1].token_at) == 10
