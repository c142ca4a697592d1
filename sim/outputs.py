"""What a simulation leaves on disk: results JSON, per-request and timeline parquet files, plots.

    from sim.outputs import write_results
    paths = write_results("runs/yoda", result, {"workload": desc, "command": "yoda simulate ..."})

Plots use matplotlib's Agg backend (no display needed); long runs are binned so plotting stays fast.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from yoda.request import SLO, RequestRecord

MAX_POINTS = 4000  # points per plotted line; longer series are binned or subsampled


def records_frame(records: Sequence[RequestRecord], slo: SLO | None = None) -> pd.DataFrame:
    """One row per request: lengths, placement, latencies (ms), reuse, preemptions, rejection."""
    rows = []
    for r in records:
        gaps = np.diff(r.token_at) if len(r.token_at) > 1 else np.zeros(0)
        rows.append({
            "request_id": r.request_id, "arrival_at": r.arrival_at, "prompt_len": r.prompt_len,
            "output_len": r.output_len, "session_id": r.session_id, "instance": r.instance,
            "num_tokens": len(r.token_at), "finished_at": r.finished_at,
            "ttft_ms": _ms(r.ttft_s), "tpot_ms": _ms(r.tpot_s), "e2e_ms": _ms(r.e2e_s),
            "max_tbt_ms": float(gaps.max() * 1000) if gaps.size else None,
            "reused_len": r.reused_len, "num_preemptions": r.num_preemptions, "rejected_reason": r.rejected_reason,
        })
    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else None)
    if slo is not None and rows:
        from yoda.metrics import request_meets_slo
        frame["meets_slo"] = [request_meets_slo(r, slo) for r in records]
    return frame.astype({"instance": "Int64", "ttft_ms": float, "tpot_ms": float, "e2e_ms": float,
                         "max_tbt_ms": float, "finished_at": float}) if rows else frame


def _ms(value_s: float | None) -> float | None:
    return None if value_s is None else value_s * 1000.0


def timeline_frame(timelines: Sequence[Any]) -> pd.DataFrame:
    """One row per launch of every instance (see sim.gpu_instance.Timeline); empty without timelines."""
    frames = []
    for index, tl in enumerate(timelines):
        if tl is None or not tl.at:
            continue
        frames.append(pd.DataFrame({"instance": index, "at": tl.at, "lane": tl.lane, "num_sms": tl.num_sms,
                                    "decode_batch": tl.decode_batch, "prefill_tokens": tl.prefill_tokens,
                                    "queued": tl.queued, "duration_s": tl.duration_s}))
    columns = ["instance", "at", "lane", "num_sms", "decode_batch", "prefill_tokens", "queued", "duration_s"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_dict(result, extra: dict | None = None) -> dict:
    """The results JSON: metrics at the top level (vllm bench style), then config, wall time and `extra`."""
    from dataclasses import asdict

    out = {**result.metrics, **slo_breakdown(result.records, result.config.slo), "config": asdict(result.config),
           "wall_s": result.wall_s,
           "sim_end_s": result.sim_end_s,
           "sim_requests_per_wall_s": len(result.records) / max(result.wall_s, 1e-9), **(extra or {})}
    return json_safe(out)


def slo_breakdown(records: Sequence[RequestRecord], slo: SLO) -> dict:
    """Share of requests meeting each SLO on its own (refused and unfinished ones miss both)."""
    n = max(len(records), 1)
    ttft = sum(r.finished and r.ttft_s is not None and r.ttft_s <= slo.ttft_target_s(r.prompt_len) for r in records)
    tpot = sum(r.finished and (r.tpot_s is None or r.tpot_s <= slo.tbt_s) for r in records)
    return {"slo_ttft_attainment": ttft / n, "slo_tpot_attainment": tpot / n}


def write_results(out_dir: str | Path, result, extra: dict | None = None, plots: bool = True) -> dict[str, Path]:
    """Write results.json, requests.parquet, timeline.parquet and (with `plots`) latency_cdf.png and
    timeline.png into `out_dir` (created). Returns the written paths by short name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("results.json", "requests.parquet", "timeline.parquet")}
    paths["results.json"].write_text(json.dumps(results_dict(result, extra), indent=2) + "\n")
    records_frame(result.records, result.config.slo).to_parquet(paths["requests.parquet"], index=False)
    timeline = timeline_frame(result.timelines)
    timeline.to_parquet(paths["timeline.parquet"], index=False)
    if plots:
        paths["latency_cdf.png"] = plot_latency_cdf(result.records, result.config.slo, out / "latency_cdf.png")
        paths["timeline.png"] = plot_timeline(timeline, out / "timeline.png")
    return paths


