"""PD disaggregation (DistServe / SGLang-PD / Mooncake): prefill and decode on different instances.

A prefill instance runs chunked prefill on its whole GPU (ChunkedPrefill's chunks with no decode: token
budget, per-request chunk cap and partial-prefill limits, as an SGLang-PD / Mooncake prefill node runs
`--chunked-prefill-size`); by default one budget of `max_prefill_tokens` and no cap, i.e. whole-prompt
batches. When a prefill completes it computes the first token and hands the whole batch to the cluster,
which moves its KV over the link to a decode instance. The user sees that first token only when the decode
instance has the KV and admits the request (SGLang PD, vLLM's disaggregated connectors and Mooncake stream
every token from the decode side), so TTFT is stamped then. A decode instance runs decode steps on its
whole GPU; a request it must preempt is recomputed there.
Multi-turn follow-ups: the prefill instance reuses what its own cache holds; the cluster may first move
a longer matching prefix back from a decode instance (`kv_return="move"`) or recompute it ("recompute").
"""
from __future__ import annotations

from typing import Callable, Sequence

from yoda.backend import PREFILL, Launch
from yoda.baselines import ChunkedPrefill, PrefillFirst
from yoda.request import SLO
from yoda.scheduler import RequestState, SchedulerConfig

# (requests whose prefill ended together, now, when each prompt's first chunk started): the cluster moves
# their KV to decode instances
Handoff = Callable[[list[RequestState], float, list[float]], None]


class DisaggPrefill(ChunkedPrefill):
    role = "prefill"

    def __init__(self, config: SchedulerConfig, slo: SLO, token_budget: int | None = None, **chunk_options) -> None:
        super().__init__(config, slo, token_budget or config.max_prefill_tokens, **chunk_options)
        self.handoff: Handoff | None = None
        self.prefill_started_at: dict[int, float] = {}  # request -> launch of its prompt's first chunk

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        chunks = self.iteration_chunks(now, self.token_budget).chunks
        for chunk in chunks:
            self.prefill_started_at.setdefault(chunk.request_id, now)
        return [self.prefill_launch(chunks, self.config.num_sms, PREFILL)] if chunks else []

    def _advance_prefill(self, launch: Launch, now: float) -> None:
        super()._advance_prefill(launch, now)
        if not self.ready:
            return
        if self.handoff is None:
            raise RuntimeError("prefill instance has no handoff target")
        for state in self.ready:
            self.kv.free(state.id)  # committed prompt blocks stay cached here for later turns
            state.admitted = False
            del self.states[state.id]
        batch, self.ready = self.ready, []
        self.handoff(batch, now, [self.prefill_started_at.pop(s.id, now) for s in batch])

    def install_prefix(self, chain: list[int], num_tokens: int, tmp_id: int) -> bool:
        """Cache KV blocks moved back from a decode instance so the next prefill reuses them."""
        if not self.kv.can_allocate(num_tokens, chain):
            return False
        self.kv.allocate(tmp_id, num_tokens, chain)
        self.kv.commit(tmp_id)
        self.kv.free(tmp_id)
        return True


class DisaggDecode(PrefillFirst):
    role = "decode"

    def __init__(self, config: SchedulerConfig, slo: SLO) -> None:
        super().__init__(config, slo)
        self.incoming: list[RequestState] = []  # KV arrived, waiting for blocks here

    def prefill_pending(self) -> bool:
        return super().prefill_pending() or bool(self.incoming)

    def receive(self, state: RequestState, now: float) -> None:
        """A request whose KV finished moving here: it joins the decode batch at the next step."""
        self.states[state.id] = state
        self.incoming.append(state)

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        self._place_incoming(now)
        return super().schedule(now, busy)

    def _place_incoming(self, now: float) -> None:
        """Admit arrived requests FCFS while the batch cap and free KV (counting the blocks this GPU already
        caches for their prefix) allow; the user gets the first token at admission."""
        while self.incoming and self._batch_room() > 0:
            state = self.incoming[0]
            tokens = state.context_len - 1  # KV of prompt and generated tokens but the last one
            keep = int(self.config.watermark * self.config.kv_blocks) if self.kv.num_used_blocks else 0
            if not self.kv.can_allocate(tokens + keep * self.config.block_size, state.chain):
                return
            self.kv.allocate(state.id, tokens, state.chain)
            self.kv.commit(state.id, state.request.prompt_len)
            state.admitted = True
            state.order = self._order
            self._order += 1
            if state.generated_base == 1 and len(state.record.token_at) == 1:
                state.record.token_at[0] = now  # the first token reaches the user from here
            self.ready.append(self.incoming.pop(0))

    def has_work(self) -> bool:
        return bool(self.states)

    def check_invariants(self) -> None:
        self.kv.check_invariants()
