"""Helpers for the traces tests: paths to ../shared/traces and small request builders."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest

from traces import LoadedTrace, load_trace
from yoda.request import Request

_ROOT = Path(__file__).resolve().parents[2]
_SHARED_CANDIDATES = (_ROOT / "shared" / "traces", _ROOT.parent / "shared" / "traces")
SHARED_TRACES = next((p for p in _SHARED_CANDIDATES if p.is_dir()), None)

MOONCAKE_CONV = "mooncake/conversation_trace.jsonl"
MOONCAKE_SYNTH = "mooncake/synthetic_trace.jsonl"
AZURE_CONV = "azure2023/AzureLLMInferenceTrace_conv.csv"
MINISWE = "agents/miniswe.common.jsonl"
REPOAGENT = "agents/RepoAgent.common.jsonl"


def shared_path(name: str) -> Path:
    if SHARED_TRACES is None:
        pytest.skip("../shared/traces is not available")
    return SHARED_TRACES / name


@functools.cache
def _load_shared(name: str) -> LoadedTrace:
    return load_trace(shared_path(name))


def load_shared(name: str) -> LoadedTrace:
    """Load a shared trace once per test process (callers must not mutate the list)."""
    shared_path(name)  # skip before caching
    return _load_shared(name)


def req(request_id: int, arrival_at: float, prompt_len: int, hashes: tuple[int, ...] = (), output_len: int = 10,
        block_size: int = 512, session_id: str | None = None, turn: int = 1) -> Request:
    return Request(request_id, arrival_at, prompt_len, output_len, session_id=session_id, turn=turn,
                   block_hashes=hashes, hash_block_size=block_size)


def assert_prefix_chained(requests: list[Request]) -> None:
    """Same hash id only for the same whole prefix: each id has one (position, previous id)."""
    seen: dict[int, tuple[int, int | None]] = {}
    for r in requests:
        for i, h in enumerate(r.block_hashes):
            where = (i, r.block_hashes[i - 1] if i else None)
            assert seen.setdefault(h, where) == where, f"id {h} names two prefixes"
