"""Baseline per-GPU schedulers, each the published policy on the shared `SchedulerCore` machinery, with
the knobs the real systems expose (the tuning grids are declared in `sim/tuning.py`).

- ChunkedPrefill: Sarathi-Serve / SGLang / vLLM v1. One mixed iteration per step on the whole GPU: every
  running decode plus prefill chunks filling a token budget, each request's chunk capped.
- PrefillFirst: vLLM v0 continuous batching. Whole-prompt prefill batches whenever any can be admitted,
  otherwise one decode step; one lane, whole GPU.
- StaticSplit: one fixed SM ratio; each step launches a decode step and a prefill chunk side by side and
  waits for both (phases synchronised, semi-PD-like).
- TemporalSplit: prefill layer groups interleaved between decode steps on the whole GPU.
PD disaggregation lives in `disaggregation.py` (it needs the cluster); its prefill side is ChunkedPrefill's.
Every baseline takes `admission="fcfs"` (as shipped) or `"deadline"` (Yoda's order, `slack_admission.py`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Sequence

from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.request import SLO
from yoda.scheduler import PrefillJob, RequestState, SchedulerConfig
from yoda.slack_admission import DeadlineAdmission


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """vLLM's per-request chunk knobs (vllm/config/scheduler.py, `SchedulerConfig`):
    - `long_prefill_token_threshold`: a prompt longer than this is "long", and no request gets more than
      this many new tokens in one iteration (the v1 scheduler caps `num_new_tokens` at it), so one long
      prompt cannot take a whole iteration's budget; 0: no cap (vLLM's default).
    - `max_num_partial_prefills`: "the maximum number of sequences that can be partially prefilled
      concurrently" (default 1); `max_long_partial_prefills`: of those, how many may be long (default 1),
      so that short prompts may pass a long one (the v0 scheduler's `PartialPrefillMetadata`). Counted per
      iteration here: chunks that leave their prompt unfinished; a waiting request the limits keep out is
      passed over for the iteration."""

    long_prefill_token_threshold: int = 0
    max_num_partial_prefills: int = 1
    max_long_partial_prefills: int = 1

    def __post_init__(self) -> None:
        if self.long_prefill_token_threshold < 0:
            raise ValueError(f"long_prefill_token_threshold must be >= 0, got {self.long_prefill_token_threshold}")
        if not 1 <= self.max_long_partial_prefills <= self.max_num_partial_prefills:
            raise ValueError("need 1 <= max_long_partial_prefills <= max_num_partial_prefills, got "
                             f"{self.max_long_partial_prefills} and {self.max_num_partial_prefills}")


@dataclass(slots=True)
class IterationChunks:
    """Prefill chunks of one iteration under a token budget and `ChunkLimits`."""

    limits: ChunkLimits
    budget: int
    chunks: list[PrefillChunk] = field(default_factory=list)
    num_partial: int = 0
    num_long_partial: int = 0

    def chunk_len(self, remaining: int, target_len: int) -> int:
        """New tokens a prompt with `remaining` to prefill would get now (0: none, the limits say wait)."""
        cap = self.limits.long_prefill_token_threshold
        n = min(remaining, self.budget, cap or remaining)
        if n <= 0 or n == remaining:
            return max(n, 0)
        if self.num_partial >= self.limits.max_num_partial_prefills:
            return 0
        if cap and target_len > cap and self.num_long_partial >= self.limits.max_long_partial_prefills:
            return 0
        return n

    def offer(self, state: RequestState) -> bool:
        n = self.chunk_len(state.remaining_prefill, state.target_len)
        if n == 0:
            return False
        self.chunks.append(PrefillChunk(state.id, state.prefilled_len, n))
        self.budget -= n
        if n < state.remaining_prefill:
            self.num_partial += 1
            cap = self.limits.long_prefill_token_threshold
            self.num_long_partial += bool(cap and state.target_len > cap)
        return True


class ChunkedPrefill(DeadlineAdmission):
    """Knobs: `token_budget` is vLLM's `max_num_batched_tokens` (decode tokens count against it; SGLang's
    `--chunked-prefill-size` is the same budget for prefill tokens alone); `long_prefill_token_threshold`,
    `max_num_partial_prefills` and `max_long_partial_prefills` as in `ChunkLimits`."""

    victim_includes_requester = True  # vLLM v1 / Sarathi: preempt the newest running request

    def __init__(self, config: SchedulerConfig, slo: SLO, token_budget: int = 512,
                 long_prefill_token_threshold: int = 0, max_num_partial_prefills: int = 1,
                 max_long_partial_prefills: int = 1, admission: str = "fcfs") -> None:
        super().__init__(config, slo)
        if token_budget < 1:
            raise ValueError("chunked prefill token_budget must be >= 1")
        self.token_budget = token_budget
        self.limits = ChunkLimits(long_prefill_token_threshold, max_num_partial_prefills, max_long_partial_prefills)
        self._init_admission(admission)

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        batch = self.decode_batch(now)
        it = self.iteration_chunks(now, self.token_budget - len(batch))
        chunks = it.chunks
        if not batch and not chunks:
            return []
        if not chunks:
            return [self.decode_launch(batch, self.config.num_sms)]
        steps = self._repeat_steps(chunks, it.budget) if self.max_decode_steps > 1 else 1
        return [self.prefill_launch(chunks, self.config.num_sms, DECODE, batch=batch, num_steps=steps)]

    def iteration_chunks(self, now: float, budget: int) -> IterationChunks:
        """Chunks for admitted prefills first (in admission order), then for newly admitted requests."""
        self.admit_urgent(now)
        it = IterationChunks(self.limits, budget)
        for state in self.prefill_order(self.prefilling, now):
            if it.budget <= 0:
                break
            if not state.in_flight and state.remaining_prefill > 0:
                it.offer(state)
        if it.budget > 0 and self._batch_room() > 0:
            self._admit_into(it, now)
        return it

    def _admit_into(self, it: IterationChunks, now: float) -> None:
        """Admit waiting requests in queue order while the budget lasts, each with its chunk. One that the
        partial-prefill limits keep out is passed over, so a shorter one behind it goes (vLLM v0's
        `PartialPrefillMetadata`: "smaller requests may jump the queue in front of them"); one that free
        KV refuses stops admission (vLLM: allocation LATER ends the scan)."""
        if self.admission != "fcfs":
            self._order_waiting(now)
        queue = self.waiting if self.waiting or self.admission == "fcfs" else self.late
        for state in list(itertools.islice(queue, self.SCAN)):
            if it.budget <= 0 or self._batch_room() <= 0:  # the cap counts every admitted request
                break
            if not it.chunk_len(self._remaining_if_admitted(state), state.target_len):
                continue
            if not self.try_admit(state, now):
                break
            queue.remove(state)
            it.offer(state)

    def _remaining_if_admitted(self, state: RequestState) -> int:
        """Prefill left after admission: the prompt less its cached prefix (as try_admit counts it)."""
        reused = min(self.kv.match_prefix(state.chain) * self.config.block_size, state.target_len - 1)
        return state.target_len - reused

    def _repeat_steps(self, chunks: list, budget_left: int) -> int:
        """Iterations in a row that would be this one again, one chunk further into the same prompt: the
        chunk fills the budget (or its cap, with nothing waiting) and the prompt does not finish, no decode
        finishes or needs a KV block that is not reserved here, and nothing waits to join the batch. A
        backend that runs several at once cuts them at an iteration boundary when a request arrives, so the
        result is that of single iterations."""
        if len(chunks) != 1 or self.ready:
            return 1
        # NOTE: deadline order changes with time alone (a deadline passing sends a request last), so a
        # repeat is only safe with nothing else to order
        if self.admission != "fcfs" and (self.waiting or self.late or sum(
                s.remaining_prefill > 0 for s in self.prefilling) > 1):
            return 1
        chunk = chunks[0]
        capped = chunk.num_new == self.limits.long_prefill_token_threshold and not (self.waiting or self.late)
        if budget_left != 0 and not capped:
            return 1
        prompt_steps = (self.states[chunk.request_id].target_len - chunk.start_len - 1) // chunk.num_new
        if prompt_steps <= 1:
            return 1
        return self._quiet_steps(min(prompt_steps, self.max_decode_steps))


class PrefillFirst(DeadlineAdmission):
    """Knob: `max_prefill_tokens`, new tokens admitted per prefill batch (vLLM v0 `max_num_batched_tokens`
    without chunked prefill); a prompt longer than it still runs whole."""

    victim_includes_requester = True  # vLLM v0: preempt the newest running request

    def __init__(self, config: SchedulerConfig, slo: SLO, max_prefill_tokens: int | None = None,
                 admission: str = "fcfs") -> None:
        super().__init__(config, slo)
        self.max_prefill_tokens = max_prefill_tokens or config.max_prefill_tokens
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        self._init_admission(admission)

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        for _ in range(2):  # again when growing the decode batch emptied it (preempted or rejected): KV freed
            if self._batch_room() > 0:
                self.admit_waiting(now, self.max_prefill_tokens, self._batch_room())
            chunks = self.prefill_chunks(self.prefill_order(self.prefilling, now), max(
                self.max_prefill_tokens, max((s.remaining_prefill for s in self.prefilling), default=0)))
            if chunks:
                return [self.prefill_launch(chunks, self.config.num_sms, DECODE)]
            batch = self.decode_batch(now)
            if batch:
                return [self.decode_launch(batch, self.config.num_sms)]
        return []


class StaticSplit(DeadlineAdmission):
    """Knobs: `decode_sms` (the fixed decode share; semi-PD's static SM ratio) and `chunk_tokens` (prefill
    tokens per step)."""

    def __init__(self, config: SchedulerConfig, slo: SLO, decode_sms: int | None = None,
                 chunk_tokens: int = 2048, admission: str = "fcfs") -> None:
        super().__init__(config, slo)
        self._init_admission(admission)
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
        self.admit_urgent(now)
        chunks = self.prefill_chunks(self.prefill_order(self.prefilling, now), self.chunk_tokens)
        budget = self.chunk_tokens - sum(c.num_new for c in chunks)
        if budget > 0 and self._batch_room() > 0:
            chunks += self.prefill_chunks(self.admit_waiting(now, budget, self._batch_room()), budget)
        if chunks:
            sms = self.config.num_sms - self.decode_sms if batch else self.config.num_sms
            launches.append(self.prefill_launch(chunks, sms, PREFILL))
        return launches


class TemporalSplit(DeadlineAdmission):
    """Alternates one decode step and one prefill layer group on the whole GPU. Knob: `layers_per_group`."""

    def __init__(self, config: SchedulerConfig, slo: SLO, layers_per_group: int = 4, admission: str = "fcfs") -> None:
        super().__init__(config, slo)
        self._init_admission(admission)
        self.layers_per_group = max(1, min(layers_per_group, config.num_layers))
        self.job: PrefillJob | None = None
        self._decode_next = True

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if busy:
            return []
        if self._decode_next or (self.job is None and not self.waiting and not self.late
                                 and not self._idle_prefills()):
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
            self.admit_urgent(now)
            chunks = self.prefill_chunks(self.prefill_order(self.prefilling, now), self.config.max_prefill_tokens)
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
