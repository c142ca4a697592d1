"""The run clock of the executor's driver (executor/runner.py): seconds since the run started.

    clock = CLOCKS["cpu"]()          # or "wall"
    with clock.device():              # engine calls: the only time the CPU clock counts
        engine.start(launch, clock.now())
    clock.wait_until(next_arrival_at) # wall: sleep; cpu: jump
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class WallClock:
    """Seconds since the run started; waiting for an arrival sleeps."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.device = contextlib.nullcontext  # every second counts

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def wait_until(self, at: float) -> None:
        left = at - self.now()
        if left > 2e-3:
            time.sleep(left - 1e-3)
        while self.now() < at:  # the last millisecond: spin for precise arrival times
            pass


class CpuClock:
    """CPU-only clock for shared machines: the device's busy time, i.e. this thread's CPU time inside the
    engine (`with clock.device():`), plus jumps over idle waits for arrivals. Time other processes take
    from the core does not count (their use of shared caches still does), so timings depend far less on
    the machine's load; host-side planning does not count either, as on a GPU, where it overlaps the
    running kernels. torch must run on this thread (cpu_threads=1)."""

    def __init__(self) -> None:
        self.busy_s, self.idle_s = 0.0, 0.0
        self._since: float | None = None

    def now(self) -> float:
        running = time.thread_time() - self._since if self._since is not None else 0.0
        return self.busy_s + self.idle_s + running

    @contextlib.contextmanager
    def device(self) -> Iterator[None]:
        self._since = time.thread_time()
        try:
            yield
        finally:
            self.busy_s += time.thread_time() - self._since
            self._since = None

    def wait_until(self, at: float) -> None:
        self.idle_s += max(0.0, at - self.now())


CLOCKS = {"wall": WallClock, "cpu": CpuClock}
