"""Latency metrics, SLO attainment and throughput from request records (DESIGN.md section 2).

Results use `vllm bench serve` field names where one exists (ITL there is our TBT) plus our own fields.
"""
from __future__ import annotations

from array import array
from typing import Iterable, Sequence

import numpy as np

from yoda.request import SLO, RequestRecord

PERCENTILES = (50, 90, 99)


def _summary(name: str, values_s: Sequence[float] | np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    arr = np.asarray(values_s, dtype=float) * 1000.0
    if arr.size == 0:
        return {f"mean_{name}_ms": float("nan"), f"median_{name}_ms": float("nan"),
                f"std_{name}_ms": float("nan"), **{f"p{p}_{name}_ms": float("nan") for p in PERCENTILES}}
    out[f"mean_{name}_ms"] = float(arr.mean())
    out[f"median_{name}_ms"] = float(np.median(arr))
    out[f"std_{name}_ms"] = float(arr.std())
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES)):  # one partition for all
        out[f"p{p}_{name}_ms"] = float(v)
    return out


class TokenGaps:
    """The gaps between consecutive tokens of each record, flattened once (a run's metrics read them three
    ways: pooled, per request, and per finished request). `gaps` holds record after record; `counts[i]` is
    record i's number of gaps (tokens - 1, at least 0)."""

    def __init__(self, records: Sequence[RequestRecord]) -> None:
        times = array("d")
        for r in records:  # one C-level copy per record (array.extend), not a Python loop per token
            times.extend(r.token_at)
        flat = np.frombuffer(times, dtype=float) if len(times) else np.zeros(0)
        tokens = np.fromiter(map(len, (r.token_at for r in records)), dtype=np.int64, count=len(records))
        self.counts = np.maximum(tokens - 1, 0)
        keep = np.ones(max(flat.size - 1, 0), dtype=bool)
        ends = np.cumsum(tokens)[:-1] - 1  # last token of a record -> first of the next
        keep[ends[(ends >= 0) & (ends < keep.size)]] = False
        self.gaps = np.diff(flat)[keep] if flat.size > 1 else np.zeros(0)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64) if len(records) else \
            np.zeros(0, dtype=np.int64)

    def of(self, mask: np.ndarray) -> np.ndarray:
        """The gaps of the records where `mask` is true, in order."""
        return self.gaps[np.repeat(mask, self.counts)]

    def percentile_each(self, percentile: float) -> np.ndarray:
        """Each record's own `percentile` gap (numpy's linear interpolation); NaN where it has no gap."""
        out = np.full(self.counts.size, np.nan)
        frac = percentile / 100.0
        for i in np.flatnonzero(self.counts):  # a partition per record: O(gaps), no global sort
            n, s = int(self.counts[i]), int(self.starts[i])
            pos = (n - 1) * frac
            lo = int(np.floor(pos))
            hi = min(lo + 1, n - 1)
            part = np.partition(self.gaps[s:s + n], (lo, hi)) if n > 1 else self.gaps[s:s + 1]
            low, high = part[lo], part[hi]
            out[i] = low + (high - low) * (pos - lo)
        return out


def all_tbt_gaps_s(records: Sequence[RequestRecord]) -> np.ndarray:
    """Every gap between consecutive tokens of each request, request after request."""
    return TokenGaps(records).gaps


def per_request_tbt_s(records: Sequence[RequestRecord], percentile: float) -> np.ndarray:
    """Each request's own `percentile` gap between tokens (numpy's linear interpolation), for the requests
    with at least two tokens, in order: the per-request TBT DistServe-style attainment judges."""
    own = TokenGaps(records).percentile_each(percentile)
    return own[~np.isnan(own)]


def _tbt_met(records: Sequence[RequestRecord], own: np.ndarray, slo: SLO) -> np.ndarray:
    met = np.fromiter((r.finished for r in records), dtype=bool, count=len(records))
    multi = ~np.isnan(own)
    met[multi] &= own[multi] <= slo.tbt_s
    return met


def request_tbt_met(records: Sequence[RequestRecord], slo: SLO) -> np.ndarray:
    """Per record: finished, and its own P-th percentile gap within the TBT target (a one-token request has
    no gap and meets it)."""
    return _tbt_met(records, TokenGaps(records).percentile_each(slo.percentile), slo)


def request_meets_slo(record: RequestRecord, slo: SLO) -> bool:
    """Request-level SLO (DistServe convention): TTFT <= target and TPOT <= TBT target."""
    if not record.finished or record.ttft_s is None:
        return False
    tpot = record.tpot_s
    return record.ttft_s <= slo.ttft_target_s(record.prompt_len) and (tpot is None or tpot <= slo.tbt_s)


def e2e_trend(records: Sequence[RequestRecord]) -> float:
    """Mean E2E of the last 10% of arrivals over that of the middle 20%: about 1 when the system is in
    steady state, growing with the queue when it cannot keep up (rejections count as unfinished)."""
    done = sorted((r for r in records if r.finished), key=lambda r: r.arrival_at)
    if len(done) < 20:
        return 1.0
    n = len(done)
    middle = [r.e2e_s for r in done[int(0.4 * n):int(0.6 * n)]]
    last = [r.e2e_s for r in done[int(0.9 * n):]]
    return float(np.mean(last) / max(np.mean(middle), 1e-9))


