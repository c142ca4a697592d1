"""Grids of simulations: policies x traces x rates (or x TBT SLOs for goodput), fanned out over processes.

    from sim.sweep import config_to_dict, make_cells, run_cells
    cells = make_cells(["yoda", "chunked"], ["traces/data/mooncake_sample.jsonl"], [0.5, 1.0], [50.0],
                       config_to_dict(SimConfig()), {"max_requests": 200})
    rows = run_cells(cells, workers=4)          # or ray_address="auto"

A cell is a plain dict (picklable, JSON-able): `workload` (load_workload keywords), `config` (SimConfig
fields, `slo` as a dict) and either `rate_rps` or `goodput` (search_goodput settings). `run_cell` turns
one into a result row and never raises: a failure becomes the row's `error`.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import Callable, Sequence

from yoda.request import SLO

ROW_METRICS = (
    "num_requests", "completed", "rejected", "request_throughput", "output_throughput", "mean_ttft_ms",
    "p99_ttft_ms", "mean_tbt_ms", "p99_tbt_ms", "p99_tpot_ms", "p99_e2el_ms", "slo_ttft_ratio_at_percentile",
    "slo_tbt_at_percentile_ms", "slo_attainment", "fleet_slo_met", "kv_reuse_fraction", "num_preemptions",
)


class SweepError(ValueError):
    """Bad sweep setup (message fit for `error: <message>`)."""


def config_to_dict(cfg) -> dict:
    return asdict(cfg)


def config_from_dict(fields: dict):
    from sim.run import SimConfig

    return SimConfig(**{**fields, "slo": SLO(**fields["slo"]), "policy_options": dict(fields["policy_options"])})


def make_cells(policies: Sequence[str], traces: Sequence[str], rates: Sequence[float] | None,
               slo_tbt_ms: Sequence[float], base_config: dict, workload: dict,
               goodput: dict | None = None) -> list[dict]:
    """Every (policy, trace, SLO, rate) combination; with `goodput` settings the rate is searched instead."""
    cells = []
    for trace in traces:
        for policy in policies:
            for tbt_ms in slo_tbt_ms:
                config = {**base_config, "policy": policy, "slo": {**base_config["slo"], "tbt_ms": tbt_ms}}
                for rate in (rates if goodput is None else [None]):
                    cells.append({"workload": {**workload, "trace": trace}, "config": config, "rate_rps": rate,
                                  "goodput": goodput})
    return cells


def run_cell(cell: dict) -> dict:
    """Simulate one cell (or search its goodput) and return a flat result row."""
    import time

    started = time.perf_counter()
    row = {"policy": cell["config"]["policy"], "trace": cell["workload"]["trace"], "rate_rps": cell["rate_rps"],
           "slo_ttft_ms": cell["config"]["slo"]["ttft_ms"], "slo_tbt_ms": cell["config"]["slo"]["tbt_ms"]}
    try:
        row.update(_goodput_row(cell) if cell["goodput"] is not None else _rate_row(cell))
        row["error"] = None
    except Exception as e:  # noqa: BLE001 - one failed cell must not sink the sweep
        row["error"] = f"{type(e).__name__}: {e}"
    row["wall_s"] = time.perf_counter() - started
    return row


def _rate_row(cell: dict) -> dict:
    from sim.run import simulate
    from sim.workloads import load_workload

    workload = dict(cell["workload"])
    truncate_to = workload.pop("truncate_to", None)
    requests, desc = load_workload(**workload, rate=cell["rate_rps"])
    requests = _truncated(requests, truncate_to, cell["config"]["model"])
    result = simulate(requests, config_from_dict(cell["config"]))
    return {"achieved_rate_rps": desc["mean_rate_rps"], "requested_rate": desc.get("target_rate_rps"),
            "offered_rate": result.metrics["offered_rate"], **{k: result.metrics[k] for k in ROW_METRICS},
            "sim_wall_s": result.wall_s}


def _goodput_row(cell: dict) -> dict:
    from sim.workloads import load_base

    w = cell["workload"]
    requests, desc = load_base(w["trace"], w.get("format"), w.get("seed", 0), w.get("max_requests"),
                               w.get("skip_bad", False))
    requests = _truncated(requests, w.get("truncate_to"), cell["config"]["model"])
    settings = cell["goodput"]
    found = search(requests, desc, config_from_dict(cell["config"]), replay=w.get("replay", "original"),
                   cv=w.get("cv", 1.0), seed=w.get("seed", 0), **settings)
    return {"goodput_rps": found.goodput_rps, "goodput_offered_rps": found.goodput_offered_rps,
            "criterion": found.criterion, "num_probes": len(found.probes),
            "probes": found.probes}


def _truncated(requests, context_len: int | None, model: str):
    """--truncate: requests cut to the model's context (sim.guards.fit_context)."""
    if context_len is None:
        return requests
    from sim.guards import fit_context
    return fit_context(requests, context_len, model, truncate=True)[0]


