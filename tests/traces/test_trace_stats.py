from __future__ import annotations

import numpy as np
import pytest
from trace_helpers import AZURE_CONV, MINISWE, MOONCAKE_CONV, load_shared, req

from traces import trace_stats
from traces.stats import replay_reuse

# bs 16: A (40 tokens, full blocks 1,2), B (50 tokens, full 1,2,4: reuses 2 blocks = 32 tokens),
# C (20 tokens, full 1: reuses 16 tokens). Prompt tokens 110, reusable 48.
TINY = [
    req(0, 0.0, 40, (1, 2, 3), output_len=5, block_size=16, session_id="a"),
    req(1, 2.0, 50, (1, 2, 4, 5), output_len=7, block_size=16, session_id="a", turn=2),
    req(2, 4.0, 20, (1, 9), output_len=9, block_size=16),
]


def test_tiny_trace_by_hand() -> None:
    s = trace_stats(TINY)
    assert (s["requests"], s["span_s"], s["rate_rps"]) == (3, 4.0, 0.5)
    assert (s["prompt_len_p50"], s["prompt_len_mean"]) == (40.0, pytest.approx(110 / 3))
    assert s["prompt_len_p99"] == pytest.approx(np.percentile([40, 50, 20], 99))
    assert (s["output_len_p50"], s["output_len_p90"], s["output_len_mean"]) == (7.0, pytest.approx(8.6), 7.0)
    assert (s["sessions"], s["mean_turns_per_session"]) == (1, 2.0)
    assert (s["block_size"], s["unique_blocks"]) == (16, 3)  # chains (1), (1,2), (1,2,4)
    assert s["reusable_token_fraction"] == pytest.approx(48 / 110)
    assert (s["cache_blocks"], s["lru_hit_fraction"], s["lru_unfit_requests"]) == (None, None, None)


def test_tiny_trace_lru() -> None:
    # 3 blocks: A fits (3 blocks), B needs 4 -> miss, C reuses block 1 -> 16 tokens
    s = trace_stats(TINY, cache_blocks=3)
    assert (s["lru_hit_fraction"], s["lru_unfit_requests"]) == (pytest.approx(16 / 110), 1)
    # 4 blocks: B fits and reuses A's 2 blocks; then C needs 2 blocks and still finds block 1
    assert trace_stats(TINY, cache_blocks=4)["lru_hit_fraction"] == pytest.approx(48 / 110)
    assert trace_stats(TINY, cache_blocks=1)["lru_hit_fraction"] == 0.0


def test_lru_eviction_order() -> None:
    # 2-block cache: X caches (1), Y caches (7) and evicts (1), so Z misses
    reqs = [req(0, 0.0, 16, (1,), block_size=16), req(1, 1.0, 16, (7,), block_size=16),
            req(2, 2.0, 16, (1,), block_size=16)]
    chains = [[hash(i)] for i in (1, 7, 1)]
    assert replay_reuse(reqs, chains, 2, 16) == (16, 0)  # room for both: Z hits
    assert trace_stats(reqs, cache_blocks=1)["lru_hit_fraction"] == 0.0
    assert trace_stats(reqs, cache_blocks=2)["lru_hit_fraction"] == pytest.approx(16 / 48)


def test_stats_do_not_reorder_input() -> None:
    reqs = list(reversed(TINY))
    assert trace_stats(reqs) == trace_stats(TINY)
    assert reqs == list(reversed(TINY))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no requests"):
        trace_stats([])
    with pytest.raises(ValueError, match="mix hash block sizes"):
        trace_stats([TINY[0], req(5, 1.0, 600, (1, 2))])
    with pytest.raises(ValueError, match="cache_blocks"):
        trace_stats(TINY, cache_blocks=0)


def test_mooncake_conversation_reuse() -> None:
    s = trace_stats(load_shared(MOONCAKE_CONV).requests, cache_blocks=18_279)  # 10% of 182,790 unique ids
    assert s["requests"] == 12031
    assert s["reusable_token_fraction"] == pytest.approx(0.373, abs=0.01)
    assert s["lru_hit_fraction"] == pytest.approx(0.28, abs=0.015)  # README: 0.28 at 10% of unique blocks
    assert s["prompt_len_p50"] == pytest.approx(6900, rel=0.02)  # README: p50 6.9K, p99 85K
    assert s["prompt_len_p99"] == pytest.approx(85_000, rel=0.02)


def test_agent_and_azure_reuse() -> None:
    assert trace_stats(load_shared(MINISWE).requests)["reusable_token_fraction"] == pytest.approx(0.93, abs=0.01)
    azure = trace_stats(load_shared(AZURE_CONV).requests, cache_blocks=100)
    assert (azure["reusable_token_fraction"], azure["lru_hit_fraction"], azure["sessions"]) == (0.0, 0.0, 0)
