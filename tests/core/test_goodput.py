"""Goodput search on synthetic run functions whose SLO breaks at a known rate."""
import pytest

from yoda.goodput import attainment_ok, fleet_ok, search_goodput
from yoda.metrics import compute_metrics
from yoda.request import SLO, RequestRecord

SLO_ = SLO(ttft_ms=500, tbt_ms=50)
BREAK_RPS = 3.7


def run_with_ttft(ttft_s_at):
    """100 requests, each with TTFT `ttft_s_at(rate)` and 20 ms gaps, arriving at `rate`."""
    def run(rate: float) -> list[RequestRecord]:
        out = []
        for i in range(100):
            at = i / rate
            ttft = ttft_s_at(rate)
            tokens = [at + ttft + 0.02 * k for k in range(5)]
            out.append(RequestRecord(i, at, 100, 5, token_at=tokens, finished_at=tokens[-1]))
        return out
    return run


def step_run(rate: float):
    return run_with_ttft(lambda r: 0.1 if r <= BREAK_RPS else 2.0)(rate)


def ramp_run(rate: float):
    # TTFT grows past its 500 ms target above BREAK_RPS: 0.5 s exactly at the break rate
    return run_with_ttft(lambda r: 0.2 + max(0.0, r - BREAK_RPS + 0.003) * 100)(rate)


@pytest.mark.parametrize("start", [0.05, 1.0, 3.7, 3.71, 10.0, 300.0])
@pytest.mark.parametrize("rel_tol", [0.03, 0.005])
def test_finds_the_break_rate_within_tolerance(start, rel_tol):
    res = search_goodput(step_run, SLO_, start, rel_tol=rel_tol, max_probes=40)
    assert BREAK_RPS * (1 - rel_tol) <= res.goodput_rps <= BREAK_RPS
    for p in res.probes:  # every probe's verdict is the truth at its rate
        assert p["ok"] == (p["rate_rps"] <= BREAK_RPS)
    assert any(p["rate_rps"] == res.goodput_rps and p["ok"] for p in res.probes)


def test_finds_a_continuous_breaking_point():
    res = search_goodput(ramp_run, SLO_, 1.0, rel_tol=0.01)
    assert BREAK_RPS * 0.99 <= res.goodput_rps <= BREAK_RPS
    assert res.criterion == "strict"  # the headline: both TBT definitions


def test_search_is_deterministic():
    a = search_goodput(ramp_run, SLO_, 2.0)
    b = search_goodput(ramp_run, SLO_, 2.0)
    assert a.goodput_rps == b.goodput_rps and a.probes == b.probes


def test_attainment_criterion():
    # the share of requests meeting the SLO falls linearly: 1 - rate / 40 >= 0.9 up to 4 rps
    def run(rate: float):
        recs = step_run(1.0)
        num_bad = round(100 * rate / 40)
        for r in recs[:num_bad]:
            r.token_at[0] = r.arrival_at + 2.0
        return recs

    res = search_goodput(run, SLO_, 1.0, criterion="attainment", rel_tol=0.01)
    assert res.criterion == "attainment"
    assert 4.0 * 0.98 <= res.goodput_rps <= 4.0 + 0.2  # rounding of num_bad moves the edge by < 0.2 rps


def test_never_ok_gives_zero_and_start_rate_must_be_positive():
    res = search_goodput(run_with_ttft(lambda r: 5.0), SLO_, 1.0)
    assert res.goodput_rps == 0.0 and all(not p["ok"] for p in res.probes)
    with pytest.raises(ValueError):
        search_goodput(step_run, SLO_, 0.0)


def test_probe_budget_is_respected():
    calls = []
    res = search_goodput(lambda r: calls.append(r) or step_run(r), SLO_, 1.0, rel_tol=1e-9, max_probes=7)
    assert len(calls) == len(res.probes) <= 7
    assert res.goodput_rps <= BREAK_RPS


def test_criteria_helpers():
    m = compute_metrics(step_run(1.0), SLO_)
    assert fleet_ok(m) and attainment_ok(m)
    m = compute_metrics(step_run(5.0), SLO_)
    assert not fleet_ok(m) and not attainment_ok(m)
    rejected = step_run(1.0) + [RequestRecord(999, 0.0, 10, 1, finished_at=0.0, rejected_reason="x")]
    m = compute_metrics(rejected, SLO_)
    assert not fleet_ok(m) and not attainment_ok(m)  # one rejection fails both (attainment is 0.99)
