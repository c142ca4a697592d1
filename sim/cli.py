"""`yoda simulate`, `yoda goodput` and `yoda sweep`: the simulator from the command line.

    yoda simulate --policy yoda --max-requests 200 --rate 0.5 --out runs/yoda
    yoda simulate --policy chunked --option token_budget=1024 --json
    yoda goodput --policy yoda --trace synthetic:sharegpt --criterion attainment
    yoda sweep --policies yoda,chunked --rates 0.25,0.5,1 --out runs/sweep

Default SLO: TTFT 1000 ms or 0.25 ms per prompt token, whichever is larger; TBT 50 ms; both at P99.
Bad flags, traces or names print one `error: ...` line on stderr and exit with status 2.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from sim.cli_errors import OneLineErrors, fail, user_errors
from sim.guards import check_latency, fit_trace
from yoda.policies import policy_names

LATENCY_HELP = ("measured (Vidur's kernel tables, the default), roofline (analytic), pdmux (paper fits) or a "
                "calibration profile directory")

TRACE = typer.Option(None, "--trace", help="trace file, or synthetic:NAME[:N] with NAME sharegpt, loogle, "
                     "openthoughts or system_prompt; default: the bundled traces/data/mooncake_sample.jsonl")
FORMAT = typer.Option(None, "--format", help="mooncake, azure or agent; default: detected")
POLICY = typer.Option("yoda", "--policy", help=f"one of {', '.join(policy_names())}")
GPU = typer.Option("h100", "--gpu", help="h100, h200, h800 or a100")
MODEL = typer.Option("llama3-8b", "--model", help="built-in model name or a transformers config path")
TP = typer.Option(1, "--tp", help="tensor-parallel degree per instance")
INSTANCES = typer.Option(1, "--instances", help="GPU instances behind the dispatcher")
PREFILL_INSTANCES = typer.Option(None, "--prefill-instances", help="disagg: prefill instances (default half)")
DISPATCHER = typer.Option("slo_aware", "--dispatcher", help="slo_aware, least_loaded or round_robin")
LATENCY = typer.Option("measured", "--latency", help=LATENCY_HELP)
CONTENTION = typer.Option("default", "--contention", help="default, or pessimistic (1.5x the default's excess "
                          "slowdown; sim/contention.py)")
REPLAY = typer.Option("original", "--replay", help="original (keep the trace's arrival shape), poisson or gamma")
CV = typer.Option(1.0, "--cv", help="gap coefficient of variation for --replay gamma")
SLO_TTFT = typer.Option(1000.0, "--slo-ttft-ms", help="TTFT target (ms)")
SLO_PER_TOKEN = typer.Option(0.25, "--slo-ttft-ms-per-token", help="TTFT target per prompt token (ms); the "
                             "target is the larger of this x prompt length and --slo-ttft-ms; 0: fixed target")
SLO_TBT = typer.Option(50.0, "--slo-tbt-ms", help="TBT target (ms), every gap between output tokens")
SEED = typer.Option(0, "--seed", help="seed of every random step (bucket spreading, re-timing, synthetic)")
MAX_REQUESTS = typer.Option(None, "--max-requests", help="keep only the first N requests of the trace")
OPTION = typer.Option([], "--option", help="policy option key=value (int/float/bool/str), repeatable, e.g. "
                      "token_budget=1024; prefix with a policy name (chunked.token_budget=1024) to target one policy")
ORACLE_ABLATION = "oracle_output_len"
ABLATION = typer.Option([], "--ablation", help="yoda ablation, repeatable: no_layerwise, no_query_merge, "
                        "no_guard, static_partition or no_preemption (yoda.gang_scheduler.ABLATIONS); and for "
                        "any policy oracle_output_len (decisions read true output lengths)")
NO_CONTENTION = typer.Option(False, "--no-contention", help="lanes do not slow each other down")
SKIP_BAD = typer.Option(False, "--skip-bad", help="skip malformed trace lines instead of failing")
JSON_OUT = typer.Option(False, "--json", help="print the results as one JSON object on stdout, nothing else")
START_RPS = typer.Option(None, "--start-rps", help="first rate probed (req/s); default: the trace's own rate")
CRITERION = typer.Option("strict", "--criterion", help="strict (the headline: fleet and per_request both), "
                         "fleet (P99 TTFT and P99 TBT over all token gaps within targets), per_request (>= 90% "
                         "of requests meet TTFT and have their own P99 gap within TBT) or attainment (>= 90% of "
                         "requests meet TTFT and TPOT)")
MAX_PROBES = typer.Option(20, "--max-probes", help="most simulations the goodput search runs")
DEFAULT_SWEEP_RATES = "0.25,0.5,1,2"
FORCE = typer.Option(False, "--force", help="use a --latency profile measured on another GPU or model (warns)")
TRUNCATE = typer.Option(False, "--truncate", help="cut requests longer than the model's context to fit it "
                        "(outputs to half the context, prompts to the rest) instead of refusing the trace")


_OneLineErrors = OneLineErrors  # the names the other CLI modules import from here
_fail = fail
_user_errors = user_errors


def parse_option(text: str) -> tuple[str, Any]:
    """`key=value` with value as int, float, bool (true/false), None (none) or str."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--option must be key=value, got {text!r}")
    raw = raw.strip()
    if raw.lower() in ("true", "false"):
        return key.strip(), raw.lower() == "true"
    if raw.lower() == "none":
        return key.strip(), None
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), raw


