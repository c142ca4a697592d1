"""One simulated GPU: a prefill lane and a decode lane driven by a policy-core scheduler.

Launch durations come from a latency source (solo time) slowed by a contention model while the other lane
is busy. Lanes share HBM bandwidth, so when a launch starts or ends the other lane's rate changes: each
running launch keeps its remaining solo work and finishes when that work drains at its current rate.
"""
from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import simpy

from sim.contention import ContentionModel
from sim.latency import LatencySource, launch_solo_s
from sim.hardware import GpuSpec
from sim.model_spec import ModelSpec
from yoda.backend import Launch
from yoda.request import Request


@dataclass(slots=True)
class _Running:
    launch: Launch
    remaining_s: float  # solo work left
    rate: float  # solo seconds drained per simulated second (1 / slowdown)
    updated_at: float
    started_at: float
    version: int = 0  # 0: completion not scheduled yet
    step_offsets: list[float] | None = None  # multi-step decode: end of each step after the start


@dataclass(slots=True)
class Timeline:
    """What the GPU did, sampled at every launch: for plots and SM-split reports."""

    at: list[float]
    lane: list[str]
    num_sms: list[int]
    decode_batch: list[int]
    prefill_tokens: list[int]
    queued: list[int]
    duration_s: list[float]


class GpuInstance:
    def __init__(self, env: simpy.Environment, index: int, scheduler, latency: LatencySource,
                 contention: ContentionModel, gpu: GpuSpec, model: ModelSpec, record_timeline: bool = True,
                 check_every: int = 0, max_decode_steps: int = 64) -> None:
        self.env, self.index, self.scheduler = env, index, scheduler
        self.latency, self.contention, self.gpu, self.model = latency, contention, gpu, model
        self.running: dict[str, _Running] = {}
        self._decision_pending = False
        self._version = 0
        self.busy_s = 0.0
        self.check_every = check_every
        self.timeline = Timeline([], [], [], [], [], [], []) if record_timeline else None
        self.on_launch_done: Callable[[Launch, float], None] | None = None
        scheduler.max_decode_steps = max_decode_steps

    # ---- inputs ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self.scheduler.on_arrival(request, self.env.now)
        self.scheduler.records[-1].instance = self.index  # on_arrival appended this request's record
        self.kick()

    def kick(self) -> None:
        """Ask the scheduler for a plan once all events of this instant have been delivered. Something
        happened, so a multi-step decode run stops at its next step boundary."""
        self._cut_decode_run()
        if not self._decision_pending:
            self._decision_pending = True
            self.env.timeout(0).callbacks.append(self._decide)

    # ---- lanes ----------------------------------------------------------------------------------
    def _decide(self, _event) -> None:
        self._decision_pending = False
        busy = {lane: r.launch for lane, r in self.running.items()}
        launches = self.scheduler.schedule(self.env.now, busy)
        if not launches:
            return
        for launch in launches:
            if launch.lane in self.running:
                raise RuntimeError(f"scheduler launched on busy lane {launch.lane}")
            offsets = None
            if launch.num_steps > 1:  # per-step times: the batch's context grows by one token a step
                b, kv, step_s = len(launch.decode_ids), launch.decode_kv_len, self.latency.decode_s
                offsets = list(itertools.accumulate(step_s(b, kv + j * b, launch.num_sms) for j in range(launch.num_steps)))
                solo = offsets[-1]
            else:
                solo = launch_solo_s(self.latency, launch, self.model.num_layers)
            self.running[launch.lane] = _Running(launch, solo, 1.0, self.env.now, self.env.now, step_offsets=offsets)
            self._log(launch, solo)
        used = sum(r.launch.num_sms for r in self.running.values())
        if used > self.gpu.num_sms:
            raise RuntimeError(f"launches use {used} SMs, GPU has {self.gpu.num_sms}")
        self._retime()

    def _retime(self) -> None:
        """Re-derive each running launch's rate from what runs beside it and reschedule its completion."""
        now = self.env.now
        running = self.running
        for lane, run in running.items():
            run.remaining_s -= (now - run.updated_at) * run.rate
            run.updated_at = now
            if len(running) == 1:
                rate = 1.0
            else:
                other = next(r.launch for l, r in running.items() if l != lane)
                rate = 1.0 / self.contention.slowdown(run.launch, other, self.gpu, self.model)
            if run.version == 0 or rate != run.rate:
                run.rate = rate
                self._version += 1
                run.version = self._version
                delay = max(run.remaining_s, 0.0) / rate
                self.env.timeout(delay).callbacks.append(partial(self._done, lane, run.version))

    def _done(self, lane: str, version: int, _event) -> None:
        run = self.running.get(lane)
        if run is None or run.version != version:
            return  # superseded by a re-timing
        del self.running[lane]
        now = self.env.now
        if run.step_offsets is not None:
            run.launch = replace(run.launch, step_ends=tuple(run.started_at + o for o in run.step_offsets))
        self.busy_s += now - run.started_at
        self.scheduler.on_launch_done(run.launch, now)
        if self.on_launch_done is not None:
            self.on_launch_done(run.launch, now)
        if self.running:
            self._retime()
        if self.check_every and self.scheduler.num_steps % self.check_every == 0:
            self.scheduler.check_invariants()
        self.kick()

    def _cut_decode_run(self) -> None:
        """Stop a running multi-step decode at the first step boundary from now on."""
        for lane, run in self.running.items():
            offsets = run.step_offsets
            if offsets is None or len(offsets) == 1:
                continue
            if run.rate != 1.0:  # NOTE: runs are only planned with the other lane idle; offsets assume it
                raise RuntimeError("a multi-step decode ran beside another launch")
            done = bisect.bisect_left(offsets, self.env.now - run.started_at) + 1
            if done >= len(offsets):
                continue
            run.step_offsets = offsets[:done]
            run.launch = replace(run.launch, num_steps=done)
            run.remaining_s = run.started_at + offsets[done - 1] - self.env.now
            run.updated_at = self.env.now
            self._version += 1
            run.version = self._version
            self.env.timeout(max(run.remaining_s, 0.0)).callbacks.append(partial(self._done, lane, run.version))

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
