"""Baselines with the chunk cap or deadline admission give the same records when the simulator runs several
iterations per event (max_decode_steps) as with one iteration per event: a multi-step run must never skip a
decision that would have changed something (deadline order changes with time alone)."""
import pytest

from sim.run import SimConfig, simulate
from sim.workloads import load_workload
from traces import SAMPLE_DIR

CAP = {"token_budget": 1024, "long_prefill_token_threshold": 256, "max_num_partial_prefills": 4,
       "max_long_partial_prefills": 4}


@pytest.mark.parametrize("policy, options, instances", [
    ("chunked", CAP, 1),
    ("chunked", {"token_budget": 2048, "admission": "deadline"}, 1),
    ("chunked", {**CAP, "admission": "deadline"}, 1),
    ("prefill_first", {"admission": "deadline"}, 1),
    ("static_split", {"admission": "deadline"}, 1),
    ("temporal", {"admission": "deadline"}, 1),
    ("disagg", {**CAP, "admission": "deadline"}, 2),
])
def test_multi_step_runs_match_single_iterations(policy, options, instances):
    requests, _ = load_workload(str(SAMPLE_DIR / "mooncake_sample.jsonl"), rate=0.3, max_requests=150)
    runs = [simulate(requests, SimConfig(policy=policy, num_instances=instances, policy_options=options,
                                         max_decode_steps=steps, record_timeline=False, check_every=50))
            for steps in (1, 64)]
    one, many = (sorted(r.records, key=lambda rec: rec.request_id) for r in runs)
    for a, b in zip(one, many):
        assert len(a.token_at) == len(b.token_at)
        assert a.token_at == pytest.approx(b.token_at, abs=1e-9), a.request_id
