"""Deterministic synthetic prompt tokens for trace requests that give only lengths and hash blocks.

Tokens of hash block h depend only on (seed, h) and the position inside the block, so requests that
share hash blocks share identical prefix tokens and prefix KV reuse is real. Tokens past the hashed
blocks come from a per-request stream keyed on (seed, request_id). All tokens lie in [0, vocab_size).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from yoda.request import Request

_U64 = (1 << 64) - 1


def _rng(*keys: int) -> np.random.Generator:
    words = []
    for k in keys:  # hashes may be negative or wider than 64 bits: feed 32-bit words of their low 64 bits
        k &= _U64
        words += [k & 0xFFFFFFFF, k >> 32]
    return np.random.default_rng(np.random.SeedSequence(words))


def synthetic_prompt(prompt_len: int, block_hashes: Sequence[int], hash_block_size: int, request_seed: int,
                     vocab_size: int, seed: int = 0) -> list[int]:
    """`prompt_len` token ids: hash block i fills [i * hash_block_size, (i + 1) * hash_block_size)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    tokens: list[int] = []
    for h in block_hashes:
        if len(tokens) >= prompt_len:
            break
        n = min(hash_block_size, prompt_len - len(tokens))
        tokens.extend(_rng(seed, 1, h).integers(0, vocab_size, size=hash_block_size)[:n].tolist())
    rest = prompt_len - len(tokens)
    if rest > 0:
        tokens.extend(_rng(seed, 2, request_seed).integers(0, vocab_size, size=rest).tolist())
    return tokens


def prompt_for(request: Request, vocab_size: int, seed: int = 0) -> list[int]:
    """Synthetic prompt of a trace request (per-request tokens keyed on its request_id)."""
    return synthetic_prompt(request.prompt_len, request.block_hashes, request.hash_block_size,
                            request.request_id, vocab_size, seed)
