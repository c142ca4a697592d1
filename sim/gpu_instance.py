"""One simulated GPU: a prefill lane and a decode lane driven by a policy-core scheduler.

Launch durations come from a latency source (solo time) slowed by a contention model while the other lane
is busy. Lanes share HBM bandwidth, so when a launch starts or ends the other lane's rate changes: each
running launch keeps its remaining solo work and finishes when that work drains at its current rate.

A launch may cover several units (decode steps of a multi-step run, layers of a prefill group). When
something happens that the scheduler must see (an arrival, a prefill completing), such a launch is cut at
its next unit boundary and reported as what actually ran (`num_steps`, `layer_end`), so the scheduler
decides again within one unit of the event.
"""
from __future__ import annotations

import bisect
import itertools
from array import array
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Callable

import simpy

from sim.contention import ContentionModel
from sim.latency import LAYER_GROUP_LAUNCH_S, LatencySource, launch_solo_s
from sim.hardware import GpuSpec
from sim.model_spec import ModelSpec
from yoda.backend import Launch, Timeline
from yoda.request import Request


def _ran(launch: Launch, num_steps: int, layer_end: int, step_ends: tuple[float, ...] = ()) -> Launch:
    """A copy of `launch` reporting what ran (dataclasses.replace is several times slower)."""
    departures = launch.decode_departures
    if departures and departures[-1][0] >= num_steps:  # cut before they left
        departures = tuple(d for d in departures if d[0] < num_steps)
    return Launch(launch.lane, launch.num_sms, decode_ids=launch.decode_ids, decode_kv_len=launch.decode_kv_len,
                  prefill=launch.prefill, layer_start=launch.layer_start, layer_end=layer_end,
                  num_layers=launch.num_layers, num_steps=num_steps, step_ends=step_ends,
                  decode_departures=departures)


@dataclass(slots=True)
class _Running:
    launch: Launch
    remaining_s: float  # solo work left
    rate: float  # solo seconds drained per simulated second (1 / slowdown)
    updated_at: float
    started_at: float
    version: int = 0  # 0: completion not scheduled yet
    total_s: float = 0.0  # solo work of the whole launch (as planned, or as cut)
    # Cut points, in solo work done since the start: the end of each decode step of a multi-step run or
    # of each layer of a prefill group; None for a launch that cannot be cut.
    unit_ends: list[float] | None = None
    # step ends not computed yet: (steps, first step's solo s, growth per step, offset) per stretch of a
    # decode run, turned into unit_ends only as far as a cut or the end needs (most long runs are cut early)
    later: deque | None = None
    # (wall time, solo work done by then, rate from then on): turns step ends into wall times
    segments: list[tuple[float, float, float]] | None = None

    def drained_at(self, now: float) -> float:
        return self.total_s - (self.remaining_s - (now - self.updated_at) * self.rate)

    def ends_at(self, now: float) -> float:
        """When it ends at its rate of now (a rate changes only at a decision, which re-arms the wakeup)."""
        return now + (self.remaining_s - (now - self.updated_at) * self.rate) / self.rate




