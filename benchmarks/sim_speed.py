"""Simulator speed: our SimPy simulator against Vidur on the same requests, model, GPU and cluster.

    python -m benchmarks.sim_speed [--synthetic-requests 100000] [--instances 4] [--no-vidur] [--out results]
        [--baseline-ref GIT_REF] [--scale 10000,100000,1000000]

Traces: (a) the Mooncake conversation trace (12,031 requests, its own arrival times, 3 s buckets spread
with numpy seed 0); (b) "azure_conv_100k": 100,000 (prompt, output) length pairs drawn with replacement
(seed 0) from the Azure 2023 conversation trace, Poisson arrivals at --synthetic-rate (no prefix sharing,
so Vidur, which has no prefix cache, does the same work as we do). Both simulators model Llama-3-8B on
--instances H100s (one replica each, TP 1), round-robin dispatch, batch cap 128, 16-token KV blocks
with our KV capacity. Vidur runs its Sarathi scheduler (chunked prefill, chunk 512) in its own venv
(see benchmarks/vidur_adapter.py); we time `chunked` (token budget 512), `prefill_first` and `yoda`, each in
one process and with its instances in --workers processes (round-robin instances never interact, so the
records are the same: sim/shards.py); Vidur runs in one process.
With --baseline-ref, each of our runs is timed side by side with the same run on a checkout of that ref
(a temporary git worktree), both in fresh processes, and the records of the two are compared
(benchmarks/speed_runs.py). With --scale, chunked and yoda each simulate Azure-derived traces of those
sizes, one fresh process per run: event-loop wall s and peak RSS, to show cost linear in requests.
Writes results/sim_speed.json and results/sim_speed.md.
"""
from __future__ import annotations

import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import typer

from benchmarks import speed_runs as sr
from benchmarks import vidur_adapter as va
from benchmarks.sim_speed_report import add_rates, device, print_table, write_report  # noqa: F401
from yoda.request import Request

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
MOONCAKE = SHARED / "mooncake" / "conversation_trace.jsonl"
AZURE_CONV = SHARED / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
POLICY_OPTIONS = {"chunked": {"token_budget": 512}, "prefill_first": {}, "yoda": {}}
MAX_BATCH = 128  # vidur precomputes decode-attention predictions up to this batch size
BLOCK_SIZE = 16
VIDUR_SCHEDULER = "sarathi"


# ---- workloads ----------------------------------------------------------------------------------------
def _renumber(requests: list[Request]) -> list[Request]:
    ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
    return [replace(r, request_id=i) for i, r in enumerate(ordered)]


def mooncake_conversation(limit: int | None = None, seed: int = 0) -> list[Request]:
    """The Mooncake conversation trace at its own rate, buckets spread (first `limit` requests)."""
    from traces import load_trace, spread_buckets
    reqs = spread_buckets(load_trace(MOONCAKE).requests, np.random.default_rng(seed))
    return _renumber(reqs[:limit] if limit else reqs)


def azure_conv_resampled(num_requests: int, rate_rps: float, seed: int = 0) -> list[Request]:
    """`num_requests` Azure-conversation length pairs (drawn with replacement), Poisson at `rate_rps`."""
    from traces import load_trace, retime_poisson
    source = load_trace(AZURE_CONV).requests
    rng = np.random.default_rng(seed)
    picked = [replace(source[i], request_id=k) for k, i in enumerate(rng.integers(0, len(source), num_requests))]
    return _renumber(retime_poisson(picked, rate_rps, rng))


def workloads(synthetic_requests: int, synthetic_rate: float, mooncake_limit: int | None
              ) -> dict[str, Callable[[], list[Request]]]:
    return {"mooncake_conversation": lambda: mooncake_conversation(mooncake_limit),
            f"azure_conv_{synthetic_requests // 1000}k":
                lambda: azure_conv_resampled(synthetic_requests, synthetic_rate)}


# ---- our simulator --------------------------------------------------------------------------------------
LATENCY = "roofline"  # the source every checkout has (the default became "measured" later) and Vidur's profile's


