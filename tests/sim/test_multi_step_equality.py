"""Multi-step decode runs (max_decode_steps > 1) are a simulation speed-up only: for every policy whose
decisions do not depend on how many steps a launch covers, the records equal those of one-step launches,
also when KV is tight (growth reserved for a run is given back when the run is cut short)."""
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from sim.run import SimConfig, simulate
from yoda.request import Request

# Yoda's default gangs (several decode steps beside a prefill, deciding less often) are a policy choice;
# with one-step gangs it decides as one-step launches do. "+deadline": the baseline with Yoda's admission
# layer, whose order changes when a deadline passes (the backend stops a run then: wakeup_at)
POLICIES = {"chunked": {"token_budget": 256}, "prefill_first": {}, "static_split": {}, "temporal": {},
            "yoda": {"gang_steps": 1}, "chunked+deadline": {"token_budget": 256, "admission": "deadline"},
            "prefill_first+deadline": {"admission": "deadline"}}


@st.composite
def traces(draw):
    n = draw(st.integers(2, 14))
    gaps = draw(st.lists(st.floats(0.0, 0.3), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 700), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 160), min_size=n, max_size=n))
    shared = draw(st.booleans())  # some prompts share a cached prefix
    requests, at = [], 0.0
    for i, (gap, p, o) in enumerate(zip(gaps, prompts, outputs)):
        at += gap
        hashes = tuple(range(1, p // 16 + 1)) if shared and i % 2 else ()
        requests.append(Request(i, at, p, o, block_hashes=hashes, hash_block_size=16))
    return requests


def _records(requests, policy, kv_blocks, steps):
    cfg = SimConfig(policy=policy.split("+")[0], kv_blocks=kv_blocks, block_size=16, max_batch=8,
                    record_timeline=False, check_every=1, max_decode_steps=steps, policy_options=POLICIES[policy])
    return simulate(requests, cfg).records


# found by hypothesis (stop 14): request 11 missed its TTFT while a decode run went on; single steps had
# moved it to the late queue at an intermediate step, the run's end saw it still waiting (and piggybacked it)
LATE_DURING_A_RUN = [Request(i, 0.0, p, o, hash_block_size=16) for i, (p, o) in enumerate(
    [(1, 1), (1, 1), (500, 104), (1, 1), (293, 72), (320, 44)] + [(1, 1)] * 5 + [(193, 1)])]

# ... and a deadline passing while a decode run goes on with no event at all (until the backend stopped runs
# at the scheduler's wakeup_at, request 0's token times differed)
DEADLINE_WITHOUT_EVENT = [Request(i, at, p, o, hash_block_size=16) for i, (at, p, o) in enumerate(
    [(0.0, 1, 91), (0.0, 1, 34), (0.0, 17, 109), (0.0, 65, 13), (0.25, 1, 45)])]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(sorted(POLICIES)), st.integers(0, 60))
@example(LATE_DURING_A_RUN, "yoda", 16)
@example(DEADLINE_WITHOUT_EVENT, "yoda", 0)
def test_multi_step_records_equal_single_step_records(requests, policy, spare_blocks):
    # from a cache that just fits the largest request to a roomy one
    kv_blocks = max(-(-(r.prompt_len + r.output_len) // 16) for r in requests) + spare_blocks
    single = _records(requests, policy, kv_blocks, 1)
    multi = _records(requests, policy, kv_blocks, 64)
    for a, b in zip(single, multi):
        assert (b.request_id, b.reused_len, b.num_preemptions, b.rejected_reason) == (
            a.request_id, a.reused_len, a.num_preemptions, a.rejected_reason)
        assert len(b.token_at) == len(a.token_at)
        assert all(abs(x - y) <= 1e-9 for x, y in zip(a.token_at, b.token_at)), f"request {a.request_id}"


def test_multi_step_runs_decide_less_often_with_the_same_records():
    # what the runs are for: the counters show the scheduler asked far less often for the same token times
    requests = [Request(i, 0.05 * i, 200, 150, hash_block_size=16) for i in range(8)]
    single, multi = (simulate(requests, SimConfig(policy="chunked", kv_blocks=400, block_size=16,
                                                   record_timeline=False, max_decode_steps=steps))
                     for steps in (1, 64))
    for a, b in zip(single.records, multi.records):
        assert b.token_at == pytest.approx(a.token_at, abs=1e-9)
    one, many = (r.metrics["scheduler_counters"] for r in (single, multi))
    assert one["sim_launches"] >= 150  # one launch per decode iteration at least (the longest output)
    assert one["sim_decisions"] >= one["sim_launches"]  # one lane: every launch was a decision
    assert many["sim_decisions"] * 4 < one["sim_decisions"]
