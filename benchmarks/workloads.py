"""Evaluation workloads shared by the benchmarks: each returns requests at their own rate shape.

Trace workloads take the first `n` requests (sessions for agent traces) so runs stay short; synthetic
ones are generated seeded. The goodput search rescales arrival times, keeping each workload's shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from traces import (load_trace, loogle_like, openthoughts_like, overlap_sessions, sharegpt_like, spread_buckets)
from traces.synthetic import HashIds
from yoda.request import Request

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def _renumber(requests: list[Request]) -> list[Request]:
    from dataclasses import replace
    ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    return [replace(r, request_id=i) for i, r in enumerate(ordered)]


def mooncake(name: str, n: int, seed: int) -> list[Request]:
    reqs = load_trace(SHARED / "mooncake" / name).requests
    return _renumber(spread_buckets(reqs, np.random.default_rng(seed))[:n])


def azure_sessions(n: int, seed: int, mean_turns: float = 3.0) -> list[Request]:
    """Azure conversation lengths and arrivals, grouped into synthetic multi-turn sessions: each follow-up
    turn's prompt starts with its predecessor's prompt and answer (when long enough to hold them)."""
    from dataclasses import replace
    rng = np.random.default_rng(seed)
    reqs = load_trace(SHARED / "azure2023" / "AzureLLMInferenceTrace_conv.csv").requests[:n]
    ids, out, i, session = HashIds(16), [], 0, 0
    while i < len(reqs):
        turns = int(rng.geometric(1 / mean_turns))
        prev: tuple[int, ...] = ()
        for turn, r in enumerate(reqs[i:i + turns], start=1):
            shared = prev[: r.prompt_len // 16]
            hashes = shared + ids.fresh(max(0, -(-r.prompt_len // 16) - len(shared)))
            out.append(replace(r, session_id=f"s{session}", turn=turn, block_hashes=hashes, hash_block_size=16))
            prev = hashes + ids.fresh(r.output_len // 16)
        i += turns
        session += 1
    return _renumber(out)


def miniswe(n_sessions: int, seed: int) -> list[Request]:
    reqs = load_trace(SHARED / "agents" / "miniswe.common.jsonl").requests
    sessions = sorted({r.session_id for r in reqs})[:n_sessions]
    keep = [r for r in reqs if r.session_id in set(sessions)]
    return _renumber(overlap_sessions(keep, 0.2, np.random.default_rng(seed)))


WORKLOADS: dict[str, Callable[[int, int], list[Request]]] = {
    "mooncake_conversation": lambda n, s: mooncake("conversation_trace.jsonl", n, s),
    "mooncake_synthetic": lambda n, s: mooncake("synthetic_trace.jsonl", n, s),
    "azure_conv_sessions": lambda n, s: azure_sessions(n, s),
    "miniswe_agent": lambda n, s: miniswe(max(4, n // 20), s),
    "sharegpt_like": lambda n, s: _renumber(sharegpt_like(max(4, n // 4), 1.0, rng=s)),
    "loogle_like": lambda n, s: _renumber(loogle_like(max(4, n // 4), 0.5, rng=s)),
    "openthoughts_like": lambda n, s: _renumber(openthoughts_like(n, 1.0, rng=s)),
}
