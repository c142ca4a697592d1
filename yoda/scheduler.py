"""Machinery every per-GPU scheduler shares: request states, KV admission, decode growth with
preemption (recompute), token accounting and layer-group prefill progress.

Policies subclass `SchedulerCore` and implement only `schedule(now, busy)`; nothing here reads a clock.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from yoda.backend import DECODE, Launch, PrefillChunk
from yoda.decode_runs import MultiStepDecode
from yoda.kv_cache import KVCache, chain_keys
from yoda.output_predictor import OutputLenPredictor
from yoda.request import SLO, Request, RequestRecord

REJECT_TOO_LONG = "prompt exceeds the whole KV cache"
REJECT_KV_EXHAUSTED = "output outgrew the whole KV cache"


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    num_sms: int
    num_layers: int
    kv_blocks: int
    block_size: int = 16
    max_batch: int = 256  # decode batch cap (largest CUDA-graph batch)
    max_prefill_tokens: int = 16384  # new tokens per prefill launch
    watermark: float = 0.01  # fraction of KV kept free at admission so decodes can grow
    # ablation: decisions may read each request's true output length (no server can); by default they use
    # a prediction (yoda.output_predictor) and a request whose output outgrows the cache is rejected then
    output_len_oracle: bool = False

    def __post_init__(self) -> None:
        for name in ("num_sms", "num_layers", "kv_blocks", "block_size", "max_batch", "max_prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(slots=True, eq=False)
class RequestState:
    request: Request
    record: RequestRecord
    chain: list[int]
    order: int  # admission order tie-breaker (FCFS)
    prefilled_len: int = 0  # prompt tokens whose KV is computed
    target_len: int = 0  # tokens to prefill: the prompt, plus generated tokens after a preemption
    admitted: bool = False
    in_flight: bool = False  # part of a running prefill launch (decode membership is tracked by the batch)
    # While decoding, tokens come from the scheduler's decode steps: one per step since `join_step`.
    # Deriving them from a shared step counter keeps a decode step O(1) instead of O(batch).
    generated_base: int = 0
    join_step: int = 0
    step_clock: list[int] | None = None  # the scheduler's [num_decode_steps] while decoding
    epoch: int = 0  # bumped when the request leaves the decode batch (invalidates heap entries)

    @property
    def num_generated(self) -> int:
        if self.step_clock is None:
            return self.generated_base
        return self.generated_base + self.step_clock[0] - self.join_step

    @property
    def id(self) -> int:
        return self.request.request_id

    @property
    def remaining_prefill(self) -> int:
        return self.target_len - self.prefilled_len

    @property
    def context_len(self) -> int:
        """KV tokens a decode step of this request attends to (including the token it writes)."""
        return self.request.prompt_len + self.num_generated


@dataclass(slots=True)
class PrefillJob:
    """Prefill chunks that advance through the model's layers together (layer groups)."""

    chunks: tuple[PrefillChunk, ...]
    states: list[RequestState]
    layers_done: int = 0
    est_s: float = 0.0  # predicted whole-GPU time of all layers (set by policies that plan with it)
    num_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = sum(c.num_new for c in self.chunks)


