"""Request, SLO and per-request record types shared by every backend."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets. TBT applies to every gap between consecutive output tokens."""

    ttft_ms: float = 1000.0
    tbt_ms: float = 50.0
    percentile: float = 99.0
    # Long prompts cannot meet a fixed TTFT: the target is max(ttft_ms, ttft_ms_per_token * prompt_len)
    # (the PD-multiplexing code uses 1 ms per token above 1K tokens). 0 keeps one fixed target.
    ttft_ms_per_token: float = 0.0

    def __post_init__(self) -> None:
        if self.ttft_ms <= 0 or self.tbt_ms <= 0:
            raise ValueError(f"SLO targets must be positive, got ttft_ms={self.ttft_ms}, tbt_ms={self.tbt_ms}")
        if self.ttft_ms_per_token < 0:
            raise ValueError(f"ttft_ms_per_token must be >= 0, got {self.ttft_ms_per_token}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"SLO percentile must be in (0, 100], got {self.percentile}")

    @property
    def ttft_s(self) -> float:
        return self.ttft_ms / 1000.0

    @property
    def tbt_s(self) -> float:
        return self.tbt_ms / 1000.0

    def ttft_target_s(self, prompt_len: int) -> float:
        return max(self.ttft_ms, self.ttft_ms_per_token * prompt_len) / 1000.0


@dataclass(frozen=True, slots=True)
class Request:
    """One inference request as a trace describes it.

    `block_hashes` are prefix-chained ids of consecutive `hash_block_size`-token blocks of the prompt:
    block i can be reused only if blocks 0..i all match. The last block may be partial.
    """

    request_id: int
    arrival_at: float
    prompt_len: int
    output_len: int
    session_id: str | None = None
    turn: int = 1
    block_hashes: tuple[int, ...] = ()
    hash_block_size: int = 512
    think_time_s: float = 0.0  # closed-loop replay: gap after the previous turn finished

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise ValueError(f"request {self.request_id}: prompt_len must be >= 1, got {self.prompt_len}")
        if self.output_len < 1:
            raise ValueError(f"request {self.request_id}: output_len must be >= 1, got {self.output_len}")
        if self.arrival_at < 0:
            raise ValueError(f"request {self.request_id}: arrival_at must be >= 0, got {self.arrival_at}")
        if self.hash_block_size < 1:
            raise ValueError(f"request {self.request_id}: hash_block_size must be >= 1")

    def block_keys(self, block_size: int) -> list[int]:
        """Prefix-chained keys of the prompt's *full* KV blocks of `block_size` tokens.

        Hash blocks are split (hash_block_size a multiple of block_size) or grouped (the reverse) so that
        the prefix tree can work at the KV cache's own block size. Only full blocks get keys: a partial
        block's content is not final (decode keeps writing into it).
        """
        hashes, hbs = self.block_hashes, self.hash_block_size
        num_full = self.prompt_len // block_size
        if not hashes or num_full == 0:
            return []
        if hbs % block_size == 0:
            per = hbs // block_size
            num = min(num_full, len(hashes) * per)
            return [hashes[j // per] * per + (j % per) if per > 1 else hashes[j] for j in range(num)]
        if block_size % hbs == 0:
            per = block_size // hbs
            num = min(num_full, len(hashes) // per)
            # prefix chaining: the hash of the last sub-block names the whole prefix up to it
            return [hashes[(j + 1) * per - 1] for j in range(num)]
        raise ValueError(
            f"KV block size {block_size} and trace hash block size {hbs}: one must divide the other"
        )


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request. Times are seconds on the run's clock."""

    request_id: int
    arrival_at: float
    prompt_len: int
    output_len: int
    session_id: str | None = None
    instance: int | None = None
    token_at: list[float] = field(default_factory=list)  # time each output token was produced
    finished_at: float | None = None
    reused_len: int = 0  # prompt tokens whose KV was reused from the cache (last admission)
    num_preemptions: int = 0
    rejected_reason: str | None = None

    @classmethod
    def for_request(cls, request: Request) -> "RequestRecord":
        return cls(request.request_id, request.arrival_at, request.prompt_len, request.output_len,
                   request.session_id)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None and self.rejected_reason is None

    @property
    def ttft_s(self) -> float | None:
        return self.token_at[0] - self.arrival_at if self.token_at else None

    @property
    def e2e_s(self) -> float | None:
        return self.finished_at - self.arrival_at if self.finished_at is not None and self.token_at else None

    @property
    def tpot_s(self) -> float | None:
        if len(self.token_at) < 2:
            return None
        return (self.token_at[-1] - self.token_at[0]) / (len(self.token_at) - 1)

    def tbt_gaps_s(self) -> list[float]:
        t = self.token_at
        return [b - a for a, b in zip(t, t[1:])]


def with_lengths(r: Request, prompt_len: int, output_len: int) -> Request:
    """`r` cut to these lengths; hash blocks past the prompt are dropped (shared prefixes stay shared)."""
    hashes = r.block_hashes[:-(-prompt_len // r.hash_block_size)] if r.block_hashes else r.block_hashes
    return dataclasses.replace(r, prompt_len=prompt_len, output_len=output_len, block_hashes=hashes)


def clamp_lengths(requests: Sequence[Request], max_prompt_len: int | None = None,
                  max_output_len: int | None = None) -> list[Request]:
    """Prompts and outputs cut to at most these lengths (None: uncut), e.g. CPU runs of long traces."""
    if max_prompt_len is None and max_output_len is None:
        return list(requests)
    return [with_lengths(r, min(r.prompt_len, max_prompt_len or r.prompt_len),
                         min(r.output_len, max_output_len or r.output_len)) for r in requests]
