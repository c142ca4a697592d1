"""Replay transforms: pure functions from a request list to a new, arrival-sorted request list.

    from traces import load_trace, spread_buckets, rescale_to_rate
    requests = rescale_to_rate(spread_buckets(load_trace(path).requests, rng=0), rate_rps=2.0)

Request ids stay attached to their requests. Random transforms take `rng`: a numpy Generator or an int
seed. After any change of arrival times, think_time_s of sessioned requests is recomputed as the arrival
gap to the previous turn of the session (see loaders.with_think_times).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from traces.loaders import with_think_times
from yoda.request import Request

Rng = np.random.Generator | int


def mean_rate_rps(requests: Sequence[Request]) -> float | None:
    """1 / mean inter-arrival gap = (n - 1) / span; None when the span is 0."""
    if len(requests) < 2:
        return None
    span_s = max(r.arrival_at for r in requests) - min(r.arrival_at for r in requests)
    return (len(requests) - 1) / span_s if span_s > 0 else None


def _retimed(requests: Sequence[Request], arrivals: Sequence[float] | np.ndarray) -> list[Request]:
    """Requests with new arrival times (same order as given), sorted by arrival (stable)."""
    out = [replace(r, arrival_at=max(float(t), 0.0)) for r, t in zip(requests, arrivals, strict=True)]
    out.sort(key=lambda r: r.arrival_at)
    return with_think_times(out)


def _ordered(requests: Sequence[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: r.arrival_at)


def original_times(requests: Sequence[Request]) -> list[Request]:
    """The trace's own times, shifted so that the first request arrives at 0."""
    reqs = _ordered(requests)
    t0 = reqs[0].arrival_at if reqs else 0.0
    return _retimed(reqs, [r.arrival_at - t0 for r in reqs])


def spread_buckets(requests: Sequence[Request], rng: Rng, bucket_s: float | None = None) -> list[Request]:
    """Spread requests that share a timestamp uniformly over their bucket [t, t + width).

    Mooncake quantises timestamps to ~3 s buckets. By default a bucket's width is the median gap between
    distinct timestamps (the bucket size), cut at the next timestamp so buckets never interleave; pass
    `bucket_s` to force a width. The sorted draws are handed out in list order, so a continuation that
    followed its parent in the file still follows it.
    """
    gen = np.random.default_rng(rng)
    reqs = _ordered(requests)
    starts, first_idx, counts = np.unique([r.arrival_at for r in reqs], return_index=True, return_counts=True)
    gaps = np.diff(starts)
    if bucket_s is not None:
        widths = np.full(len(starts), float(bucket_s))
    else:
        typical_s = float(np.median(gaps)) if len(gaps) else 0.0
        widths = np.minimum(np.append(gaps, typical_s), typical_s)
    arrivals = np.empty(len(reqs))
    for start, i, k, width in zip(starts, first_idx, counts, widths):
        arrivals[i:i + k] = start + np.sort(gen.uniform(0.0, width, size=k))
    return _retimed(reqs, arrivals)


def scale_rate(requests: Sequence[Request], factor: float) -> list[Request]:
    """Multiply the arrival rate by `factor`: every gap (from the first arrival) is divided by it."""
    if factor <= 0:
        raise ValueError(f"rate factor must be > 0, got {factor}")
    reqs = _ordered(requests)
    t0 = reqs[0].arrival_at if reqs else 0.0
    return _retimed(reqs, [t0 + (r.arrival_at - t0) / factor for r in reqs])


def rescale_to_rate(requests: Sequence[Request], rate_rps: float) -> list[Request]:
    """Scale all inter-arrival gaps so the mean rate (see mean_rate_rps) is `rate_rps`; burstiness
    (the gaps' shape, their CV) is kept."""
    if rate_rps <= 0:
        raise ValueError(f"target rate must be > 0, got {rate_rps}")
    current = mean_rate_rps(requests)
    if current is None:
        raise ValueError("cannot rescale a trace whose requests all arrive at once; retime it instead")
    return scale_rate(requests, rate_rps / current)


