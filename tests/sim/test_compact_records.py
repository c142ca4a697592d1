"""SimConfig.compact_records stores finished records' token times as arrays of doubles: same values, less
memory (what lets the 1M-request scaling run fit in a few GB)."""
from array import array

import numpy as np

from sim.gpu_instance import GpuInstance
from sim.run import SimConfig, simulate
from yoda.request import Request


def test_compacted_records_hold_the_same_token_times(monkeypatch):
    monkeypatch.setattr(GpuInstance, "COMPACT_EVERY", 3)  # compact often, mid-run
    rng = np.random.default_rng(1)
    requests = [Request(i, i * 0.05, int(rng.integers(20, 900)), int(rng.integers(1, 120))) for i in range(40)]
    for policy in ("chunked", "yoda"):
        base = dict(policy=policy, num_instances=2, dispatcher="round_robin", record_timeline=False)
        plain = simulate(requests, SimConfig(**base)).records
        compact = simulate(requests, SimConfig(**base, compact_records=True)).records
        assert sum(type(r.token_at) is array for r in compact) > len(compact) // 2
        assert [list(r.token_at) for r in compact] == [r.token_at for r in plain]
        assert [r.finished_at for r in compact] == [r.finished_at for r in plain]
