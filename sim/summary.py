"""What the commands print: a run's summary table (every number with what it means), the sweep table and
the goodput search's verdict. Input is a results dict (sim.outputs.results_dict); nothing here computes
metrics.

    print_results(results_dict(result, extra), "yoda on mooncake_sample.jsonl", as_json=False)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

# scheduler counter -> what one count means (yoda/decode_split.py, gang_scheduler.py, ... and sim/run.py)
COUNTER_MEANINGS = {
    "partition_switches": "times the decode/prefill SM split changed",
    "tbt_unmeetable": "decode steps no partition could run within the TBT target (got the largest one)",
    "tbt_given_up": "decode steps given fewer SMs than TBT needs, so queued prefills keep their TTFT",
    "ttft_given_up": "decode steps that kept TBT while queued prefills got too few SMs for their TTFT",
    "decode_squeezed": "decode steps that got fewer SMs than chosen (a running prefill held the rest)",
    "prefill_preemptions": "long prefills paused at a layer boundary for a short, urgent one",
    "prefix_deferrals": "admissions held back to reuse a shared prefix another request is computing",
    "kv_transfers": "KV moves between prefill and decode instances (disaggregation)",
    "kv_transferred_gb": "GB of KV sent over the link",
    "sim_decisions": "times a simulated instance asked its scheduler for a plan (simulation cost scales with it)",
    "sim_launches": "kernel launches simulated (a multi-step run or a prefill layer group is one)",
}


def format_value(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_ms(value: float | None) -> str:
    return format_value(value, 1 if value is not None and value < 100 else 0)


def console(stderr: bool = False):
    """A rich console on stdout (or stderr); piped output is not squeezed into 80 columns."""
    from rich.console import Console

    out = Console(stderr=stderr)
    return out if out.is_terminal else Console(stderr=stderr, width=160)


def short_trace(trace: str) -> str:
    return trace if trace.startswith("synthetic:") else Path(trace).name


def is_simulated(res: dict) -> bool:
    """A simulator's results (sim.run.SimResult) rather than a real run's (executor, bench)."""
    return res.get("backend") in (None, "sim", "simulator") and "latency" in (res.get("config") or {})


def _rate_rows(res: dict) -> list[tuple[str, str, str]]:
    v, w = format_value, res.get("workload") or {}
    requested = w.get("target_rate_rps")
    how = (f"{v(requested, 3)} req/s requested" if requested is not None
           else "the trace's own times" + (f" ({v(w['original_rate_rps'], 3)} req/s)" if w.get("original_rate_rps") else ""))
    achieved = w.get("mean_rate_rps", res.get("offered_rate"))
    steady = res.get("offered_rate_steady")
    return [("arrival rate", f"{how}; {v(achieved, 3)} req/s arrived"
             + (f" ({v(steady, 3)} in the steady window)" if steady is not None else ""),
             "re-timed arrivals meet the requested rate on average, not exactly; steady window: middle 80% of "
             "arrivals" if requested is not None else "steady window: middle 80% of arrivals"),
            ("served rate", f"{v(res['request_throughput'], 3)} req/s, {v(res['output_throughput'], 0)} output tok/s",
             "finished requests (output tokens) per second of the run")]


def _slo_rows(res: dict) -> list[tuple[str, str, str]]:
    v, pct = format_value, f"P{res['slo_percentile']:g}"
    rows = [("SLO", f"TTFT {res['slo_ttft_ms']:g} ms (or {res['slo_ttft_ms_per_token']:g} ms/prompt token), "
                    f"TBT {res['slo_tbt_ms']:g} ms, {pct}", "the targets")]
    if res.get("slo_ttft_attainment") is not None:
        rows += [("TTFT attainment", f"{res['slo_ttft_attainment']:.1%}", "requests whose first token met its target"),
                 ("TPOT attainment", f"{res['slo_tpot_attainment']:.1%}",
                  "requests whose mean gap between tokens met the TBT target")]
    rows += [("SLO attainment", f"{res['slo_attainment']:.1%}", "requests meeting both (refused ones count as missed)")]
    if res.get("slo_attainment_per_request_tbt") is not None:
        rows.append((f"SLO attainment, per-request {pct} TBT", f"{res['slo_attainment_per_request_tbt']:.1%}",
                     f"requests meeting their TTFT and whose own {pct} token gap met the TBT target"))
    rows += [
             ("fleet SLO met", f"{v(res['fleet_slo_met'])} ({pct} TTFT/target {v(res['slo_ttft_ratio_at_percentile'], 2)}, "
                               f"{pct} TBT {v(res['slo_tbt_at_percentile_ms'])} ms)",
              f"{pct} TTFT within target, {pct} of all token gaps within TBT, nothing refused")]
    return rows


def summary_rows(res: dict) -> list[tuple[str, str, str]]:
    """(metric, value, meaning) rows of a run's summary."""
    v, simulated = format_value, is_simulated(res)
    rows = [("requests", f"{v(res['num_requests'])}: {v(res['completed'])} served, {v(res['rejected'])} refused",
             "refused: could never fit in the KV cache or the batch"), *_rate_rows(res)]
    for name, key in (("TTFT", "ttft"), ("TBT", "tbt"), ("TPOT", "tpot"), ("E2E", "e2el")):
        values = " / ".join(format_ms(res[f"{stat}_{key}_ms"]) for stat in ("mean", "p50", "p90", "p99"))
        rows.append((f"{name} mean / p50 / p90 / p99 (ms)", values, ""))
    rows += _slo_rows(res)
    rows += [("KV reuse", f"{res['kv_reuse_fraction']:.1%} of prompt tokens", "prompt tokens found in the prefix cache"),
             ("preemptions", v(res["num_preemptions"]), "requests evicted to free KV and recomputed later")]
    for name, count in sorted((res.get("scheduler_counters") or {}).items()):
        rows.append((f"scheduler: {name}", v(count), COUNTER_MEANINGS.get(name, "")))
    span = f"{v(res['sim_end_s'])} s"
    rows.append(("simulated time", span, "first arrival to last token, in the model") if simulated
                else ("run time", span, "first arrival to last token, on the run's clock"))
    wall = f"{v(res['wall_s'], 2)} s"
    rows.append(("wall time", f"{wall} ({v(res['sim_requests_per_wall_s'], 0)} requests / wall s)",
                 "how long the simulation took") if simulated
                else ("wall time", wall, "the whole command: model load, warm-up and serving"))
    return rows


