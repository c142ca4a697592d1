"""How the Yoda policy admits waiting requests (DESIGN.md 4.4, beyond the paper): in TTFT-deadline order,
requests that already missed their TTFT last, and a request whose next uncached prefix block is being
computed by an admitted prefill waits for it when its TTFT slack allows, turning a recompute of the shared
prefix (a document, an earlier turn, a system prompt) into a cache hit.

`SlackAdmission` is a mixin of GangScheduler: it uses the scheduler's queues (waiting, late, prefilling), KV
cache, estimator, options and `_deadline` / `_solo_prefill_s`. `DeadlineAdmission` is the same admission
order as a layer any baseline can run instead of FCFS (`admission="deadline"`), so a table can tell what the
order buys apart from what PD multiplexing buys.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Iterable

from yoda.scheduler import RequestState, SchedulerCore

ADMISSIONS = ("fcfs", "deadline")


def sweep_late(waiting: deque, late: deque, deadline, now: float) -> None:
    """Move requests that missed their TTFT (before their first token) from the head of `waiting` to `late`."""
    while waiting and deadline(waiting[0]) < now and waiting[0].num_generated == 0:
        late.append(waiting.popleft())


def next_late_at(waiting: deque, deadline) -> float | None:
    """When time alone next changes the queue's order: the head's deadline sends it to `late` (the order
    changes between decisions only at the tail, by arrivals). None: never by time alone."""
    if not waiting or waiting[0].num_generated:
        return None
    return deadline(waiting[0])


def edf_key(deadline: float, now: float, order: int) -> tuple[bool, float, int]:
    """TTFT-deadline order (EDF), requests whose deadline has already passed last, then arrival order."""
    return (deadline < now, deadline, order)


class SlackAdmission:
    # "fcfs" (set by the policy factory, `yoda.policies`): Yoda's PD multiplexing with arrival-order
    # admission, as the baselines ship, so a table can separate what each part buys
    admission = "deadline"

    def _slack_key(self, state: RequestState, now: float) -> tuple[bool, float, int]:
        """EDF, except that a prefill that cannot meet its deadline even if started now goes last."""
        if self.admission == "fcfs":
            return (False, float(state.order), state.order)
        deadline = self._deadline(state)
        return (deadline - now < self._solo_prefill_s(state), deadline, state.order)

    def _sweep_late(self, now: float) -> None:
        """Move the waiting requests that already missed their TTFT to `late` (deadline order: from the head).
        Called at every decision point, not only when admitting: what a decision sees then depends on the
        time alone, not on how many decisions came before (a multi-step decode run decides as single steps)."""
        if self.admission != "fcfs":
            sweep_late(self.waiting, self.late, self._deadline, now)

    def wakeup_at(self, now: float) -> float | None:
        return None if self.admission == "fcfs" else next_late_at(self.waiting, self._deadline)

    def _admit_by_slack(self, now: float, max_requests: int, token_budget: int,
                        ahead_of: tuple | None = None) -> None:
        """Admit in TTFT-deadline order; requests that already missed their TTFT wait in `late` and go
        only when no request that can still make it is waiting. With one TTFT target arrival order is
        deadline order; with length-scaled targets the head of the queue is re-sorted by deadline (a short
        prompt behind long ones has the earlier deadline). Admission stops when `token_budget` is used,
        except for requests whose slack key is below `ahead_of` (the most urgent admitted prefill's): they
        would go first, so they are admitted even when the admitted prompts fill the next job (unless an
        admitted prefill is computing their next prefix blocks: admitted now, they would compute them again)."""
        edf = self.admission != "fcfs"
        self._sweep_late(now)
        if edf and self.slo.ttft_ms_per_token > 0 and len(self.waiting) > 1:
            head = sorted(itertools.islice(self.waiting, self.NEED_SCAN),
                          key=lambda s: edf_key(self._deadline(s), now, s.order))
            for _ in range(len(head)):
                self.waiting.popleft()
            self.waiting.extendleft(reversed(head))
        if self.waiting:
            # one at a time: a request admitted in this round starts computing its prefix, so a later one
            # sharing that prefix waits for it rather than computing it a second time
            while max_requests > 0 and self.waiting:
                deferred = self._defer_shared_prefixes(now)
                go = self.waiting and (token_budget > 0 or (
                    ahead_of is not None and self._slack_key(self.waiting[0], now) < ahead_of
                    and not self._shares_a_prefix_being_computed(self.waiting[0])))
                admitted = self.admit_waiting(now, token_budget, 1) if go else []
                self.waiting.extendleft(reversed(deferred))
                if not admitted:
                    break
                token_budget -= admitted[0].remaining_prefill
                max_requests -= 1
        elif self.late:
            self.waiting, self.late = self.late, self.waiting
            self.admit_waiting(now, token_budget, max_requests)
            self.waiting, self.late = self.late, self.waiting

    def _defer_shared_prefixes(self, now: float) -> list[RequestState]:
        """Take out of the queue head the requests whose next uncached prefix block is being computed by
        an admitted prefill, when they can afford to wait for it: waiting turns a recompute of the shared
        prefix (a document, an earlier turn, a system prompt) into a cache hit. Returned in queue order,
        to be put back."""
        computing, keys = self._prefixes_being_computed()
        if not computing:
            return []
        deferred = []
        wait_s = None  # the same for every candidate: computed once, when the first one needs it
        for state in list(itertools.islice(self.waiting, self.NEED_SCAN)):
            hit = self._next_block_being_computed(state, keys)
            if hit is not None:
                if wait_s is None:
                    wait_s = self._next_round_wait_s()
                if self._can_wait_for_prefix(state, hit, computing, wait_s, now):
                    deferred.append(state)
        for state in deferred:
            self.waiting.remove(state)
        self.counters["prefix_deferrals"] += len(deferred)
        return deferred

    def _prefixes_being_computed(self) -> tuple[list[RequestState], set[int]]:
        """The admitted prefills still computing prompt blocks, and the block keys of their prompts."""
        computing = [s for s in self.prefilling if s.remaining_prefill > 0 and s.chain]
        return computing, set().union(*(self._chain_set(s) for s in computing))

    def _next_block_being_computed(self, state: RequestState, keys: set[int]) -> int | None:
        """Cached blocks of `state`'s prompt when its next block is among `keys`, else None."""
        hit = self.kv.match_prefix(state.chain)
        return hit if hit < len(state.chain) and state.chain[hit] in keys else None

    def _shares_a_prefix_being_computed(self, state: RequestState) -> bool:
        return self._next_block_being_computed(state, self._prefixes_being_computed()[1]) is not None

    def _next_round_wait_s(self) -> float:
        """Solo-GPU seconds until the next admission round: the job being built (up to prefill_tokens of
        admitted prompts, or the admitted prompts' rest) plus what the running jobs still have to do."""
        queued_s = sum(self._solo_prefill_s(o) for o in self.prefilling if not o.in_flight)
        queued_s = max(queued_s, self.est.prefill_s([self.opts.prefill_tokens], [0], self.config.num_sms))
        for job in (self.job, self.suspended):
            if job is not None:
                queued_s += job.est_s * (1 - job.layers_done / self.config.num_layers)
        return queued_s

    def _can_wait_for_prefix(self, state: RequestState, hit: int, computing: list[RequestState], wait_s: float,
                             now: float) -> bool:
        """Whether `state` still meets its TTFT (with the safety margin) if it waits `wait_s` (solo-GPU
        seconds, see _next_round_wait_s) for the prefill that computes its next prefix blocks and then
        prefills only what that prefill does not give it."""
        chain = state.chain
        producer = next(p for p in computing if chain[hit] in self._chain_set(p))
        keys, shared = self._chain_set(producer), hit
        while shared < len(chain) and chain[shared] in keys:
            shared += 1
        reused = shared * self.config.block_size
        own_s = self.est.prefill_s([max(state.target_len - reused, 1)], [reused], self.config.num_sms)
        # the prefill partition is what decode leaves (as the last decode choice wanted it)
        share = max(self.menu.usable_sms - self._desired_decode_sms, self.opts.step_sms) / self.config.num_sms
        return now + (wait_s + own_s) / share * self.opts.ttft_safety <= self._deadline(state)

    def _chain_set(self, state: RequestState) -> frozenset[int]:
        found = self._chain_sets.get(state.id)
        if found is None:
            found = self._chain_sets[state.id] = frozenset(state.chain)
        return found


class DeadlineAdmission(SchedulerCore):
    """A `SchedulerCore` whose admission is a layer (the baselines subclass it): with
    `admission="fcfs"` (as the real systems ship) nothing changes; with "deadline" waiting requests are
    admitted, and admitted prefills get their chunks, in Yoda's TTFT-deadline order (`edf_key`): requests
    that already missed their TTFT wait in `late` and go only when nothing that can still make it waits,
    and a waiting request more urgent than every admitted, idle prefill is admitted ahead of them even when
    they fill the iteration's budget (`admit_urgent`). Unlike Yoda it has no latency estimator, so it does
    not hold back a prompt that can no longer meet its TTFT before that deadline has passed."""

    SCAN = 32  # waiting requests re-sorted by deadline at each admission (Yoda's NEED_SCAN)
    admission = "fcfs"
    late: deque[RequestState]

    def _init_admission(self, admission: str) -> None:
        if admission not in ADMISSIONS:
            raise ValueError(f"admission must be one of {', '.join(ADMISSIONS)}, got {admission!r}")
        self.admission = admission
        self.late = deque()

    def deadline_of(self, state: RequestState) -> float:
        return state.request.arrival_at + self.slo.ttft_target_s(state.request.prompt_len)

    def wakeup_at(self, now: float) -> float | None:
        return None if self.admission == "fcfs" else next_late_at(self.waiting, self.deadline_of)

    def prefill_order(self, states: Iterable[RequestState], now: float) -> list[RequestState]:
        """Admitted prefills in the order they get prefill chunks: as given (FCFS), or by deadline."""
        if self.admission == "fcfs":
            return list(states)
        return sorted(states, key=lambda s: edf_key(self.deadline_of(s), now, s.order))

    def _order_waiting(self, now: float) -> None:
        """Move requests that missed their TTFT (before their first token) to `late`; sort the head."""
        waiting = self.waiting
        sweep_late(waiting, self.late, self.deadline_of, now)
        if len(waiting) > 1:
            head = sorted((waiting.popleft() for _ in range(min(self.SCAN, len(waiting)))),
                          key=lambda s: edf_key(self.deadline_of(s), now, s.order))
            waiting.extendleft(reversed(head))

    def admit_waiting(self, now: float, token_budget: int, max_requests: int = 1 << 30) -> list[RequestState]:
        if self.admission == "fcfs":
            return super().admit_waiting(now, token_budget, max_requests)
        self._order_waiting(now)
        if self.waiting:
            return super().admit_waiting(now, token_budget, max_requests)
        self.waiting, self.late = self.late, self.waiting
        try:
            return super().admit_waiting(now, token_budget, max_requests)
        finally:
            self.waiting, self.late = self.late, self.waiting

    def admit_urgent(self, now: float) -> list[RequestState]:
        """Deadline admission only: admit waiting requests more urgent than every admitted, idle prefill
        (they will get their chunks first), whatever budget those prefills take. Returns them."""
        if self.admission == "fcfs":
            return []
        idle = [s for s in self.prefilling if not s.in_flight and s.remaining_prefill > 0]
        if not idle:
            return []
        ahead_of = min(edf_key(self.deadline_of(s), now, s.order) for s in idle)
        self._order_waiting(now)
        admitted: list[RequestState] = []
        while (self.waiting and edf_key(self.deadline_of(self.waiting[0]), now, self.waiting[0].order) < ahead_of
               and self._batch_room() > 0):
            got = super().admit_waiting(now, 1, 1)
            if not got:
                break
            admitted += got
        return admitted

    # the late queue is one more place a live request can be
    def prefill_pending(self) -> bool:
        return super().prefill_pending() or bool(self.late)

    def _next_to_admit(self) -> RequestState | None:
        return self.waiting[0] if self.waiting else (self.late[0] if self.late else None)

    def check_invariants(self) -> None:
        if not self.late:
            return super().check_invariants()
        self.waiting.extend(self.late)  # checked as one queue, then split again
        try:
            super().check_invariants()
        finally:
            for _ in range(len(self.late)):
                self.waiting.pop()
