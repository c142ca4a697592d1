"""Validate the simulator against the executor: serve a trace for real, replay the same requests (arrivals,
lengths, prefixes, seed, policy, KV blocks) in the simulator on the calibration profile, compare per request.

    yoda validate --profile calibration/profiles/cpu-tiny --trace synthetic:sharegpt:6 --policy yoda --json
    from calibration.validate import ValidateConfig, validate
    report = validate(requests, ValidateConfig(profile="calibration/profiles/cpu-tiny")).report

Both sides plan with the same estimator (load_estimator(profile)). On CUDA the simulator's GPU has two
lanes with the contention model; on the CPU the executor has one lane (the launches of a plan run one
after the other), which `SerialLane` models. Errors are |predicted - measured| / measured per request
(TTFT, TBT = the request's mean gap between tokens, E2E), summarised by their median and P90.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from sim.latency import launch_solo_s
from sim.profile_table import ProfileTableLatency, read_profile_table
from yoda.metrics import compute_metrics
from yoda.request import SLO, Request, RequestRecord

METRICS = ("ttft", "tbt", "e2e")
CPU_REPEATS = 5  # a CPU shared with other work: the best of 5 runs per request is a stable measurement


@dataclass(frozen=True)
class ValidateConfig:
    profile: str
    policy: str = "yoda"
    model: str | None = None  # None: the profile's model
    weights: str | None = None
    device: str | None = None  # None: the profile's device type
    slo: SLO = field(default_factory=SLO)
    policy_options: dict = field(default_factory=dict)
    seed: int = 0
    kv_blocks: int | None = None
    max_batch: int = 256
    clock: str | None = None  # CPU: None takes the profile's clock
    goodput: bool = True
    max_probes: int = 6
    repeats: int | None = None  # serve the trace N times, compare each request's best run (None: 5 CPU, 1 CUDA)
    interleave: bool = False  # measure one more calibration round into the profile before each repeat

    def __post_init__(self) -> None:
        if (self.repeats is not None and self.repeats < 1) or self.max_probes < 1:
            raise ValueError("repeats and max_probes must be >= 1")


@dataclass
class Validation:
    report: dict
    per_request: pd.DataFrame
    measured: list  # executor.runner.RunResult of every repeat
    predicted_records: list[RequestRecord]


def validate(requests: Sequence[Request], cfg: ValidateConfig, desc: dict | None = None,
             on_probe: Callable[[str, float, dict], None] | None = None) -> Validation:
    from calibration.fit import load_estimator
    from executor.runner import RunConfig, open_backend, serve

    started = time.perf_counter()
    _, meta = read_profile_table(cfg.profile)
    run_cfg = _run_config(cfg, meta, RunConfig)
    backend = open_backend(run_cfg.model, run_cfg.device, cfg.weights, meta.get("num_layers"), cfg.seed,
                           run_cfg.cpu_threads)
    source = f"calibration profile {cfg.profile}"
    repeats = cfg.repeats or (CPU_REPEATS if run_cfg.device == "cpu" else 1)
    estimator = load_estimator(cfg.profile)  # fixed before any interleaved round: both sides plan alike
    runs = []
    for _ in range(repeats):
        if cfg.interleave:
            _one_more_round(cfg.profile, backend)
        runs.append(serve(requests, run_cfg, backend, copy.deepcopy(estimator), source))
    if cfg.interleave:
        from calibration.fit import fit_profile
        fit_profile(cfg.profile)
    kv_blocks = runs[0].metrics["kv_blocks"]
    predicted = simulate_profile(requests, cfg, meta, kv_blocks, backend.num_sms, backend.model.num_layers,
                                 copy.deepcopy(estimator))
    per_request = compare([run.records for run in runs], predicted)
    report = summarize(per_request, [run.records for run in runs], predicted, cfg.slo)
    report.update(profile=str(cfg.profile), policy=cfg.policy, device=run_cfg.device, clock=run_cfg.clock,
                  model=run_cfg.model, num_layers=backend.model.num_layers, kv_blocks=kv_blocks,
                  lanes="serial (one CPU lane)" if run_cfg.device == "cpu" else "two lanes with contention model",
                  estimator=source, measured_at=meta.get("date"), repeats=repeats,
                  executor_wall_s=sum(run.wall_s for run in runs))
    if cfg.goodput and desc is not None:
        fixed = dataclasses.replace(run_cfg, kv_blocks=kv_blocks)  # every probe runs the same KV size
        report["goodput"] = _goodputs(requests, desc, cfg, meta, fixed, backend, on_probe)
    report["wall_s"] = time.perf_counter() - started
    return Validation(report, per_request, runs, predicted)


def _one_more_round(profile: str, backend) -> None:
    """Measure the profile's grid once more (resuming adds exactly one round): on a shared machine the
    profile's best-of-rounds then spans the same time, and load, as the executor's runs."""
    from calibration.measure import calibrate

    _, meta = read_profile_table(profile)
    calibrate(profile, backend, meta["grid_name"], int(meta.get("block_size", 16)), reps=meta["grid"]["reps"] + 1,
              progress=False, clock=meta.get("clock", "cpu"), fit=False)


def _run_config(cfg: ValidateConfig, meta: dict, run_config_cls):
    device = cfg.device or meta.get("device", {}).get("type", "cpu")
    clock = cfg.clock or (meta.get("clock", "wall") if device == "cpu" else "wall")
    threads = int(meta.get("device", {}).get("torch_threads") or 1)
    return run_config_cls(model=cfg.model or meta.get("model", "tiny"), weights=cfg.weights, device=device,
                          policy=cfg.policy, profile=str(cfg.profile), slo=cfg.slo, policy_options=cfg.policy_options,
                          num_layers=meta.get("num_layers"), block_size=int(meta.get("block_size", 16)),
                          kv_blocks=cfg.kv_blocks, max_batch=cfg.max_batch, seed=cfg.seed, cpu_threads=threads,
                          clock=clock)


# ---- the simulator side ----------------------------------------------------------------------------
class SerialLane:
    """The simulator's picture of the CPU executor: one lane; the launches of a plan run one after the
    other, and the next plan is made once all of them finished (the CPU engine runs a launch inside
    `start`). Same interface as sim.gpu_instance.GpuInstance for arrivals."""

    def __init__(self, env, scheduler, latency, num_layers: int) -> None:
        self.env, self.scheduler, self.latency, self.num_layers = env, scheduler, latency, num_layers
        self.running = 0
        self._pending = False

    def submit(self, request: Request) -> None:
        self.scheduler.on_arrival(request, self.env.now)
        self.scheduler.records[-1].instance = 0
        self.kick()

    def kick(self) -> None:
        if not self._pending and not self.running:
            self._pending = True
            self.env.timeout(0).callbacks.append(self._decide)

    def _decide(self, _event) -> None:
        self._pending = False
        delay = 0.0
        for launch in self.scheduler.schedule(self.env.now, {}):
            delay += launch_solo_s(self.latency, launch, self.num_layers)
            self.running += 1
            self.env.timeout(delay).callbacks.append(partial(self._done, launch))

    def _done(self, launch, _event) -> None:
        self.scheduler.on_launch_done(launch, self.env.now)
        self.running -= 1
        self.kick()


def simulate_profile(requests: Sequence[Request], cfg: ValidateConfig, meta: dict, kv_blocks: int, num_sms: int,
                     num_layers: int, estimator=None) -> list[RequestRecord]:
    """Replay `requests` in the simulator with the profile as ground truth and the executor's setup.
    NOTE: built here rather than with sim.run.SimConfig, which cannot take a measured device spec, an
    injected estimator or a one-lane GPU (see the report to the sim owners)."""
    import simpy

    from calibration.fit import gpu_spec, load_estimator, model_spec
    from executor.config import load_config
    from sim.gpu_instance import GpuInstance
    from yoda.policies import make_scheduler
    from yoda.scheduler import SchedulerConfig

    sched_cfg = SchedulerConfig(num_sms=num_sms, num_layers=num_layers, kv_blocks=kv_blocks,
                                block_size=int(meta.get("block_size", 16)), max_batch=cfg.max_batch)
    options = dict(cfg.policy_options)
    if cfg.policy == "yoda":
        options["estimator"] = estimator or load_estimator(cfg.profile)
        # the executor runs one decode step per launch, so its gangs are the paper's one-iteration gangs
        options.setdefault("gang_steps", 1)
    else:
        options = {k: v for k, v in options.items() if k not in ("granularity", "step_sms")}
    scheduler = make_scheduler(cfg.policy, sched_cfg, cfg.slo, **options)
    env = simpy.Environment()
    latency = ProfileTableLatency(cfg.profile)
    device = meta.get("device", {})
    if (cfg.device or device.get("type")) == "cpu":
        lane = SerialLane(env, scheduler, latency, num_layers)
    else:
        config = load_config(cfg.model or meta["model"])
        config.num_hidden_layers = num_layers
        lane = GpuInstance(env, 0, scheduler, latency, measured_contention(cfg.profile), gpu_spec(device),
                           model_spec(config, meta.get("model", "model")), record_timeline=False)

    def arrivals():
        for request in sorted(requests, key=lambda r: (r.arrival_at, r.request_id)):
            if request.arrival_at > env.now:
                yield env.timeout(request.arrival_at - env.now)
            lane.submit(request)

    env.process(arrivals())
    env.run()
    unfinished = [r.request_id for r in scheduler.records if r.finished_at is None]
    if unfinished:
        raise RuntimeError(f"simulation ended with {len(unfinished)} unfinished requests (first: {unfinished[:5]})")
    return scheduler.records


def measured_contention(profile: str | Path):
    """The simulator's contention model capped at the worst slowdown the profile measured (contention.csv),
    else at the GPU's default."""
    from sim.contention import ContentionModel

    path = Path(profile) / "contention.csv"
    if not path.exists():
        return ContentionModel()
    worst = float(pd.read_csv(path)["slowdown"].max())
    return ContentionModel(max_slowdown=min(max(worst - 1.0, 0.0), 0.99))