# ---- plots ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _cdf(ax, values: np.ndarray, label: str) -> None:
    values = np.sort(values)
    if values.size == 0:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    q = np.linspace(0.0, 1.0, min(values.size, MAX_POINTS))
    ax.plot(np.quantile(values, q), q, label=label)


def plot_latency_cdf(records: Sequence[RequestRecord], slo: SLO, path: str | Path, title: str = "") -> Path:
    """TTFT, TBT (every token gap) and E2E CDFs of finished requests, with the SLO targets drawn."""
    from yoda.metrics import all_tbt_gaps_s

    plt = _pyplot()
    done = [r for r in records if r.finished]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _cdf(axes[0], np.array([r.ttft_s for r in done], dtype=float) * 1000, "TTFT")
    axes[0].axvline(slo.ttft_ms, color="red", linestyle="--", label=f"TTFT SLO {slo.ttft_ms:g} ms")
    if slo.ttft_ms_per_token:  # targets grow with the prompt: show their distribution too
        targets = np.array([slo.ttft_target_s(r.prompt_len) for r in done], dtype=float) * 1000
        _cdf(axes[0], targets, f"TTFT targets (>= {slo.ttft_ms_per_token:g} ms/prompt token)")
    _cdf(axes[1], all_tbt_gaps_s(done) * 1000, "TBT")
    axes[1].axvline(slo.tbt_ms, color="red", linestyle="--", label=f"TBT SLO {slo.tbt_ms:g} ms")
    _cdf(axes[2], np.array([r.e2e_s for r in done], dtype=float), "E2E")
    for ax, xlabel in zip(axes, ("TTFT (ms)", "TBT (ms)", "E2E (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("CDF")
        ax.axhline(slo.percentile / 100, color="grey", linestyle=":", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title or f"{len(done)} of {len(records)} requests finished")
    return _save(fig, path)


def _binned(frame: pd.DataFrame, column: str, how: str, span_s: float) -> pd.Series:
    """`column` against time, aggregated over at most MAX_POINTS time bins."""
    if len(frame) <= MAX_POINTS:
        return frame.set_index("at")[column]
    width = max(span_s, 1e-9) / MAX_POINTS
    bins = (frame["at"] // width) * width
    return frame.groupby(bins)[column].agg(how)


def _per_second(frame: pd.DataFrame, column: str, span_s: float, num_bins: int = 200) -> pd.Series:
    """`column` summed over time bins and divided by the bin width: a rate per second."""
    width = max(span_s, 1e-9) / num_bins
    bins = (frame["at"] // width) * width
    return frame.groupby(bins)[column].sum().reindex(np.arange(num_bins + 1) * width, fill_value=0) / width


def plot_timeline(timeline: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Decode batch size, prefill tokens started per second, queue length and SM split over time, per
    instance."""
    plt = _pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(12, 11), sharex=True)
    span_s = float(timeline["at"].max()) if len(timeline) else 0.0
    for index, frame in timeline.groupby("instance"):
        decode, prefill = frame[frame["lane"] == "decode"], frame[frame["lane"] != "decode"]
        series = [(axes[0], decode, "decode_batch", "mean", "-"), (axes[1], prefill, "prefill_tokens", "rate", "-"),
                  (axes[2], frame, "queued", "mean", "-"), (axes[3], decode, "num_sms", "mean", "-"),
                  (axes[3], prefill, "num_sms", "mean", "--")]
        for ax, part, column, how, style in series:
            if len(part):
                s = _per_second(part, column, span_s) if how == "rate" else _binned(part, column, how, span_s)
                lane = "" if ax is not axes[3] else (" decode" if style == "-" else " prefill")
                ax.step(s.index, s.values, where="post", linestyle=style, linewidth=0.8, color=f"C{int(index) % 10}",
                        label=f"instance {index}{lane}")
    labels = ("decode batch", "prefill tokens/s started", "queued requests", "SMs (decode -, prefill --)")
    for ax, label in zip(axes, labels):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="upper right", fontsize=7, ncol=4)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or "timeline" + ("" if len(timeline) else " (empty)"))
    return _save(fig, path)


def plot_sweep(rows: pd.DataFrame, path: str | Path) -> Path:
    """Rates sweep: SLO attainment and P99 TBT against rate, one line per policy (and TBT SLO when
    several), one column per trace. Goodput sweep: goodput against the TBT SLO, one line per policy."""
    plt = _pyplot()
    goodput = "goodput_rps" in rows and rows["goodput_rps"].notna().any()
    trace_names = list(dict.fromkeys(rows["trace"]))
    nrows = 1 if goodput else 2
    fig, axes = plt.subplots(nrows, len(trace_names), figsize=(5.5 * len(trace_names), 4 * nrows), squeeze=False)
    by_slo = not goodput and rows["slo_tbt_ms"].nunique() > 1
    for col, trace in enumerate(trace_names):
        for keys, group in rows[rows["trace"] == trace].groupby(["policy", "slo_tbt_ms"] if by_slo else ["policy"],
                                                                  sort=False):
            label = f"{keys[0]} (TBT {keys[1]:g} ms)" if by_slo else keys[0]
            if goodput:
                g = group.groupby("slo_tbt_ms")["goodput_rps"].mean()
                axes[0][col].plot(g.index, g.values, marker="o", label=label)
                continue
            g = group.sort_values("rate_rps")
            axes[0][col].plot(g["rate_rps"], g["slo_attainment"], marker="o", label=label)
            axes[1][col].plot(g["rate_rps"], g["p99_tbt_ms"], marker="o", label=label)
        _sweep_axes(axes, col, trace, goodput, rows)
    return _save(fig, path)


def _sweep_axes(axes, col: int, trace: str, goodput: bool, rows: pd.DataFrame) -> None:
    top = axes[0][col]
    top.set_title(Path(trace).name if not trace.startswith("synthetic:") else trace, fontsize=9)
    if goodput:
        top.set_xlabel("TBT SLO (ms)")
        top.set_ylabel("goodput (req/s)")
    else:
        top.set_ylabel("SLO attainment")
        top.set_ylim(-0.02, 1.02)
        bottom = axes[1][col]
        bottom.set_xlabel("rate (req/s)")
        if rows["rate_rps"].max() >= 10 * rows["rate_rps"].min():
            top.set_xscale("log")
            bottom.set_xscale("log")
        bottom.set_ylabel("P99 TBT (ms)")
        for slo_ms in rows["slo_tbt_ms"].unique():
            bottom.axhline(slo_ms, color="red", linestyle="--", linewidth=0.8)
    for row in axes:
        row[col].grid(alpha=0.3)
        if row[col].lines:
            row[col].legend(fontsize=7)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


# ---- printed summaries: sim/summary.py (re-exported for the commands that import them from here) ------
from sim.summary import (console, format_ms, format_value, print_results, short_trace,  # noqa: E402,F401
                         summary_table, sweep_table)
