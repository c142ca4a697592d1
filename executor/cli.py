"""`yoda run`: serve a trace on the real executor (or, with --backend sim, in the simulator).

    yoda run --backend executor --model tiny --device cpu --trace synthetic:sharegpt:6 --max-prompt-len 512 \\
        --max-output-len 16 --policy yoda --json
    yoda run --backend executor --model llama3-8b --device cuda --num-layers 8 --profile prof/h100 \\
        --trace traces/data/miniswe_sample.jsonl --max-requests 100 --rate 2 --out runs/h100-yoda

Writes the same results as `yoda simulate` (sim/outputs.py). Bad flags, traces or names print one
`error: ...` line on stderr and exit with status 2.
"""
from __future__ import annotations

from pathlib import Path

import typer

from sim.cli_errors import CliError, OneLineErrors, fail, require_extra, user_errors
from sim.cli_options import (FORMAT, JSON_OUT, MAX_REQUESTS, OPTION, POLICY, SEED, SLO_PER_TOKEN, SLO_TBT, SLO_TTFT,
                             TRUNCATE, command_line, jsonable_flags, policy_options, trace_path)

# without --trace: a short sample that a CPU serves in about half a minute
DEFAULT_REQUESTS, DEFAULT_OUTPUT_LEN = 10, 128
TRACE = typer.Option(None, "--trace", help="trace file, or synthetic:NAME[:N] with NAME sharegpt, loogle, "
                     f"openthoughts or system_prompt; default: the first {DEFAULT_REQUESTS} requests of the bundled "
                     f"traces/data/mooncake_sample.jsonl, outputs cut to {DEFAULT_OUTPUT_LEN} tokens and prompts "
                     "to the model's context (as --truncate)")

BACKEND = typer.Option("executor", "--backend", help="executor (the real model) or sim (the simulator)")
MODEL = typer.Option("tiny", "--model", help="built-in config (tiny, llama3-8b, llama3-70b, qwen2.5-7b) or a "
                     "transformers config.json path")
WEIGHTS = typer.Option(None, "--weights", help="local safetensors file or folder (default: random weights)")
DEVICE = typer.Option("cpu", "--device", help="cpu or cuda")
PROFILE = typer.Option(None, "--profile", help="calibration profile dir (yoda calibrate) for the yoda estimator")
RATE = typer.Option(None, "--rate", help="request rate (req/s) to replay the trace at")
NUM_LAYERS = typer.Option(None, "--num-layers", help="keep only the first N layers (as the profile measured)")
MAX_PROMPT = typer.Option(None, "--max-prompt-len", help="cut prompts to N tokens (prefixes stay shared)")
MAX_OUTPUT = typer.Option(None, "--max-output-len", help="cut outputs to N tokens")
CLOCK = typer.Option("wall", "--clock", help="wall, or on the CPU: cpu (the engine's CPU time plus idle waits; "
                     "immune to other processes' load)")
KV_BLOCKS = typer.Option(None, "--kv-blocks", help="KV cache blocks (default: the trace's need on the CPU, free "
                         "memory on CUDA)")
MAX_BATCH = typer.Option(256, "--max-batch", help="decode batch cap (largest CUDA-graph batch)")


def run_cmd(
    ctx: typer.Context, backend: str = BACKEND, model: str = MODEL, weights: str | None = WEIGHTS,
    device: str = DEVICE, trace: str | None = TRACE, fmt: str | None = FORMAT, policy: str = POLICY,
    profile: Path | None = PROFILE, max_requests: int | None = MAX_REQUESTS, rate: float | None = RATE,
    slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN, slo_tbt_ms: float = SLO_TBT,
    seed: int = SEED, option: list[str] = OPTION, max_prompt_len: int | None = MAX_PROMPT,
    max_output_len: int | None = MAX_OUTPUT, num_layers: int | None = NUM_LAYERS, clock: str = CLOCK,
    kv_blocks: int | None = KV_BLOCKS, max_batch: int = MAX_BATCH, truncate: bool = TRUNCATE,
    force: bool = typer.Option(False, "--force", help="use a --profile measured on another device or model (warns)"),
    out: Path | None = typer.Option(None, "--out", help="write results.json, requests.parquet, timeline.parquet "
                                    "and plots here (as yoda simulate)"),
    as_json: bool = JSON_OUT,
) -> None:
    """Serve a trace on one GPU (or the CPU) in real time and report latency, SLO attainment and throughput.
    Default SLO: TTFT 1000 ms or 0.25 ms per prompt token (whichever is larger), TBT 50 ms, at P99."""
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    if backend not in ("executor", "sim"):
        fail(f"--backend must be executor or sim, got {backend!r}")
    from sim.outputs import format_value, print_results, results_dict, short_trace, write_results
    from sim.progress import progress_bar
    from sim.workloads import load_workload

    with user_errors():
        if backend == "executor":
            require_extra("yoda run", "torch", "transformers")
        if trace is None:
            max_requests = flags["max_requests"] = max_requests or DEFAULT_REQUESTS
            flags["max_output_len"] = max_output_len or DEFAULT_OUTPUT_LEN
        requests, desc = load_workload(trace_path(flags), fmt, rate, None, "original", 1.0, seed, max_requests)
        requests, notes = _fit(requests, desc, flags)
        notes += _check_profile(flags)
        with progress_bar("run", len(requests), "requests", enabled=not as_json) as update:
            if backend == "sim":
                result = _simulate(flags, requests)
            else:
                result = _serve(flags, requests, update and (lambda done: update(done, "")))
    extra = {"scheduler_counters": result.metrics.get("scheduler_counters"), "workload": desc,
             "command": command_line(ctx), "flags": jsonable_flags(flags),
             "estimator": getattr(result, "estimator_source", None)}
    res = results_dict(result, extra)
    paths = None
    if out is not None:
        with user_errors():
            paths = write_results(out, result, extra)
    where = f"{device} executor" if backend == "executor" else "simulator"
    notes += [f"estimator: {result.estimator_source}"] if backend == "executor" else []
    print_results(res, f"{policy} on {short_trace(desc['trace'])} ({len(result.records)} requests, "
                       f"{format_value(desc['mean_rate_rps'], 3)} req/s, {where})", as_json, paths, notes)


