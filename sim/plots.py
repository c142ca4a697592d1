"""The plots a run leaves on disk: latency CDFs, the timeline, the sweep and the goodput search.

    from sim.plots import plot_timeline
    plot_timeline(timeline_frame(result.timelines), "runs/yoda/timeline.png")

matplotlib's Agg backend (no display needed); long series are binned to about the figure's pixel width.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from yoda.request import SLO, RequestRecord

MAX_POINTS = 4000  # points per CDF line
ATTAINMENT_TARGET = 0.9  # the request-level goodput criterion (yoda.goodput.attainment_ok)
SCREEN_BINS = 1200  # time bins per timeline panel: about its width in pixels


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


# (panel label, lane or None for all launches, column, "mean" per bin or "rate" per second)
TIMELINE_PANELS = (("decode batch", "decode", "decode_batch", "mean"),
                   ("prefill tokens/s started", "prefill", "prefill_tokens", "rate"),
                   ("queued requests", None, "queued", "mean"),
                   ("decode SMs", "decode", "num_sms", "mean"),
                   ("prefill SMs", "prefill", "num_sms", "mean"))
MAX_LINES = 4  # instances drawn one line each; more: the cluster mean with its min-max band


def binned(frame: pd.DataFrame, column: str, how: str, edges: np.ndarray) -> pd.Series:
    """`column` per time bin (`edges`: bin starts): the mean of the launches in a bin, carried forward
    over empty bins, or (`rate`) the bin's sum divided by its width (zero when empty)."""
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    index = np.clip((frame["at"].to_numpy() // width).astype(int), 0, len(edges) - 1)
    grouped = frame[column].groupby(index)
    if how == "rate":
        return grouped.sum().reindex(range(len(edges)), fill_value=0).set_axis(edges) / width
    return grouped.mean().reindex(range(len(edges))).ffill().set_axis(edges)


def plot_timeline(timeline: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Decode batch, prefill tokens started per second, queue length, decode SMs and prefill SMs over
    time, one panel each, binned to about the figure's width; one line per instance, or for a larger
    cluster the mean over instances and the min-max band."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(TIMELINE_PANELS), 1, figsize=(12, 2.3 * len(TIMELINE_PANELS)), sharex=True)
    span_s = float(timeline["at"].max()) if len(timeline) else 0.0
    num_bins = max(1, min(SCREEN_BINS, len(timeline) // max(timeline["instance"].nunique(), 1))) if len(timeline) else 1
    edges = np.linspace(0.0, max(span_s, 1e-9), num_bins, endpoint=False)
    instances = list(timeline.groupby("instance")) if len(timeline) else []
    for ax, (label, lane, column, how) in zip(axes, TIMELINE_PANELS):
        per_instance = {}
        for index, frame in instances:
            part = frame if lane is None else frame[(frame["lane"] == "decode") == (lane == "decode")]
            if len(part):
                per_instance[index] = binned(part, column, how, edges)
        _draw_panel(ax, per_instance)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or "timeline" + ("" if len(timeline) else " (empty)")
                 + (f" ({len(instances)} instances: mean and min-max band)" if len(instances) > MAX_LINES else ""))
    return _save(fig, path)


def _draw_panel(ax, per_instance: dict) -> None:
    if not per_instance:
        return
    if len(per_instance) <= MAX_LINES:
        for index, s in per_instance.items():
            ax.step(s.index, s.values, where="post", linewidth=0.8, color=f"C{int(index) % 10}",
                    label=f"instance {index}")
        ax.legend(loc="upper right", fontsize=7, ncol=4)
        return
    table = pd.DataFrame(per_instance)
    ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), step="post", alpha=0.25, linewidth=0)
    ax.step(table.index, table.mean(axis=1), where="post", linewidth=0.8)


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
            bottom.axhline(slo_ms, color="red", linestyle="--", linewidth=0.8, label=f"TBT SLO {slo_ms:g} ms")
        top.axhline(ATTAINMENT_TARGET, color="red", linestyle="--", linewidth=0.8,
                    label=f"target {ATTAINMENT_TARGET:.0%} (request-level goodput)")
    for row in axes:
        row[col].grid(alpha=0.3)
        if row[col].lines:
            row[col].legend(fontsize=7)


def plot_goodput(res: dict, path: str | Path) -> Path:
    """A goodput search's probes: SLO attainment and P99 TTFT/TBT over their targets against rate, each
    probe marked met or missed, the rate found and the targets drawn."""
    plt = _pyplot()
    probes = sorted(res["probes"], key=lambda p: p["rate_rps"])
    rates = np.array([p["rate_rps"] for p in probes], dtype=float)
    ok = np.array([bool(p["ok"]) for p in probes])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    series = [(top, "slo_attainment", "SLO attainment", None),
              (bottom, "slo_ttft_ratio_at_percentile", "P99 TTFT / target", None),
              (bottom, "slo_tbt_at_percentile_ms", "P99 TBT / target", res["slo_tbt_ms"])]
    for ax, key, label, scale in series:
        values = np.array([np.nan if p.get(key) is None else p[key] for p in probes], dtype=float) / (scale or 1)
        line, = ax.plot(rates, values, linewidth=0.8, label=label)
        ax.scatter(rates[ok], values[ok], marker="o", color=line.get_color(), zorder=3)
        ax.scatter(rates[~ok], values[~ok], marker="x", color=line.get_color(), zorder=3)
    top.axhline(ATTAINMENT_TARGET, color="red", linestyle="--", linewidth=0.8, label=f"{ATTAINMENT_TARGET:.0%} target")
    bottom.axhline(1.0, color="red", linestyle="--", linewidth=0.8, label="target")
    ratios = [v for p in probes for v in (p.get("slo_ttft_ratio_at_percentile"),) if v is not None]
    if ratios and max(ratios) > 10:
        bottom.set_yscale("log")
    for ax in (top, bottom):
        ax.axvline(res["goodput_rps"], color="green", linestyle=":", label=f"goodput {res['goodput_rps']:.3f} req/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    top.set_ylabel("SLO attainment (o met, x missed)")
    bottom.set_ylabel("P99 / target")
    bottom.set_xlabel("request rate (req/s)")
    fig.suptitle(f"goodput search: {res['policy']} on {Path(res['trace']).name} ({res['criterion']})", fontsize=10)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


