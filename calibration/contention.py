"""The contention grid (CUDA with green contexts): prefill on its partition with decode steps back to back
on the other, for every split of the partition menu. slowdown = time together / time alone, per lane;
calibration/fit.py turns the worst slowdown per cell into the estimator's guard tables (DESIGN.md 4.3).

    cells = list(contention_cells(bench, grid))          # (decode_sms, prefill_sms, pn, pr, batch, context)
    rows = measure_contention(bench, cells[0])           # a decode row and a prefill row for contention.csv
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Iterator

from calibration.bench import Bench, Grid
from executor.runner import SPIN_S
from yoda.backend import PREFILL, Launch

COLUMNS = ("lane", "decode_sms", "prefill_sms", "prefill_new", "prefill_reused", "decode_batch", "decode_context",
           "solo_s", "both_s", "slowdown", "decode_steps")
KEY = ("decode_sms", "prefill_sms", "prefill_new", "prefill_reused", "decode_batch", "decode_context")


def contention_cells(bench: Bench, grid: Grid) -> Iterator[tuple]:
    """(decode_sms, prefill_sms, prefill_new, prefill_reused, decode_batch, decode_context)."""
    for split in bench.menu.splits:
        for pn, b, c in itertools.product(grid.contention_prefill, grid.contention_batch, grid.contention_context):
            if pn <= bench.max_len and c + 1024 <= bench.max_len:
                yield (split.decode_sms, split.prefill_sms, pn, 0, b, c)


def measure_contention(bench: Bench, cell: tuple) -> list[dict]:
    """Prefill on its partition with decode steps back to back on the other: slowdown = together / solo."""
    d_sms, p_sms, pn, pr, b, c = cell
    solo_p = statistics.median(bench.prefill_s(p_sms, pn, pr, 1, runs=2)[0])
    solo_d = statistics.median(bench.decode_s(d_sms, b, c)[0])
    max_steps = min(1000, int(2 * solo_p / max(solo_d, 1e-6)) + 8)
    decode_ids, _ = bench.decode_ready(b, c, max_steps + 1)
    prefill_ids, _ = bench.requests(1, pn + pr, pn + pr, pr)
    try:
        prefill_s, decode_times = _both_lanes(bench, bench.prefill_launch(prefill_ids, pn, pr, p_sms),
                                              decode_ids, b, c, d_sms, max_steps)
    finally:
        bench.release(decode_ids + prefill_ids)
    both_d = statistics.mean(decode_times) if decode_times else solo_d
    common = dict(decode_sms=d_sms, prefill_sms=p_sms, prefill_new=pn, prefill_reused=pr, decode_batch=b,
                  decode_context=c, decode_steps=len(decode_times))
    return [dict(lane="decode", solo_s=solo_d, both_s=both_d, slowdown=both_d / solo_d, **common),
            dict(lane="prefill", solo_s=solo_p, both_s=prefill_s, slowdown=prefill_s / solo_p, **common)]


def _both_lanes(bench: Bench, prefill: Launch, decode_ids: list[int], batch: int, context: int, d_sms: int,
                max_steps: int) -> tuple[float, list[float]]:
    """(prefill seconds, decode step seconds of the steps that ran wholly beside the prefill)."""
    engine, t0 = bench.engine, time.perf_counter()
    engine.start(prefill, 0.0)
    prefill_s: float | None = None
    decode_at: float | None = None  # start of the running decode step
    decode_times: list[float] = []
    step = 0
    while prefill_s is None or decode_at is not None:
        if decode_at is None and prefill_s is None and step < max_steps:
            decode_at = time.perf_counter() - t0
            engine.start(bench.decode_launch(decode_ids, batch * (context + 1 + step), d_sms), decode_at)
            step += 1
        for launch, finished_at in sorted(engine.poll(float("inf")), key=lambda d: d[1]):
            if launch.lane == PREFILL:
                prefill_s = finished_at
            else:
                if prefill_s is None:
                    decode_times.append(finished_at - decode_at)
                decode_at = None
        time.sleep(SPIN_S)
    return prefill_s, decode_times
