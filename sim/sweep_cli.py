"""`yoda sweep`: a grid of policies x traces x rates (or x TBT targets with --goodput) in parallel processes
or on Ray.

    yoda sweep --policies yoda,chunked --rates 0.25,0.5,1 --out runs/sweep
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sim.cli_errors import fail, user_errors
from sim.cli_options import (CONTENTION, CRITERION, CV, DEFAULT_SWEEP_RATES, DISPATCHER, FORCE, FORMAT, GPU,
                             INSTANCES, LATENCY, MAX_PROBES, MAX_REQUESTS, MODEL, NO_CONTENTION, OPTION,
                             PREFILL_INSTANCES, REPLAY, SEED, SKIP_BAD, SLO_PER_TOKEN, SLO_TTFT, START_RPS, TP,
                             TRUNCATE, check_goodput_flags, command_line, jsonable_flags, make_config, trace_path)
from sim.guards import check_latency


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} needs positive numbers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def sweep_cmd(
    ctx: typer.Context,
    policies: str = typer.Option("yoda,chunked", "--policies", help="comma-separated policies"),
    traces: str | None = typer.Option(None, "--traces", help="comma-separated traces (files or synthetic:NAME[:N]); "
                                      "default: the bundled mooncake sample"),
    rates: str | None = typer.Option(None, "--rates", help="comma-separated request rates (req/s); default "
                                     f"{DEFAULT_SWEEP_RATES} unless --goodput"),
    goodput: bool = typer.Option(False, "--goodput", help="search each cell's goodput instead of fixed rates"),
    slo_tbt_ms: str = typer.Option("50", "--slo-tbt-ms", help="comma-separated TBT targets (ms)"),
    fmt: str | None = FORMAT, gpu: str = GPU, model: str = MODEL, tp: int = TP, instances: int = INSTANCES,
    prefill_instances: int | None = PREFILL_INSTANCES, dispatcher: str = DISPATCHER, latency: str = LATENCY,
    replay: str = REPLAY, cv: float = CV, slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN,
    seed: int = SEED, max_requests: int | None = MAX_REQUESTS, option: list[str] = OPTION,
    ablation: list[str] = typer.Option([], "--ablation", help="yoda ablation (applied to yoda only), repeatable"),
    no_contention: bool = NO_CONTENTION, contention: str = CONTENTION, skip_bad: bool = SKIP_BAD, start_rps: float | None = START_RPS,
    criterion: str = CRITERION, max_probes: int = MAX_PROBES,
    workers: int | None = typer.Option(None, "--workers", help="local worker processes (default: CPU count)"),
    ray: str | None = typer.Option(None, "--ray", help="Ray cluster address (needs the [ray] extra); trace files "
                                   "are sent as absolute paths and must be readable at that path on every node"),
    force: bool = FORCE, truncate: bool = TRUNCATE,
    out: Path | None = typer.Option(None, "--out", help="write sweep.csv, sweep.json and the plot here "
                                    "(default: runs/sweep, or nothing with --json)"),
    as_json: bool = typer.Option(False, "--json", help="print the sweep (its rows) as one JSON object on stdout, "
                                 "nothing else"),
) -> None:
    """Run a grid of policies x traces x rates (or x TBT SLOs with --goodput) in parallel.
    Default SLO: TTFT 1000 ms or 0.25 ms per prompt token (whichever is larger), TBT 50 ms, at P99."""
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    from sim.outputs import console, json_safe, sweep_table
    from sim.sweep import write_sweep

    with user_errors():
        cells = _sweep_cells(flags)
    rows = _run_with_progress(cells, workers, ray, enabled=not as_json)
    meta = {"command": command_line(ctx), "flags": jsonable_flags(flags), "num_cells": len(cells)}
    out = out if out is not None or as_json else Path("runs/sweep")
    paths = {}
    if out is not None:
        with user_errors():
            paths = write_sweep(out, rows, meta)
    if as_json:
        sys.stdout.write(json.dumps(json_safe({**meta, "rows": rows})) + "\n")
    else:
        stdout = console()
        stdout.print(sweep_table(rows, goodput))
        stdout.print("wrote " + ", ".join(str(p) for p in paths.values()), markup=False)
    failed = [row for row in rows if row.get("error")]
    if failed:
        typer.echo(f"error: {len(failed)} of {len(rows)} cells failed; first: {failed[0]['error']}", err=True)
        raise typer.Exit(1)


def _sweep_cells(flags: dict) -> list[dict]:
    """Check the sweep flags (before any process starts) and build its cells."""
    from sim.guards import fit_context, model_context_len, resolve_traces
    from sim.sweep import check_ray, config_to_dict, make_cells
    from sim.workloads import check_replay, load_base

    if flags["rates"] is not None and flags["goodput"]:
        raise ValueError("give --rates r1,r2,... or --goodput, not both")
    if flags["rates"] is None and not flags["goodput"]:
        flags = {**flags, "rates": DEFAULT_SWEEP_RATES}
    if flags["workers"] is not None and flags["workers"] < 1:
        raise ValueError(f"--workers must be >= 1, got {flags['workers']}")
    if flags["ray"] is not None:
        check_ray()
    check_goodput_flags(flags["start_rps"], flags["criterion"], flags["max_probes"])
    check_replay(None, None, flags["replay"], flags["cv"])
    rates = _floats(flags["rates"], "--rates") if flags["rates"] is not None else None
    slos = _floats(flags["slo_tbt_ms"], "--slo-tbt-ms")
    policies = _names(flags["policies"])
    trace_list = resolve_traces(_names(flags["traces"]) if flags["traces"] else [trace_path({"trace": None})])
    if not policies or not trace_list:
        raise ValueError("--policies and --traces need at least one name each")
    if Path(flags["latency"]).is_dir():  # workers elsewhere resolve nothing against our directory
        check_latency(flags)
        flags = {**flags, "latency": str(Path(flags["latency"]).resolve())}
    configs = {p: make_config({**flags, "slo_tbt_ms": slos[0]}, policy=p, strict=False) for p in policies}
    context = model_context_len(flags["model"])
    for trace in trace_list:
        requests, _ = load_base(trace, flags["fmt"], flags["seed"], flags["max_requests"], flags["skip_bad"])
        fit_context(requests, context, flags["model"], flags["truncate"])
    workload = {k: flags[v] for k, v in (("format", "fmt"), ("replay", "replay"), ("cv", "cv"), ("seed", "seed"),
                                         ("max_requests", "max_requests"), ("skip_bad", "skip_bad"))}
    if flags["truncate"]:
        workload["truncate_to"] = context
    goodput = ({k: flags[k] for k in ("start_rps", "criterion", "max_probes")} if flags["goodput"] else None)
    cells = []
    for policy in policies:
        cells += make_cells([policy], trace_list, rates, slos, config_to_dict(configs[policy]), workload, goodput)
    return cells


def _run_with_progress(cells: list[dict], workers: int | None, ray_address: str | None,
                       enabled: bool = True) -> list[dict]:
    from sim.outputs import short_trace
    from sim.progress import progress_bar
    from sim.sweep import SweepError, run_cells

    with progress_bar("sweep", len(cells), "cells", enabled) as update:
        done: list[dict] = []

        def on_done(row: dict) -> None:
            done.append(row)
            at = f"{row['rate_rps']:g} req/s" if row["rate_rps"] is not None else f"TBT {row['slo_tbt_ms']:g} ms"
            if update:
                update(len(done), f"{row['policy']} {short_trace(row['trace'])} {at}")

        try:
            return run_cells(cells, workers, ray_address, on_done)
        except SweepError as e:
            fail(str(e))