def sim_config(policy: str, num_instances: int, latency: str = LATENCY) -> dict:
    """SimConfig keyword arguments of every timed run (plain values: a baseline checkout builds its own).
    The latency source is named, not defaulted, so a baseline checkout with another default times the same
    model."""
    return dict(policy=policy, gpu="h100", model="llama3-8b", num_instances=num_instances,
                dispatcher="round_robin", max_batch=MAX_BATCH, block_size=None, record_timeline=False,
                policy_options=POLICY_OPTIONS.get(policy, {}), latency=latency)


def time_ours(requests: list[Request], policy: str, num_instances: int, workers: int = 1,
              latency: str = LATENCY) -> dict:
    """One simulation of `requests` under `policy` with its instances in up to `workers` processes; wall time
    as SimResult.wall_s (build, run, metrics)."""
    from sim.run import SimConfig, simulate
    cfg = SimConfig(**sim_config(policy, num_instances, latency))
    result = simulate(requests, cfg, workers=workers)
    m = result.metrics
    return {"simulator": "ours", "policy": policy, "processes": min(workers, num_instances),
            "requests": len(requests), "wall_s": result.wall_s,
            "sim_end_s": result.sim_end_s, "p50_ttft_ms": m["p50_ttft_ms"], "p99_ttft_ms": m["p99_ttft_ms"],
            "p99_tbt_ms": m["p99_tbt_ms"], "kv_reuse_fraction": m["kv_reuse_fraction"]}


# ---- Vidur ----------------------------------------------------------------------------------------------
def vidur_setup(requests: list[Request], num_instances: int) -> va.VidurSetup:
    from sim.hardware import get_gpu
    from sim.model_spec import get_model, kv_capacity_blocks
    num_blocks = kv_capacity_blocks(get_model("llama3-8b"), get_gpu("h100"), BLOCK_SIZE)
    max_tokens = max(r.prompt_len + r.output_len for r in requests)
    return va.VidurSetup(num_replicas=num_instances, scheduler=VIDUR_SCHEDULER, chunk_size=512,
                         batch_size_cap=MAX_BATCH, block_size=BLOCK_SIZE, num_blocks=num_blocks, max_tokens=max_tokens)


def time_vidur(requests: list[Request], num_instances: int, work_dir: Path, timeout_s: float) -> dict:
    from sim.hardware import get_gpu
    from sim.latency import RooflineLatency
    from sim.model_spec import get_model
    setup = vidur_setup(requests, num_instances)
    model, gpu = get_model("llama3-8b"), get_gpu("h100")
    profile_hash = va.write_profile(work_dir / "profile", model, gpu, RooflineLatency(model, gpu), setup)
    va.write_trace_csv(((r.arrival_at, r.prompt_len, r.output_len) for r in requests), work_dir / "trace.csv")
    cache_dir = Path.home() / ".cache" / "yoda" / "vidur" / profile_hash
    run = va.run_vidur(setup, work_dir / "trace.csv", work_dir / "profile", cache_dir, work_dir / "run", timeout_s)
    row = {"simulator": "vidur", "policy": f"vidur-{VIDUR_SCHEDULER}", "processes": 1, "requests": len(requests),
           "ok": run.ok,
           "wall_s": run.timings.get("loop_s"), "process_s": run.process_s, "timings": run.timings,
           "sim_end_s": run.sim_end_s, "completed": run.num_completed, "setup": asdict(setup)}
    if not run.ok:
        row.update(error=run.error, log_tail=run.log_tail[-1500:])
    return row


NOTES = [
    "Vidur 0.0.26 downloads kernel profiles from HuggingFace at run time; none for H100 Llama-3-8B is "
    "reachable offline, so its profile is synthesised in Vidur's CSV schema from our roofline constants "
    "(benchmarks/vidur_adapter.py). Vidur's random-forest predictor is trained on it (setup, cached).",
    "Vidur has no prefix cache; the Azure-derived trace has no block hashes, so neither simulator reuses KV "
    "there. On Mooncake ours reuses prefixes (kv_reuse_fraction) and Vidur recomputes them.",
    "Vidur runs in one process: its replicas share one event loop behind its global scheduler. Ours with 2 "
    "processes runs the 4 round-robin instances 2 at a time, each in its own event loop, and gives the same "
    "records as one process (sim/shards.py; tests/sim/test_shards.py).",
    "Vidur's vLLM scheduler (whole-prompt prefill) is not run: its prediction grid would have to span "
    "prefill chunks up to the longest prompt (126K tokens on Mooncake).",
]


