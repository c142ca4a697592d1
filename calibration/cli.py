"""`yoda calibrate` and `yoda validate`: measure the executor on a device, then check the simulator on it.

    yoda calibrate --backend executor --model tiny --device cpu --grid coarse --out prof/cpu-tiny
    yoda calibrate --backend executor --model llama3-8b --device cuda --num-layers 8 --grid coarse --out prof/h100
    yoda validate --profile prof/cpu-tiny --trace synthetic:sharegpt:6 --policy yoda --max-prompt-len 512 \\
        --max-output-len 16 --repeats 3 --json

Bad flags print one `error: ...` line on stderr and exit with status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sim.cli_errors import OneLineErrors, fail, require_extra, user_errors
from sim.cli_options import (FORMAT, JSON_OUT, MAX_REQUESTS, OPTION, POLICY, SEED, SLO_PER_TOKEN, SLO_TBT, SLO_TTFT,
                             TRACE, policy_options, trace_path)

MODEL = typer.Option(None, "--model", help="built-in config name or config.json path (validate: default the "
                     "profile's model)")
WEIGHTS = typer.Option(None, "--weights", help="local safetensors (default: random weights; timing is the same)")


def calibrate_cmd(
    backend: str = typer.Option("executor", "--backend", help="what to measure: executor"),
    model: str = typer.Option("tiny", "--model", help="built-in config name or config.json path"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    grid: str = typer.Option("coarse", "--grid", help="quick, coarse or full (see calibration/bench.py GRIDS)"),
    num_layers: int | None = typer.Option(None, "--num-layers", help="measure only the first N layers (faster; "
                                          "serve with the same --num-layers)"),
    weights: str | None = WEIGHTS,
    reps: int | None = typer.Option(None, "--reps", help="rounds over the grid (default: the grid's)"),
    clock: str = typer.Option("cpu", "--clock", help="CPU only: cpu (this thread's CPU time, immune to load) or wall"),
    out: Path = typer.Option(..., "--out", help="profile directory (created; a rerun resumes it)"),
    as_json: bool = JSON_OUT,
) -> None:
    """Measure solo prefill/decode latency per partition size (and on CUDA the both-lanes contention grid),
    write samples.csv, contention.csv, metadata.json, fit.json and latency.png into --out."""
    if backend != "executor":
        fail(f"--backend must be executor (the simulator needs no calibration), got {backend!r}")
    with user_errors():
        require_extra("yoda calibrate", "torch", "transformers")
    from calibration.measure import calibrate, grid_for
    from executor.runner import open_backend
    from sim.progress import stderr_is_terminal

    with user_errors():
        if device not in ("cpu", "cuda") or clock not in ("cpu", "wall") or (reps is not None and reps < 1):
            raise ValueError("--device must be cpu or cuda, --clock cpu or wall, --reps >= 1")
        grid_for(device, grid)
        bench_backend = open_backend(model, device, weights, num_layers)
        summary = calibrate(out, bench_backend, grid, reps=reps, progress=not as_json and stderr_is_terminal(),
                            clock=clock)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    from sim.outputs import console

    c = console()
    c.print(f"measured {summary['measured']} new samples ({summary['num_points']} points x rounds in {out}), "
            f"{summary['contention_measured']} contention cells in {summary['wall_s']:.1f} s", highlight=False)
    for note in summary["notes"]:
        c.print(f"note: {note}", highlight=False, markup=False)
    for r in summary["fit_reports"]:
        c.print(f"fit {r['phase']}: held-out mean |error| {r['mean_abs_err']:.1%}, P90 {r['p90_abs_err']:.1%}, "
                f"max {r['max_abs_err']:.1%} ({r['num_holdout']} of {r['num_samples'] + r['num_holdout']} points)",
                highlight=False)


def validate_cmd(
    profile: Path = typer.Option(..., "--profile", help="calibration profile dir (yoda calibrate)"),
    trace: str | None = TRACE, fmt: str | None = FORMAT, policy: str = POLICY, model: str | None = MODEL,
    weights: str | None = WEIGHTS,
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: the profile's device)"),
    max_requests: int | None = MAX_REQUESTS,
    rate: float | None = typer.Option(None, "--rate", help="request rate (req/s) to replay the trace at"),
    slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN, slo_tbt_ms: float = SLO_TBT,
    seed: int = SEED, option: list[str] = OPTION,
    max_prompt_len: int | None = typer.Option(None, "--max-prompt-len", help="cut prompts to N tokens"),
    max_output_len: int | None = typer.Option(None, "--max-output-len", help="cut outputs to N tokens"),
    repeats: int | None = typer.Option(None, "--repeats", help="serve the trace N times; per request the best run "
                                       "is compared (other work only slows runs down); default 5 on the CPU, "
                                       "1 on CUDA"),
    clock: str | None = typer.Option(None, "--clock", help="CPU: cpu or wall (default: the profile's)"),
    interleave: bool = typer.Option(False, "--interleave", help="measure one more calibration round into --profile "
                                    "before each repeat (shared machines: profile and runs then see the same load)"),
    max_batch: int = typer.Option(256, "--max-batch", help="decode batch cap (largest CUDA-graph batch)"),
    kv_blocks: int | None = typer.Option(None, "--kv-blocks", help="KV cache blocks (default: the trace's need on "
                                         "the CPU, free memory on CUDA)"),
    no_goodput: bool = typer.Option(False, "--no-goodput", help="skip the goodput searches (faster)"),
    max_probes: int = typer.Option(6, "--max-probes", help="rates each goodput search may try"),
    out: Path | None = typer.Option(None, "--out", help="write validation.json, requests.csv, the executor's "
                                    "results and predicted_vs_measured.png here"),
    as_json: bool = JSON_OUT,
) -> None:
    """Serve a trace on the executor, replay the same requests in the simulator on the profile, and report
    per-request TTFT/TBT/E2E errors (median and P90), P99s side by side and both goodputs."""
    flags = {k: v for k, v in locals().items()}
    with user_errors():
        require_extra("yoda validate", "torch", "transformers")
    from calibration.validate import ValidateConfig, validate, write_validation
    from executor.runner import clamp_lengths
    from sim.workloads import load_workload
    from yoda.request import SLO

    with user_errors():
        if not (profile / "samples.csv").exists() and not (profile / "samples.parquet").exists():
            raise ValueError(f"--profile {profile} is not a calibration profile (no samples.csv)")
        requests, desc = load_workload(trace_path(flags), fmt, rate, None, "original", 1.0, seed, max_requests)
        requests = clamp_lengths(requests, max_prompt_len, max_output_len)
        slo = SLO(ttft_ms=slo_ttft_ms, tbt_ms=slo_tbt_ms, ttft_ms_per_token=slo_ttft_ms_per_token)
        cfg = ValidateConfig(profile=str(profile), policy=policy, model=model, weights=weights, device=device, slo=slo,
                             policy_options=policy_options(policy, option, []), seed=seed, clock=clock,
                             goodput=not no_goodput, max_probes=max_probes, repeats=repeats, max_batch=max_batch,
                             kv_blocks=kv_blocks, interleave=interleave)
        err = None if as_json else _stderr()
        on_probe = (lambda side, r, m: err.print(f"goodput probe ({side}) {r:.3f} req/s: attainment "
                                                 f"{m['slo_attainment']:.0%}", highlight=False)) if err else None
        result = validate(requests, cfg, desc, on_probe)
    if out is not None:
        with user_errors():
            paths = write_validation(out, result)
    if as_json:
        from sim.outputs import json_safe
        sys.stdout.write(json.dumps(json_safe(result.report)) + "\n")
        return
    from sim.outputs import console

    c = console()
    c.print(_table(result.report))
    if out is not None:
        c.print("wrote " + ", ".join(str(p) for p in paths.values()))


def _stderr():
    from sim.outputs import console
    return console(stderr=True)


def _table(report: dict):
    from rich.table import Table

    from sim.outputs import format_ms

    t = Table(title=f"{report['policy']}: executor ({report['device']}, {report['clock']} clock) vs simulator on "
                    f"{Path(report['profile']).name}, {report['num_requests']} requests x {report['repeats']}")
    for col in ("metric", "median |err|", "P90 |err|", "measured P50 / P99 (ms)", "predicted P50 / P99 (ms)"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    m, p = report["measured"], report["predicted"]
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    for name, key in (("TTFT", "ttft"), ("TBT", "tbt"), ("E2E", "e2e")):
        stat = "e2el" if key == "e2e" else key
        t.add_row(name, pct(report[f"median_{key}_abs_err"]), pct(report[f"p90_{key}_abs_err"]),
                  f"{format_ms(m[f'median_{stat}_ms'])} / {format_ms(m[f'p99_{stat}_ms'])}",
                  f"{format_ms(p[f'median_{stat}_ms'])} / {format_ms(p[f'p99_{stat}_ms'])}")
    t.add_row("SLO attainment", "", "", f"{m['slo_attainment']:.0%}", f"{p['slo_attainment']:.0%}")
    g = report.get("goodput")
    if g and "executor_rps" in g:
        t.add_row("goodput (req/s)", "", "", f"{g['executor_rps']:.3f}", f"{g['simulator_rps']:.3f}")
    return t


def register(app: typer.Typer) -> None:
    """Mount `calibrate` and `validate` on the main `yoda` app."""
    app.command("calibrate", cls=OneLineErrors)(calibrate_cmd)
    app.command("validate", cls=OneLineErrors)(validate_cmd)
