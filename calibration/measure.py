"""Measure solo prefill/decode latencies (and on CUDA the both-lanes contention grid) through the executor's
own Engine, so the numbers include what a served launch pays (metadata, sampling, token copies).

    yoda calibrate --backend executor --model llama3-8b --device cuda --grid coarse --num-layers 8 --out prof/h100
    yoda calibrate --backend executor --model tiny --device cpu --grid coarse --out prof/cpu-tiny

Per partition size of the scheduler's menu (CUDA; the CPU has one lane, measured as the logical 132-SM GPU):
prefill of `batch` requests x `new_len` tokens after `reused_len` cached ones, all layers; decode steps of
`batch` requests at `context_len` tokens each. The grid is measured `reps` rounds over, each round in a new
shuffled order (bursts of load from other processes then spread over many points); every (point, round)
is appended to rounds.csv as measured and a rerun skips those already there (resumable). samples.csv (the
table sim.profile_table reads) holds each point's best round, rewritten after every round.
Times: CUDA events of the engine's launch; on the CPU the runner's clock around start and poll (`--clock
cpu`, the default: this thread's CPU time, see executor/clocks.py). Then fit.json and plots are written.
"""
from __future__ import annotations

import csv
import datetime
import itertools
import json
import platform
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from calibration.bench import DECODE_STEPS, Bench, Grid, grid_for, grid_kv_blocks
from executor.runner import Backend
from sim.profile_table import COLUMNS
from yoda.backend import DECODE, PREFILL
from yoda.estimator import Estimator

EXTRA_COLUMNS = ("context_len", "round", "stream_sms", "kv_shared")


# ---- grids -----------------------------------------------------------------------------------------
def sample_points(bench: Bench, grid: Grid) -> Iterator[tuple]:
    """(phase, sms, new_len, reused_len, batch, context_len) of every point of the grid that fits, for
    every partition size of the scheduler's menu (one size, the whole device, without partitions)."""
    split = bench.backend.partitions.is_partitioned
    for sms in bench.menu.prefill_sizes() if split else [bench.backend.num_sms]:
        for n, r, b in itertools.product(grid.prefill_new, grid.prefill_reused, grid.prefill_batch):
            if n * b <= grid.max_prefill_tokens and n + r <= bench.max_len and bench.fits(b, n + r, r):
                yield ("prefill", sms, n, r, b, 0)
    for sms in bench.menu.decode_sizes() if split else [bench.backend.num_sms]:
        for b, c in itertools.product(grid.decode_batch, grid.decode_context):
            if c + DECODE_STEPS + 2 <= bench.max_len and bench.fits(b, c + DECODE_STEPS + 2, c):
                yield ("decode", sms, 0, 0, b, c)
    whole = bench.backend.num_sms
    for n, b, c in itertools.product(grid.mixed_new, grid.decode_batch[::2], grid.decode_context[::2]):
        if c + DECODE_STEPS + 2 <= bench.max_len and n <= bench.max_len and bench.fits(b + 1, c + DECODE_STEPS + n + 2, c):
            yield ("mixed", whole, n, 0, b, c)


def measure_point(bench: Bench, point: tuple, round_index: int = 0) -> dict:
    """One measurement of a grid point: one prefill launch, or the mean of DECODE_STEPS decode (or fused)
    steps (as a request's TBT is a mean of its gaps)."""
    phase, sms, n, r, b, c = point
    if phase == "prefill":
        times, shared = bench.prefill_s(sms, n, r, b)
        kv_len, stream = 0, bench.backend.stream_sms(PREFILL, sms)
    else:  # decode points have no new tokens; mixed ones prefill a chunk of n in every step
        times, kv_len, shared = bench.decode_s(sms, b, c, prefill_new=n)
        stream = bench.backend.stream_sms(DECODE, sms)
    return dict(phase=phase, num_sms=sms, new_len=n, reused_len=r, batch=b, kv_len=kv_len,
                latency_s=statistics.mean(times), context_len=c, round=round_index, stream_sms=stream,
                kv_shared=int(shared))


def rounds(points: list[tuple], num_rounds: int) -> Iterator[tuple[int, tuple]]:
    """(round, point): every point once per round, in a new seeded order each round, so a burst of load
    from other processes spreads over many points instead of all repetitions of one."""
    for k in range(num_rounds):
        order = list(points)
        random.Random(k).shuffle(order)
        yield from ((k, p) for p in order)


def quick_estimator(backend: Backend, block_size: int = 16, clock: str = "wall") -> Estimator:
    """Fit an estimator from a few-second measurement (the CPU runner's default without --profile)."""
    import pandas as pd

    from calibration.fit import best_of_rounds, to_samples

    grid = grid_for(backend.device.type, "quick")
    cpu = backend.device.type == "cpu"
    bench = Bench(backend, block_size, grid_kv_blocks(grid, block_size) if cpu else None, clock=clock)
    points = list(sample_points(bench, grid))
    rows = [measure_point(bench, p, k) for k, p in rounds(points, grid.reps)]
    samples = to_samples(best_of_rounds(pd.DataFrame(rows)))
    return Estimator.fit(samples).refit_all(samples)


# ---- the sweep: files, resume, progress --------------------------------------------------------------
ROUNDS_FILE = "rounds.csv"
SAMPLE_KEY = ("phase", "num_sms", "new_len", "reused_len", "batch", "context_len", "round")
SAME_SETUP = ("device_type", "device_name", "model", "num_layers", "block_size", "dtype", "clock")