def gamma_arrivals(n: int, rate_rps: float, cv: float, rng: Rng) -> np.ndarray:
    """n arrival times starting at 0 with i.i.d. gamma gaps of mean 1/rate_rps and the given CV
    (cv=1: Poisson; cv>1: burstier)."""
    if rate_rps <= 0 or cv <= 0:
        raise ValueError(f"need rate_rps > 0 and cv > 0, got {rate_rps}, {cv}")
    shape = 1.0 / cv**2
    gaps = np.random.default_rng(rng).gamma(shape, 1.0 / (rate_rps * shape), size=max(n - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]


def retime_gamma(requests: Sequence[Request], rate_rps: float, cv: float, rng: Rng) -> list[Request]:
    """Replace arrival times by a gamma renewal process at `rate_rps` with gap CV `cv`, keeping order."""
    reqs = _ordered(requests)
    return _retimed(reqs, gamma_arrivals(len(reqs), rate_rps, cv, rng))


def retime_poisson(requests: Sequence[Request], rate_rps: float, rng: Rng) -> list[Request]:
    """Replace arrival times by a Poisson process at `rate_rps` (exponential gaps), keeping order."""
    return retime_gamma(requests, rate_rps, 1.0, rng)


def overlap_sessions(requests: Sequence[Request], session_rate_rps: float, rng: Rng) -> list[Request]:
    """Start each session at Poisson times (rate `session_rate_rps`, in order of the sessions' first
    arrivals) and keep every gap inside a session. A request without a session is a session of one."""
    reqs = _ordered(requests)
    firsts: dict[object, float] = {}
    for r in reqs:
        firsts.setdefault(_session_key(r), r.arrival_at)
    starts = dict(zip(firsts, gamma_arrivals(len(firsts), session_rate_rps, 1.0, rng)))
    arrivals = []
    for r in reqs:
        key = _session_key(r)
        arrivals.append(starts[key] + r.arrival_at - firsts[key])
    return _retimed(reqs, arrivals)


def _session_key(r: Request) -> object:
    return r.session_id if r.session_id is not None else ("request", r.request_id)


def infer_sessions(requests: Sequence[Request], min_shared_blocks: int = 2) -> list[Request]:
    """Give Mooncake-style requests session_id and turn from their prefix chains.

    A request whose hash ids start with all of an earlier request's full blocks (at least
    `min_shared_blocks` of them) continues the session of the latest such request with the longest
    chain, one turn later; otherwise it starts session "s<k>". The floor of 2 blocks stops a shared
    system prompt (Mooncake's block 0 starts every request) from joining everything into one session.
    A parent with several continuations makes a session branch: its children share one turn number.
    """
    if min_shared_blocks < 1:
        raise ValueError(f"min_shared_blocks must be >= 1, got {min_shared_blocks}")
    chains: dict[tuple[int, int], tuple[str, int]] = {}  # (last full hash id, num full) -> (session, turn)
    out, num_sessions = [], 0
    for r in _ordered(requests):
        parent = _find_parent(r.block_hashes, chains, min_shared_blocks)
        if parent is None:
            session_id, turn = f"s{num_sessions}", 1
            num_sessions += 1
        else:
            session_id, turn = parent[0], parent[1] + 1
        num_full = min(r.prompt_len // r.hash_block_size, len(r.block_hashes))
        if num_full >= min_shared_blocks:
            chains[(r.block_hashes[num_full - 1], num_full)] = (session_id, turn)
        out.append(replace(r, session_id=session_id, turn=turn))
    return with_think_times(out)


def _find_parent(hashes: tuple[int, ...], chains: dict[tuple[int, int], tuple[str, int]],
                 min_blocks: int) -> tuple[str, int] | None:
    """The (session, turn) of the longest earlier full-block chain that `hashes` starts with.
    Prefix chaining makes (id of block i-1, i) name the whole chain of blocks 0..i-1."""
    for i in range(len(hashes), min_blocks - 1, -1):
        found = chains.get((hashes[i - 1], i))
        if found is not None:
            return found
    return None
