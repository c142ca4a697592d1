"""Progress bars on stderr for long commands (rich), silent with --json or when stderr is not a terminal.

    with progress_bar("simulate", total=len(requests), unit="requests", enabled=not as_json) as update:
        simulate(requests, cfg, progress=update and (lambda sim_s, done: update(done, f"{sim_s:,.0f} simulated s")))

`run_reporting` runs a SimPy environment and reports its progress (simulated seconds, requests finished).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

Update = Callable[[int, str], None]  # (completed, description)


def stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


@contextmanager
def progress_bar(label: str, total: int, unit: str, enabled: bool = True) -> Iterator[Update | None]:
    """A bar `label [====] done/total unit elapsed ETA description` and its updater; None when disabled
    (so callers skip the work of reporting)."""
    if not enabled or total <= 0 or not stderr_is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}", markup=False))
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("", total=total)
        yield lambda completed, description="": bar.update(task, completed=completed, description=description)


def run_reporting(env, count_done: Callable[[], int], report: Callable[[float, int], None],
                  every: int = 2000, min_wall_s: float = 0.2) -> None:
    """`env.run()` that calls `report(simulated seconds, requests done)` at most every `min_wall_s` of wall
    time (checked every `every` events) and once at the end. Same events in the same order as env.run()."""
    from simpy.core import EmptySchedule

    last, num_events, step = time.perf_counter(), 0, env.step
    try:
        while True:
            step()
            num_events += 1
            if num_events % every == 0 and time.perf_counter() - last >= min_wall_s:
                last = time.perf_counter()
                report(env.now, count_done())
    except EmptySchedule:
        pass
    report(env.now, count_done())
