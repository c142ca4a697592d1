"""How many SMs Yoda's decode lane gets (DESIGN.md 4.4): the fewest whose guarded estimate meets the TBT
target (the paper's rule), the rest going to prefill; beyond the paper, more when the prefill queue can
spare them by its TTFT deadlines (`ttft_aware_split`), or when requests wait for room that only finishing
decodes free (`decode_bound_split`).

A mixin of GangScheduler: it uses the scheduler's queues, estimator, partition menu, options, counters and
`_prefill_pending` / `_job_tokens` / `_deadline` / `_solo_prefill_s`.
"""
from __future__ import annotations

import itertools
import math

KV_BUCKET_MASK = 1023  # the split and mix memos keep one answer per 1K tokens of decode KV


class DecodeSplit:
    def choose_decode_sms(self, batch_size: int, kv_len: int, prefill_busy_sms: int, now: float = 0.0) -> int:
        """Decode SMs for the next step: the fewest meeting the TBT target (the paper's rule); with
        ttft_aware_split, as many more as the prefill queue can spare while still meeting its TTFT
        deadlines with margin (faster decode steps leave TBT headroom and free KV sooner).
        Whole GPU when no prefill is pending."""
        if not self._prefill_pending() and prefill_busy_sms == 0:
            return self.config.num_sms
        if not self.opts.adaptive_partition:
            return self._static_decode_sms
        pn, pr = self._job_tokens()
        fewest = self._fewest_decode_sms(batch_size, kv_len, pn, pr)
        if fewest is None:
            self.counters["tbt_unmeetable"] += 1
            fewest = self._split_sizes[-1]
        # Decode-bound (requests wait for the batch cap or KV that only finishing decodes free): decode's
        # speed, not just its TBT bound, sets throughput, so it also gets what the prefill queue can spare
        bound = self.opts.decode_bound_split and self._decode_bound()
        aware = self.opts.ttft_aware_split or bound
        prefill_needed = self._prefill_sms_needed(now, admissible_only=bound) if aware else self.menu.usable_sms
        spare = [d for d in self._split_sizes if d >= fewest and self.menu.usable_sms - d >= prefill_needed]
        if spare:
            chosen = max(spare)
        else:
            chosen = fewest
            if self.opts.keep == "ttft":
                fits = [d for d in self._split_sizes if self.menu.usable_sms - d >= prefill_needed]
                chosen = max(fits) if fits else self._split_sizes[0]
                self.counters["tbt_given_up"] += chosen < fewest
            else:
                self.counters["ttft_given_up"] += 1
        self._desired_decode_sms = chosen
        free = self.config.num_sms - prefill_busy_sms
        if chosen > free:
            self.counters["decode_squeezed"] += 1
            chosen = self.menu.largest_decode_within(free) or free
        return chosen

    def _decode_bound(self) -> bool:
        """More requests wait than the decode batch has room for, or KV holds the next one back: only
        finishing decodes let them in."""
        return len(self.waiting) + len(self.late) > self._batch_room() or self.admission_blocked()

    def _prefill_sms_needed(self, now: float, admissible_only: bool = False) -> int:
        """Prefill SMs that finish the queued prefills (in slack order) by their TTFT deadlines with margin,
        assuming prefill speed scales with SMs (it is compute-bound). Requests that already missed their
        deadline do not count: nothing can save them; with `admissible_only`, neither do waiting requests
        the decode batch has no room for."""
        work_s, need = 0.0, 0.0
        queue = ([self.job] if self.job else []) + ([self.suspended] if self.suspended else [])
        for job in queue:
            work_s += job.est_s * (1 - job.layers_done / self.config.num_layers)
            need = max(need, work_s / max(min(self._deadline(s) for s in job.states) - now, 1e-3))
        idle = (s for s in self.prefilling if not s.in_flight)
        scan = self.NEED_SCAN
        if admissible_only:
            scan = min(scan, max(self._batch_room(), 0))
        for state in itertools.chain(idle, itertools.islice(self.waiting, scan)):
            deadline = self._deadline(state)
            if deadline <= now:
                continue
            work_s += self._solo_prefill_s(state)
            need = max(need, work_s / (deadline - now))
        return min(self.menu.usable_sms, math.ceil(need * self.opts.ttft_safety * self.config.num_sms))

    def _fewest_decode_sms(self, batch_size: int, kv_len: int, pn: int, pr: int) -> int | None:
        # memoised on the guard's grid cell and 1K of KV, and priced at the most KV of that 1K (a pure function
        # of the key: the answer does not depend on which step asked first, so multi-step runs decide as
        # single steps do; the bound is the safe side for the TBT target)
        key = (batch_size, kv_len >> 10, pn, pr)
        if key not in self._split_memo:
            if len(self._split_memo) > 65536:
                self._split_memo.clear()
            target, kv_bound = self.slo.tbt_s * self.opts.tbt_margin, kv_len | KV_BUCKET_MASK
            self._split_memo[key] = next((d for d in self._split_sizes
                                          if self.est.decode_guarded_s(batch_size, kv_bound, d, pn, pr) <= target),
                                         None)
        return self._split_memo[key]