# ---- comparison ------------------------------------------------------------------------------------
def _values(r: RequestRecord) -> dict[str, float | None]:
    return {"ttft": r.ttft_s, "tbt": r.tpot_s, "e2e": r.e2e_s}


def compare(measured_runs: Sequence[Sequence[RequestRecord]], predicted: Sequence[RequestRecord]) -> pd.DataFrame:
    """One row per request: measured (the best of repeated runs: interference from other work only slows a
    run down) and predicted TTFT, TBT (the request's mean gap between tokens) and E2E in ms, and
    |predicted - measured| / measured."""
    by_id = {r.request_id: r for r in predicted}
    repeats = [{r.request_id: r for r in run} for run in measured_runs]
    rows = []
    for m in measured_runs[0]:
        p = by_id[m.request_id]
        row = {"request_id": m.request_id, "arrival_at": m.arrival_at, "prompt_len": m.prompt_len,
               "output_len": m.output_len, "reused_len": m.reused_len, "reused_len_predicted": p.reused_len,
               "preemptions": m.num_preemptions, "preemptions_predicted": p.num_preemptions}
        pv = _values(p)
        for name in METRICS:
            values = [v for run in repeats if (v := _values(run[m.request_id])[name]) is not None]
            a, b = (min(values) if values else None), pv[name]
            row[f"{name}_ms"] = None if a is None else a * 1000
            row[f"{name}_predicted_ms"] = None if b is None else b * 1000
            row[f"{name}_abs_err"] = abs(b - a) / a if a and b is not None else None
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(per_request: pd.DataFrame, measured_runs: Sequence[Sequence[RequestRecord]],
              predicted: Sequence[RequestRecord], slo: SLO) -> dict:
    """Median and P90 of the per-request errors; latency percentiles side by side (measured: the median
    over repeats of each run's value)."""
    out: dict = {"num_requests": len(per_request)}
    for name in METRICS:
        errors = per_request[f"{name}_abs_err"].dropna().to_numpy(float)
        out[f"median_{name}_abs_err"] = float(np.median(errors)) if errors.size else None
        out[f"p90_{name}_abs_err"] = float(np.percentile(errors, 90)) if errors.size else None
    keys = [f"{stat}_{m}_ms" for m in ("ttft", "tbt", "e2el") for stat in ("median", "p90", "p99")]
    keys += ["slo_attainment", "num_preemptions", "kv_reuse_fraction", "request_throughput"]
    runs = [compute_metrics(records, slo) for records in measured_runs]
    out["measured"] = {k: float(np.median([m[k] for m in runs])) for k in keys}
    out["measured"]["fleet_slo_met"] = all(m["fleet_slo_met"] for m in runs)
    sim = compute_metrics(predicted, slo)
    out["predicted"] = {k: sim[k] for k in (*keys, "fleet_slo_met")}
    return out


