"""Summary statistics of a request trace, prefix reuse measured with the real KV cache manager.

    from traces import load_trace, trace_stats
    stats = trace_stats(load_trace(path).requests, cache_blocks=10_000)

Reuse is measured by replaying the requests in arrival order through `yoda.kv_cache.KVCache` with the
trace's hash block size as the KV block size: each request allocates its prompt (reusing the longest
cached prefix of its full blocks), commits and frees at once, so nothing but the cache's own capacity
limits reuse. A request larger than the whole cache counts as a miss.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from traces.replay import mean_rate_rps
from yoda.kv_cache import KVCache, chain_keys
from yoda.request import Request

PERCENTILES = (50, 90, 99)


def _length_stats(name: str, lengths: np.ndarray) -> dict[str, float]:
    out = {f"{name}_p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES}
    out[f"{name}_mean"] = float(lengths.mean())
    return out


def _block_size(requests: Sequence[Request]) -> int:
    sizes = {r.hash_block_size for r in requests if r.block_hashes} or {requests[0].hash_block_size}
    if len(sizes) > 1:
        raise ValueError(f"requests mix hash block sizes {sorted(sizes)}; stats need one")
    return sizes.pop()


def replay_reuse(requests: Sequence[Request], chains: Sequence[Sequence[int]], num_blocks: int,
                 block_size: int) -> tuple[int, int]:
    """Replay `requests` (arrival order) through a fresh KVCache of `num_blocks` blocks.
    Returns (prompt tokens reused, number of requests too large for the cache)."""
    cache = KVCache(num_blocks, block_size)
    num_reused = num_unfit = 0
    for seq_id, (r, chain) in enumerate(zip(requests, chains, strict=True)):
        if not cache.fits_empty(r.prompt_len):
            num_unfit += 1
            continue
        alloc = cache.allocate(seq_id, r.prompt_len, chain)
        num_reused += min(alloc.num_reused_blocks * block_size, r.prompt_len)
        cache.commit(seq_id)
        cache.free(seq_id)
    return num_reused, num_unfit


def _session_stats(requests: Sequence[Request]) -> dict[str, Any]:
    sessions = {r.session_id for r in requests if r.session_id is not None}
    num_in_sessions = sum(1 for r in requests if r.session_id is not None)
    return {
        "sessions": len(sessions),
        "mean_turns_per_session": num_in_sessions / len(sessions) if sessions else None,
    }


def _reuse_stats(requests: Sequence[Request], cache_blocks: int | None) -> dict[str, Any]:
    block_size = _block_size(requests)
    chains = [chain_keys(r.block_keys(block_size)) for r in requests]
    num_unique = len({key for chain in chains for key in chain})
    # never evicts: every distinct block stays cached and the largest request still finds room
    unbounded = num_unique + max(-(-r.prompt_len // block_size) for r in requests)
    prompt_tokens = sum(r.prompt_len for r in requests)
    reused, _ = replay_reuse(requests, chains, unbounded, block_size)
    out: dict[str, Any] = {
        "block_size": block_size,
        "unique_blocks": num_unique,  # distinct full-block prefixes (what an unbounded cache ends up holding)
        "reusable_token_fraction": reused / prompt_tokens,
        "cache_blocks": cache_blocks,
        "lru_hit_fraction": None,
        "lru_unfit_requests": None,
    }
    if cache_blocks is not None:
        if cache_blocks < 1:
            raise ValueError(f"cache_blocks must be >= 1, got {cache_blocks}")
        lru_reused, unfit = replay_reuse(requests, chains, cache_blocks, block_size)
        out.update(lru_hit_fraction=lru_reused / prompt_tokens, lru_unfit_requests=unfit)
    return out


def trace_stats(requests: Sequence[Request], cache_blocks: int | None = None) -> dict[str, Any]:
    """Counts, span, rate (1 / mean gap), length percentiles, sessions and prefix reuse of a trace.

    `reusable_token_fraction`: share of prompt tokens reusable with an unbounded cache.
    `lru_hit_fraction`: the same with an LRU cache of `cache_blocks` blocks (None when not given).
    Does not modify `requests`.
    """
    if not requests:
        raise ValueError("trace has no requests")
    reqs = sorted(requests, key=lambda r: r.arrival_at)
    prompt = np.array([r.prompt_len for r in reqs])
    output = np.array([r.output_len for r in reqs])
    return {
        "requests": len(reqs),
        "span_s": reqs[-1].arrival_at - reqs[0].arrival_at,
        "rate_rps": mean_rate_rps(reqs),
        **_length_stats("prompt_len", prompt),
        **_length_stats("output_len", output),
        "prompt_tokens": int(prompt.sum()),
        "output_tokens": int(output.sum()),
        **_session_stats(reqs),
        **_reuse_stats(reqs, cache_blocks),
    }