def config_text(num_instances: int, synthetic_rate: float, latency: str = LATENCY) -> str:
    return (f"Llama-3-8B on {num_instances} x H100 (TP 1, one replica per GPU), {latency} latency source, round-robin "
            f"dispatch, batch cap "
            f"{MAX_BATCH}, {BLOCK_SIZE}-token KV blocks (ours: the trace's hash block size when it has hashes), "
            f"KV capacity from sim.model_spec.kv_capacity_blocks; chunked token budget 512 = Vidur sarathi chunk "
            f"512; Azure-derived trace at {synthetic_rate:g} req/s Poisson, seed 0.")


def run_ours(traces: dict[str, list[Request]], policies: list[str], num_instances: int,
             progress: Callable[[str], None] = lambda s: None, workers: tuple[int, ...] = (1,),
             baseline: Path | None = None, repeat: int = 1, latency: str = LATENCY) -> list[dict]:
    """Our rows; with `baseline` (a checkout), each run side by side with the same run there."""
    rows = []
    for trace, requests in traces.items():
        for policy in policies:
            for n in workers:
                progress(f"ours/{policy} on {trace} ({len(requests)} requests, {min(n, num_instances)} processes)"
                         + (" and the baseline's" if baseline else ""))
                if baseline is None:
                    rows.append({"trace": trace, **time_ours(requests, policy, num_instances, n, latency)})
                    continue
                ours, base, differ = sr.time_side_by_side(requests, sim_config(policy, num_instances, latency), n,
                                                          baseline, repeat)
                rows.append({"trace": trace, "simulator": "ours", "policy": policy,
                             "processes": min(n, num_instances), "requests": len(requests), **ours,
                             "baseline_wall_s": base["wall_s"], "records_differ": differ,
                             "baseline_p99_tbt_ms": base["p99_tbt_ms"], "baseline_p99_ttft_ms": base["p99_ttft_ms"]})
    return rows


def run_scale(sizes: list[int], policies: list[str], num_instances: int, rate_rps: float,
              progress: Callable[[str], None] = lambda s: None, latency: str = LATENCY) -> list[dict]:
    rows = []
    for policy in policies:
        for n in sizes:
            progress(f"scale: {policy} on {n:,} Azure-derived requests (fresh process)")
            rows.append({"policy": policy, "requests": n, **sr.time_scale(n, rate_rps, sim_config(policy, num_instances, latency))})
    return rows


def comma_counts(text: str, flag: str) -> list[int]:
    """The counts (each >= 1) of a comma-separated option; a bad one is a usage error naming `flag`."""
    try:
        values = [int(float(w)) for w in text.split(",") if w]
    except ValueError:
        raise typer.BadParameter(f"{flag} needs comma-separated counts, got {text!r}") from None
    if any(v < 1 for v in values):
        raise typer.BadParameter(f"{flag} needs counts >= 1, got {text!r}")
    return values