class GpuInstance:
    def __init__(self, env: simpy.Environment, index: int, scheduler, latency: LatencySource,
                 contention: ContentionModel, gpu: GpuSpec, model: ModelSpec, record_timeline: bool = True,
                 check_every: int = 0, max_decode_steps: int = 64, compact_records: bool = False) -> None:
        self.env, self.index, self.scheduler = env, index, scheduler
        self.latency, self.contention, self.gpu, self.model = latency, contention, gpu, model
        self.running: dict[str, _Running] = {}
        self._decision_pending = False
        self._rates_stale = False  # a lane ended and the other's rate is not re-derived yet
        self._version = 0
        self._wakeup_version = 0  # a wakeup armed (scheduler.wakeup_at) under another version is stale
        self._wakeup_at: float | None = None  # the time of the wakeup armed now
        self.busy_s = 0.0
        self.num_decisions = 0  # times the scheduler was asked for a plan (what a simulation's speed scales with)
        self.check_every = check_every
        self.timeline = Timeline([], [], [], [], [], [], []) if record_timeline else None
        # finished records' token times as arrays of doubles (8 bytes a token, not a float object and a
        # pointer: 32): what lets a million requests fit in a few GB; every COMPACT_EVERY launches
        self.compact_records = compact_records
        self._compacted = 0  # records before this index are finished and compacted
        self.on_launch_done: Callable[[Launch, float], None] | None = None
        scheduler.max_decode_steps = max_decode_steps
        # a scheduler that plans several layers per launch and re-decides at layer boundaries lets the
        # backend stop a group early (SchedulerCore.prefill_groups_cuttable)
        self.cut_prefill_groups = getattr(scheduler, "prefill_groups_cuttable", False)

    # ---- inputs ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self.scheduler.on_arrival(request, self.env.now)
        self.scheduler.records[-1].instance = self.index  # on_arrival appended this request's record
        if self.running:
            busy = tuple(self.running)
            self._cut_runs([lane for lane in busy if self.scheduler.arrival_cuts(lane, busy)])
            if sum(r.launch.num_sms for r in self.running.values()) >= self.gpu.num_sms:
                return  # no SM to launch on before a running launch ends, and its end is a decision point
        self.kick(cut=False)

    def kick(self, cut: bool = True) -> None:
        """Ask the scheduler for a plan once all events of this instant have been delivered. With `cut`,
        something happened that the scheduler must react to, so multi-unit launches stop at their next
        unit boundary."""
        if cut:
            self._cut_runs(tuple(self.running))
        if not self._decision_pending:
            self._decision_pending = True
            self.env.timeout(0).callbacks.append(self._decide)

    # ---- lanes ----------------------------------------------------------------------------------
    def _decide(self, _event) -> None:
        self._decision_pending = False
        self.num_decisions += 1
        busy = {lane: r.launch for lane, r in self.running.items()}
        launches = self.scheduler.schedule(self.env.now, busy)
        if not launches:
            if self._rates_stale:
                self._retime()
            self._arm_wakeup()
            return
        for launch in launches:
            if launch.lane in self.running:
                raise RuntimeError(f"scheduler launched on busy lane {launch.lane}")
            ends, segments = None, None
            later = None
            if launch.num_steps > 1:
                ends, later, solo = self._step_ends_solo(launch)
                segments = [(self.env.now, 0.0, 1.0)]
            else:
                solo = launch_solo_s(self.latency, launch, self.model.num_layers)
                layers = launch.layer_end - launch.layer_start
                if layers > 1 and not launch.decode_ids and self.cut_prefill_groups:
                    # layer ends LAYER_GROUP_LAUNCH_S + per_layer * (i + 1), built only if a cut needs them
                    ends, later = [], deque(((layers, (solo - LAYER_GROUP_LAUNCH_S) / layers, 0.0,
                                              LAYER_GROUP_LAUNCH_S),))
            self.running[launch.lane] = _Running(launch, solo, 1.0, self.env.now, self.env.now, total_s=solo,
                                                 unit_ends=ends, segments=segments, later=later)
            self._log(launch, solo)
        used = sum(r.launch.num_sms for r in self.running.values())
        if used > self.gpu.num_sms:
            raise RuntimeError(f"launches use {used} SMs, GPU has {self.gpu.num_sms}")
        self._retime()
        self._arm_wakeup()

    def _arm_wakeup(self) -> None:
        """While a multi-step launch runs, stop it at the first step boundary after the time the scheduler
        may decide differently by itself (a TTFT deadline passing): one-step launches would have asked it
        then. One wakeup at a time: each decision re-arms it (none when the runs end before it)."""
        now = self.env.now
        ends = [r.ends_at(now) for r in self.running.values() if r.launch.num_steps > 1]
        at = self.scheduler.wakeup_at(now) if ends else None
        if at is not None and at >= max(ends):
            at = None
        if at == self._wakeup_at:
            return  # the armed one stands (or none is needed)
        self._wakeup_version += 1
        self._wakeup_at = at
        if at is not None:
            self.env.timeout(max(at - now, 0.0)).callbacks.append(partial(self._wake, self._wakeup_version))

    def _wake(self, version: int, _event) -> None:
        if version == self._wakeup_version:
            self._wakeup_at = None
            self._cut_runs([lane for lane, r in self.running.items() if r.launch.num_steps > 1])

    def _step_ends_solo(self, launch: Launch) -> tuple[list[float], deque | None, float]:
        """Cumulative solo time at each step end of a multi-step launch (some of them: see _Running.later)
        and the launch's whole solo time. A decode batch's context grows by one token a step (and shrinks
        where a request leaves the run); a prefill chunk moves one chunk further into its prompt."""
        if launch.prefill:
            ends = self._progression(self._step_solo_s(launch), launch.num_steps)
            return ends, None, ends[-1]
        source, sms = self.latency, launch.num_sms
        if not getattr(source, "decode_linear_in_kv", False):
            ends, offset = [], 0.0
            for n, b, kv in launch.decode_segments():
                ends += self._progression(lambda j: source.decode_s(b, kv + j * b, sms), n, offset)
                offset = ends[-1]
            return ends, None, ends[-1]
        # linear in KV: each stretch is an arithmetic progression, its last end computed as the list would
        later, offset = deque(), 0.0
        for n, b, kv in launch.decode_segments():
            first = source.decode_s(b, kv, sms)
            slope = (source.decode_s(b, kv + (n - 1) * b, sms) - first) / (n - 1) if n > 1 else 0.0
            later.append((n, first, slope, offset))
            offset = offset + n * first + slope * (n - 1) * n / 2  # _arithmetic_ends(...)[-1], not built
        ends: list[float] = []
        self._compute_ends(ends, later, upto=0.0)  # the first stretch
        return ends, later, offset

    @staticmethod
    def _compute_ends(ends: list[float], later: deque, upto: float | None) -> None:
        """Append the step ends of the stretches in `later` until one reaches `upto` (solo seconds; None: all)."""
        while later and (upto is None or not ends or ends[-1] < upto):
            ends += GpuInstance._arithmetic_ends(*later.popleft())

    @staticmethod
    def _arithmetic_ends(n: int, first: float, slope: float, offset: float) -> list[float]:
        """`offset` plus the cumulative times of n steps whose time starts at `first` and grows by `slope`."""
        return [offset + (j + 1) * first + slope * j * (j + 1) / 2 for j in range(n)]

    @staticmethod
    def _progression(step_s: Callable[[int], float], n: int, offset: float = 0.0) -> list[float]:
        """`offset` plus the cumulative times of steps 0..n-1. Step time is linear in the step within a
        regime of the latency source: when the middle step lies on the line through the first and last,
        the steps are that arithmetic progression (3 latency calls instead of one per step), otherwise
        each step is asked for."""
        first = step_s(0)
        if n == 1:
            return [offset + first]
        last = step_s(n - 1)
        mid = (n - 1) // 2
        slope = (last - first) / (n - 1)
        if abs(step_s(mid) - (first + slope * mid)) <= 1e-9 * last:
            return GpuInstance._arithmetic_ends(n, first, slope, offset)
        return list(itertools.accumulate((step_s(j) for j in range(n)), initial=offset))[1:]

    def _step_solo_s(self, launch: Launch) -> Callable[[int], float]:
        """Solo time of step j of a multi-step launch with prefill: that step as a one-step launch (what
        launch_solo_s gives for it, asked of the latency source directly: no Launch built per step)."""
        b, kv, sms, source = len(launch.decode_ids), launch.decode_kv_len, launch.num_sms, self.latency
        (chunk,) = launch.prefill
        n, start = chunk.num_new, chunk.start_len
        if b:
            chunk_step_s = getattr(source, "chunk_step_s", None)  # a source's faster form of the same times
            if chunk_step_s is not None:
                return chunk_step_s(n, start, b, kv, sms)
            return lambda j: source.mixed_s([n], [start + j * n], b, kv + j * b, sms)
        fraction = launch.layer_end / (launch.num_layers or self.model.num_layers)  # layers [0, end) of each
        return lambda j: source.prefill_s([n], [start + j * n], sms) * fraction + LAYER_GROUP_LAUNCH_S

    def _retime(self) -> None:
        """Re-derive each running launch's rate from what runs beside it and reschedule its completion."""
        self._rates_stale = False
        now = self.env.now
        running = self.running
        if len(running) == 2:
            (lane_a, run_a), (lane_b, run_b) = running.items()
            slow_a, slow_b = self.contention.slowdowns(run_a.launch, run_b.launch, self.gpu, self.model)
            rates = ((lane_a, run_a, 1.0 / slow_a), (lane_b, run_b, 1.0 / slow_b))
        else:
            rates = [(lane, run, 1.0) for lane, run in running.items()]
        for lane, run, rate in rates:
            run.remaining_s -= (now - run.updated_at) * run.rate
            run.updated_at = now
            if run.version == 0 or rate != run.rate:
                if run.segments is not None and rate != run.rate:
                    run.segments.append((now, run.total_s - run.remaining_s, rate))
                run.rate = rate
                self._schedule_done(lane, run, max(run.remaining_s, 0.0) / rate)

    def _done(self, lane: str, version: int, _event) -> None:
        run = self.running.get(lane)
        if run is None or run.version != version:
            return  # superseded by a re-timing
        del self.running[lane]
        now = self.env.now
        if run.segments is not None:
            if run.later:
                self._compute_ends(run.unit_ends, run.later, None)
            launch = run.launch
            run.launch = _ran(launch, launch.num_steps, launch.layer_end, self._step_ends(run, now))
        self.busy_s += now - run.started_at
        self.scheduler.on_launch_done(run.launch, now)
        if self.on_launch_done is not None:
            self.on_launch_done(run.launch, now)
        # the other lane now runs alone until the decision this instant (kicked below) starts what comes
        # next: its rate is re-derived there, once, rather than here and again there
        self._rates_stale = bool(self.running)
        if self.check_every and self.scheduler.num_steps % self.check_every == 0:
            self.scheduler.check_invariants()
        if self.compact_records and self.scheduler.num_steps % self.COMPACT_EVERY == 0:
            self.compact_finished_records()
        # a finished prefill joins the decode batch at the next step boundary: cut the decode run there
        self.kick(cut=run.launch.prefill_completes and self.scheduler.completion_cuts())

    COMPACT_EVERY = 4096

    def compact_finished_records(self) -> None:
        """Store the token times of records finished since the last call as arrays (same values)."""
        records, k = self.scheduler.records, self._compacted
        for record in records[k:]:
            if record.finished_at is not None and type(record.token_at) is list:
                record.token_at = array("d", record.token_at)
        while k < len(records) and records[k].finished_at is not None:
            k += 1
        self._compacted = k

    @staticmethod
    def _step_ends(run: _Running, now: float) -> tuple[float, ...]:
        """Wall time of each step end of a multi-step launch, from the rate segments it ran through."""
        done, segments = run.unit_ends[:-1], run.segments
        if len(segments) == 1:
            at, drained, rate = segments[0]
            return (*[at + (d - drained) / rate for d in done], now)
        ends, lo = [], 0
        for k, (at, drained, rate) in enumerate(segments):
            hi = bisect.bisect_left(done, segments[k + 1][1], lo) if k + 1 < len(segments) else len(done)
            ends += [at + (d - drained) / rate for d in done[lo:hi]]
            lo = hi
        ends.append(now)
        return tuple(ends)

    def _cut_runs(self, lanes) -> None:
        """Stop the multi-unit launches on `lanes` at their first unit boundary from now on."""
        now = self.env.now
        for lane in lanes:
            run = self.running[lane]
            ends = run.unit_ends
            if ends is None or (len(ends) == 1 and not run.later):
                continue
            drained = run.drained_at(now)
            if run.later:
                self._compute_ends(ends, run.later, drained)
            done = bisect.bisect_left(ends, drained) + 1
            if done >= len(ends) and not run.later:
                continue
            del ends[done:]
            run.later = None
            launch = run.launch
            if launch.num_steps > 1:
                run.launch = _ran(launch, done, launch.layer_end)
            else:
                run.launch = _ran(launch, 1, launch.layer_start + done)
            run.total_s = ends[-1]
            run.remaining_s = max(ends[-1] - drained, 0.0)
            run.updated_at = now
            self._schedule_done(lane, run, run.remaining_s / run.rate)

    def _schedule_done(self, lane: str, run: _Running, delay: float) -> None:
        """(Re)schedule a launch's completion; earlier scheduled completions become stale."""
        self._version += 1
        run.version = self._version
        self.env.timeout(delay).callbacks.append(partial(self._done, lane, run.version))

    def _log(self, launch: Launch, solo_s: float) -> None:
        tl = self.timeline
        if tl is None:
            return
        tl.at.append(self.env.now)
        tl.lane.append(launch.lane)
        tl.num_sms.append(launch.num_sms)
        tl.decode_batch.append(len(launch.decode_ids))
        tl.prefill_tokens.append(launch.num_prefill_tokens if launch.layer_start == 0 else 0)
        tl.queued.append(len(self.scheduler.waiting))
        tl.duration_s.append(solo_s)
