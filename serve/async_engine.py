"""The online engine loop: one asyncio task owns a scheduler (policy core) and the Engine; HTTP handlers
only `submit` and `abort`, and read tokens from their `Submission`.

    aengine = AsyncEngine(scheduler, Engine(model, pool, scheduler.kv, device), max_queue=256)
    aengine.start()                                      # inside a running event loop
    sub = aengine.submit(prompt_ids, max_tokens=16)      # QueueFullError when --max-queue are waiting
    async for token_ids in sub.stream(): ...             # then sub.finish_reason: "length", "stop", "abort", ...

Queue deadline: a request that has not started its prefill by `deadline_at` (arrival + --max-queue-wait-s,
or its TTFT target x --queue-wait-ttft-x when smaller) is taken out and finished as "expired" (the server
answers 429 with Retry-After), so overload is refused instead of served minutes late.

One loop iteration is the driver loop of yoda/backend.py: take in arrivals, poll finished launches
(`on_launch_done`, deliver tokens), apply pending stops, ask `schedule(now, busy)` and start its launches.
The clock is seconds since the loop started (time.monotonic). On the CPU a launch runs in a worker thread
so HTTP handlers keep running meanwhile; nothing but this task touches the scheduler or the Engine.

Early stops (EOS, client abort) use `SchedulerCore` internals, because the core has no abort API: a request
is taken out only while no launch holds it (not `in_flight`, not in a running decode batch), from the
queues it sits in, then `_finish` frees its KV. Recompute preemption re-adds the request to the Engine with
prompt + generated tokens (the Engine only prefills up to its prompt length).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Sequence


from executor.engine import Engine
from executor.sampling import SamplingParams
from executor.tokenizer import token_block_hashes
from yoda.backend import Launch
from serve.metrics import EngineMetrics
from yoda.request import Request

log = logging.getLogger("yoda.serve")
ABORTED = "aborted"


class QueueFullError(RuntimeError):
    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"server overloaded: {queued} requests already queued; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineDeadError(RuntimeError):
    """The engine loop stopped (shutdown or an internal error); no new work is accepted."""


@dataclass(slots=True, eq=False)
class Submission:
    """One accepted request as its HTTP handler sees it. Tokens arrive on `events` (lists of ids), then None."""

    request_id: int
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop_ids: frozenset[int]
    arrival_at: float
    deadline_at: float = math.inf  # must start its prefill by then, else "expired"
    min_tokens: int = 0  # stop ids are ignored before this many output tokens
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop", "abort" or "error"
    error: str | None = None
    cached_tokens: int = 0  # prompt tokens whose KV was reused
    first_token_at: float | None = None
    started_at: float | None = None  # its first prefill launch
    logprobs: list = field(default_factory=list)  # per output token, when sampling.num_logprobs is set

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    async def stream(self) -> AsyncIterator[list[int]]:
        """New token ids as they come, until the request finishes."""
        while True:
            item = await self.events.get()
            if item is None:
                return
            yield item


class AsyncEngine:
    def __init__(self, scheduler, engine: Engine, max_queue: int = 256, max_model_len: int | None = None,
                 check_every: int = 0, max_queue_wait_s: float = math.inf, queue_wait_ttft_x: float = 0.0,
                 metrics: EngineMetrics | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.sched, self.engine = scheduler, engine
        self.block_size = scheduler.config.block_size
        self.max_queue = max_queue
        self.kv_tokens = scheduler.config.kv_blocks * self.block_size
        self.max_model_len = min(max_model_len or self.kv_tokens, self.kv_tokens)
        self.check_every = check_every
        self.max_queue_wait_s, self.queue_wait_ttft_x = max_queue_wait_s, queue_wait_ttft_x
        self.metrics = metrics or EngineMetrics()
        self._t0 = time.monotonic()
        self._next_id = 0
        self._inbox: deque[Submission] = deque()
        self._subs: dict[int, Submission] = {}
        self._stops: dict[int, str] = {}  # request id -> "stop" | "abort", applied when no launch holds it
        self._prior: dict[int, tuple[list, list]] = {}  # (tokens, logprobs) before the last recompute
        self._engine_prompt_len: dict[int, int] = {}
        self._busy: dict[str, Launch] = {}  # lane -> the scheduler's launch running there
        self._engine_launch: dict[int, Launch] = {}  # id(launch given to the Engine) -> scheduler's launch
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="yoda-engine") if engine.device.type == "cpu" else None
        self.dead: str | None = None
        self.lane_sms = {"prefill": 0, "decode": 0}  # SMs the policy gave the latest launch on each lane
        self.counts = {"accepted": 0, "finished": 0, "aborted": 0, "stopped": 0, "rejected_full": 0, "expired": 0,
                       "failed": 0}
        self.num_prompt_tokens = self.num_output_tokens = 0
        self._finish_times: deque[float] = deque(maxlen=256)
        self._num_iterations = 0

    # ---- handler side (event loop thread, never inside the loop task's critical sections) ---------------
    def now(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="yoda-engine-loop")

    async def stop(self) -> None:
        self.dead = self.dead or "server shutting down"
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    @property
    def num_queued(self) -> int:
        """Accepted requests not yet holding KV (the --max-queue bound applies to these)."""
        return len(self._inbox) + len(self.sched.waiting) + len(getattr(self.sched, "late", ()))

    @property
    def busy_lanes(self) -> set[str]:
        return set(self._busy)

    @property
    def num_running(self) -> int:
        return len(self._subs) - self.num_queued

    def submit(self, prompt_ids: Sequence[int], max_tokens: int, sampling: SamplingParams | float | None = None,
               stop_ids: Sequence[int] = (), min_tokens: int = 0) -> Submission:
        """Accept a request or raise QueueFullError / EngineDeadError. Lengths must be checked already.
        `sampling`: SamplingParams, or a bare temperature (None: greedy)."""
        if self.dead:
            raise EngineDeadError(self.dead)
        if self.num_queued >= self.max_queue:
            self.counts["rejected_full"] += 1
            self.metrics.on_finish("rejected_full")
            raise QueueFullError(self.num_queued, self.retry_after_s())
        if not prompt_ids or max_tokens < 1 or len(prompt_ids) + max_tokens > self.max_model_len:
            raise ValueError("prompt and max_tokens must fit the model context")  # handlers check first
        if not isinstance(sampling, SamplingParams):
            sampling = SamplingParams(temperature=float(sampling or 0.0))
        if min_tokens and stop_ids:  # the sampler cannot draw a stop id before min_tokens (vLLM's semantics)
            sampling = replace(sampling, min_tokens=min_tokens, min_tokens_stop_ids=tuple(sorted(set(stop_ids))))
        now = self.now()
        sub = Submission(self._next_id, list(prompt_ids), max_tokens, sampling, frozenset(stop_ids), now,
                         now + self._max_wait_s(len(prompt_ids)), min_tokens)
        self._next_id += 1
        self._inbox.append(sub)
        self._subs[sub.request_id] = sub
        self.counts["accepted"] += 1
        self.metrics.accepted.inc()
        self._wake.set()
        return sub

    def abort(self, request_id: int) -> None:
        """Drop a request (client gone). Idempotent; its KV is freed as soon as no launch holds it."""
        sub = self._subs.get(request_id)
        if sub is None or sub.done:
            return
        self._stops.setdefault(request_id, "abort")
        self._wake.set()

    def _max_wait_s(self, prompt_len: int) -> float:
        wait = self.max_queue_wait_s
        if self.queue_wait_ttft_x > 0:
            wait = min(wait, self.queue_wait_ttft_x * self.sched.slo.ttft_target_s(prompt_len))
        return wait

    def finish(self, request_id: int) -> None:
        """End a request as "stop" (a stop string the handler found); idempotent, like abort."""
        sub = self._subs.get(request_id)
        if sub is not None and not sub.done:
            self._stops.setdefault(request_id, "stop")
            self._wake.set()

    def retry_after_s(self) -> int:
        """Seconds until the queue has probably drained by one bound's worth, from the recent finish rate."""
        times = self._finish_times
        if len(times) < 2 or times[-1] <= times[0]:
            return 1
        rate = (len(times) - 1) / (times[-1] - times[0])
        return int(min(max(math.ceil(self.num_queued / rate), 1), 60))

    def prefix_hit_rate(self) -> float:
        kv = self.sched.kv
        return kv.num_hit_tokens / kv.num_query_tokens if kv.num_query_tokens else 0.0

    # ---- the loop task --------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while not self.dead:
                progressed = self._intake() | self._poll() | self._expire() | self._apply_stops()
                launches = self._schedule()
                for launch in launches:
                    await self._start(launch)
                self._num_iterations += 1
                if self.check_every and self._num_iterations % self.check_every == 0:
                    self.sched.check_invariants()
                if launches or progressed:
                    await asyncio.sleep(0)  # let handlers run between iterations
                elif self.engine.num_in_flight:
                    await asyncio.sleep(0 if self.engine.device.type == "cuda" else 0.0005)
                else:  # idle until a handler wakes us; with work pending (nothing launchable) retry soon
                    self._wake.clear()
                    timeout = 0.05 if self.sched.has_work() or self._stops else None
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
        except Exception as e:  # noqa: BLE001 - every accepted request must still get an answer
            log.exception("engine loop failed")
            self.dead = f"engine loop failed: {type(e).__name__}: {e}"
        for sub in list(self._subs.values()):
            self._close(sub, "error" if not self.dead.startswith("server shutting") else "abort", self.dead)

    def _intake(self) -> bool:
        if not self._inbox:
            return False
        while self._inbox:
            sub = self._inbox.popleft()
            if sub.done:
                continue
            if self._stops.pop(sub.request_id, None):  # aborted before it reached the scheduler
                self._close(sub, "abort")
                continue
            request = Request(sub.request_id, sub.arrival_at, len(sub.prompt_ids), sub.max_tokens,
                              block_hashes=token_block_hashes(sub.prompt_ids, self.block_size),
                              hash_block_size=self.block_size)
            self.engine.add_request(sub.request_id, sub.prompt_ids, sub.sampling)
            self._engine_prompt_len[sub.request_id] = len(sub.prompt_ids)
            self.sched.on_arrival(request, sub.arrival_at)
            record = self.sched.records[-1]
            if record.rejected_reason is not None:
                self._close(sub, "error", record.rejected_reason)
            self.num_prompt_tokens += len(sub.prompt_ids)
            self.metrics.prompt_tokens.inc(len(sub.prompt_ids))
        return True

    def _poll(self) -> bool:
        done = self.engine.poll(self.now())
        for engine_launch, finished_at in done:
            launch = self._engine_launch.pop(id(engine_launch))
            del self._busy[launch.lane]
            self.sched.on_launch_done(launch, finished_at)
            for rid in dict.fromkeys([*launch.decode_ids, *(c.request_id for c in launch.prefill)]):
                self._deliver(rid)
        return bool(done)

    def _deliver(self, rid: int) -> None:
        sub = self._subs.get(rid)
        if sub is None or sub.done:
            return
        prior, prior_lps = self._prior.get(rid, ([], []))
        full = prior + self.engine.output_tokens(rid)
        new = full[len(sub.output_ids):]
        if new and rid not in self._stops:
            start = len(sub.output_ids)
            stop_at = next((i for i, t in enumerate(new) if t in sub.stop_ids and start + i >= sub.min_tokens), None)
            if stop_at is not None:
                new = new[:stop_at + 1]
                self._stops[rid] = "stop"
            if sub.first_token_at is None:
                sub.first_token_at = self.now()
            if sub.sampling.num_logprobs is not None:
                sub.logprobs.extend((prior_lps + self.engine.output_logprobs(rid))[start:start + len(new)])
            sub.output_ids.extend(new)
            sub.events.put_nowait(new)
        if rid not in self.sched.states and rid not in self._stops:
            self._close(sub, "length")

    def _apply_stops(self) -> bool:
        progressed = False
        for rid, reason in list(self._stops.items()):
            sub = self._subs.get(rid)
            if sub is None or rid not in self._engine_prompt_len:  # not taken in yet: _intake handles it
                if sub is None:
                    del self._stops[rid]
                continue
            if self._remove_from_scheduler(rid, aborted=reason == "abort"):
                del self._stops[rid]
                self._close(sub, reason)
                progressed = True
        return progressed

    def _expire(self) -> bool:
        """Finish as "expired" every request past its queue deadline that has not started its prefill."""
        now, expired = self.now(), False
        for sub in list(self._subs.values()):
            if sub.deadline_at > now or sub.request_id in self._stops:
                continue
            state = self.sched.states.get(sub.request_id)
            queued = state is None or (not state.in_flight and any(
                state in getattr(self.sched, name, ()) for name in ("waiting", "late")))
            if not queued or sub.output_ids:  # started (or preempted after its first token): it is served
                continue
            if sub.request_id in self._engine_prompt_len:
                self._remove_from_scheduler(sub.request_id, aborted=True)
            self._close(sub, "expired", f"not started within its queue deadline of "
                                        f"{sub.deadline_at - sub.arrival_at:.3g} s; server overloaded")
            expired = True
        return expired

    def _remove_from_scheduler(self, rid: int, aborted: bool) -> bool:
        """Take a request out of the scheduler (freeing its KV) if no launch holds it; False: try later."""
        sched = self.sched
        state = sched.states.get(rid)
        if state is None:
            return True
        if state.in_flight or (state.step_clock is not None and sched.decode_in_flight):
            return False
        for name in ("waiting", "late", "prefilling"):
            queue = getattr(sched, name, None)
            if queue is not None and state in queue:
                queue.remove(state)
        sched._finish(state, self.now())  # leaves the decode batch, frees KV, drops it from `ready`
        getattr(sched, "_prefill_est", {}).pop(rid, None)
        if aborted:
            state.record.rejected_reason = ABORTED
        return True

    def _close(self, sub: Submission, reason: str, error: str | None = None) -> None:
        """Finish a submission exactly once: final event, metrics, Engine state freed."""
        if sub.done:
            return
        sub.finish_reason, sub.error = reason, error
        sub.events.put_nowait(None)
        rid = sub.request_id
        self._subs.pop(rid, None)
        self._prior.pop(rid, None)
        if self._engine_prompt_len.pop(rid, None) is not None and rid not in self._busy_ids():
            self.engine.free(rid)
        key = {"length": "finished", "stop": "stopped", "abort": "aborted", "expired": "expired"}.get(reason, "failed")
        self.counts[key] += 1
        self.num_output_tokens += len(sub.output_ids)
        self.metrics.generation_tokens.inc(len(sub.output_ids))
        record = next((r for r in reversed(self.sched.records) if r.request_id == rid), None)
        if record is not None and reason in ("length", "stop"):
            sub.cached_tokens = record.reused_len
            self.metrics.observe_finished(record, self.now())
        self.metrics.on_finish(key)
        if reason != "expired":  # Retry-After comes from the rate of work done, not of refusals
            self._finish_times.append(self.now())
        self._trim_records()

    def _trim_records(self) -> None:
        records = self.sched.records
        if len(records) > 2 * len(self._subs) + 1024:  # finished records are only needed for metrics
            records[:] = [r for r in records if r.finished_at is None or r.request_id in self._subs]

    def _busy_ids(self) -> set[int]:
        return {rid for l in self._busy.values() for rid in (*l.decode_ids, *(c.request_id for c in l.prefill))}

    # ---- launching ------------------------------------------------------------------------------------
    def _schedule(self) -> Sequence[Launch]:
        if not self.sched.has_work():
            return ()
        return self.sched.schedule(self.now(), dict(self._busy))

    async def _start(self, launch: Launch) -> None:
        for chunk in launch.prefill:
            if launch.layer_start == 0:
                self._sync_recompute(chunk.request_id)
            sub = self._subs.get(chunk.request_id)
            if sub is not None and sub.started_at is None:
                sub.started_at = self.now()
                self.metrics.queue.observe(sub.started_at - sub.arrival_at)
        engine_launch = replace(launch, num_sms=self._engine_sms(launch))
        self._busy[launch.lane] = launch
        self._engine_launch[id(engine_launch)] = launch
        self.lane_sms[launch.lane] = launch.num_sms
        now = self.now()
        if self._pool is None:
            self.engine.start(engine_launch, now)
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.engine.start, engine_launch, now)

    def _sync_recompute(self, rid: int) -> None:
        """After a recompute preemption the scheduler prefills prompt + generated tokens: give the Engine
        that longer prompt (it emits the next token when the prefill reaches its prompt length)."""
        state = self.sched.states[rid]
        if self._engine_prompt_len[rid] == state.target_len:
            return
        sub = self._subs[rid]
        prior, prior_lps = self._prior.get(rid, ([], []))
        kept = (prior + self.engine.output_tokens(rid))[:state.num_generated]
        kept_lps = (prior_lps + self.engine.output_logprobs(rid))[:state.num_generated]
        self.engine.free(rid)
        # the Engine counts output from its (longer) prompt: min_tokens counts what was already generated
        sampling = replace(sub.sampling, min_tokens=max(sub.sampling.min_tokens - len(kept), 0))
        self.engine.add_request(rid, sub.prompt_ids + kept, sampling)
        self._prior[rid] = (kept, kept_lps)
        self._engine_prompt_len[rid] = len(sub.prompt_ids) + len(kept)
        assert self._engine_prompt_len[rid] == state.target_len, "recompute length mismatch"

    def _engine_sms(self, launch: Launch) -> int:
        """The Engine's partition nearest the policy's choice: prefill rounds down, decode up (so a pair
        the policy keeps within the GPU stays disjoint on the Engine's menu)."""
        options = self.engine.partitions.sm_options(launch.lane)
        if launch.num_sms in options or not self.engine.partitions.is_partitioned:
            return launch.num_sms
        if launch.lane == "prefill":
            return max((s for s in options if s <= launch.num_sms), default=options[0])
        return min((s for s in options if s >= launch.num_sms), default=options[-1])
