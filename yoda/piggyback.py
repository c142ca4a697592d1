"""Yoda's piggyback (beyond the paper): a small prefill backlog runs inside the decode step on the whole GPU.

A mixin of GangScheduler: it uses the scheduler's queues, estimator, options and `_new_job`.
"""
from __future__ import annotations

import itertools

from yoda.backend import DECODE, Launch
from yoda.decode_split import KV_BUCKET_MASK


class Piggyback:
    def _piggyback(self, now: float, batch: tuple[int, ...]) -> Launch | None:
        """When the whole prefill backlog is small, run it inside the decode step on the whole GPU: one
        mixed launch reads the weights once, which beats two partitions each reading them. Only if the
        fused step's estimate still meets the TBT target, counting the cached prefix each chunk attends to;
        a larger backlog goes to the prefill partition as usual. (Mixing a chunk of a large backlog when
        that moves prefill faster than the split was tried and measured no better: notes of 2026-11-29.)"""
        if not self.opts.piggyback or self.job is not None or self.suspended is not None or self.late:
            return None
        # only the waiting requests the decode batch has room for can be prefilled now
        admissible = min(len(self.waiting), max(self._batch_room(), 0))
        if admissible > self.PIGGYBACK_SCAN:
            return None
        pending = sum(s.remaining_prefill for s in self.prefilling if not s.in_flight)
        pending += sum(s.target_len for s in itertools.islice(self.waiting, admissible))
        if pending == 0 or pending > self._mix_budget(len(batch), self.decode_kv_len):
            return None
        job = self._new_job(now, token_budget=pending)
        if job is None:
            return None
        new, reused = [c.num_new for c in job.chunks], [c.start_len for c in job.chunks]
        if self.est.mixed_s(new, reused, len(batch), self.decode_kv_len, self.config.num_sms) > \
                self.slo.tbt_s * self.opts.tbt_margin:
            return None  # the budget assumed no cached prefix; these chunks attend to a long one
        return self.prefill_launch(job.chunks, self.config.num_sms, DECODE, batch=batch)

    def _mix_budget(self, batch_size: int, kv_len: int) -> int:
        # memoised per 1K of KV and priced at the most KV of that 1K, as `_fewest_decode_sms` is
        key = (batch_size, kv_len >> 10)
        if key not in self._mix_memo:
            if len(self._mix_memo) > 65536:
                self._mix_memo.clear()
            target, sms = self.slo.tbt_s * self.opts.tbt_margin, self.config.num_sms
            kv_bound = kv_len | KV_BUCKET_MASK
            fits = [t for t in (64, 128, 256, 512, 1024, 2048)
                    if self.est.mixed_s([t], [0], batch_size, kv_bound, sms) <= target]
            self._mix_memo[key] = min(max(fits, default=0), self.opts.piggyback_tokens)
        return self._mix_memo[key]
