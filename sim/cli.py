"""`yoda simulate`, `yoda goodput` and `yoda sweep`: the simulator from the command line.

    yoda simulate --policy yoda --max-requests 200 --rate 0.5 --out runs/yoda
    yoda simulate --policy chunked --option token_budget=1024 --json
    yoda goodput --policy yoda --trace synthetic:sharegpt --criterion attainment
    yoda sweep --policies yoda,chunked --rates 0.25,0.5,1 --out runs/sweep

Default SLO: TTFT 1000 ms or 0.25 ms per prompt token, whichever is larger; TBT 50 ms; both at P99.
Bad flags, traces or names print one `error: ...` line on stderr and exit with status 2. The shared flags
live in sim/cli_options.py; `goodput` in sim/goodput_cli.py, `sweep` in sim/sweep_cli.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import typer

from sim.cli_errors import OneLineErrors, user_errors
from sim.cli_options import (ABLATION, CONTENTION, CV, DISPATCHER, FORCE, FORMAT, GPU, INSTANCES, JSON_OUT, LATENCY,
                             MAX_REQUESTS, MODEL, NO_CONTENTION, OPTION, POLICY, PREFILL_INSTANCES, REPLAY, SEED,
                             SKIP_BAD, SLO_PER_TOKEN, SLO_TBT, SLO_TTFT, TP, TRACE, TRUNCATE, command_line,
                             jsonable_flags, make_config, trace_path)
from sim.goodput_cli import goodput_cmd
from sim.guards import check_latency, fit_trace
from sim.sweep_cli import sweep_cmd


def scheduler_counters(result) -> dict | None:
    """The schedulers' counters (yoda: tbt_unmeetable, partition_switches, ...) where the run reports them.
    NOTE: SimResult does not carry them yet; this reads `result.scheduler_counters` or the metrics key."""
    counters = getattr(result, "scheduler_counters", None) or result.metrics.get("scheduler_counters")
    return dict(counters) if counters else None


def simulate_cmd(
    ctx: typer.Context,
    trace: str | None = TRACE, fmt: str | None = FORMAT, policy: str = POLICY, gpu: str = GPU, model: str = MODEL,
    tp: int = TP, instances: int = INSTANCES, prefill_instances: int | None = PREFILL_INSTANCES,
    dispatcher: str = DISPATCHER, latency: str = LATENCY,
    rate: float | None = typer.Option(None, "--rate", help="request rate (req/s) to replay the trace at"),
    scale: float | None = typer.Option(None, "--scale", help="replay at this multiple of the trace's own rate"),
    replay: str = REPLAY, cv: float = CV, slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN,
    slo_tbt_ms: float = SLO_TBT, seed: int = SEED, max_requests: int | None = MAX_REQUESTS,
    option: list[str] = OPTION, ablation: list[str] = ABLATION, no_contention: bool = NO_CONTENTION, contention: str = CONTENTION,
    skip_bad: bool = SKIP_BAD,
    workers: int | None = typer.Option(None, "--workers", help="processes for a cluster whose instances never "
                                       "interact (round-robin dispatch, no disagg; same results): one instance "
                                       "each, up to this many at a time (default: CPU count)"),
    force: bool = FORCE, truncate: bool = TRUNCATE,
    out: Path | None = typer.Option(None, "--out", help="write results.json, requests.parquet, timeline.parquet, "
                                    "latency_cdf.png and timeline.png here"),
    as_json: bool = JSON_OUT,
) -> None:
    """Replay a trace through the simulated cluster and report latency, SLO attainment and throughput.
    Default SLO: TTFT 1000 ms or 0.25 ms per prompt token (whichever is larger), TBT 50 ms, at P99."""
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    from sim.outputs import format_value, print_results, results_dict, short_trace, write_results
    from sim.progress import progress_bar
    from sim.run import simulate
    from sim.workloads import load_workload

    with user_errors():
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        cfg = make_config(flags)
        notes = check_latency(flags)
        requests, desc = load_workload(trace_path(flags), fmt, rate, scale, replay, cv, seed, max_requests, skip_bad)
        requests, notes[len(notes):] = fit_trace(requests, desc, flags)
    with progress_bar("simulate", len(requests), "requests", enabled=not as_json) as update:
        result = simulate(requests, cfg, workers=workers or os.cpu_count() or 1,
                          progress=update and (lambda sim_s, done: update(done, f"{sim_s:,.0f} simulated s")))
    # the rate asked for (--rate, or --scale x the trace's own), beside the offered_rate the run measured
    extra = {"requested_rate": desc.get("target_rate_rps"),
             "scheduler_counters": scheduler_counters(result), "workload": desc, "command": command_line(ctx),
             "flags": jsonable_flags(flags)}
    res = results_dict(result, extra)
    paths = None
    if out is not None:
        with user_errors():
            paths = write_results(out, result, extra)
    print_results(res, f"simulated {cfg.policy} on {cfg.num_instances}x {cfg.gpu}, {cfg.model}: "
                       f"{short_trace(desc['trace'])} ({len(requests)} requests, "
                       f"{format_value(desc['mean_rate_rps'], 3)} req/s)", as_json, paths, notes)


def register(app: typer.Typer) -> None:
    """Mount `simulate`, `goodput` and `sweep` on the main `yoda` app."""
    app.command("simulate", cls=OneLineErrors)(simulate_cmd)
    app.command("goodput", cls=OneLineErrors)(goodput_cmd)
    app.command("sweep", cls=OneLineErrors)(sweep_cmd)