def _fit(requests, desc: dict, flags: dict) -> tuple[list, list[str]]:
    """--max-prompt-len / --max-output-len cuts, then the model's context: requests still longer are refused
    unless --truncate (implied for the default workload)."""
    from sim.guards import clamp_lengths, fit_context, model_context_len

    requests = clamp_lengths(requests, flags["max_prompt_len"], flags["max_output_len"])
    context = _context_len(flags["model"]) if flags["backend"] == "executor" else model_context_len(flags["model"])
    truncate = flags["truncate"] or flags["trace"] is None
    try:
        requests, num_cut = fit_context(requests, context, flags["model"], truncate)
    except CliError as e:
        raise CliError(f"{e} (or --max-prompt-len / --max-output-len)") from None
    notes = []
    if flags["trace"] is None:
        notes.append(f"default workload: the first {len(requests)} requests of the bundled Mooncake sample, outputs "
                     f"cut to {flags['max_output_len']} tokens (--trace, --max-requests, --max-output-len choose others)")
    if num_cut:
        desc["num_truncated"] = num_cut
        notes.append(f"--truncate: {num_cut} of {len(requests)} requests cut to {flags['model']}'s "
                     f"{context:,}-token context")
    return requests, notes


def _check_profile(flags: dict) -> list[str]:
    from sim.guards import check_profile

    if flags["profile"] is None or not Path(flags["profile"]).is_dir():
        return []
    warning = check_profile(flags["profile"], flags["device"], flags["model"], flags["force"], flag="--profile")
    if warning:
        typer.echo(warning, err=True)
    return [warning] if warning else []


def _context_len(model: str) -> int | None:
    from executor.config import load_config

    return getattr(load_config(model), "max_position_embeddings", None)


def _serve(flags: dict, requests, progress):
    from executor.runner import RunConfig, open_backend, serve
    from yoda.request import SLO

    slo = SLO(ttft_ms=flags["slo_ttft_ms"], tbt_ms=flags["slo_tbt_ms"],
              ttft_ms_per_token=flags["slo_ttft_ms_per_token"])
    cfg = RunConfig(model=flags["model"], weights=flags["weights"], device=flags["device"], policy=flags["policy"],
                    profile=str(flags["profile"]) if flags["profile"] else None, slo=slo,
                    policy_options=policy_options(flags["policy"], flags["option"], []),
                    num_layers=flags["num_layers"], kv_blocks=flags["kv_blocks"], max_batch=flags["max_batch"],
                    seed=flags["seed"], clock=flags["clock"])
    if cfg.profile and not Path(cfg.profile).is_dir():
        raise ValueError(f"--profile {cfg.profile} is not a directory")
    backend = open_backend(cfg.model, cfg.device, cfg.weights, cfg.num_layers, cfg.seed, cfg.cpu_threads)
    if cfg.policy != "yoda":
        return serve(requests, cfg, backend, progress=progress)
    from calibration.estimators import run_estimator  # the CLI chooses the estimator; the runner is given it

    return serve(requests, cfg, backend, *run_estimator(backend, cfg), progress=progress)


def _simulate(flags: dict, requests):
    """--backend sim: the simulator on the same workload (latency: the profile, else the roofline)."""
    from sim.cli_options import make_config
    from sim.run import simulate

    sim_flags = {**flags, "gpu": "h100", "tp": 1, "instances": 1, "prefill_instances": None,
                 "dispatcher": "slo_aware", "latency": str(flags["profile"]) if flags["profile"] else "roofline",
                 "no_contention": False, "ablation": []}
    return simulate(requests, make_config(sim_flags))


def register(app: typer.Typer) -> None:
    """Mount `run` on the main `yoda` app."""
    app.command("run", cls=OneLineErrors)(run_cmd)