# A run is stable (queues not growing) when late arrivals wait at most this much longer than mid-run
# ones, and requests complete at no less than this share of the offered rate (a burst that the system
# drains long after the last arrival is not a sustainable rate, even if P99 over all gaps looks fine).
STABLE_E2E_TREND = 2.0
STABLE_THROUGHPUT_RATIO = 0.5


def offered_rate(records: Sequence[RequestRecord]) -> float:
    """Arrivals per second over the whole trace: (n - 1) / span."""
    arrivals = sorted(r.arrival_at for r in records)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return (len(arrivals) - 1) / span if span > 0 else float("inf")


# The steady window: arrivals from this share of the trace to its complement (by count), leaving out the
# ramp-up and the tail (session traces start and end with few sessions open).
STEADY_FROM = 0.1


def offered_rate_steady(records: Sequence[RequestRecord]) -> float:
    """Arrivals per second inside the steady window (the middle 80% of arrivals); the whole trace's rate
    when it has too few requests to cut."""
    arrivals = sorted(r.arrival_at for r in records)
    lo, hi = int(STEADY_FROM * len(arrivals)), int((1 - STEADY_FROM) * len(arrivals)) - 1
    if hi - lo < 10 or arrivals[hi] <= arrivals[lo]:
        return offered_rate(records)
    return (hi - lo) / (arrivals[hi] - arrivals[lo])


def compute_metrics(records: Sequence[RequestRecord], slo: SLO) -> dict[str, float | int | bool]:
    """Everything a results JSON reports about one run."""
    done = [r for r in records if r.finished]
    rejected = [r for r in records if r.rejected_reason is not None]
    ttft = [r.ttft_s for r in done]
    tpot = [r.tpot_s for r in done if r.tpot_s is not None]
    e2e = [r.e2e_s for r in done]
    token_gaps = TokenGaps(records)
    is_done = np.fromiter((r.finished for r in records), dtype=bool, count=len(records))
    gaps = token_gaps.of(is_done)
    own_tbt = token_gaps.percentile_each(slo.percentile)  # each record's own P-th percentile gap
    start = min((r.arrival_at for r in records), default=0.0)
    end = max((r.finished_at for r in done), default=start)
    duration = max(end - start, 1e-9)
    out_tokens = sum(len(r.token_at) for r in done)
    in_tokens = sum(r.prompt_len for r in done)
    pct = slo.percentile
    p_ttft = float(np.percentile(np.asarray(ttft) * 1000, pct)) if ttft else float("inf")
    # TTFT over its own target (targets can grow with prompt length); fleet TTFT is met when <= 1
    ttft_ratio = [r.ttft_s / slo.ttft_target_s(r.prompt_len) for r in done]
    p_ttft_ratio = float(np.percentile(ttft_ratio, pct)) if ttft_ratio else float("inf")
    gap_summary = _summary("itl", gaps)  # ITL (vLLM's name) and TBT are the same gaps
    p_tbt = gap_summary.get(f"p{pct}_itl_ms") if gaps.size else 0.0
    if p_tbt is None:  # a percentile the summary does not report
        p_tbt = float(np.percentile(gaps * 1000, pct))
    tbt_met = _tbt_met(records, own_tbt, slo)
    ttft_met = np.array([r.finished and r.ttft_s is not None and r.ttft_s <= slo.ttft_target_s(r.prompt_len)
                         for r in records], dtype=bool)
    res: dict[str, float | int | bool] = {
        "num_requests": len(records),
        "completed": len(done),
        "rejected": len(rejected),
        "duration": duration,
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(done) / duration,
        "output_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        **_summary("ttft", ttft),
        **_summary("tpot", tpot),
        **gap_summary,
        **{k.replace("_itl_", "_tbt_"): v for k, v in gap_summary.items()},
        **_summary("e2el", e2e),
        "slo_ttft_ms": slo.ttft_ms,
        "slo_tbt_ms": slo.tbt_ms,
        "slo_percentile": pct,
        "slo_ttft_ms_per_token": slo.ttft_ms_per_token,
        "slo_ttft_at_percentile_ms": p_ttft,
        "slo_ttft_ratio_at_percentile": p_ttft_ratio,
        "slo_tbt_at_percentile_ms": p_tbt,
        "slo_attainment": sum(request_meets_slo(r, slo) for r in records) / max(len(records), 1),
        # per-request TBT (DistServe-style): each request's own P-th percentile gap within the target
        "tbt_attainment": float(tbt_met.mean()) if records else 0.0,
        "slo_attainment_per_request_tbt": float(np.mean(ttft_met & tbt_met)) if records else 0.0,
        **_summary("request_tbt", own_tbt[is_done & ~np.isnan(own_tbt)]),
        "fleet_slo_met": bool(done) and not rejected and p_ttft_ratio <= 1.0 and p_tbt <= slo.tbt_ms,
        "e2e_trend": e2e_trend(records),
        "num_preemptions": sum(r.num_preemptions for r in records),
        "reused_prompt_tokens": sum(r.reused_len for r in done),
        "kv_reuse_fraction": sum(r.reused_len for r in done) / max(in_tokens, 1),
    }
    res["offered_rate"] = offered_rate(records)
    res["offered_rate_steady"] = offered_rate_steady(records)
    res["throughput_ratio"] = res["request_throughput"] / res["offered_rate"] if records else 1.0
    res["stable"] = res["e2e_trend"] <= STABLE_E2E_TREND and res["throughput_ratio"] >= STABLE_THROUGHPUT_RATIO
    return res
