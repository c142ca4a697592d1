"""A goodput probe stops once its TTFT misses alone fail it (yoda.goodput.TtftMissWatch, sim.run.simulate_probe):
the verdict is the full run's, and a watch that never stops the run leaves its records as they were."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from sim.run import SimConfig, simulate, simulate_probe
from traces import rescale_to_rate, sharegpt_like
from yoda.goodput import CRITERIA, GaveUp, TtftMissWatch, search_goodput
from yoda.metrics import compute_metrics
from yoda.request import SLO, RequestRecord

SLO_ = SLO(ttft_ms=300, tbt_ms=50)


def test_the_miss_limit_alone_puts_the_percentile_over_target():
    # numpy's linear P99 of N ratios is over 1 once N - floor(0.99 (N - 1)) of them are, however barely
    # they miss and however well the rest meet it (one fewer may already do, with large misses: the watch
    # only stops where failing is certain)
    import numpy as np
    for n in (1, 7, 60, 100, 1000, 1234):
        limit = TtftMissWatch(SLO_, n).limit
        assert np.percentile([1.0 + 1e-9] * limit + [0.0] * (n - limit), 99) > 1
        if limit > 1 and n > 1:
            assert np.percentile([1.0 + 1e-9] * (limit - 1) + [0.0] * (n - limit + 1), 99) <= 1
    assert TtftMissWatch(SLO_, 1000).limit == 11


def test_a_miss_counts_only_once_its_deadline_has_passed():
    watch = TtftMissWatch(SLO_, 3)  # limit 2
    early = RequestRecord(0, 0.0, 10, 5, token_at=[0.1])
    late = RequestRecord(1, 0.0, 10, 5, token_at=[0.35])
    waiting = RequestRecord(2, 0.05, 10, 5)
    assert not watch(0.2, [early, late, waiting])  # no deadline (0.3, 0.3, 0.35) has passed
    assert not watch(0.3, [])  # at a deadline a token may still come at that instant
    assert not watch(0.32, []) and watch.misses == 1  # the late one missed, the early one met it
    assert watch(0.36, []) and watch.misses == 2  # the waiting one's deadline passed without a token


def test_a_watch_that_never_stops_leaves_the_records_unchanged():
    requests = rescale_to_rate(sharegpt_like(12, 1.0, rng=3), 6.0)
    cfg = SimConfig(policy="yoda", slo=SLO_, record_timeline=False, latency="roofline")
    plain = simulate(requests, cfg).records
    calls = []
    watched = simulate(requests, cfg, watch=lambda now, new: calls.append((now, len(new))) and False).records
    assert calls and sum(n for _, n in calls) <= len(requests)
    assert [(r.request_id, list(r.token_at), r.finished_at) for r in plain] == [
        (r.request_id, list(r.token_at), r.finished_at) for r in watched]


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(["chunked", "yoda", "prefill_first"]), st.floats(2.0, 80.0), st.integers(0, 3))
def test_a_probe_that_gives_up_fails_and_one_that_does_not_is_the_full_run(policy, rate, seed):
    requests = rescale_to_rate(sharegpt_like(16, 1.0, rng=seed), rate)
    cfg = SimConfig(policy=policy, slo=SLO_, record_timeline=False, latency="roofline")
    full = CRITERIA["strict"](compute_metrics(simulate(requests, cfg).records, SLO_))
    out = simulate_probe(requests, cfg, "strict")
    if isinstance(out, GaveUp):
        assert not full and out.at_s > 0 and any(r.finished_at is None for r in out.records)
    else:
        assert CRITERIA["strict"](compute_metrics(out, SLO_)) == full


def test_the_search_fails_a_probe_that_gave_up_and_says_so():
    records = [RequestRecord(i, 0.1 * i, 10, 2, token_at=[0.1 * i + 0.01, 0.1 * i + 0.02], finished_at=0.1 * i + 0.02)
               for i in range(30)]

    def run(rate: float):
        return GaveUp(records, 5.0, "too late") if rate > 4 else records
    found = search_goodput(run, SLO_, 1.0, rel_tol=0.05)
    assert 3.8 <= found.goodput_rps <= 4.0
    gave_up = [p for p in found.probes if "gave_up" in p]
    assert gave_up and all(not p["ok"] and p["gave_up_at_s"] == 5.0 for p in gave_up)


@pytest.mark.parametrize("criterion", ["per_request", "attainment"])
def test_criteria_without_the_fleet_percentile_never_give_up(criterion):
    assert TtftMissWatch.for_criterion(criterion, SLO_, 100) is None
