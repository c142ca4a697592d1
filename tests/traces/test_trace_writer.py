from __future__ import annotations

import json
from pathlib import Path

from trace_helpers import MINISWE, load_shared, req

from traces import SAMPLE_DIR, load_trace, mooncake_hash_ids, sharegpt_like, write_mooncake


def test_mooncake_round_trip_is_exact(tmp_path: Path) -> None:
    original = load_trace(SAMPLE_DIR / "mooncake_sample.jsonl")
    path = tmp_path / "out.jsonl"
    write_mooncake(original.requests, path)
    assert load_trace(path).requests == original.requests
    first_in = (SAMPLE_DIR / "mooncake_sample.jsonl").read_text().splitlines()[0]
    assert json.loads(path.read_text().splitlines()[0]) == json.loads(first_in)


def test_16_token_hashes_regroup_to_512(tmp_path: Path) -> None:
    reqs = sharegpt_like(num_sessions=30, session_rate_rps=1.0, rng=0)
    path = tmp_path / "chat.jsonl"
    write_mooncake(reqs, path)
    back = load_trace(path, format="mooncake").requests
    assert len(back) == len(reqs)
    for a, b in zip(reqs, back):
        assert (a.prompt_len, a.output_len) == (b.prompt_len, b.output_len)
        assert abs(a.arrival_at - b.arrival_at) <= 0.0005
        assert len(b.block_hashes) == -(-a.prompt_len // 512)
        assert b.block_keys(512) == a.block_keys(512)  # same reuse at 512-token blocks


def test_full_block_only_hashes_drop_an_empty_last_group() -> None:
    r = req(0, 0.0, 1030, tuple(range(64)), block_size=16)  # 64 full 16-blocks, 6 tokens unnamed
    assert mooncake_hash_ids(r) == [31, 63]
    partial = req(1, 0.0, 600, tuple(range(37)), block_size=16)
    assert mooncake_hash_ids(partial) == [31, 36]


def test_agent_trace_writes_valid_mooncake(tmp_path: Path) -> None:
    reqs = load_shared(MINISWE).requests
    path = tmp_path / "agent.jsonl"
    write_mooncake(reqs, path)
    back = load_trace(path).requests
    assert [r.block_keys(512) for r in back] == [r.block_keys(512) for r in reqs]


def test_other_block_sizes_write_no_hashes(tmp_path: Path) -> None:
    r = req(0, 1.25, 100, tuple(range(5)), block_size=24)
    assert mooncake_hash_ids(r) == []
    write_mooncake([r], tmp_path / "x.jsonl")
    line = json.loads((tmp_path / "x.jsonl").read_text())
    assert line == {"timestamp": 1250, "input_length": 100, "output_length": 10, "hash_ids": []}
