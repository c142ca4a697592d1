"""What a simulation leaves on disk: results JSON, per-request and timeline parquet files, plots.

    from sim.outputs import write_results
    paths = write_results("runs/yoda", result, {"workload": desc, "command": "yoda simulate ..."})

Plots use matplotlib's Agg backend (no display needed); long runs are binned so plotting stays fast.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from yoda.request import SLO, RequestRecord

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


# ---- plots: sim/plots.py (re-exported for the modules that import them from here) ---------------------
from sim.plots import (MAX_POINTS, _pyplot, _save, plot_goodput, plot_latency_cdf,  # noqa: E402,F401
                       plot_sweep, plot_timeline)


# ---- printed summaries: sim/summary.py (re-exported for the commands that import them from here) ------
from sim.summary import (console, format_ms, format_value, print_results, short_trace,  # noqa: E402,F401
                         summary_table, sweep_table)
