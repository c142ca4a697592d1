"""Multi-step decode runs (max_decode_steps > 1) are a simulation speed-up only: for every policy whose
decisions do not depend on how many steps a launch covers, the records equal those of one-step launches,
also when KV is tight (growth reserved for a run is given back when the run is cut short)."""
from hypothesis import HealthCheck, given, settings, strategies as st

from sim.run import SimConfig, simulate
from yoda.request import Request

# Yoda's default gangs (several decode steps beside a prefill, deciding less often) are a policy choice;
# with one-step gangs it decides as one-step launches do
POLICIES = {"chunked": {"token_budget": 256}, "prefill_first": {}, "static_split": {}, "temporal": {},
            "yoda": {"gang_steps": 1}}


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
    cfg = SimConfig(policy=policy, kv_blocks=kv_blocks, block_size=16, max_batch=8, record_timeline=False,
                    check_every=1, max_decode_steps=steps, policy_options=POLICIES[policy])
    return simulate(requests, cfg).records


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.sampled_from(sorted(POLICIES)), st.integers(0, 60))
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
