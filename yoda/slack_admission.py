"""How the Yoda policy admits waiting requests (DESIGN.md 4.4, beyond the paper): in TTFT-deadline order,
requests that already missed their TTFT last, and a request whose next uncached prefix block is being
computed by an admitted prefill waits for it when its TTFT slack allows, turning a recompute of the shared
prefix (a document, an earlier turn, a system prompt) into a cache hit.

A mixin of GangScheduler: it uses the scheduler's queues (waiting, late, prefilling), KV cache, estimator,
options and `_deadline` / `_solo_prefill_s`.
"""
from __future__ import annotations

import itertools

from yoda.scheduler import RequestState


class SlackAdmission:
    def _slack_key(self, state: RequestState, now: float) -> tuple[bool, float, int]:
        """EDF, except that a prefill that cannot meet its deadline even if started now goes last."""
        deadline = self._deadline(state)
        return (deadline - now < self._solo_prefill_s(state), deadline, state.order)

    def _admit_by_slack(self, now: float, max_requests: int, token_budget: int,
                        ahead_of: tuple | None = None) -> None:
        """Admit in TTFT-deadline order; requests that already missed their TTFT wait in `late` and go
        only when no request that can still make it is waiting. With one TTFT target arrival order is
        deadline order; with length-scaled targets the head of the queue is re-sorted by deadline (a short
        prompt behind long ones has the earlier deadline). Admission stops when `token_budget` is used,
        except for requests whose slack key is below `ahead_of` (the most urgent admitted prefill's): they
        would go first, so they are admitted even when the admitted prompts fill the next job (unless an
        admitted prefill is computing their next prefix blocks: admitted now, they would compute them again)."""
        while self.waiting and self._deadline(self.waiting[0]) < now and self.waiting[0].num_generated == 0:
            self.late.append(self.waiting.popleft())
        if self.slo.ttft_ms_per_token > 0 and len(self.waiting) > 1:
            head = sorted(itertools.islice(self.waiting, self.NEED_SCAN),
                          key=lambda s: (self._deadline(s) < now, self._deadline(s), s.order))
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
