"""Cluster dispatch: pick the instance (GPU or TP group) that serves each arriving request.

- round_robin: the classic baseline.
- least_loaded: fewest queued prefill tokens plus running decodes.
- slo_aware (ours): the best predicted TTFT counting the KV the request can reuse on each instance
  (so a multi-turn follow-up goes back to the instance holding its session's prefix unless that instance
  is much busier), queued prefill work, decode load and free KV. Instances that would need to preempt or
  cannot hold the request (its prompt and its predicted output, yoda.output_predictor) are avoided.
"""
from __future__ import annotations

from typing import Callable, Sequence

from yoda.kv_cache import chain_keys
from yoda.request import Request


def pending_prefill_tokens(scheduler) -> int:
    queued = sum(s.remaining_prefill for s in scheduler.prefilling)
    return queued + sum(s.target_len for s in scheduler.waiting)


def reusable_tokens(scheduler, request: Request) -> int:
    bs = scheduler.config.block_size
    chain = chain_keys(request.block_keys(bs))
    return min(scheduler.kv.match_prefix(chain) * bs, request.prompt_len - 1)


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(self, request: Request, schedulers: Sequence, now: float) -> int:
        i = self._next % len(schedulers)
        self._next += 1
        return i


class LeastLoaded:
    def pick(self, request: Request, schedulers: Sequence, now: float) -> int:
        def load(i: int) -> tuple[int, int]:
            s = schedulers[i]
            return (pending_prefill_tokens(s) + 64 * len(s.decoding), i)
        return min(range(len(schedulers)), key=load)


class SloAware:
    """Minimise predicted TTFT; ties broken by lower KV pressure. Uses each scheduler's own estimate
    (`estimate_prefill_s(num_new_tokens, num_reused_tokens)`) when it has one, else token counts.

    The queue ahead is separate prompts, priced per token at a chunk of `queue_chunk_tokens` (prefill is
    linear in tokens across prompts); only the request itself is priced as one prompt after its reused
    prefix. (Pricing queue + request as a single prompt made attention quadratic in the queue's length and
    sent a follow-up away from the instance holding its prefix whenever that instance had a queue: on
    LooGLE-like documents over 2 H100s, KV reuse 57-61% against 65% with token counts.)"""

    def __init__(self, decode_token_weight: float = 64.0, queue_chunk_tokens: int = 2048) -> None:
        self.decode_token_weight = decode_token_weight
        self.queue_chunk_tokens = queue_chunk_tokens
        self.num_affinity_hits = 0

    def pick(self, request: Request, schedulers: Sequence, now: float) -> int:
        best, best_cost, best_reuse = 0, float("inf"), 0
        for i, s in enumerate(schedulers):
            reuse = reusable_tokens(s, request) if request.block_hashes else 0
            new = request.prompt_len - reuse
            pending = pending_prefill_tokens(s)
            estimate = getattr(s, "estimate_prefill_s", None)
            if estimate:
                chunk = self.queue_chunk_tokens
                cost = pending * estimate(chunk, 0) / chunk + estimate(new, reuse)
            else:
                cost = float(pending + new)
            cost += (estimate(self.decode_token_weight, 0) if estimate else self.decode_token_weight) * len(s.decoding) / 64
            # the output length is predicted (session history, running mean): no server knows it
            predicted = s.predict_output_len(request) if hasattr(s, "predict_output_len") else 0
            need = s.kv.blocks_for(request.prompt_len + predicted - reuse)
            if need > s.kv.num_free_blocks:
                cost *= 4  # would preempt or queue for memory
            if cost < best_cost:
                best, best_cost, best_reuse = i, cost, reuse
        if best_reuse > 0:
            self.num_affinity_hits += 1
        return best


DISPATCHERS: dict[str, Callable[[], object]] = {
    "round_robin": RoundRobin,
    "least_loaded": LeastLoaded,
    "slo_aware": SloAware,
}


def make_dispatcher(name: str):
    try:
        return DISPATCHERS[name]()
    except KeyError:
        raise ValueError(f"unknown dispatcher {name!r}; choose from {', '.join(DISPATCHERS)}") from None