class SchedulerCore(MultiStepDecode):
    """Shared state machine. Subclasses implement `schedule`."""

    def __init__(self, config: SchedulerConfig, slo: SLO) -> None:
        self.config = config
        self.slo = slo
        self.kv = KVCache(config.kv_blocks, config.block_size)
        self.states: dict[int, RequestState] = {}
        self.waiting: deque[RequestState] = deque()  # no KV yet
        self.prefilling: list[RequestState] = []  # KV allocated, prefill not complete
        self.ready: list[RequestState] = []  # prefill complete, joins decode at the next step boundary
        self.decoding: list[RequestState] = []
        self.records: list[RequestRecord] = []
        self._order = 0
        self.num_steps = 0
        # decode batch bookkeeping (see RequestState.num_generated)
        self.step_clock = [0]  # decode steps completed
        self.step_times: list[float] = []  # completion time of each decode step
        self._finish_heap: list[tuple[int, int, int, RequestState]] = []  # (step, order, epoch, state)
        self._grow_heap: list[tuple[int, int, int, RequestState]] = []  # (step needing a new block, ...)
        self._run_growth: list[tuple[RequestState, int, int]] = []  # (state, epoch, blocks before) of a run
        self._kv_base = 0  # sum over the batch of (context at join - join_step)
        self._batch_ids: tuple[int, ...] = ()
        self._batch_dirty = False
        self.decode_in_flight = False
        # Backends that can run several decode steps per launch (the simulator) raise this; 1 = one step.
        self.max_decode_steps = 1
        self.output_lens = OutputLenPredictor(oracle=config.output_len_oracle)

    # True for policies whose prefill launches may span several layers and that re-decide at any layer
    # boundary: a backend may then stop such a launch early at a layer boundary and report the layer_end
    # that ran (the policy advances its job by what the launch reports, not by what it planned).
    prefill_groups_cuttable = False

    def arrival_cuts(self, lane: str, busy_lanes: Iterable[str]) -> bool:
        """Whether a backend should stop a multi-unit launch on `lane` at its next unit boundary when a
        request arrives, so that this scheduler decides again (by default: yes)."""
        return True

    def wakeup_at(self, now: float) -> float | None:
        """The time after `now` from which this scheduler may decide differently with no event in between (no
        arrival, no launch ending), or None: a waiting request's TTFT deadline passing moves it behind those
        that can still make theirs. A backend stops a multi-unit launch at its first unit boundary after it,
        so several steps in one launch decide as single steps do (by default: never)."""
        return None

    def completion_cuts(self) -> bool:
        """Whether a backend should stop a multi-unit launch at its next unit boundary when a launch that
        completes prefill chunks ends: when a request waits to join the decode batch, or no prefill work
        is left (decode may then take the whole GPU). A chunk of a longer prompt changes neither."""
        return bool(self.ready) or not self.prefill_pending()

    # ---- events ---------------------------------------------------------------------------------
    def on_arrival(self, request: Request, now: float) -> None:
        record = RequestRecord.for_request(request)
        self.records.append(record)
        # without the oracle only the prompt is known: a longer output is caught when it outgrows the cache
        known_len = request.prompt_len + (request.output_len if self.config.output_len_oracle else 0)
        if not self.kv.fits_empty(known_len):
            record.rejected_reason = REJECT_TOO_LONG
            record.finished_at = now
            return
        state = RequestState(request, record, chain_keys(request.block_keys(self.config.block_size)), self._order,
                             target_len=request.prompt_len)
        self._order += 1
        self.states[request.request_id] = state
        self.waiting.append(state)

    def on_launch_done(self, launch: Launch, now: float) -> None:
        self.num_steps += 1
        if launch.decode_ids:
            self._decode_steps_done(launch.step_ends if launch.num_steps > 1 else (now,), now)
        if launch.prefill:
            self._advance_prefill(launch, now)

    def has_work(self) -> bool:
        return bool(self.states)

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:  # pragma: no cover
        raise NotImplementedError

    # ---- token and prefill accounting -----------------------------------------------------------------
    def _emit_token(self, state: RequestState, now: float) -> None:
        """A token from a prefill (the first one, or the next one after a recompute)."""
        state.generated_base += 1
        state.record.token_at.append(now)
        if state.num_generated >= state.request.output_len:
            self._finish(state, now)

    def _decode_steps_done(self, step_ends: Sequence[float], now: float) -> None:
        self.decode_in_flight = False
        self.step_clock[0] += len(step_ends)
        self.step_times.extend(step_ends)
        step, heap, times = self.step_clock[0], self._finish_heap, self.step_times
        while heap and heap[0][0] <= step:
            last, _, epoch, state = heapq.heappop(heap)
            if epoch == state.epoch and state.step_clock is not None:
                self._finish(state, times[last - 1])  # a run may have gone on past its last step
        if self._run_growth:
            self._release_unused_growth()

    def _advance_prefill(self, launch: Launch, now: float) -> None:
        if not launch.prefill_completes:
            return
        for chunk in launch.prefill:
            state = self.states[chunk.request_id]
            state.in_flight = False
            state.prefilled_len = launch.prefill_end_len(chunk)
            self.kv.commit(state.id, state.prefilled_len)
            if state.prefilled_len < state.target_len:
                continue
            self.prefilling.remove(state)
            self._emit_token(state, now)
            if state.id in self.states:
                self.ready.append(state)

    def predict_output_len(self, request: Request) -> int:
        """Output tokens this scheduler expects of `request` (the true length only under the oracle)."""
        return self.output_lens.predict(request)

    def _finish(self, state: RequestState, now: float) -> None:
        if state.step_clock is not None:
            self._leave_decode(state)
        if state.record.rejected_reason is None:
            self.output_lens.observe(state.request, state.num_generated)
        state.record.finished_at = now
        if state.admitted:
            self.kv.free(state.id)
        if state in self.ready:
            self.ready.remove(state)
        del self.states[state.id]

    # ---- admission --------------------------------------------------------------------------------
    def try_admit(self, state: RequestState, now: float) -> bool:
        """Allocate KV for the prompt (reusing the cached prefix). False if it does not fit now."""
        if not self._kv_admits(state):
            return False
        try:
            alloc = self.kv.allocate(state.id, state.target_len, state.chain)
        except Exception:
            return False
        reused = min(alloc.num_reused_blocks * self.config.block_size, state.target_len - 1)
        state.prefilled_len = reused
        state.record.reused_len = min(reused, state.request.prompt_len)
        state.admitted = True
        self.prefilling.append(state)
        return True

    def admit_waiting(self, now: float, token_budget: int, max_requests: int = 1 << 30) -> list[RequestState]:
        """Admit waiting requests FCFS while their remaining prefill fits `token_budget`."""
        admitted: list[RequestState] = []
        while self.waiting and len(admitted) < max_requests:
            state = self.waiting[0]
            if not self.try_admit(state, now):
                break
            self.waiting.popleft()
            admitted.append(state)
            token_budget -= state.remaining_prefill
            if token_budget <= 0:
                break
        return admitted

    def prefill_chunks(self, states: Iterable[RequestState], token_budget: int) -> list[PrefillChunk]:
        """Chunks of admitted, idle prefills filling `token_budget` new tokens (the last one split)."""
        chunks = []
        for state in states:
            if token_budget <= 0:
                break
            if state.in_flight or state.remaining_prefill <= 0:
                continue
            n = min(state.remaining_prefill, token_budget)
            chunks.append(PrefillChunk(state.id, state.prefilled_len, n))
            token_budget -= n
        return chunks

    # ---- decode -----------------------------------------------------------------------------------
    def merge_ready(self) -> None:
        """Move finished prefills into the decode batch (between decode steps), up to max_batch."""
        room = self.config.max_batch - len(self.decoding)
        joining, self.ready[:] = self.ready[:room], self.ready[room:]
        for state in joining:
            self._join_decode(state)

    def _join_decode(self, state: RequestState) -> None:
        step = self.step_clock[0]
        state.join_step, state.step_clock = step, self.step_clock
        self.decoding.append(state)
        self._kv_base += state.context_len - step
        self._batch_dirty = True
        order, epoch = state.order, state.epoch
        heapq.heappush(self._finish_heap, (step + state.request.output_len - state.generated_base, order, epoch, state))
        self._push_growth(state)

    def _push_growth(self, state: RequestState) -> None:
        """Note the decode step at which the request needs its next KV block, unless it finishes first."""
        room = len(self.kv.block_table(state.id)) * self.config.block_size - state.context_len
        step = self.step_clock[0] + room + 1
        if step < self._finish_step(state):
            heapq.heappush(self._grow_heap, (step, state.order, state.epoch, state))

    def _finish_step(self, state: RequestState) -> int:
        """Decode-step clock at which a decoding request has produced its last token."""
        return state.join_step + state.request.output_len - state.generated_base

    def _leave_decode(self, state: RequestState) -> None:
        """Materialise the request's decode-step token times and take it out of the batch."""
        clock = self.step_clock[0]
        self._kv_base -= state.context_len - clock
        step = min(clock, self._finish_step(state))  # a run may have gone on past its last step
        state.record.token_at.extend(self.step_times[state.join_step:step])
        state.generated_base += step - state.join_step
        state.step_clock = None
        state.epoch += 1
        self.decoding.remove(state)
        self._batch_dirty = True

    @property
    def decode_kv_len(self) -> int:
        """KV tokens the next decode step attends to, summed over the batch."""
        return self._kv_base + len(self.decoding) * self.step_clock[0]

    def decode_batch(self, now: float) -> tuple[int, ...]:
        """Ids of the next decode step (every decoding request), after growing KV where the step crosses
        a block boundary (preempting the newest request on shortage)."""
        self.merge_ready()
        step, heap = self.step_clock[0], self._grow_heap
        while heap and heap[0][0] <= step:
            _, _, epoch, state = heapq.heappop(heap)
            if epoch != state.epoch or state.step_clock is None or state.id not in self.states:
                continue
            if self._grow(state, now):
                self._push_growth(state)
        if self._batch_dirty:
            self._batch_ids = tuple([s.request.request_id for s in self.decoding])
            self._batch_dirty = False
        return self._batch_ids

    def _grow(self, state: RequestState, now: float) -> bool:
        if self.kv.has_room(state.id, state.context_len):
            return True
        if not self.kv.fits_empty(state.context_len):  # a miss of the output prediction no preemption cures
            state.record.rejected_reason = REJECT_KV_EXHAUSTED
            self._finish(state, now)
            return False
        while not self.kv.can_extend(state.id, state.context_len):
            victim = self._pick_victim(exclude=None if self.victim_includes_requester else state)
            if victim is None or victim is state:
                self.preempt(state)
                return False
            self.preempt(victim)
        self.kv.extend(state.id, state.context_len)
        return True

    # Preemption victim on a KV shortage: the newest admitted request. vLLM (v0 and v1) and Vidur pop the
    # newest running request even when it is the one asking for a block (it then preempts itself); policies
    # that set this False spare the requester and take the newest other one.
    victim_includes_requester = False

    def _pick_victim(self, exclude: RequestState | None) -> RequestState | None:
        candidates = self.prefilling + ([] if self.decode_in_flight else self.decoding)
        idle = [s for s in candidates if not s.in_flight and s is not exclude and s.admitted]
        return max(idle, key=lambda s: s.order, default=None)

    def preempt(self, state: RequestState) -> None:
        """Free a request's KV and requeue it to recompute prompt + generated tokens (vLLM recompute)."""
        if state.step_clock is not None:
            self._leave_decode(state)
        self.kv.free(state.id)
        state.admitted = False
        state.record.num_preemptions += 1
        for queue in (self.ready, self.prefilling):
            if state in queue:
                queue.remove(state)
        # the recompute prefill covers the tokens generated so far and emits the next one
        state.target_len = state.request.prompt_len + state.num_generated
        state.prefilled_len = 0
        self.waiting.appendleft(state)

    def _claim_batch(self, batch: tuple[int, ...]) -> int:
        """Mark the decode batch running; it must be the whole batch from `decode_batch`."""
        if batch:
            assert batch is self._batch_ids and not self._batch_dirty, "decode launches carry the whole batch"
            self.decode_in_flight = True
        return self.decode_kv_len if batch else 0

    def decode_launch(self, batch: tuple[int, ...], num_sms: int, lane: str = DECODE) -> Launch:
        steps, departures = self._decode_run(self._decode_steps_limit()) if self.max_decode_steps > 1 else (1, ())
        kv_len = self._claim_batch(batch)
        return Launch(lane, num_sms, decode_ids=batch, decode_kv_len=kv_len, num_layers=self.config.num_layers,
                      num_steps=steps, decode_departures=departures)

    def prefill_pending(self) -> bool:
        """Any prefill work queued, running or about to join decode (policies with more queues extend it)."""
        return bool(self.waiting or self.prefilling or self.ready)

    def _decode_steps_limit(self) -> int:
        """Most decode steps the next launch may run: several only while no prefill work is pending (a
        policy that re-decides less often beside a running prefill overrides this)."""
        return 1 if self.prefill_pending() else self.max_decode_steps

    def _batch_room(self) -> int:
        """Requests the decode batch cap lets in beyond those decoding, ready or admitted (may be negative)."""
        return self.config.max_batch - len(self.decoding) - len(self.ready) - len(self.prefilling)

    def _next_to_admit(self) -> RequestState | None:
        """The request admission would try next (policies with more queues override it)."""
        return self.waiting[0] if self.waiting else None

    def admission_blocked(self) -> bool:
        """Whether the next waiting request is held back by the decode batch cap or by free KV, which a
        finishing request relieves."""
        head = self._next_to_admit()
        if head is None:
            return False
        return self._batch_room() <= 0 or not self._kv_admits(head)

    def _kv_admits(self, state: RequestState) -> bool:
        """Whether free KV (and the cached prefix it reuses) holds `state`'s prompt with the watermark left."""
        # the watermark keeps room for decode growth; an empty cache has nothing to protect (and a request
        # that needs nearly all of it would otherwise never be admitted)
        keep_free = int(self.config.watermark * self.config.kv_blocks) if self.kv.num_used_blocks else 0
        need = self.kv.blocks_for(state.target_len) + keep_free
        return need <= self.kv.num_free_blocks + self.kv.match_prefix(state.chain)

    def prefill_launch(self, chunks: Sequence[PrefillChunk], num_sms: int, lane: str, layer_start: int = 0,
                       layer_end: int | None = None, batch: tuple[int, ...] = (), num_steps: int = 1) -> Launch:
        for c in chunks:
            self.states[c.request_id].in_flight = True
        kv_len = self._claim_batch(batch)
        n = self.config.num_layers
        return Launch(lane, num_sms, decode_ids=batch, decode_kv_len=kv_len, prefill=tuple(chunks),
                      layer_start=layer_start, layer_end=n if layer_end is None else layer_end, num_layers=n,
                      num_steps=num_steps)

    def check_invariants(self) -> None:
        self.kv.check_invariants()
        live = set(self.states)
        queued = [s.id for q in (self.waiting, self.prefilling, self.ready, self.decoding) for s in q]
        assert len(queued) == len(set(queued)), "a request sits in two queues"
        assert set(queued) == live, "a live request is in no queue"
        for s in self.states.values():
            assert s.admitted == (s.id in self.kv)
            assert (s.step_clock is not None) == (s in self.decoding)
            if s.step_clock is not None:  # the last step's token is written by the next step
                assert self.kv.has_room(s.id, s.context_len - 1)
        assert self.decode_kv_len == sum(s.context_len for s in self.decoding)
        assert len(self.decoding) <= self.config.max_batch
