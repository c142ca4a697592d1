"""Fit the policy's estimator (yoda/estimator.py) from a calibration profile, and describe the profile's
device and model to the simulator.

    from calibration.fit import load_estimator
    est = load_estimator("calibration/profiles/cpu-tiny")     # solo fits per SM size + contention guards
    report = fit_profile("prof/h100")                         # writes fit.json and latency.png

The solo fits come from samples.csv (one row per grid point, the best of its rounds; raw rounds are in
rounds.csv): Estimator.fit reports the held-out error per phase, then the estimator is refit on all points.
The guards come from contention.csv (worst slowdown per grid cell, the worst overall as the default);
without it (CPU profiles) the guards keep GuardTable's default.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from sim.hardware import GpuSpec, get_gpu
from sim.model_spec import ModelSpec, from_hf_config
from sim.profile_table import read_profile_table
from yoda.estimator import Estimator, Sample
from yoda.guard import GuardTable

PLOT_FILE = "latency.png"


POINT_KEY = ["phase", "num_sms", "new_len", "reused_len", "batch", "context_len"]


def best_of_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per grid point: the fastest of its rounds (interference from other work only ever slows
    a launch down, so the minimum is the load-robust estimate, as timeit takes it), `rounds` counted."""
    frame = rounds.copy()
    if "context_len" not in frame:  # profiles from elsewhere: decode points differ by kv_len
        frame["context_len"] = frame["kv_len"] // frame["batch"].clip(lower=1)
    best = frame.loc[frame.groupby(POINT_KEY, sort=True)["latency_s"].idxmin()].reset_index(drop=True)
    best["rounds"] = frame.groupby(POINT_KEY, sort=True).size().to_numpy()
    return best.drop(columns=[c for c in ("round",) if c in best])


def to_samples(points: pd.DataFrame) -> list[Sample]:
    return [Sample(str(r.phase), int(r.num_sms), int(r.new_len), int(r.reused_len), int(r.batch), int(r.kv_len),
                   float(r.latency_s)) for r in points.itertuples(index=False)]


def profile_samples(directory: str | Path) -> list[Sample]:
    samples, _ = read_profile_table(directory)
    return to_samples(best_of_rounds(samples))


def load_guards(directory: str | Path) -> tuple[GuardTable, GuardTable]:
    """(decode guard, prefill guard) from contention.csv; defaults when there is none."""
    decode, prefill = GuardTable(), GuardTable()
    path = Path(directory) / "contention.csv"
    if not path.exists():
        return decode, prefill
    for r in pd.read_csv(path).itertuples(index=False):
        guard, sms = (decode, r.decode_sms) if r.lane == "decode" else (prefill, r.prefill_sms)
        cell = GuardTable.cell(int(sms), r.prefill_new, r.prefill_reused, r.decode_batch, r.decode_context)
        guard.set_worst(cell, max(float(r.slowdown), 1.0))
    for guard in (decode, prefill):
        if guard.factors:
            guard.default = guard.worst
    return decode, prefill


def load_estimator(directory: str | Path) -> Estimator:
    """The estimator a policy plans with on the profiled device (fresh object: guards refine online)."""
    if not (Path(directory) / "samples.csv").exists() and not (Path(directory) / "samples.parquet").exists():
        raise ValueError(f"{directory} is not a calibration profile (no samples.csv)")
    samples = profile_samples(directory)
    est = Estimator.fit(samples).refit_all(samples)
    est.decode_guard, est.prefill_guard = load_guards(directory)
    return est


def fit_profile(directory: str | Path, plots: bool = True) -> dict:
    """Fit, write fit.json (coefficients per SM size, held-out error reports, guards) and the plot."""
    directory = Path(directory)
    est = load_estimator(directory)
    fit = {
        "units": "milliseconds; token counts in units of 1024 (yoda/estimator.py)",
        "prefill_features": ["sum n^2", "sum n*r", "sum n", "1"], "decode_features": ["sum kv", "batch", "1"],
        "prefill_coef": {str(s): {str(k): list(c) for k, c in by.items()}
                         for s, by in sorted(est.prefill_coef.items())},
        "decode_coef": {str(s): list(c) for s, c in sorted(est.decode_coef.items())},
        "mixed_features": ["n^2", "n*r", "n", "1", "sum kv", "batch"],
        "mixed_coef": {str(s): {str(k): list(c) for k, c in by.items()} for s, by in sorted(est.mixed_coef.items())},
        "reports": [dataclasses.asdict(r) for r in est.reports],
        "guard": {name: {"default": g.default, "num_cells": len(g.factors), "worst": g.worst}
                  for name, g in (("decode", est.decode_guard), ("prefill", est.prefill_guard))},
    }
    (directory / "fit.json").write_text(json.dumps(fit, indent=1) + "\n")
    if plots:
        samples, metadata = read_profile_table(directory)
        rounds_path = directory / "rounds.csv"
        rounds = pd.read_csv(rounds_path) if rounds_path.exists() else None
        plot_profile(samples, metadata, directory / PLOT_FILE, rounds)
    return fit