def search(requests, desc: dict, cfg, replay: str = "original", cv: float = 1.0, seed: int = 0,
           start_rps: float | None = None, criterion: str = "strict", max_probes: int = 20,
           on_probe: Callable[[float, dict], None] | None = None):
    """search_goodput over re-timings of `requests` (from sim.workloads.load_base); the same seed at
    every probe, so the search is deterministic. Starts at the trace's own rate unless `start_rps`."""
    from sim.run import simulate_probe
    from sim.workloads import WorkloadError, retime
    from yoda.goodput import search_goodput

    start = start_rps or desc.get("original_rate_rps")
    if not start:
        raise WorkloadError("the trace has no rate of its own (all arrivals at once): give --start-rps")

    def run(rate: float):
        retimed, _ = retime(requests, desc, rate=rate, replay=replay, cv=cv, seed=seed)
        return simulate_probe(retimed, cfg, criterion)

    return search_goodput(run, cfg.slo, start, criterion=criterion, max_probes=max_probes, on_probe=on_probe)


def run_cells(cells: Sequence[dict], workers: int | None = None, ray_address: str | None = None,
              on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every cell: in this process (one worker), a local process pool, or on a Ray cluster.
    Rows come back in cell order; `on_done` sees each as it finishes. The pool spawns its workers, so a
    calling script needs the usual `if __name__ == "__main__":` guard (and cannot be read from stdin)."""
    if ray_address is not None:
        return _run_ray(cells, ray_address, on_done)
    workers = min(workers or os.cpu_count() or 1, len(cells))
    rows: list[dict | None] = [None] * len(cells)
    if workers <= 1:
        for i, cell in enumerate(cells):
            rows[i] = run_cell(cell)
            if on_done:
                on_done(rows[i])
        return rows  # type: ignore[return-value]
    # NOTE: spawn, not fork: the caller may run threads (rich progress) that a forked child would inherit
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, cell): i for i, cell in enumerate(cells)}
        for future in as_completed(futures):
            rows[futures[future]] = row = future.result()
            if on_done:
                on_done(row)
    return rows  # type: ignore[return-value]


def check_ray() -> None:
    """Raise SweepError unless Ray can be imported (the `[ray]` extra)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SweepError("--ray needs Ray, which is not installed: pip install 'yoda-serve[ray]'")


def _run_ray(cells: Sequence[dict], address: str, on_done: Callable[[dict], None] | None) -> list[dict]:
    """Ray fan-out. Our packages travel with the job (py_modules); trace files must be readable at the
    same path on every node (shared filesystem), or use synthetic workloads."""
    check_ray()
    import ray

    import sim
    import traces
    import yoda

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"py_modules": [sim, traces, yoda]})
    remote = ray.remote(run_cell)
    pending = {remote.remote(cell): i for i, cell in enumerate(cells)}
    rows: list[dict | None] = [None] * len(cells)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            rows[pending.pop(ref)] = row = ray.get(ref)
            if on_done:
                on_done(row)
    return rows  # type: ignore[return-value]


def write_sweep(out_dir, rows: Sequence[dict], meta: dict | None = None) -> dict:
    """sweep.csv (probes left out), sweep.json (rows and `meta`) and the sweep plot; returns the paths."""
    import json
    from pathlib import Path

    import pandas as pd

    from sim.outputs import json_safe, plot_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{k: v for k, v in row.items() if k != "probes"} for row in rows])
    paths = {"sweep.csv": out / "sweep.csv", "sweep.json": out / "sweep.json"}
    frame.to_csv(paths["sweep.csv"], index=False)
    paths["sweep.json"].write_text(json.dumps(json_safe({**(meta or {}), "rows": list(rows)}), indent=2) + "\n")
    ok = frame[frame["error"].isna()] if "error" in frame else frame
    if len(ok):
        name = "goodput_vs_slo.png" if "goodput_rps" in ok else "attainment_vs_rate.png"
        paths[name] = plot_sweep(ok, out / name)
    return paths