def _goodputs(requests, desc, cfg: ValidateConfig, meta: dict, run_cfg, backend, on_probe) -> dict:
    """Goodput both backends find (bisection over re-timings of the trace, same seed at every probe)."""
    from calibration.fit import load_estimator
    from executor.runner import serve
    from sim.workloads import retime
    from yoda.goodput import search_goodput

    start = desc.get("mean_rate_rps") or desc.get("original_rate_rps")
    if not start:
        return {"skipped": "the trace has no rate of its own"}

    def at(rate: float) -> list[Request]:
        return retime(requests, desc, rate=rate, seed=cfg.seed)[0]

    def executor_run(rate: float) -> list[RequestRecord]:
        return serve(at(rate), run_cfg, backend, load_estimator(cfg.profile), "profile").records

    def simulator_run(rate: float) -> list[RequestRecord]:
        return simulate_profile(at(rate), cfg, meta, run_cfg.kv_blocks, backend.num_sms,
                                backend.model.num_layers)

    out = {}
    for name, run in (("executor", executor_run), ("simulator", simulator_run)):
        report = partial(on_probe, name) if on_probe else None
        found = search_goodput(run, cfg.slo, start, rel_tol=0.1, max_probes=cfg.max_probes, on_probe=report)
        out[f"{name}_rps"] = found.goodput_rps
        out[f"{name}_probes"] = found.probes
    return out