def calibrate(out: str | Path, backend: Backend, grid_name: str = "coarse", block_size: int = 16,
              reps: int | None = None, progress: bool = True, clock: str = "cpu", fit: bool = True) -> dict:
    """Measure the grid into `out` (resuming), then fit (fit.json, plots) unless not `fit`. Returns a
    summary (counts, fit reports, notes)."""
    from calibration.fit import fit_profile

    started = time.perf_counter()
    out = Path(out)
    grid = grid_for(backend.device.type, grid_name)
    reps = reps or grid.reps
    cpu = backend.device.type == "cpu"
    clock = clock if cpu else "wall"
    meta = profile_metadata(backend, grid_name, grid, block_size, reps, clock)
    _check_same_setup(out, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").write_text(json.dumps({**meta, "status": "measuring"}, indent=1, default=str))
    bench = Bench(backend, block_size, grid_kv_blocks(grid, block_size) if cpu else None, clock=clock)
    done = _existing(out / ROUNDS_FILE, SAMPLE_KEY)
    todo = [(k, p) for k, p in rounds(list(sample_points(bench, grid)), reps) if (*p, k) not in done]
    cells, notes = [], []
    if not bench.is_cuda or not backend.partitions.is_partitioned:
        notes.append(f"contention grid skipped: one lane ({backend.partitions.reason})")
    else:
        from calibration import contention
        done = _existing(out / "contention.csv", contention.KEY)
        cells = [c for c in contention.contention_cells(bench, grid) if c not in done]
    with _progress(progress, len(todo) + len(cells)) as advance:
        for i, (k, point) in enumerate(todo):
            _append(out / ROUNDS_FILE, (*COLUMNS, *EXTRA_COLUMNS), [measure_point(bench, point, k)])
            advance(f"round {k + 1}/{reps} {point[0]} {point[1]} SMs")
            if i + 1 == len(todo) or todo[i + 1][0] != k:  # a round ends: refresh the table
                _write_table(out, meta)
        for cell in cells:
            _append(out / "contention.csv", contention.COLUMNS, contention.measure_contention(bench, cell))
            advance(f"contention {cell[0]}+{cell[1]} SMs")
    meta.update(status="complete", measure_wall_s=time.perf_counter() - started, notes=notes)
    samples = _write_table(out, meta)
    reports = fit_profile(out)["reports"] if fit else []
    return {"out": str(out), "measured": len(todo), "contention_measured": len(cells),
            "num_points": len(samples), "num_rounds": int(samples["rounds"].sum()), "notes": notes,
            "fit_reports": reports, "wall_s": time.perf_counter() - started}


def _write_table(out: Path, meta: dict):
    """samples.csv from rounds.csv: each point's best round (validated by write_profile_table)."""
    import pandas as pd

    from calibration.fit import best_of_rounds
    from sim.profile_table import write_profile_table

    samples = best_of_rounds(pd.read_csv(out / ROUNDS_FILE))
    write_profile_table(out, samples, {**meta, "num_points": len(samples), "aggregate": "best (min) of rounds"})
    return samples


def _existing(path: Path, key: tuple[str, ...]) -> set[tuple]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {tuple(row[k] if k in ("phase", "lane") else int(float(row[k])) for k in key)
                for row in csv.DictReader(f)}


def _append(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _check_same_setup(out: Path, meta: dict) -> None:
    path = out / "metadata.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    diff = [k for k in SAME_SETUP if str(_flat(old).get(k)) != str(_flat(meta).get(k))]
    if diff:
        held = ", ".join(f"{k}: {_flat(old).get(k)}" for k in diff)
        raise ValueError(f"{out} holds a profile of another setup ({held}); use another --out")


def _flat(meta: dict) -> dict:
    dev = meta.get("device", {})
    return {**meta, "device_type": dev.get("type"), "device_name": dev.get("name")}


class _progress:
    """A rich progress bar with ETA on stderr (or nothing); `advance(label)` after each point."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar = enabled and total > 0, total, None

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda label: None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.bar.start()
        task = self.bar.add_task("measuring", total=self.total)
        return lambda label: self.bar.update(task, advance=1, description=label)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---- metadata --------------------------------------------------------------------------------------
def profile_metadata(backend: Backend, grid_name: str, grid: Grid, block_size: int, reps: int,
                     clock: str = "wall") -> dict:
    from calibration.device import device_info, versions
    from executor.config import load_config

    model, device = backend.model, device_info(backend)
    full_layers = load_config(backend.model_name).num_hidden_layers
    cuda = backend.device.type == "cuda"
    return {
        "source": "measured", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "device": device, "versions": versions(),
        "model": backend.model_name, "num_layers": model.num_layers, "full_num_layers": full_layers,
        "layer_scale": full_layers / model.num_layers, "model_config": model.config.to_dict(),
        "dtype": str(model.dtype), "block_size": block_size, "grid_name": grid_name,
        "grid": {**asdict(grid), "reps": reps}, "latency_unit": "s",
        "clock": clock,
        "latency_clock": "CUDA events around the engine launch" if cuda else
                         f"{clock} clock around Engine.start + poll (the CPU runs a launch inside start); "
                         "cpu: the engine thread's CPU time, largely immune to other processes' load",
        "menu": {"num_sms": backend.num_sms, "granularity": 8, "step_sms": 16},
        "partitions": backend.partitions.reason or "green contexts",
        "note": (f"CPU measurement on this machine ({device['name']}, {device['cpu_count']} cores, host "
                 f"{platform.node()}): the numbers describe this machine only; rerun yoda calibrate elsewhere"
                 if not cuda else f"measured on {device['name']} (host {platform.node()})"),
    }
