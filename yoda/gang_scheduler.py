"""The Yoda policy: PD multiplexing with adaptive gang scheduling (DESIGN.md 4.2 and 4.4).

At every decision point:
- decode (launched first): the fewest decode SMs whose guarded estimate meets the TBT target; the rest go
  to prefill. No pending prefill: decode gets the whole GPU. No decode: prefill gets the whole GPU.
- prefill runs as layer groups: N_PL = ceil(T_d x N_layers / T_p) layers, enough to cover one decode step,
  so the prefill SMs never idle while decode runs. A backend that can run several decode steps per launch
  and stop launches early (the simulator) may get gangs of up to `gang_steps` decode steps with the
  layers covering them; it cuts them at the next step / layer boundary when a request arrives or a
  prefill completes, so only re-decisions that nothing triggered are spaced out. A finished prefill joins
  the decode batch at the next decode step boundary (query-based merge, never a blocking wait on both lanes).
- a short prefill may preempt a long one at a layer boundary if it would miss its TTFT by waiting and the
  long one still meets its TTFT afterwards; never recursively (`prefill_preemption.py`).
Beyond the paper: prefills are ordered by TTFT slack (`slack_admission.py`; a request more urgent than
every admitted prefill is admitted ahead of them and gets a job of its own), admission is checked against
KV capacity, a small backlog runs inside the decode step (`piggyback.py`), while requests wait for room in the
decode batch or KV decode gets the SMs the admissible prefills can spare (`decode_bound_split`), and when no
partition meets both SLOs the scheduler counts which one it gave up (`counters`).
"""
from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Iterable, Sequence

from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.decode_split import DecodeSplit
from yoda.estimator import Estimator
from yoda.partitions import PartitionMenu
from yoda.piggyback import Piggyback
from yoda.prefill_preemption import PrefillPreemption
from yoda.request import SLO
from yoda.scheduler import PrefillJob, RequestState, SchedulerConfig, SchedulerCore
from yoda.slack_admission import SlackAdmission


@dataclass(frozen=True, slots=True)
class YodaOptions:
    layerwise: bool = True  # ablation: whole prefill in one launch
    query_merge: bool = True  # ablation: blocking sync, both lanes start together
    guard: bool = True  # ablation: trust solo estimates
    adaptive_partition: bool = True  # ablation: one static split
    preemption: bool = True  # ablation: no short-preempts-long
    step_sms: int = 16
    granularity: int = 8
    prefill_tokens: int = 8192  # new tokens per prefill job
    tbt_margin: float = 0.9  # plan decode steps to this share of the TBT target
    keep: str = "tbt"  # SLO kept when both cannot be met: "tbt" (paper) or "ttft"
    # give decode the SMs the prefill queue can spare by its TTFT deadlines (beyond the paper). Off by
    # default: its whole-GPU, no-future-arrivals estimate of prefill's need starves prefill near capacity
    # (goodput 1xH100 8B, seed 0: Mooncake conversation 0.195 vs 0.258 req/s with the paper's fewest-SMs rule)
    ttft_aware_split: bool = False
    # ...but while requests wait for room in the decode batch or KV, which only finishing decodes free
    # (decode-bound), decode gets what the prefill queue can spare (beyond the paper)
    decode_bound_split: bool = True
    ttft_safety: float = 1.5  # plan prefills to finish within 1/ttft_safety of their TTFT slack
    piggyback: bool = True  # run a small prefill backlog inside the decode step (ablation: always split)
    piggyback_tokens: int = 2048  # largest backlog considered small
    # decode steps per gang beside a running prefill, capped by the backend's max_decode_steps (1 on the
    # real executor: the paper's one-iteration gang). More means fewer decisions (a faster simulation);
    # arrivals, completed prefills and (while prefill is pending) finishing requests still cut a gang at its
    # next step / layer boundary. 16 -> 32 changed no goodput cell of the benchmark (21 cells, 2026-11-29) and
    # took Mooncake conversation from 18.6 to 15.5 s; 64 would be 14.4 s with splits re-chosen half as often.
    gang_steps: int = 32


ABLATIONS: dict[str, dict] = {
    "no_layerwise": {"layerwise": False},
    "no_query_merge": {"query_merge": False},
    "no_guard": {"guard": False},
    "static_partition": {"adaptive_partition": False},
    "no_preemption": {"preemption": False},
    "ttft_aware_split": {"ttft_aware_split": True},
    "no_piggyback": {"piggyback": False},
}


