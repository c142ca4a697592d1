"""`yoda goodput`: the highest request rate that meets the SLOs, one search, or with --tune / --seeds the
declared knob grid searched on several seeds (sim/tuning.py) with a mean and a 95% interval.

    yoda goodput --policy yoda --trace synthetic:sharegpt --criterion attainment
    yoda goodput --trace T --policy chunked --tune --seeds 1,2,3 --json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sim.cli_errors import user_errors
from sim.cli_options import (ABLATION, CONTENTION, CRITERION, CV, DISPATCHER, FORCE, FORMAT, GPU, INSTANCES,
                             JSON_OUT, LATENCY, MAX_PROBES, MAX_REQUESTS, MODEL, NO_CONTENTION, OPTION, POLICY,
                             PREFILL_INSTANCES, REPLAY, SEED, SKIP_BAD, SLO_PER_TOKEN, SLO_TBT, SLO_TTFT, START_RPS,
                             TP, TRACE, TRUNCATE, check_goodput_flags, command_line, jsonable_flags, make_config,
                             trace_path)
from sim.guards import check_latency, fit_trace


def goodput_cmd(
    ctx: typer.Context,
    trace: str | None = TRACE, fmt: str | None = FORMAT, policy: str = POLICY, gpu: str = GPU, model: str = MODEL,
    tp: int = TP, instances: int = INSTANCES, prefill_instances: int | None = PREFILL_INSTANCES,
    dispatcher: str = DISPATCHER, latency: str = LATENCY, replay: str = REPLAY, cv: float = CV,
    slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN, slo_tbt_ms: float = SLO_TBT,
    seed: int = SEED, max_requests: int | None = MAX_REQUESTS, option: list[str] = OPTION,
    ablation: list[str] = ABLATION, no_contention: bool = NO_CONTENTION, contention: str = CONTENTION, skip_bad: bool = SKIP_BAD,
    start_rps: float | None = START_RPS, criterion: str = CRITERION, max_probes: int = MAX_PROBES,
    force: bool = FORCE, truncate: bool = TRUNCATE,
    tune: bool = typer.Option(False, "--tune", help="search the policy's declared knob grid (sim/tuning.py) "
                              "on the first seed, confirm the best on every seed; --option values stay "
                              "fixed unless the grid sets them"),
    seeds: str | None = typer.Option(None, "--seeds", help="comma-separated seeds, e.g. 1,2,3: goodput per "
                                     "seed, their mean and a 95% t-interval (default: --seed alone)"),
    admission: str | None = typer.Option(None, "--admission", help="fcfs or deadline (Yoda's TTFT-deadline "
                                         "order); default: the policy's own (baselines fcfs, yoda deadline)"),
    workers: int = typer.Option(1, "--workers", help="processes for the searches of --tune/--seeds"),
    out: Path | None = typer.Option(None, "--out", help="write goodput.json and goodput.png (attainment "
                                    "against rate, the rate found and the target drawn) here"),
    as_json: bool = JSON_OUT,
) -> None:
    """Search the highest request rate that meets the SLOs (bisection, same seed at every probe).
    Default SLO: TTFT 1000 ms or 0.25 ms per prompt token (whichever is larger), TBT 50 ms, at P99."""
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    import time

    if admission is not None:
        flags["option"] = [*option, f"admission={admission}"]
    if tune or seeds is not None:
        return _tuned_goodput(ctx, flags)

    from sim.goodput_report import print_goodput, search_with_progress, write_goodput
    from sim.outputs import json_safe
    from sim.sweep import config_to_dict
    from sim.workloads import check_replay, load_base

    with user_errors():
        check_goodput_flags(start_rps, criterion, max_probes)
        cfg = make_config(flags)
        notes = check_latency(flags)
        check_replay(None, None, replay, cv)
        requests, desc = load_base(trace_path(flags), fmt, seed, max_requests, skip_bad)
        requests, notes[len(notes):] = fit_trace(requests, desc, flags)
    started = time.perf_counter()
    with user_errors():
        found, reasons = search_with_progress(requests, desc, cfg, flags, as_json, _probe_line)
    probes = [{**p, **reasons.get(p["rate_rps"], {})} for p in found.probes]
    res = json_safe({"goodput_rps": found.goodput_rps, "goodput_offered_rps": found.goodput_offered_rps,
                     "criterion": criterion, "policy": cfg.policy,
                     "trace": desc["trace"], "slo_ttft_ms": cfg.slo.ttft_ms,
                     "slo_ttft_ms_per_token": cfg.slo.ttft_ms_per_token, "slo_tbt_ms": cfg.slo.tbt_ms,
                     "slo_percentile": cfg.slo.percentile, "num_probes": len(probes), "probes": probes,
                     "wall_s": time.perf_counter() - started, "workload": desc, "config": config_to_dict(cfg),
                     "command": command_line(ctx), "flags": jsonable_flags(flags), "notes": notes})
    paths = write_goodput(out, res) if out is not None else []
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    print_goodput(res, cfg, desc, notes, paths)


def _tuned_goodput(ctx: typer.Context, flags: dict) -> None:
    """`yoda goodput --tune` / `--seeds`: sim/tuning.py's two-phase search; JSON with goodput_rps (mean over
    seeds), goodput_rps_per_seed, ci95 and the chosen config."""
    import time

    from sim.outputs import console, json_safe
    from sim.tuning import TraceWorkload, TuneCell, grid_for, run_tuning

    with user_errors():
        check_goodput_flags(flags["start_rps"], flags["criterion"], flags["max_probes"])
        if flags["admission"] not in (None, "fcfs", "deadline"):
            raise ValueError(f"--admission must be fcfs or deadline, got {flags['admission']!r}")
        if flags["workers"] < 1:
            raise ValueError(f"--workers must be >= 1, got {flags['workers']}")
        seeds = _seeds(flags["seeds"]) if flags["seeds"] is not None else (flags["seed"],)
        cfg = make_config(flags)
        grid = grid_for(cfg.policy, cfg.num_instances) if flags["tune"] else [{}]
        workload = TraceWorkload(trace_path(flags), flags["fmt"], flags["max_requests"], flags["skip_bad"],
                                 flags["replay"], flags["cv"])
        workload.runner(cfg, seeds[0])  # a bad trace or replay fails here, with one line
        started = time.perf_counter()
        ((found,),) = run_tuning([TuneCell(workload, cfg, seeds, grid, flags["criterion"], flags["start_rps"],
                                        flags["max_probes"])], flags["workers"])
    res = json_safe({**found, "policy": cfg.policy, "trace": workload.trace, "slo_ttft_ms": cfg.slo.ttft_ms,
                     "slo_ttft_ms_per_token": cfg.slo.ttft_ms_per_token, "slo_tbt_ms": cfg.slo.tbt_ms,
                     "slo_percentile": cfg.slo.percentile, "wall_s": time.perf_counter() - started,
                     "command": command_line(ctx), "flags": jsonable_flags(flags)})
    err = console(stderr=True)
    if found["requests_beyond_p99"] < 10:
        err.print(f"note: probes of {found['probe_requests']} requests: each P99 TTFT rests on "
                  f"{found['requests_beyond_p99']} requests beyond it (fewer than 10)", highlight=False)
    if flags["out"] is not None:
        with user_errors():
            flags["out"].mkdir(parents=True, exist_ok=True)
            (flags["out"] / "goodput.json").write_text(json.dumps(res, indent=2) + "\n")
    if flags["as_json"]:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    low, high = found["ci95"]
    console().print(f"goodput of {cfg.policy} on {workload.trace}: [bold]{found['goodput_rps']:.3f} req/s[/] "
                    f"(95% CI {low:.3f}..{high:.3f}, seeds {seeds}), config {found['config']} "
                    f"({res['wall_s']:.1f} s)", highlight=False)


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def _probe_line(rate: float, m: dict, criterion: str) -> str:
    from sim.outputs import format_value as v
    from yoda.goodput import CRITERIA

    ok = CRITERIA[criterion](m)
    return (f"probe {rate:8.3f} req/s  P99 TTFT/target {v(m['slo_ttft_ratio_at_percentile'], 2):>6}  "
            f"P99 TBT {v(m['slo_tbt_at_percentile_ms']):>7} ms  attainment {m['slo_attainment']:6.1%}  "
            f"per-request TBT {m['slo_attainment_per_request_tbt']:6.1%}  offered {m['offered_rate_steady']:7.3f}  "
            f"served {m['request_throughput']:7.3f} req/s  " + ("[green]ok[/]" if ok else "[red]miss[/]"))