def summary_table(res: dict, title: str):
    """The rich table `yoda simulate` and `yoda run` print from a results dict (sim.outputs.results_dict)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("meaning", style="dim")
    for name, value, meaning in summary_rows(res):
        table.add_row(name, value, meaning)
    return table


def sweep_table(rows: list[dict], goodput: bool):
    """The rich table `yoda sweep` prints: one row per cell."""
    from rich import box
    from rich.table import Table

    traces = list(dict.fromkeys(short_trace(row["trace"]) for row in rows))
    table = Table(title=f"sweep ({len(rows)} cells" + (f" on {traces[0]})" if len(traces) == 1 else ")"),
                  box=box.SIMPLE_HEAD)
    v = format_value
    columns = [("TBT SLO", lambda r: f"{r['slo_tbt_ms']:g}")]
    if goodput:
        columns += [("goodput", lambda r: v(r["goodput_rps"], 3)), ("probes", lambda r: v(r["num_probes"]))]
    else:
        columns += [("rate", lambda r: f"{r['rate_rps']:g}"), ("arrived", lambda r: v(r.get("achieved_rate_rps"), 3)),
                    ("served", lambda r: v(r.get("request_throughput"), 3)),
                    ("attain", lambda r: f"{r['slo_attainment']:.0%}"), ("P99 TTFT", lambda r: v(r["p99_ttft_ms"], 0)),
                    ("P99 TBT", lambda r: v(r["p99_tbt_ms"])), ("fleet", lambda r: v(r["fleet_slo_met"])),
                    ("refused", lambda r: v(r["rejected"]))]
    columns.append(("wall s", lambda r: v(r["wall_s"])))
    table.add_column("policy", no_wrap=True)
    if len(traces) > 1:
        table.add_column("trace", max_width=28, no_wrap=True, overflow="ellipsis")
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for row in rows:
        values = [get(row) for _, get in columns] if not row.get("error") else ["[red]failed[/]"]
        table.add_row(row["policy"], *([short_trace(row["trace"])] if len(traces) > 1 else []), *values)
    return table


def print_results(res: dict, title: str, as_json: bool, paths: dict | None = None, notes: Sequence[str] = ()) -> None:
    """Show a run's results: with --json the results JSON alone on stdout, else the summary table, any
    notes, and the files written. Shared by `yoda simulate`, `yoda run` and `yoda bench`."""
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
        return
    stdout = console()
    stdout.print(summary_table(res, title))
    for note in notes:
        stdout.print(note, highlight=False, markup=False)
    if paths:
        stdout.print("wrote " + ", ".join(str(p) for p in paths.values()), markup=False)


# ---- goodput ---------------------------------------------------------------------------------------
def miss_reason(m: dict, criterion: str) -> str:
    """Why a goodput probe failed, from its metrics (yoda.metrics.compute_metrics): which SLO by how much,
    refusals, or instability."""
    from yoda.metrics import STABLE_E2E_TREND, STABLE_THROUGHPUT_RATIO

    reasons = []
    pct = f"P{m['slo_percentile']:g}"
    if criterion == "fleet":
        ratio, tbt, target = m["slo_ttft_ratio_at_percentile"], m["slo_tbt_at_percentile_ms"], m["slo_tbt_ms"]
        if ratio is not None and ratio > 1:
            reasons.append(f"{pct} TTFT {ratio:.2f}x its target")
        if tbt is not None and tbt > target:
            reasons.append(f"{pct} TBT {tbt:.1f} ms > {target:g} ms (+{tbt / target - 1:.0%})")
        if not m["completed"]:
            reasons.append("no request finished")
    elif m["slo_attainment"] < 0.9:
        reasons.append(f"attainment {m['slo_attainment']:.1%} < 90%")
    if m["rejected"]:
        reasons.append(f"{m['rejected']} requests refused")
    if m.get("e2e_trend", 1.0) > STABLE_E2E_TREND:
        reasons.append(f"unstable: latency grows through the run (E2E trend {m['e2e_trend']:.1f} > {STABLE_E2E_TREND:g})")
    if m.get("throughput_ratio", 1.0) < STABLE_THROUGHPUT_RATIO:
        reasons.append(f"unstable: served {m['throughput_ratio']:.0%} of the arrival rate "
                       f"(< {STABLE_THROUGHPUT_RATIO:.0%})")
    return "; ".join(reasons) or "met"


def goodput_verdict(goodput_rps: float, probes: Sequence[dict]) -> list[str]:
    """Lines saying what the search found: the rate, what held there, and why the next rate up failed.
    `probes`: dicts with rate_rps, ok, slo_attainment, request_throughput and reason."""
    ok = [p for p in probes if p["ok"] and p["rate_rps"] == goodput_rps]
    above = sorted((p for p in probes if not p["ok"] and p["rate_rps"] > goodput_rps), key=lambda p: p["rate_rps"])
    lines = []
    if ok:
        p = ok[0]
        lines.append(f"at {goodput_rps:.3f} req/s: attainment {p['slo_attainment']:.1%}, served "
                     f"{p.get('request_throughput', 0):.3f} req/s (requests finished per second of the run)")
    else:
        lines.append("no probed rate met the SLOs")
    if above:
        lines.append(f"next probe up, {above[0]['rate_rps']:.3f} req/s, failed: {above[0]['reason']}")
    return lines