def main(synthetic_requests: int = typer.Option(100_000, help="requests in the Azure-derived trace"),
         synthetic_rate: float = typer.Option(40.0, help="its Poisson arrival rate, req/s"),
         mooncake_requests: int = typer.Option(0, help="first N Mooncake requests (0: all 12,031)"),
         instances: int = typer.Option(4, help="H100s (replicas) for both simulators"),
         policies: str = typer.Option("chunked,prefill_first,yoda", help="our policies to time"),
         workers: str = typer.Option("1,2", help="process counts to time ours with (instances run in parallel)"),
         vidur: bool = typer.Option(True, help="also time Vidur (needs .vidur-venv)"),
         vidur_timeout: float = typer.Option(3600.0, help="seconds per Vidur run"),
         baseline_ref: str = typer.Option("", help="git ref to time side by side with ours (a temporary worktree)"),
         repeat: int = typer.Option(1, help="with --baseline-ref: runs per side, the fastest counts"),
         scale: str = typer.Option("", help="Azure-derived sizes for the scaling table, e.g. 10000,100000,1000000"),
         scale_policies: str = typer.Option("chunked,yoda", help="policies of the scaling table"),
         latency: str = typer.Option(LATENCY, help="our latency source (roofline: what Vidur's synthesised profile "
                                     "and every baseline checkout share)"),
         out: Path = Path("results")) -> None:
    started = time.perf_counter()
    say = lambda s: print(f"[{time.perf_counter() - started:6.0f} s] {s}", flush=True)  # noqa: E731
    names = [p for p in policies.split(",") if p]
    counts = tuple(comma_counts(workers, "--workers"))
    sizes = comma_counts(scale, "--scale")
    if not counts:
        raise typer.BadParameter(f"--workers needs process counts >= 1, got {workers!r}")
    version, why = va.vidur_status() if vidur else (None, "--no-vidur given")
    if not version:
        say(f"Vidur skipped: {why}")
    rows: list[dict] = []
    with ExitStack() as stack:
        baseline = stack.enter_context(sr.baseline_checkout(baseline_ref)) if baseline_ref else None
        commit = sr.commit_of(baseline) if baseline else None
        for trace, make in workloads(synthetic_requests, synthetic_rate, mooncake_requests or None).items():
            requests = make()
            rows += run_ours({trace: requests}, names, instances, say, counts, baseline, repeat, latency)
            if version:
                say(f"vidur/{VIDUR_SCHEDULER} on {trace} ({len(requests)} requests)")
                with tempfile.TemporaryDirectory(prefix="vidur-") as tmp:
                    row = {"trace": trace, **time_vidur(requests, instances, Path(tmp), vidur_timeout)}
                if not row["ok"]:
                    say(f"Vidur failed on {trace}: {row['error']}\n{row['log_tail']}")
                rows.append(row)
    scale_rows = run_scale(sizes, [p for p in scale_policies.split(",") if p], instances, synthetic_rate, say,
                           latency)
    add_rates(rows)
    print_table(rows, scale_rows)
    report = {"command": "python -m benchmarks.sim_speed " + shlex.join(sys.argv[1:]),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device(),
              "config": {"instances": instances, "max_batch": MAX_BATCH, "block_size": BLOCK_SIZE,
                         "synthetic_requests": synthetic_requests, "synthetic_rate_rps": synthetic_rate,
                         "vidur_scheduler": VIDUR_SCHEDULER, "policy_options": POLICY_OPTIONS,
                         "workers": list(counts), "latency": latency},
              "config_text": config_text(instances, synthetic_rate, latency),
              "baseline_ref": baseline_ref or None, "baseline_commit": commit,
              "vidur": {"version": version, "skipped": None if version else why}, "rows": rows,
              "scale": scale_rows, "scale_text": SCALE_TEXT.format(rate=synthetic_rate, instances=instances),
              "notes": NOTES, "script_wall_s": time.perf_counter() - started}
    write_report(out, report)
    say(f"wrote {out / 'sim_speed.json'} and {out / 'sim_speed.md'}")


SCALE_TEXT = ("Azure-derived traces (length pairs drawn with replacement from the Azure 2023 conversation trace, "
              "Poisson at {rate:g} req/s, seed 0) on {instances} x H100, round-robin, one instance's event loop "
              "after another in one process. One fresh process per run: wall s is the event loop (cluster build "
              "and replay, not the metrics, whose every-token-gap arrays would outgrow the simulation at 1M); "
              "peak RSS is the whole process (interpreter, trace, records). Finished records keep their token "
              "times as arrays of doubles (SimConfig.compact_records). Cost linear in requests: us / request "
              "stays flat.")


if __name__ == "__main__":
    typer.run(main)