# ---- files -------------------------------------------------------------------------------------------
def write_validation(out_dir: str | Path, validation: Validation) -> dict[str, Path]:
    from sim.outputs import json_safe, records_frame, write_results

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"validation.json": out / "validation.json", "requests.csv": out / "requests.csv",
             "simulator_requests.parquet": out / "simulator_requests.parquet"}
    paths["validation.json"].write_text(json.dumps(json_safe(validation.report), indent=2) + "\n")
    validation.per_request.to_csv(paths["requests.csv"], index=False)
    records_frame(validation.predicted_records).to_parquet(paths["simulator_requests.parquet"], index=False)
    first = validation.measured[0]
    paths.update({f"executor/{k}": v for k, v in write_results(out / "executor", first).items()})
    paths["predicted_vs_measured.png"] = plot_scatter(validation.per_request, out / "predicted_vs_measured.png")
    return paths


def plot_scatter(per_request: pd.DataFrame, path: str | Path) -> Path:
    from sim.outputs import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, name, label in zip(axes, METRICS, ("TTFT (ms)", "TBT, mean per request (ms)", "E2E (ms)")):
        part = per_request[[f"{name}_ms", f"{name}_predicted_ms"]].dropna()
        ax.scatter(part[f"{name}_ms"], part[f"{name}_predicted_ms"], s=10, alpha=0.7)
        if len(part):
            lo, hi = float(part.min().min()), float(part.max().max())
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=0.8, label="predicted = measured")
            err = per_request[f"{name}_abs_err"].median()
            ax.set_title(f"{label}: median |error| {err:.1%}", fontsize=10)
            ax.legend(fontsize=7)
        ax.set_xlabel(f"measured (executor) {label}")
        ax.set_ylabel(f"predicted (simulator) {label}")
        ax.grid(alpha=0.3)
    return _save(fig, path)
