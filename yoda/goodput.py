"""Goodput: the highest request rate at which a run still meets its SLOs, found by bisection.

The run function is any `rate -> records` (simulator or real server) and must be deterministic for a
given rate (fixed seeds), so the search is reproducible. A run may stop early and return `GaveUp` once its
SLO can no longer be met (`TtftMissWatch`): the probe fails as it would have, sooner.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from yoda.metrics import compute_metrics
from yoda.request import SLO, RequestRecord


@dataclass(slots=True)
class GaveUp:
    """A run that stopped at `at_s` because it could no longer meet its SLO; `records` as far as it got."""

    records: Sequence[RequestRecord]
    at_s: float
    reason: str


RunAtRate = Callable[[float], Union[Sequence[RequestRecord], GaveUp]]
# a small margin past a TTFT deadline before a request without its first token counts as late, so float
# rounding of (first token - arrival) / target can never land it back on 1.0
_LATE_MARGIN_S = 1e-6


class TtftMissWatch:
    """Whether a run's TTFT misses alone already fail it. A request whose TTFT deadline (arrival + its
    target) has passed with no first token, or with a later one, has missed whatever happens next; the
    P-th percentile of N TTFT ratios (numpy's linear interpolation) is over target once N - floor(P/100 x
    (N - 1)) of them are. Called as `watch(now, records seen since the last call)`; True: stop. Misses are
    only counted, never taken back, so a first token moved later (disaggregation's decode admission) can
    only be undercounted: the watch never stops a run that would have passed."""

    def __init__(self, slo: SLO, num_requests: int) -> None:
        self.slo = slo
        self.limit = num_requests - math.floor(slo.percentile / 100 * (num_requests - 1))
        self.misses = 0
        self._due: list[tuple[float, int, RequestRecord]] = []

    @classmethod
    def for_criterion(cls, criterion: str, slo: SLO, num_requests: int) -> "TtftMissWatch | None":
        """A watch where `criterion` requires the fleet's P-th percentile TTFT within target, else None."""
        return cls(slo, num_requests) if criterion in ("strict", "fleet") and num_requests > 0 else None

    def __call__(self, now: float, new_records: Sequence[RequestRecord]) -> bool:
        due = self._due
        for r in new_records:
            heapq.heappush(due, (r.arrival_at + self.slo.ttft_target_s(r.prompt_len), r.request_id, r))
        while due and due[0][0] < now - _LATE_MARGIN_S:
            _, _, r = heapq.heappop(due)
            target = self.slo.ttft_target_s(r.prompt_len)
            if r.rejected_reason is not None or not r.token_at or (r.token_at[0] - r.arrival_at) / target > 1:
                self.misses += 1
        return self.misses >= self.limit


@dataclass(slots=True)
class GoodputResult:
    goodput_rps: float
    criterion: str
    probes: list[dict] = field(default_factory=list)  # every rate tried with its metrics summary
    # the load the goodput rate offered: arrivals per second over the run's steady window (the rate knob
    # moves it; on a session trace the two differ by the ramps)
    goodput_offered_rps: float = 0.0


def fleet_ok(metrics: dict) -> bool:
    """Headline criterion: P99 TTFT and P99 TBT both within target, nothing rejected, and the system
    stable (queues not growing: P99 over all token gaps alone would hide requests left waiting)."""
    return bool(metrics["fleet_slo_met"]) and bool(metrics.get("stable", True))


def attainment_ok(metrics: dict, threshold: float = 0.9) -> bool:
    """Request-level variant: at least `threshold` of requests meet TTFT and TPOT, system stable."""
    return metrics["slo_attainment"] >= threshold and metrics["rejected"] == 0 and bool(metrics.get("stable", True))


def per_request_ok(metrics: dict, threshold: float = 0.9) -> bool:
    """Per-request TBT (DistServe-style): at least `threshold` of requests meet TTFT and have their own P99
    gap within the TBT target; nothing rejected, system stable."""
    return (metrics["slo_attainment_per_request_tbt"] >= threshold and metrics["rejected"] == 0
            and bool(metrics.get("stable", True)))


def strict_ok(metrics: dict) -> bool:
    """Both TBT definitions: the fleet criterion (pooled gaps, vLLM's ITL) and the per-request one."""
    return fleet_ok(metrics) and per_request_ok(metrics)


# goodput criteria by name; `strict` (both TBT definitions) is the headline
CRITERIA: dict[str, Callable[[dict], bool]] = {
    "fleet": fleet_ok, "attainment": attainment_ok, "per_request": per_request_ok, "strict": strict_ok,
}


def search_goodput(run: RunAtRate, slo: SLO, start_rps: float, *, criterion: str = "strict",
                   rel_tol: float = 0.03, max_probes: int = 20,
                   on_probe: Callable[[float, dict], None] | None = None, growth: float = 2.0) -> GoodputResult:
    """Bracket the goodput by multiplying/dividing by `growth` from `start_rps` (2: doubling/halving; a
    smaller factor when `start_rps` is already a good guess, e.g. a coarse search's result), then bisect to
    `rel_tol`."""
    if start_rps <= 0:
        raise ValueError("start_rps must be positive")
    if growth <= 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown goodput criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    ok_fn = CRITERIA[criterion]
    result = GoodputResult(0.0, criterion)

    def probe(rate: float) -> bool:
        out = run(rate)
        gave_up = out if isinstance(out, GaveUp) else None
        metrics = compute_metrics(gave_up.records if gave_up else out, slo)  # as far as the run got
        ok = ok_fn(metrics) and gave_up is None
        result.probes.append({"rate_rps": rate, "ok": ok, **{k: metrics[k] for k in (
            "slo_ttft_at_percentile_ms", "slo_ttft_ratio_at_percentile", "slo_tbt_at_percentile_ms", "slo_attainment", "completed", "rejected", "e2e_trend",
            "slo_attainment_per_request_tbt", "offered_rate", "offered_rate_steady")},
            **({"gave_up_at_s": gave_up.at_s, "gave_up": gave_up.reason} if gave_up else {})})
        if on_probe:
            on_probe(rate, metrics)
        return ok

    lo, hi = 0.0, None
    rate = start_rps
    while len(result.probes) < max_probes:
        if probe(rate):
            lo = rate
            if hi is not None:
                break
            rate *= growth
        else:
            hi = rate
            if lo > 0:
                break
            rate /= growth
            if rate < start_rps / 1024:
                return result
    while hi is not None and lo > 0 and (hi - lo) / hi > rel_tol and len(result.probes) < max_probes:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    result.goodput_rps = lo
    best = [p for p in result.probes if p["ok"] and p["rate_rps"] == lo]
    result.goodput_offered_rps = best[0]["offered_rate_steady"] if best else 0.0
    return result
