"""compute_metrics against hand-computed examples (DESIGN.md section 2 definitions).

Three records (times in s):
    R1 arrives 0.0, tokens 0.10 0.15 0.25          TTFT 100 ms, gaps 50 100,     TPOT 75,     E2E 250
    R2 arrives 1.0, tokens 1.30 1.32               TTFT 300 ms, gap 20,          TPOT 20,     E2E 320
    R3 arrives 2.0, tokens 2.50 2.60 2.62 2.75     TTFT 500 ms, gaps 100 20 130, TPOT 83.33,  E2E 750
Percentiles are numpy's linear interpolation: p(q) of sorted x at index q/100 * (n - 1).
"""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yoda.metrics import all_tbt_gaps_s, compute_metrics, request_meets_slo
from yoda.request import SLO, RequestRecord


def records() -> list[RequestRecord]:
    return [
        RequestRecord(1, 0.0, 100, 3, token_at=[0.10, 0.15, 0.25], finished_at=0.25),
        RequestRecord(2, 1.0, 200, 2, token_at=[1.30, 1.32], finished_at=1.32, reused_len=100),
        RequestRecord(3, 2.0, 4000, 4, token_at=[2.50, 2.60, 2.62, 2.75], finished_at=2.75, num_preemptions=2),
    ]


EXPECTED = {
    # TTFT sorted [100, 300, 500]
    "mean_ttft_ms": 300.0, "median_ttft_ms": 300.0, "p90_ttft_ms": 460.0, "p99_ttft_ms": 496.0,
    # gaps sorted [20, 20, 50, 100, 100, 130]: mean 70, median 75, p90 at 4.5 -> 115, p99 at 4.95 -> 128.5
    "mean_tbt_ms": 70.0, "median_tbt_ms": 75.0, "p90_tbt_ms": 115.0, "p99_tbt_ms": 128.5,
    "mean_itl_ms": 70.0, "p99_itl_ms": 128.5,
    # TPOT sorted [20, 75, 83.333]
    "mean_tpot_ms": (75 + 20 + 250 / 3) / 3, "median_tpot_ms": 75.0,
    "p90_tpot_ms": 75 + 0.8 * (250 / 3 - 75), "p99_tpot_ms": 75 + 0.98 * (250 / 3 - 75),
    # E2E sorted [250, 320, 750]
    "mean_e2el_ms": 440.0, "median_e2el_ms": 320.0, "p90_e2el_ms": 664.0, "p99_e2el_ms": 741.4,
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_latency_summaries(key):
    m = compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=90))
    assert m[key] == pytest.approx(EXPECTED[key], abs=1e-9)


def test_every_gap_counts_for_tbt():
    gaps = sorted(all_tbt_gaps_s(records()) * 1000)
    assert gaps == pytest.approx([20, 20, 50, 100, 100, 130])


def test_counts_throughput_and_reuse():
    m = compute_metrics(records(), SLO())
    assert (m["num_requests"], m["completed"], m["rejected"]) == (3, 3, 0)
    assert m["duration"] == pytest.approx(2.75)  # first arrival to last finish
    assert m["total_input_tokens"] == 4300 and m["total_output_tokens"] == 9
    assert m["request_throughput"] == pytest.approx(3 / 2.75)
    assert m["output_throughput"] == pytest.approx(9 / 2.75)
    assert m["total_token_throughput"] == pytest.approx(4309 / 2.75)
    assert m["num_preemptions"] == 2
    assert m["reused_prompt_tokens"] == 100 and m["kv_reuse_fraction"] == pytest.approx(100 / 4300)


def test_request_level_attainment():
    # R1 (100 ms, TPOT 75) and R2 (300, 20) meet 400/90; R3 misses TTFT (500 > 400)
    assert compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=90))["slo_attainment"] == pytest.approx(2 / 3)
    # TPOT 75 > 70 fails R1 as well
    assert compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=70))["slo_attainment"] == pytest.approx(1 / 3)
    # R3's 4000-token prompt gets max(400, 0.125 * 4000) = 500 ms: now it meets TTFT, and TPOT 83.3 <= 90
    slo = SLO(ttft_ms=400, tbt_ms=90, ttft_ms_per_token=0.125)
    assert compute_metrics(records(), slo)["slo_attainment"] == pytest.approx(1.0)
    r1 = records()[0]
    assert request_meets_slo(r1, SLO(ttft_ms=100, tbt_ms=75))  # targets are inclusive
    assert not request_meets_slo(r1, SLO(ttft_ms=99.9, tbt_ms=75))


