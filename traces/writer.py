"""Write requests in the Mooncake JSONL form, so any trace (real or synthetic) replays with Mooncake tools.

    from traces import write_mooncake
    write_mooncake(requests, "out/trace.jsonl")

Sessions and think times are not part of the format and are lost; `infer_sessions` recovers sessions
from the prefix chains.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from traces.loaders import MOONCAKE_HASH_BLOCK_SIZE
from yoda.request import Request


def mooncake_hash_ids(request: Request) -> list[int]:
    """The request's hash ids at Mooncake's 512-token granularity.

    Ids of a smaller block size that divides 512 are grouped k = 512 / size at a time; prefix chaining
    lets the id of a group's last block stand for the group (it names the whole prefix up to there).
    A trailing group with no ids of its own (the source named full blocks only) is left out. Any other
    block size gives no ids.
    """
    hbs, hashes = request.hash_block_size, request.block_hashes
    if hbs == MOONCAKE_HASH_BLOCK_SIZE:
        return list(hashes)
    if MOONCAKE_HASH_BLOCK_SIZE % hbs != 0:
        return []
    per = MOONCAKE_HASH_BLOCK_SIZE // hbs
    num_groups = -(-len(hashes) // per)
    return [hashes[min((j + 1) * per, len(hashes)) - 1] for j in range(num_groups)]


def mooncake_record(request: Request) -> dict[str, object]:
    return {
        "timestamp": round(request.arrival_at * 1000),
        "input_length": request.prompt_len,
        "output_length": request.output_len,
        "hash_ids": mooncake_hash_ids(request),
    }


def write_mooncake(requests: Sequence[Request], path: str | Path) -> None:
    """Write `requests` in arrival order as Mooncake JSONL: timestamps in integer ms on the trace's own
    clock (a Mooncake trace round-trips exactly), hash ids as `mooncake_hash_ids` gives them."""
    ordered = sorted(requests, key=lambda r: r.arrival_at)
    with open(path, "w", encoding="utf-8") as f:
        for r in ordered:
            f.write(json.dumps(mooncake_record(r)) + "\n")