def policy_options(policy: str, options: list[str], ablations: list[str], strict: bool = True) -> dict:
    """Options for `policy`: ablations first, then --option values (those prefixed with another policy's
    name are skipped). With `strict`, an ablation on a policy other than yoda is an error."""
    out: dict[str, Any] = {}
    if ablations:
        from yoda.gang_scheduler import ABLATIONS
        for name in ablations:
            if name not in ABLATIONS:
                raise ValueError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
            if policy == "yoda":
                out.update(ABLATIONS[name])
            elif strict:
                raise ValueError(f"--ablation applies to --policy yoda, not {policy!r}")
    for text in options:
        key, value = parse_option(text)
        target, dot, name = key.partition(".")
        if dot and target not in policy_names():
            raise ValueError(f"--option {key}: {target!r} is not a policy; choose from {', '.join(policy_names())}")
        if not dot or target == policy:
            out[name if dot else key] = value
    return out


def make_config(flags: dict, policy: str | None = None, strict: bool = True):
    """SimConfig from the shared flags, checked by building (and discarding) the cluster once."""
    import simpy

    from sim.run import SimConfig, build
    from yoda.request import SLO

    policy = policy or flags["policy"]
    if flags["prefill_instances"] is not None and policy != "disagg":
        raise ValueError("--prefill-instances applies to --policy disagg")
    if flags["tp"] < 1:
        raise ValueError(f"--tp must be >= 1, got {flags['tp']}")
    slo = SLO(ttft_ms=flags["slo_ttft_ms"], tbt_ms=flags["slo_tbt_ms"],
              ttft_ms_per_token=flags["slo_ttft_ms_per_token"])
    # oracle_output_len (any policy): decisions read true output lengths, which no server knows
    ablations = [a for a in flags["ablation"] if a != ORACLE_ABLATION]
    cfg = SimConfig(policy=policy, gpu=flags["gpu"], model=flags["model"], tp=flags["tp"],
                    num_instances=flags["instances"], num_prefill_instances=flags["prefill_instances"],
                    dispatcher=flags["dispatcher"], latency=flags["latency"], contention=not flags["no_contention"],
                    contention_mode=flags.get("contention", "default"),
                    slo=slo, policy_options=policy_options(policy, flags["option"], ablations, strict),
                    output_len_oracle=len(ablations) < len(flags["ablation"]))
    try:
        build(cfg, simpy.Environment())
    except TypeError as e:  # a policy constructor refused an option
        raise ValueError(f"bad --option/--ablation for policy {policy}: {e}") from None
    return cfg


def _trace(flags: dict) -> str:
    if flags["trace"]:
        return flags["trace"]
    from traces import SAMPLE_DIR
    return str(SAMPLE_DIR / "mooncake_sample.jsonl")


def _command_line(ctx: typer.Context) -> str:
    return shlex.join(["yoda", ctx.info_name or "", *ctx.meta.get("raw_args", [])])


