from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from trace_helpers import assert_prefix_chained

from traces import (GENERATORS, LengthDist, loogle_like, mean_rate_rps, openthoughts_like, sharegpt_like,
                    shared_system_prompt, trace_stats)
from yoda.request import Request


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_seeded_and_well_formed(name: str) -> None:
    make = GENERATORS[name]
    reqs = make(40, 2.0, rng=5)
    assert reqs == make(40, 2.0, rng=5)
    assert reqs != make(40, 2.0, rng=6)
    assert [r.request_id for r in reqs] == list(range(len(reqs)))
    assert all(a.arrival_at <= b.arrival_at for a, b in zip(reqs, reqs[1:]))
    assert all(r.hash_block_size == 16 and len(r.block_hashes) == -(-r.prompt_len // 16) for r in reqs)
    assert_prefix_chained(reqs)


def test_length_dist_median_and_bounds() -> None:
    dist = LengthDist(450, 200, 1000)
    draws = dist.sample(np.random.default_rng(0), 20_000)
    assert draws.min() == 200 and draws.max() == 1000
    assert np.median(draws) == pytest.approx(450, rel=0.03)
    assert 0.01 < np.mean(draws == 1000) < 0.05


def _sessions(reqs: list[Request]) -> dict[str, list[Request]]:
    out: dict[str, list[Request]] = defaultdict(list)
    for r in reqs:
        out[r.session_id].append(r)
    return out


def test_sharegpt_turns_extend_the_conversation() -> None:
    reqs = sharegpt_like(num_sessions=300, session_rate_rps=1.0, rng=1)
    sessions = _sessions(reqs)
    assert len(sessions) == 300
    assert np.mean([len(turns) for turns in sessions.values()]) == pytest.approx(4.0, rel=0.15)
    for turns in sessions.values():
        assert [r.turn for r in turns] == list(range(1, len(turns) + 1))
        assert 200 <= turns[0].prompt_len <= 1000
        for prev, cur in zip(turns, turns[1:]):
            assert 200 <= cur.prompt_len - prev.prompt_len - prev.output_len <= 1000  # new user message
            keep = prev.prompt_len // 16
            assert cur.block_hashes[:keep] == prev.block_hashes[:keep]
            assert cur.think_time_s == pytest.approx(cur.arrival_at - prev.arrival_at)
    assert all(200 <= r.output_len <= 400 for r in reqs)
    assert trace_stats(reqs)["reusable_token_fraction"] > 0.4


def test_loogle_questions_share_the_document() -> None:
    reqs = loogle_like(num_docs=40, doc_rate_rps=0.5, rng=2)
    assert all(10_000 <= r.prompt_len <= 30_000 and 10 <= r.output_len <= 100 for r in reqs)
    for turns in _sessions(reqs).values():
        assert 2 <= len(turns) <= 6
        doc_blocks = (min(r.prompt_len for r in turns) - 100) // 16
        assert len({r.block_hashes[:doc_blocks] for r in turns}) == 1
    assert trace_stats(reqs)["reusable_token_fraction"] > 0.5


def test_openthoughts_lengths_and_rate() -> None:
    reqs = openthoughts_like(num_requests=2000, rate_rps=4.0, rng=3)
    prompt = np.array([r.prompt_len for r in reqs])
    output = np.array([r.output_len for r in reqs])
    assert prompt.min() >= 100 and prompt.max() <= 1000
    assert output.min() >= 2000 and output.max() <= 16_000
    assert 4000 < np.median(output) < 8000
    assert mean_rate_rps(reqs) == pytest.approx(4.0, rel=0.1)
    assert trace_stats(reqs)["reusable_token_fraction"] == 0.0


def test_shared_system_prompt_prefixes() -> None:
    reqs = shared_system_prompt(num_requests=500, rate_rps=10.0, rng=4, num_system_prompts=3)
    assert all(r.session_id is None for r in reqs)
    first_ids = {r.block_hashes[0] for r in reqs}
    assert len(first_ids) == 3
    assert all(1024 + 20 <= r.prompt_len <= 4096 + 1000 for r in reqs)
    assert trace_stats(reqs)["reusable_token_fraction"] > 0.5
