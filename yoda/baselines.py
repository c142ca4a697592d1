"""Baseline per-GPU schedulers, each the published policy on the shared `SchedulerCore` machinery.

- ChunkedPrefill: Sarathi-Serve / SGLang / vLLM v1. One mixed iteration per step on the whole GPU: every
  running decode plus prefill chunks filling a token budget.
- PrefillFirst: vLLM v0 continuous batching. Whole-prompt prefill batches whenever any can be admitted,
  otherwise one decode step; one lane, whole GPU.
- StaticSplit: one fixed SM ratio; each step launches a decode step and a prefill chunk side by side and
  waits for both (phases synchronised, semi-PD-like).
- TemporalSplit: prefill layer groups interleaved between decode steps on the whole GPU.
PD disaggregation lives in `disaggregation.py` (it needs the cluster).
"""
from __future__ import annotations

from typing import Sequence

from yoda.backend import DECODE, PREFILL, Launch
from yoda.request import SLO
from yoda.scheduler import PrefillJob, SchedulerConfig, SchedulerCore


class ChunkedPrefill(SchedulerCore):
    victim_includes_requester = True  # vLLM v1 / Sarathi: preempt the newest running request
    def __init__(self, config: SchedulerConfig, slo: SLO, token_budget: int = 512) -> None:
        super().__init__(config, slo)
        if token_budget < 1:
            raise ValueError("chunked prefill token_budget must be >= 1")
        self.token_budget = token_budget

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        batch = self.decode_batch(now)
        budget = self.token_budget - len(batch)
        chunks = self.prefill_chunks(self.prefilling, budget)
        budget -= sum(c.num_new for c in chunks)
        if budget > 0 and self._batch_room() > 0:
            chunks += self.prefill_chunks(self.admit_waiting(now, budget, self._batch_room()), budget)
        if not batch and not chunks:
            return []
        if not chunks:
            return [self.decode_launch(batch, self.config.num_sms)]
        steps = self._repeat_steps(chunks, budget) if self.max_decode_steps > 1 else 1
        return [self.prefill_launch(chunks, self.config.num_sms, DECODE, batch=batch, num_steps=steps)]

    def _repeat_steps(self, chunks: list, budget_left: int) -> int:
        """Iterations in a row that would be this one again, one chunk further into the same prompt: the
        chunk fills the budget and the prompt does not finish, no decode finishes or needs a KV block that
        is not reserved here, and nothing waits to join the batch. A backend that runs several at once cuts
        them at an iteration boundary when a request arrives, so the result is that of single iterations."""
        if len(chunks) != 1 or budget_left != 0 or self.ready:
            return 1
        chunk = chunks[0]
        prompt_steps = (self.states[chunk.request_id].target_len - chunk.start_len - 1) // chunk.num_new
        if prompt_steps <= 1:
            return 1
        return self._quiet_steps(min(prompt_steps, self.max_decode_steps))


class PrefillFirst(SchedulerCore):
    victim_includes_requester = True  # vLLM v0: preempt the newest running request
    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        for _ in range(2):  # again when growing the decode batch emptied it (preempted or rejected): KV freed
            if self._batch_room() > 0:
                self.admit_waiting(now, self.config.max_prefill_tokens, self._batch_room())
            chunks = self.prefill_chunks(self.prefilling, max(self.config.max_prefill_tokens,
                                                              max((s.remaining_prefill for s in self.prefilling), default=0)))
            if chunks:
                return [self.prefill_launch(chunks, self.config.num_sms, DECODE)]
            batch = self.decode_batch(now)
            if batch:
                return [self.decode_launch(batch, self.config.num_sms)]
        return []


class StaticSplit(SchedulerCore):
    def __init__(self, config: SchedulerConfig, slo: SLO, decode_sms: int | None = None,
                 chunk_tokens: int = 2048) -> None:
        super().__init__(config, slo)
        self.decode_sms = decode_sms or config.num_sms // 2
        if not 0 < self.decode_sms < config.num_sms:
            raise ValueError(f"static split decode_sms must be in (0, {config.num_sms}), got {self.decode_sms}")
        self.chunk_tokens = chunk_tokens

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []  # synchronised: next step only when both lanes are done
        launches = []
        batch = self.decode_batch(now)
        if batch:
            launches.append(self.decode_launch(batch, self.decode_sms))
        chunks = self.prefill_chunks(self.prefilling, self.chunk_tokens)
        budget = self.chunk_tokens - sum(c.num_new for c in chunks)
        if budget > 0 and self._batch_room() > 0:
            chunks += self.prefill_chunks(self.admit_waiting(now, budget, self._batch_room()), budget)
        if chunks:
            sms = self.config.num_sms - self.decode_sms if batch else self.config.num_sms
            launches.append(self.prefill_launch(chunks, sms, PREFILL))
        return launches


class TemporalSplit(SchedulerCore):
    """Alternates one decode step and one prefill layer group on the whole GPU."""

    def __init__(self, config: SchedulerConfig, slo: SLO, layers_per_group: int = 4) -> None:
        super().__init__(config, slo)
        self.layers_per_group = max(1, min(layers_per_group, config.num_layers))
        self.job: PrefillJob | None = None
        self._decode_next = True

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        if self._decode_next or (self.job is None and not self.waiting and not self._idle_prefills()):
            self._decode_next = False
            batch = self.decode_batch(now)
            if batch:
                return [self.decode_launch(batch, self.config.num_sms)]
        self._decode_next = True
        launch = self._prefill_group(now)
        if launch is None:
            batch = self.decode_batch(now)
            if batch:
                return [self.decode_launch(batch, self.config.num_sms)]
            launch = self._prefill_group(now)  # growing the batch emptied it (preempted or rejected): KV freed
        return [launch] if launch is not None else []

    def _idle_prefills(self) -> bool:
        return any(not s.in_flight for s in self.prefilling)

    def _prefill_group(self, now: float) -> Launch | None:
        if self.job is None:
            if self._batch_room() > 0:
                self.admit_waiting(now, self.config.max_prefill_tokens, self._batch_room())
            chunks = self.prefill_chunks(self.prefilling, self.config.max_prefill_tokens)
            if not chunks:
                return None
            self.job = PrefillJob(tuple(chunks), [self.states[c.request_id] for c in chunks])
        start = self.job.layers_done
        end = min(start + self.layers_per_group, self.config.num_layers)
        launch = self.prefill_launch(self.job.chunks, self.config.num_sms, DECODE, start, end)
        self.job.layers_done = end
        if end == self.config.num_layers:
            self.job = None
        return launch