def _jsonable_flags(flags: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}


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

    with _user_errors():
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        cfg = make_config(flags)
        notes = check_latency(flags)
        requests, desc = load_workload(_trace(flags), fmt, rate, scale, replay, cv, seed, max_requests, skip_bad)
        requests, notes[len(notes):] = fit_trace(requests, desc, flags)
    with progress_bar("simulate", len(requests), "requests", enabled=not as_json) as update:
        result = simulate(requests, cfg, workers=workers or os.cpu_count() or 1,
                          progress=update and (lambda sim_s, done: update(done, f"{sim_s:,.0f} simulated s")))
    # the rate asked for (--rate, or --scale x the trace's own), beside the offered_rate the run measured
    extra = {"requested_rate": desc.get("target_rate_rps"),
             "scheduler_counters": scheduler_counters(result), "workload": desc, "command": _command_line(ctx),
             "flags": _jsonable_flags(flags)}
    res = results_dict(result, extra)
    paths = None
    if out is not None:
        with _user_errors():
            paths = write_results(out, result, extra)
    print_results(res, f"simulated {cfg.policy} on {cfg.num_instances}x {cfg.gpu}, {cfg.model}: "
                       f"{short_trace(desc['trace'])} ({len(requests)} requests, "
                       f"{format_value(desc['mean_rate_rps'], 3)} req/s)", as_json, paths, notes)


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

    with _user_errors():
        _check_goodput_flags(start_rps, criterion, max_probes)
        cfg = make_config(flags)
        notes = check_latency(flags)
        check_replay(None, None, replay, cv)
        requests, desc = load_base(_trace(flags), fmt, seed, max_requests, skip_bad)
        requests, notes[len(notes):] = fit_trace(requests, desc, flags)
    started = time.perf_counter()
    with _user_errors():
        found, reasons = search_with_progress(requests, desc, cfg, flags, as_json, _probe_line)
    probes = [{**p, **reasons.get(p["rate_rps"], {})} for p in found.probes]
    res = json_safe({"goodput_rps": found.goodput_rps, "goodput_offered_rps": found.goodput_offered_rps,
                     "criterion": criterion, "policy": cfg.policy,
                     "trace": desc["trace"], "slo_ttft_ms": cfg.slo.ttft_ms,
                     "slo_ttft_ms_per_token": cfg.slo.ttft_ms_per_token, "slo_tbt_ms": cfg.slo.tbt_ms,
                     "slo_percentile": cfg.slo.percentile, "num_probes": len(probes), "probes": probes,
                     "wall_s": time.perf_counter() - started, "workload": desc, "config": config_to_dict(cfg),
                     "command": _command_line(ctx), "flags": _jsonable_flags(flags), "notes": notes})
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

    with _user_errors():
        _check_goodput_flags(flags["start_rps"], flags["criterion"], flags["max_probes"])
        if flags["admission"] not in (None, "fcfs", "deadline"):
            raise ValueError(f"--admission must be fcfs or deadline, got {flags['admission']!r}")
        if flags["workers"] < 1:
            raise ValueError(f"--workers must be >= 1, got {flags['workers']}")
        seeds = _seeds(flags["seeds"]) if flags["seeds"] is not None else (flags["seed"],)
        cfg = make_config(flags)
        grid = grid_for(cfg.policy, cfg.num_instances) if flags["tune"] else [{}]
        workload = TraceWorkload(_trace(flags), flags["fmt"], flags["max_requests"], flags["skip_bad"],
                                 flags["replay"], flags["cv"])
        workload.runner(cfg, seeds[0])  # a bad trace or replay fails here, with one line
        started = time.perf_counter()
        ((found,),) = run_tuning([TuneCell(workload, cfg, seeds, grid, flags["criterion"], flags["start_rps"],
                                        flags["max_probes"])], flags["workers"])
    res = json_safe({**found, "policy": cfg.policy, "trace": workload.trace, "slo_ttft_ms": cfg.slo.ttft_ms,
                     "slo_ttft_ms_per_token": cfg.slo.ttft_ms_per_token, "slo_tbt_ms": cfg.slo.tbt_ms,
                     "slo_percentile": cfg.slo.percentile, "wall_s": time.perf_counter() - started,
                     "command": _command_line(ctx), "flags": _jsonable_flags(flags)})
    err = console(stderr=True)
    if found["requests_beyond_p99"] < 10:
        err.print(f"note: probes of {found['probe_requests']} requests: each P99 TTFT rests on "
                  f"{found['requests_beyond_p99']} requests beyond it (fewer than 10)", highlight=False)
    if flags["out"] is not None:
        with _user_errors():
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


def _check_goodput_flags(start_rps: float | None, criterion: str, max_probes: int) -> None:
    if start_rps is not None and start_rps <= 0:
        raise ValueError(f"--start-rps must be > 0, got {start_rps}")
    from yoda.goodput import CRITERIA

    if criterion not in CRITERIA:
        raise ValueError(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if max_probes < 1:
        raise ValueError(f"--max-probes must be >= 1, got {max_probes}")


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

    with _user_errors():
        cells = _sweep_cells(flags)
    rows = _run_with_progress(cells, workers, ray, enabled=not as_json)
    meta = {"command": _command_line(ctx), "flags": _jsonable_flags(flags), "num_cells": len(cells)}
    out = out if out is not None or as_json else Path("runs/sweep")
    paths = {}
    if out is not None:
        with _user_errors():
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
    _check_goodput_flags(flags["start_rps"], flags["criterion"], flags["max_probes"])
    check_replay(None, None, flags["replay"], flags["cv"])
    rates = _floats(flags["rates"], "--rates") if flags["rates"] is not None else None
    slos = _floats(flags["slo_tbt_ms"], "--slo-tbt-ms")
    policies = _names(flags["policies"])
    trace_list = resolve_traces(_names(flags["traces"]) if flags["traces"] else [_trace({"trace": None})])
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
            _fail(str(e))


def register(app: typer.Typer) -> None:
    """Mount `simulate`, `goodput` and `sweep` on the main `yoda` app."""
    app.command("simulate", cls=_OneLineErrors)(simulate_cmd)
    app.command("goodput", cls=_OneLineErrors)(goodput_cmd)
    app.command("sweep", cls=_OneLineErrors)(sweep_cmd)
