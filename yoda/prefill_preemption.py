"""Short-preempts-long at a prefill layer boundary (DESIGN.md 4.4): never recursive, and only when the long
prefill still meets its TTFT (or misses it either way).

A mixin of GangScheduler: it uses the scheduler's queues, estimator, `_deadline`, `_job` and counters.
"""
from __future__ import annotations

import itertools


class PrefillPreemption:
    def _maybe_preempt(self, now: float, sms: int) -> None:
        """Let one short prefill jump ahead of the running long one at this layer boundary: when waiting would
        make it miss its TTFT, jumping lets it meet it, and the long one meets its own TTFT all the same
        (or misses it either way).
        `sms`: the prefill partition both would run on (as _launch_prefill sizes it; more would be optimistic)."""
        job = self.job
        idle = [s for s in self.prefilling if not s.in_flight and s.remaining_prefill > 0 and s not in job.states]
        candidates = [s for s in itertools.chain(idle, itertools.islice(self.waiting, self.PREEMPT_SCAN))
                      if self._deadline(s) >= now]  # one that cannot make it any more has no reason to jump
        if not candidates:
            return
        left_frac = 1 - job.layers_done / self.config.num_layers
        job_left_s = left_frac * self.est.prefill_s([c.num_new for c in job.chunks], [c.start_len for c in job.chunks], sms)
        # the long requests' TTFT comes after their whole remaining prompt, not just this job
        rest_s = sum(self.est.prefill_s([st.target_len - c.end_len], [c.end_len], sms)
                     for c, st in zip(job.chunks, job.states) if st.target_len > c.end_len)
        long_left_s = job_left_s + rest_s
        job_deadline = min(self._deadline(s) for s in job.states)
        # a long job that misses its TTFT anyway loses nothing by a short delay
        long_misses_anyway = now + long_left_s > job_deadline
        for state in candidates:
            short_s = self.est.prefill_s([state.remaining_prefill], [state.prefilled_len], sms)
            if short_s > job_left_s / 2:
                continue  # only a clearly shorter prefill may jump
            misses_if_waits = now + job_left_s + short_s > self._deadline(state)
            meets_if_jumps = now + short_s <= self._deadline(state)
            long_still_ok = long_misses_anyway or now + short_s + long_left_s <= job_deadline
            if not (misses_if_waits and meets_if_jumps and long_still_ok):
                continue
            if not state.admitted:
                if not self.try_admit(state, now):
                    continue
                self.waiting.remove(state)
            self.suspended = job
            chunks = self.prefill_chunks([state], state.remaining_prefill)
            self.job = self._job(chunks)
            self.counters["prefill_preemptions"] += 1
            return