class GangScheduler(DecodeSplit, SlackAdmission, Piggyback, PrefillPreemption, SchedulerCore):
    PREEMPT_SCAN = 16  # waiting requests (in slack order) considered for a jump at each layer boundary
    NEED_SCAN = 32  # waiting requests counted when sizing prefill's share against TTFT deadlines
    PIGGYBACK_SCAN = 8  # a longer waiting queue is never a small backlog

    def __init__(self, config: SchedulerConfig, slo: SLO, estimator: Estimator, **options) -> None:
        super().__init__(config, slo)
        self.opts = YodaOptions(**options)
        self.menu = PartitionMenu(config.num_sms, self.opts.granularity, self.opts.step_sms)
        self.est = estimator
        self.est.use_guard = self.opts.guard
        self.job: PrefillJob | None = None
        self.suspended: PrefillJob | None = None  # long job preempted by a short one
        self.late: deque[RequestState] = deque()  # waiting requests that already missed their TTFT
        self.counters: Counter[str] = Counter()
        self._decode_plan: tuple[float, int, int, int] | None = None  # start, prefill new and reused tokens, sms
        self._static_decode_sms = self.menu.splits[len(self.menu.splits) // 2].decode_sms
        self._last_split: tuple[int, int] | None = None
        self._split_sizes = [p.decode_sms for p in self.menu.splits]
        self._split_memo: dict[tuple[int, int, int, int], int | None] = {}
        self._prefill_est: dict[int, tuple[int, float]] = {}
        self._mix_memo: dict[tuple[int, int], int] = {}
        self._chain_sets: dict[int, frozenset[int]] = {}
        self._desired_decode_sms = 0  # what the last decode choice wanted (before any squeeze)
        self._running_job: PrefillJob | None = None  # the job of the prefill-lane launch in flight
        self._run_s_memo: tuple[Launch | None, float] = (None, 0.0)  # (decode launch, _decode_run_s of it)
        if self.opts.gang_steps < 1:
            raise ValueError(f"gang_steps must be >= 1, got {self.opts.gang_steps}")

    @property
    def prefill_groups_cuttable(self) -> bool:
        return self.opts.layerwise

    def arrival_cuts(self, lane: str, busy_lanes: Iterable[str]) -> bool:
        # a decode run beside a running prefill keeps its partition: the new request waits for the prefill
        # lane (whose group is cut at its next layer); a decode run alone on the GPU must make room
        return lane != DECODE or PREFILL not in busy_lanes

    def _gang_steps(self) -> int:
        return max(1, min(self.opts.gang_steps, self.max_decode_steps))

    def _decode_steps_limit(self) -> int:
        return self._gang_steps() if self.prefill_pending() else self.max_decode_steps

    # ---- public estimates (dispatcher) ----------------------------------------------------------------
    def estimate_prefill_s(self, new_tokens: float, reused_tokens: float) -> float:
        return self.est.prefill_s([max(int(new_tokens), 1)], [int(reused_tokens)], self.config.num_sms)

    # ---- decision point -------------------------------------------------------------------------------
    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        if not self.opts.query_merge and busy:
            return []
        self._sweep_late(now)
        launches: list[Launch] = []
        decode = busy.get(DECODE)
        if decode is None:
            batch = self.decode_batch(now)
            mixed = self._piggyback(now, batch) if batch and PREFILL not in busy else None
            if mixed is not None:
                self._note_split([mixed], busy)
                return [mixed]
            if batch:
                prefill_sms = busy[PREFILL].num_sms if PREFILL in busy else 0
                decode = self._launch_decode(batch, prefill_sms, now)
                launches.append(decode)
        if PREFILL not in busy:
            prefill = self._launch_prefill(now, decode)
            if prefill is not None:
                launches.append(prefill)
        self._note_split(launches, busy)
        return launches

    def on_launch_done(self, launch: Launch, now: float) -> None:
        if launch.lane == DECODE and self._decode_plan is not None:
            self._refine_guard(now, launch)
        super().on_launch_done(launch, now)
        if launch.lane == PREFILL and launch.prefill and self._running_job is not None:
            # advance by the layers that ran: a backend may have stopped the group early
            job, self._running_job = self._running_job, None
            job.layers_done = launch.layer_end
            if job.layers_done == self.config.num_layers and self.job is job:
                self.job = None
        if launch.prefill_completes:
            for chunk in launch.prefill:
                self._prefill_est.pop(chunk.request_id, None)
                self._chain_sets.pop(chunk.request_id, None)
        if launch.lane == PREFILL and launch.prefill_completes and self.job is None and self.suspended is not None:
            self.job, self.suspended = self.suspended, None  # resume the preempted long prefill

    # ---- decode -----------------------------------------------------------------------------------
    def prefill_pending(self) -> bool:
        return self._prefill_pending() or bool(self.ready) or any(s.in_flight for s in self.prefilling)

    def _prefill_pending(self) -> bool:
        """Prefill work that SMs given to prefill now would advance: not a waiting request that the decode
        batch cap or free KV keeps out (decode frees its room faster with the whole GPU)."""
        return self.job is not None or self.suspended is not None or any(
            not s.in_flight and s.remaining_prefill > 0 for s in self.prefilling) or (
            bool(self.waiting or self.late) and not self.admission_blocked())

    def departures_end_runs(self) -> bool:
        # while prefill work is pending, a departure changes the split the next gang needs (measured: going on
        # past departures then cost 13% of mini-SWE goodput, 1xH100); while a request waits, even one the
        # batch cap or KV holds back (not pending), the room a departure frees may let it in
        return self.prefill_pending() or bool(self.waiting or self.late)

    def _next_to_admit(self) -> RequestState | None:
        # late requests go when nothing that can still make it waits
        return self.waiting[0] if self.waiting else (self.late[0] if self.late else None)

    def _job_tokens(self) -> tuple[int, int]:
        job = self.job or self.suspended
        if job is None:
            return (self.opts.prefill_tokens, 0) if self.waiting or self.late else (0, 0)
        return job.num_tokens, sum(c.start_len for c in job.chunks)

    def _solo_prefill_s(self, state: RequestState) -> float:
        """Whole-GPU prefill estimate of a request's remaining prompt, cached per request and length."""
        n = max(state.remaining_prefill, 1)
        cached = self._prefill_est.get(state.id)
        if cached is None or cached[0] != n:
            cached = self._prefill_est[state.id] = (n, self.est.prefill_s([n], [state.prefilled_len], self.config.num_sms))
        return cached[1]

    def _launch_decode(self, batch: tuple[int, ...], prefill_busy_sms: int, now: float) -> Launch:
        kv_len = self.decode_kv_len
        sms = self.choose_decode_sms(len(batch), kv_len, prefill_busy_sms, now)
        pn, pr = self._job_tokens() if prefill_busy_sms or self._prefill_pending() else (0, 0)
        self._decode_plan = (now, pn, pr, sms)
        return self.decode_launch(batch, sms)

    def _decode_run_s(self, decode: Launch) -> float:
        """Estimated solo time of a decode launch: each stretch of steps with one batch (a run's batch shrinks
        where requests finish) at its first step's KV. Contexts grow a token a step, so this errs low, and
        the slowdown observed against it errs high (the safe side for the guard)."""
        if self._run_s_memo[0] is decode:  # asked by each prefill group beside it and when it ends
            return self._run_s_memo[1]
        run_s = sum(n * self.est.decode_s(b, kv, decode.num_sms) for n, b, kv in decode.decode_segments())
        self._run_s_memo = (decode, run_s)
        return run_s

    def _refine_guard(self, now: float, launch: Launch) -> None:
        start, pn, pr, sms = self._decode_plan
        self._decode_plan = None
        solo_s = self._decode_run_s(launch)
        if pn > 0 and solo_s > 0:
            batch = len(self.decoding) or 1
            kv = self.decode_kv_len // batch
            cell = self.est.decode_guard.cell(sms, pn, pr, batch, kv)
            before = self.est.decode_guard.factors.get(cell)
            self.est.decode_guard.observe(cell, (now - start) / solo_s)
            if self.est.decode_guard.factors.get(cell) != before:
                self._split_memo.clear()

    # ---- prefill ----------------------------------------------------------------------------------
    def _launch_prefill(self, now: float, decode: Launch | None) -> Launch | None:
        sms = self.config.num_sms
        if decode is not None:  # the SMs decode leaves, in whole groups
            sms = (self.config.num_sms - decode.num_sms) // self.opts.granularity * self.opts.granularity
            # a decode step squeezed by the last prefill group: leave the SMs it asked for free from the
            # next step on, or the split could never grow back
            sms = min(sms, self.menu.usable_sms - self._desired_decode_sms)
            if sms <= 0:
                # NOTE: build no job that cannot launch now: its idle admitted requests could be picked as
                # KV-preemption victims before it runs, and it would then launch chunks with freed KV
                return None
        if self.job is None:
            self.job = self._new_job(now)
            if self.job is None:
                return None
        # at every layer boundary, the first one included: a new chunk of a long prompt is where a short
        # request that just-in-time admission kept waiting can go first
        if self.opts.preemption and self.suspended is None:
            self._maybe_preempt(now, sms)
        layers = self._layers_to_launch(sms, decode)
        start, end = self.job.layers_done, self.job.layers_done + layers
        launch = self.prefill_launch(self.job.chunks, sms, PREFILL, start, end)
        self._running_job = self.job  # layers_done advances when the launch reports what ran
        return launch

    def _layers_to_launch(self, prefill_sms: int, decode: Launch | None) -> int:
        remaining = self.config.num_layers - self.job.layers_done
        if not self.opts.layerwise:
            return remaining
        job = self.job
        if decode is None:
            # prefill alone on the whole GPU still launches in quanta of about one TBT, so a short prefill
            # can preempt at a layer boundary and a new decode batch is not held behind a long prefill
            n = math.ceil(self._gang_steps() * self.slo.tbt_s * self.config.num_layers / max(job.est_s, 1e-9))
            return max(1, min(n, remaining))
        t_p = self.est.prefill_guarded_s([c.num_new for c in job.chunks], [c.start_len for c in job.chunks],
                                         prefill_sms, len(decode.decode_ids), decode.decode_kv_len)
        t_d = self._decode_run_s(decode)
        n_pl = math.ceil(t_d * self.config.num_layers / max(t_p, 1e-9))
        return max(1, min(n_pl, remaining))

    def _deadline(self, state: RequestState) -> float:
        return state.request.arrival_at + self.slo.ttft_target_s(state.request.prompt_len)

    def _new_job(self, now: float, token_budget: int | None = None) -> PrefillJob | None:
        room = self._batch_room()
        # Admit just in time: only when the admitted prefills cannot fill this job. A request admitted
        # early matches the prefix cache as it is now, and would recompute a shared prefix (a document,
        # a previous turn) that a request ahead of it is still computing.
        idle = [s for s in self.prefilling if not s.in_flight]
        budget = (token_budget or self.opts.prefill_tokens) - sum(s.remaining_prefill for s in idle)
        # ...but a request more urgent than every admitted one (a short prompt behind a long one that
        # still has slack) is admitted all the same: it goes first
        ahead_of = min((self._slack_key(s, now) for s in idle), default=None) if budget <= 0 else None
        if room > 0 and (budget > 0 or (ahead_of is not None and self.waiting)):
            self._admit_by_slack(now, room, budget, ahead_of)
        idle = sorted((s for s in self.prefilling if not s.in_flight), key=lambda s: self._slack_key(s, now))
        chunks = self._fill_job(idle, token_budget or self.opts.prefill_tokens, now)
        if not chunks:
            return None
        return self._job(chunks)

    def _fill_job(self, idle: list[RequestState], token_budget: int, now: float) -> list[PrefillChunk]:
        """Chunks in slack order up to `token_budget` new tokens, but no chunk that would make the job end
        after the TTFT deadline of a prompt it completes and that could meet it (a short prompt admitted
        ahead of a long one is not held back by a chunk of the long one)."""
        share = max(self.menu.usable_sms - self._desired_decode_sms, self.opts.step_sms) / self.config.num_sms
        stretch = self.opts.ttft_safety / share  # from whole-GPU estimates to the prefill partition, with margin
        chunks: list[PrefillChunk] = []
        cap = float("inf")  # earliest deadline of a prompt the job completes and can still meet
        for state in idle:
            if token_budget <= 0:
                break
            if state.remaining_prefill <= 0:
                continue
            n = min(state.remaining_prefill, token_budget)
            grown = chunks + [PrefillChunk(state.id, state.prefilled_len, n)]
            end = now + stretch * self.est.prefill_s([c.num_new for c in grown], [c.start_len for c in grown],
                                                     self.config.num_sms)
            if chunks and end > cap:
                break
            chunks, token_budget = grown, token_budget - n
            if n == state.remaining_prefill and end <= self._deadline(state):
                cap = min(cap, self._deadline(state))
        return chunks

    def _job(self, chunks) -> PrefillJob:
        job = PrefillJob(tuple(chunks), [self.states[c.request_id] for c in chunks])
        job.est_s = self.est.prefill_s([c.num_new for c in chunks], [c.start_len for c in chunks], self.config.num_sms)
        return job

    def check_invariants(self) -> None:
        self.kv.check_invariants()
        queued = [s.id for q in (self.waiting, self.late, self.prefilling, self.ready, self.decoding) for s in q]
        assert len(queued) == len(set(queued)) and set(queued) == set(self.states), "queues lost a request"

    def _note_split(self, launches: Sequence[Launch], busy: dict[str, Launch]) -> None:
        lanes = {**busy, **{l.lane: l for l in launches}}
        split = (lanes[PREFILL].num_sms if PREFILL in lanes else 0, lanes[DECODE].num_sms if DECODE in lanes else 0)
        if split != self._last_split and all(split):
            self.counters["partition_switches"] += 1
            self._last_split = split
