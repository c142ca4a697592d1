"""Multi-step decode runs: how many decode steps one launch may cover, which requests leave the batch on
the way, and the KV blocks reserved for the run up front.

Only backends that run several steps per launch (the simulator, SchedulerCore.max_decode_steps > 1) ask for
them; the real executor launches one step at a time. A run must give the token times of one-step launches
wherever the policy would decide the same at every step boundary, so a run ends where that may not hold.

A mixin of SchedulerCore: it uses the core's decode batch (`decoding`, `step_clock`, the finish and growth
heaps, `_finish_step`, `_push_growth`), its KV cache, config and `waiting` queue.
"""
from __future__ import annotations

import heapq


class MultiStepDecode:
    def _quiet_steps(self, limit: int) -> int:
        """Decode steps (at most `limit`) that can run back to back: no request finishes and no KV block
        is needed before the last one. The backend cuts the run short at a step boundary when something
        arrives."""
        if limit <= 1:
            return 1
        steps = limit
        if self._finish_heap:
            steps = min(steps, self._finish_heap[0][0] - self.step_clock[0])
        return self._fit_growth(max(steps, 1))

    def _fit_growth(self, steps: int) -> int:
        """`steps`, or fewer where a request needs a KV block that cannot be reserved now."""
        if steps > 1 and self._grow_heap and self._grow_heap[0][0] - self.step_clock[0] < steps:
            steps = max(self._reserve_growth(steps), 1)
        return steps

    def departures_end_runs(self) -> bool:
        """Whether a multi-step decode run should end where a request finishes, so this scheduler decides
        again: while a request waits for admission (the room and KV it frees may let it in)."""
        return bool(self.waiting)

    def _decode_run(self, limit: int) -> tuple[int, tuple[tuple[int, int], ...]]:
        """Steps of a decode-only run (at most `limit`) and the requests that finish and leave it on the way
        (Launch.decode_departures): the run goes on past them, and ends early only where a KV block cannot
        be reserved or the batch empties. One-step launches give the same token times (their step time
        depends only on the batch and its KV). Where the policy would decide differently after a departure
        (departures_end_runs), the run ends at the first one instead."""
        if limit <= 1:
            return 1, ()
        if self.departures_end_runs():
            return self._quiet_steps(limit), ()
        clock, heap = self.step_clock[0], self._finish_heap
        end = clock + limit
        # (a scan, not pops: the run may be cut before they finish, and most of the batch may leave in it)
        leaving = sorted(e for e in heap if e[0] < end and e[2] == e[3].epoch and e[3].step_clock is not None)
        steps = limit if len(leaving) < len(self.decoding) else leaving[-1][0] - clock
        steps = self._fit_growth(steps)
        return steps, tuple((last - clock, state.context_len) for last, _, _, state in leaving if last < clock + steps)

    def _reserve_growth(self, steps: int) -> int:
        """Steps a run may take past the KV block boundaries its requests cross: all of them when empty
        blocks cover every crossing (no preemption can be needed and no cached prefix is evicted, so the
        blocks are taken now), else up to the first crossing (where decode_batch grows, preempting or
        evicting as one step would). What a run cut short did not use is given back when it ends
        (`_release_unused_growth`), so every decision sees the KV of single steps."""
        clock, bs, kv, heap = self.step_clock[0], self.config.block_size, self.kv, self._grow_heap
        end = clock + steps
        # each request's KV up to the last token it writes in the run (a request that finishes leaves it);
        # a scan, not pops: where the blocks cannot be reserved the heap stays as it is
        due: dict = {}
        for e in heap:
            state = e[3]
            if e[0] < end and e[2] == state.epoch and state.step_clock is not None:
                # context_len + min(steps, _finish_step - clock) - 1, inlined (this loop is hot)
                request, generated, joined = state.request, state.generated_base, state.join_step
                due[state] = (request.prompt_len + generated + clock - joined
                              + min(steps, joined + request.output_len - generated - clock) - 1)
        tables = kv._tables  # block_table(), inlined
        need = sum(max(0, -(-upto // bs) - len(tables[s.request.request_id])) for s, upto in due.items())
        if need > kv.num_empty_blocks:
            return heap[0][0] - clock
        # NOTE: the heap's pop order depends only on its entries (distinct (step, order, epoch) keys), so
        # rebuilding it without the reserved crossings pops the rest as popping them one by one would
        heap[:] = [e for e in heap if e[0] >= end]
        heapq.heapify(heap)
        ordered = sorted(due, key=lambda s: s.order)  # deterministic block ids
        self._run_growth.extend((s, s.epoch, len(tables[s.request.request_id])) for s in ordered)
        kv.extend_many([(s.request.request_id, due[s]) for s in ordered])
        return steps

    def _release_unused_growth(self) -> None:
        """After a decode run: each request keeps the blocks one-step launches would hold by now (those it
        had, or enough for the tokens written so far) and gives back the rest, then notes its next crossing."""
        bs, kv, clock, heap = self.config.block_size, self.kv, self.step_clock[0], self._grow_heap
        tables = kv._tables  # block_table(), inlined
        for state, epoch, had in self._run_growth:
            if state.epoch != epoch or state.step_clock is None:
                continue  # finished (or preempted) in the run: its blocks are gone
            request, generated, joined = state.request, state.generated_base, state.join_step
            context_len = request.prompt_len + generated + clock - joined
            kv.truncate(request.request_id, max(had, -(-(context_len - 1) // bs)))
            # _push_growth(state), inlined (this loop is hot)
            step = clock + len(tables[request.request_id]) * bs - context_len + 1
            if step < joined + request.output_len - generated:
                heapq.heappush(heap, (step, state.order, epoch, state))
        self._run_growth.clear()