def test_fleet_p99_check():
    m = compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=130))
    # TTFT/target ratios [0.25, 0.75, 1.25]: P99 at index 1.98 -> 1.24
    assert m["slo_ttft_at_percentile_ms"] == pytest.approx(496.0)
    assert m["slo_ttft_ratio_at_percentile"] == pytest.approx(1.24)
    assert m["slo_tbt_at_percentile_ms"] == pytest.approx(128.5)
    assert m["fleet_slo_met"] is False
    # per-token target for R3 (500 ms): ratios [0.25, 0.75, 1.0] -> P99 0.995, TBT 128.5 <= 130
    m = compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=130, ttft_ms_per_token=0.125))
    assert m["slo_ttft_ratio_at_percentile"] == pytest.approx(0.995)
    assert m["fleet_slo_met"] is True
    # TBT P99 128.5 > 128
    assert compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=128, ttft_ms_per_token=0.125))["fleet_slo_met"] is False


def test_fleet_percentile_follows_the_slo():
    m = compute_metrics(records(), SLO(ttft_ms=400, tbt_ms=110, percentile=90))
    assert m["slo_ttft_at_percentile_ms"] == pytest.approx(460.0)
    assert m["slo_tbt_at_percentile_ms"] == pytest.approx(115.0)
    assert m["fleet_slo_met"] is False
    m = compute_metrics(records(), SLO(ttft_ms=500, tbt_ms=115, percentile=90))
    assert m["fleet_slo_met"] is True


def test_rejected_and_unfinished_requests():
    recs = records() + [
        RequestRecord(4, 3.0, 10**6, 1, finished_at=3.0, rejected_reason="prompt and output exceed the whole KV cache"),
        RequestRecord(5, 3.5, 10, 5, token_at=[3.6]),  # still running: neither finished nor rejected
    ]
    slo = SLO(ttft_ms=400, tbt_ms=130, ttft_ms_per_token=0.125)
    m = compute_metrics(recs, slo)
    assert (m["num_requests"], m["completed"], m["rejected"]) == (5, 3, 1)
    assert m["duration"] == pytest.approx(2.75)
    assert m["total_input_tokens"] == 4300  # completed requests only
    assert m["slo_attainment"] == pytest.approx(3 / 5)  # rejected and unfinished count as misses
    assert m["fleet_slo_met"] is False  # a rejection breaks the fleet SLO


def test_empty_and_single_token_runs():
    m = compute_metrics([], SLO())
    assert m["completed"] == 0 and m["fleet_slo_met"] is False and math.isnan(m["mean_ttft_ms"])
    one = [RequestRecord(1, 0.0, 10, 1, token_at=[0.2], finished_at=0.2)]
    m = compute_metrics(one, SLO(ttft_ms=300))
    assert m["slo_tbt_at_percentile_ms"] == 0.0 and math.isnan(m["mean_tbt_ms"]) and math.isnan(m["mean_tpot_ms"])
    assert m["fleet_slo_met"] is True and m["slo_attainment"] == 1.0
    only_rejected = [RequestRecord(1, 5.0, 10, 1, finished_at=5.0, rejected_reason="x")]
    m = compute_metrics(only_rejected, SLO())
    assert m["completed"] == 0 and m["rejected"] == 1 and m["request_throughput"] == 0.0


@given(st.lists(st.lists(st.floats(0, 1e4, allow_nan=False), max_size=6), max_size=8))
def test_gaps_are_each_requests_own_differences(token_lists):
    """The flat computation drops the step from one request's last token to the next one's first, and
    skips requests with fewer than two tokens."""
    recs = [RequestRecord(i, 0.0, 10, len(t), token_at=sorted(t)) for i, t in enumerate(token_lists)]
    expected = [b - a for r in recs for a, b in zip(r.token_at, r.token_at[1:])]
    assert all_tbt_gaps_s(recs).tolist() == expected
