"""The narrow contract between schedulers (policy core) and backends (simulator, real executor).

A scheduler is a passive state machine: the driver passes `now` in and calls its hooks; it never reads
a clock. The driver loop is the same shape on both backends:

    scheduler.on_arrival(request, now)                  # when a request arrives
    for launch in scheduler.schedule(now, busy):        # at every decision point
        backend starts `launch` on its lane
    scheduler.on_launch_done(launch, now)               # when the backend reports it finished

A GPU has two lanes, `prefill` and `decode`; each runs at most one Launch at a time on `num_sms` SMs
(the SM partition). Launches running together must fit: sum of num_sms <= the GPU's SM count.
A mixed chunked-prefill iteration is one launch on the decode lane carrying both decode requests and
prefill chunks over all layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from yoda.request import Request

PREFILL = "prefill"
DECODE = "decode"
LANES = (PREFILL, DECODE)


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """New prompt tokens [start_len, start_len + num_new) of one request, attending to all before them."""

    request_id: int
    start_len: int  # tokens already in the KV cache (reused prefix + earlier chunks)
    num_new: int

    @property
    def end_len(self) -> int:
        return self.start_len + self.num_new


@dataclass(frozen=True, slots=True)
class Launch:
    """One unit of GPU work on one lane: a decode step, prefill layer groups, or both (mixed)."""

    lane: str
    num_sms: int
    decode_ids: tuple[int, ...] = ()  # each produces one token when the launch ends
    decode_kv_len: int = 0  # total KV tokens attended by the decode batch (sum of context lengths)
    prefill: tuple[PrefillChunk, ...] = ()
    # prefill layers [layer_start, layer_end); a decode step always runs all layers. A backend may stop a
    # prefill-only launch early at a layer boundary when its scheduler allows it (prefill_groups_cuttable)
    # and reports a copy with the layer_end that ran.
    layer_start: int = 0
    layer_end: int = 0
    num_layers: int = 0  # model depth, so a backend knows whether the prefill chunk completes
    # Iterations run back to back (a scheduler asks for more than one only when nothing else is pending
    # and its backend allows it, see SchedulerCore.max_decode_steps). A backend may stop early at a step
    # boundary; it reports what ran by returning a copy with `num_steps` and each step's end time.
    # A multi-step launch with prefill carries one chunk over all layers (chunked prefill continuing one
    # prompt): step j prefills tokens [start_len + j * num_new, start_len + (j + 1) * num_new).
    num_steps: int = 1
    step_ends: tuple[float, ...] = ()
    # A multi-step decode run may go on past the steps where requests finish: (steps it takes part in, its
    # context length at the launch) of each request that leaves the batch before the run ends, by steps.
    decode_departures: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.lane not in LANES:
            raise ValueError(f"unknown lane {self.lane!r}")
        if self.num_sms <= 0:
            raise ValueError("a launch needs at least one SM")
        if self.prefill and not 0 <= self.layer_start < self.layer_end <= self.num_layers:
            raise ValueError(f"bad prefill layer range [{self.layer_start}, {self.layer_end}) of {self.num_layers}")
        if not self.decode_ids and not self.prefill:
            raise ValueError("empty launch")
        if self.num_steps < 1:
            raise ValueError("a launch runs at least one step")
        if self.num_steps > 1 and self.prefill and (len(self.prefill) > 1 or self.layer_start != 0
                                                    or self.layer_end != self.num_layers):
            raise ValueError("a multi-step launch with prefill carries one chunk over all layers")
        if self.decode_departures and (self.prefill or len(self.decode_departures) >= len(self.decode_ids)
                                       or any(not 0 < k < self.num_steps for k, _ in self.decode_departures)):
            raise ValueError("decode departures belong to a multi-step decode run, each before its last step, "
                             "and leave someone in the batch")

    @property
    def prefill_completes(self) -> bool:
        """True when this launch runs the last layer of its prefill chunks (they then emit a token if final)."""
        return bool(self.prefill) and self.layer_end == self.num_layers

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_new for c in self.prefill)

    def decode_segments(self) -> list[tuple[int, int, int]]:
        """(steps, batch size, decode KV at its first step) of each stretch of steps with one batch: a
        multi-step run's batch shrinks where a request leaves it, and every context grows a token a step."""
        batch, kv_at_launch, start = len(self.decode_ids), self.decode_kv_len, 0
        out = []
        for k, context in self.decode_departures:
            if k > start:
                out.append((k - start, batch, kv_at_launch + start * batch))
                start = k
            batch -= 1
            kv_at_launch -= context  # what the staying requests had at the launch
        out.append((self.num_steps - start, batch, kv_at_launch + start * batch))
        return out

    def prefill_end_len(self, chunk: PrefillChunk) -> int:
        """Prompt tokens of `chunk`'s request whose KV exists once this launch has run all its steps."""
        return chunk.end_len + chunk.num_new * (self.num_steps - 1)


class Scheduler(Protocol):
    """Per-GPU scheduling policy. Owns request state, the KV cache manager and request records."""

    def on_arrival(self, request: Request, now: float) -> None:
        """Queue a request. Does not launch anything."""

    def schedule(self, now: float, busy: dict[str, Launch]) -> Sequence[Launch]:
        """Launches to start now on idle lanes (`busy` maps lanes to what runs there). May be empty."""

    def on_launch_done(self, launch: Launch, now: float) -> None:
        """Account a finished launch: tokens produced at `now`, prefills advanced, finished requests freed."""

    def has_work(self) -> bool:
        """True while any request is queued or running."""


class Executor(Protocol):
    """What a backend does with a launch. The simulator predicts a duration; the real engine runs kernels."""

    def start(self, launch: Launch, now: float) -> None:
        """Begin running `launch`; completion is reported later by the backend's event loop."""


@dataclass(slots=True)
class Timeline:
    """What a GPU did, one entry per launch (simulated or real): for plots and SM-split reports."""

    at: list[float]
    lane: list[str]
    num_sms: list[int]
    decode_batch: list[int]
    prefill_tokens: list[int]
    queued: list[int]
    duration_s: list[float]