# ---- specs for the simulator and the roofline ------------------------------------------------------
def model_spec(config, name: str = "model") -> ModelSpec:
    """ModelSpec of a transformers config (the executor's model, with its layer count)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return from_hf_config({**raw, "_name_or_path": name})


def gpu_spec(device: dict) -> GpuSpec:
    """GpuSpec of a profile's `device` metadata: a built-in GPU by name (SM count as measured), else one
    made of the measured matmul and copy peaks (the CPU: its logical SM count, RAM as memory)."""
    name = str(device.get("name", "")).lower()
    for key in ("h200", "h100", "h800", "a100"):
        if key in name:
            return dataclasses.replace(get_gpu(key), num_sms=int(device.get("num_sms") or get_gpu(key).num_sms))
    label = "cpu" if device.get("type") == "cpu" else name or "gpu"
    return GpuSpec(label, num_sms=int(device["num_sms"]), bf16_tflops=max(float(device.get("matmul_tflops", 1)), 1e-3),
                   hbm_gbps=max(float(device.get("copy_gbps", 10)), 1e-3), hbm_gib=float(device.get("memory_gib", 16)))


def roofline_estimator(backend) -> Estimator:
    """Estimator fitted on the analytic roofline of the backend's model on its GPU's datasheet numbers."""
    import torch

    from sim.contention import ContentionModel
    from sim.latency import RooflineLatency
    from sim.sampling import fit_estimator
    from yoda.partitions import PartitionMenu

    props = torch.cuda.get_device_properties(backend.device)
    gpu = gpu_spec({"name": props.name, "num_sms": props.multi_processor_count, "type": "cuda",
                    "memory_gib": props.total_memory / 2**30})
    model = model_spec(backend.model.config, backend.model_name)
    return fit_estimator(RooflineLatency(model, gpu), ContentionModel(), gpu, model, PartitionMenu(backend.num_sms),
                         noise=0.0)  # analytic samples: nothing was measured


# ---- plots -----------------------------------------------------------------------------------------
def plot_profile(samples: pd.DataFrame, metadata: dict, path: str | Path, rounds: pd.DataFrame | None = None) -> Path:
    """Latency per grid point (lines: best round; dots: every round) against SMs when several SM sizes
    were measured, else (the CPU) against new tokens (prefill) and decode batch."""
    from sim.outputs import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    by_sms = samples["num_sms"].nunique() > 1
    for ax, phase in zip(axes, ("prefill", "decode")):
        if by_sms:
            line_key = ("new_len", "reused_len", "batch") if phase == "prefill" else ("batch", "context_len")
            x = "num_sms"
        else:
            line_key, x = (("reused_len", "batch"), "new_len") if phase == "prefill" else (("context_len",), "batch")
        groups = list(samples[samples["phase"] == phase].groupby(list(line_key)))
        raw = rounds[rounds["phase"] == phase] if rounds is not None else None
        for i, (keys, group) in enumerate(groups[:: max(1, len(groups) // 12)]):  # at most ~12 lines
            keys = keys if isinstance(keys, tuple) else (keys,)
            g = group.sort_values(x)
            ax.plot(g[x], g["latency_s"] * 1000, marker="o", markersize=3, color=f"C{i % 10}",
                    label=", ".join(f"{k}={v}" for k, v in zip(line_key, keys)))
            if raw is not None:
                mine = raw[(raw[list(line_key)] == list(keys)).all(axis=1)]
                ax.scatter(mine[x], mine["latency_s"] * 1000, s=4, alpha=0.3, color=f"C{i % 10}")
        ax.set_xlabel({"num_sms": "SMs", "new_len": "new tokens", "batch": "decode batch"}[x])
        ax.set_ylabel(f"{phase} latency (ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    dev = metadata.get("device", {})
    fig.suptitle(f"{metadata.get('model')} ({metadata.get('num_layers')} layers) on {dev.get('name')} "
                 f"[{dev.get('type')}], {str(metadata.get('date', ''))[:10]}: best of rounds (dots: every round)")
    return _save(fig, path)
