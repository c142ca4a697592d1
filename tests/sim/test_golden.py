"""Golden outputs: key metrics of every policy on a fixed 30-request trace, compared exactly with the
committed JSON under tests/sim/golden/. After an intended change, regenerate and review the diff:

    YODA_UPDATE_GOLDEN=1 python -m pytest tests/sim/test_golden.py
"""
import json
import os
from pathlib import Path

import pytest

from sim.run import SimConfig, simulate
from traces import shared_system_prompt
from yoda.policies import policy_names
from yoda.request import SLO

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("YODA_UPDATE_GOLDEN") == "1"


def key_metrics(policy: str) -> dict:
    requests = shared_system_prompt(30, 8.0, rng=7)
    # pinned to the source the golden files were made with (the default became "measured" in issue 17)
    cfg = SimConfig(policy=policy, num_instances=2 if policy == "disagg" else 1, block_size=16,
                    slo=SLO(ttft_ms=500, tbt_ms=50), latency="roofline")
    m = simulate(requests, cfg).metrics
    out = {"policy": policy, "num_requests": m["num_requests"], "completed": m["completed"],
           "rejected": m["rejected"], "total_output_tokens": m["total_output_tokens"],
           "num_preemptions": m["num_preemptions"], "reused_prompt_tokens": m["reused_prompt_tokens"]}
    for name in ("ttft", "tbt"):
        for p in ("median", "p99"):
            out[f"{p}_{name}_ms"] = round(m[f"{p}_{name}_ms"], 1)
    return out


@pytest.mark.parametrize("policy", policy_names())
def test_golden(policy):
    path = GOLDEN_DIR / f"{policy}.json"
    got = key_metrics(policy)
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"no golden file {path}; run with YODA_UPDATE_GOLDEN=1 to create it"
    assert got == json.loads(path.read_text())
