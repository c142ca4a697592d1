"""What deciding less often costs: Yoda's goodput and simulation speed by decode steps per gang.

    python -m benchmarks.gang_steps [--gangs 1,32,128] [--seeds 0,1,2] [--workers 2] [--out results]

Yoda launches a prefill layer group beside a gang of decode steps and re-chooses the SM split when a gang
ends. The real executor runs one-step gangs (one decision per decode iteration); the simulator's default
(`YodaOptions.gang_steps` = 32) lets a gang run up to 32 steps unless an arrival, a finished prefill or a
departure cuts it, so it decides less often and simulates faster. Larger gangs are the lever left for
simulator speed (issue 21), and a policy change: records move. This measures both sides of it:

1. goodput (1xH100 Llama-3-8B, the headline SLOs, 1000-request probes, every benchmark workload, 3 seeds,
   Yoda's defaults with deadline admission) per gang size, as ratios to one-step gangs (the executor's);
2. simulation speed on sim_speed's Mooncake run (12,031 requests, 4 x H100, roofline, round-robin, one
   process): wall s, decisions and launches per request, per gang size.

Writes results/gang_steps.json and results/gang_steps.md.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import typer

from benchmarks.goodput_vs_baselines import SETUPS, BenchWorkload, _fmt, _geomean
from benchmarks.sim_speed import comma_counts, mooncake_conversation, sim_config
from benchmarks.sim_speed_report import device
from benchmarks.workloads import WORKLOADS

SHIPPED_GANG = 32  # YodaOptions.gang_steps


def _max_decode_steps(gang: int) -> int:
    """The simulator caps a gang at max_decode_steps (64 by default): raise it for larger gangs."""
    return max(64, gang)


def goodput_cells(gangs: list[int], workloads: list[str], seeds: tuple[int, ...], probe_requests: int):
    """One tuning cell per (workload, gang): Yoda's defaults, deadline admission, warm-started from the
    first gang's search of the same workload."""
    from sim.run import SimConfig
    from sim.tuning import TuneCell
    from yoda.request import SLO

    s = SETUPS[0]
    slo = SLO(ttft_ms=s.ttft_ms, tbt_ms=s.tbt_ms, ttft_ms_per_token=s.ttft_ms_per_token)
    cells, keys = [], []
    for w in workloads:
        load = BenchWorkload(w, 240.0, probe_requests, probe_requests)
        first = len(cells)
        for k, g in enumerate(gangs):
            cfg = SimConfig(policy="yoda", model=s.model, tp=s.tp, num_instances=s.num_instances, slo=slo,
                            policy_options={"gang_steps": g}, record_timeline=False,
                            max_decode_steps=_max_decode_steps(g))
            cells.append(TuneCell(load, cfg, seeds, [{}], start_rps=0.5, max_probes=14, top=1,
                                  variants=({"admission": "deadline"},), warm_from=first if k else None))
            keys.append((w, g))
    return cells, keys


def speed_rows(gangs: list[int], num_instances: int = 4, progress=print) -> list[dict]:
    """sim_speed's Mooncake run of Yoda per gang size, one process, each in turn."""
    from sim.run import SimConfig, simulate

    requests = mooncake_conversation()
    rows = []
    for g in gangs:
        progress(f"speed: yoda, gang_steps={g}, {len(requests):,} Mooncake requests on {num_instances} H100s")
        kw = sim_config("yoda", num_instances)
        cfg = SimConfig(**{**kw, "policy_options": {**kw["policy_options"], "gang_steps": g}},
                        max_decode_steps=_max_decode_steps(g))
        result = simulate(requests, cfg)
        counters, m = result.metrics["scheduler_counters"], result.metrics
        rows.append({"gang_steps": g, "requests": len(requests), "wall_s": result.wall_s,
                     "decisions": counters["sim_decisions"], "launches": counters["sim_launches"],
                     "p99_ttft_ms": m["p99_ttft_ms"], "p99_tbt_ms": m["p99_tbt_ms"]})
    return rows


def report(goodput: list[dict], speed: list[dict], gangs: list[int], workloads: list[str], meta: dict) -> str:
    base = gangs[0]
    by = {(r["workload"], r["gang_steps"]): r for r in goodput}
    out = ["# Yoda by decode steps per gang: goodput and simulation speed", "",
           f"Command: `{meta['command']}`  ", f"Date: {meta['date']}  ", f"Device: {meta['device']}  ",
           f"Script wall time: {meta['wall_s']:.0f} s", "",
           f"## Goodput ({SETUPS[0].name}, TBT {SETUPS[0].tbt_ms:g} ms, TTFT max({SETUPS[0].ttft_ms:g} ms, "
           f"{SETUPS[0].ttft_ms_per_token:g} ms/token), P99)", "",
           f"Yoda's defaults with deadline admission; req/s, mean over seeds {meta['seeds']} [95% interval]; "
           f"probes of {meta['probe_requests']} requests (fewer where the trace is shorter). x {base}: the ratio "
           f"to {base}-step gangs" + (" (the real executor's)." if base == 1 else "."), "",
           "| workload | " + " | ".join(f"gang {g}" for g in gangs) + " | "
           + " | ".join(f"x {base} (gang {g})" for g in gangs[1:]) + " |",
           "|---" * (1 + 2 * len(gangs) - 1) + "|"]
    ratios: dict[int, list[float]] = {g: [] for g in gangs[1:]}
    for w in workloads:
        cells = [_fmt(by.get((w, g))) for g in gangs]
        rs = []
        for g in gangs[1:]:
            a, b = by.get((w, g)), by.get((w, base))
            r = a["goodput_rps"] / b["goodput_rps"] if a and b and b["goodput_rps"] > 0 else float("nan")
            ratios[g].append(r)
            rs.append(f"{r:.2f}x")
        out.append(f"| {w} | " + " | ".join(cells + rs) + " |")
    out.append("| geomean | " + " | ".join("" for _ in gangs) + " | "
               + " | ".join(f"{_geomean(ratios[g]):.2f}x" for g in gangs[1:]) + " |")
    cpu = {g: sum(by[(w, g)]["search_cpu_s"] for w in workloads if (w, g) in by) for g in gangs}
    probes = {g: sum(by[(w, g)]["num_probes"] for w in workloads if (w, g) in by) for g in gangs}
    out += ["", "Search cost: " + "; ".join(f"gang {g}: {cpu[g]:.0f} CPU-s over {probes[g]} probes "
                                             f"({cpu[g] / max(probes[g], 1):.2f} s a probe)" for g in gangs) + ".",
            "", "## Simulation speed (sim_speed's Mooncake run)", "",
            "Mooncake conversation trace (12,031 requests), Llama-3-8B on 4 x H100, roofline latency, round-robin, "
            "one process; wall s = SimResult.wall_s; x: speed relative to the first row.", "",
            "| gang steps | wall s | x speed | decisions / request | launches / request | P99 TTFT ms | P99 TBT ms |",
            "|---|---|---|---|---|---|---|"]
    first = speed[0]["wall_s"] if speed else float("nan")
    for r in speed:
        n = r["requests"]
        out.append(f"| {r['gang_steps']} | {r['wall_s']:.2f} | {first / r['wall_s']:.2f}x | {r['decisions'] / n:.2f} | "
                   f"{r['launches'] / n:.2f} | {r['p99_ttft_ms']:.0f} | {r['p99_tbt_ms']:.1f} |")
    out += ["", "Gangs are capped at the simulator's max_decode_steps, raised to the gang size where it is over "
            "64 (decode-only runs' length: records do not depend on it, tests/sim/test_multi_step_equality.py).",
            f"The shipped default is gang_steps={SHIPPED_GANG}; one-step gangs are what the executor runs "
            "(max_decode_steps = 1 there).", ""]
    return "\n".join(out)


def main(gangs: str = typer.Option("1,32,128", help="decode steps per gang to compare; the first is the reference"),
         seeds: str = typer.Option("0,1,2", help="comma-separated seeds"),
         workloads: str = typer.Option(",".join(WORKLOADS), help="comma-separated workload names"),
         probe_requests: int = typer.Option(1000, help="requests per goodput probe"),
         workers: int = typer.Option(2, help="parallel processes for the goodput searches"),
         speed: bool = typer.Option(True, help="also time sim_speed's Mooncake run per gang size"),
         out: Path = Path("results")) -> None:
    from rich.progress import Progress

    from sim.tuning import num_searches, run_tuning

    gang_list = comma_counts(gangs, "--gangs")
    if not gang_list:
        raise typer.BadParameter(f"--gangs needs sizes >= 1, got {gangs!r}")
    try:
        seed_list = tuple(int(x) for x in seeds.split(",") if x)
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, got {seeds!r}") from None
    names = [w for w in workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise typer.BadParameter(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    started = time.perf_counter()
    cells, keys = goodput_cells(gang_list, names, seed_list, probe_requests)
    with Progress() as progress:
        task = progress.add_task("goodput searches", total=num_searches(cells))
        results = run_tuning(cells, workers, lambda: progress.advance(task))
    goodput = [{"workload": w, "gang_steps": g, **res} for (w, g), (res,) in zip(keys, results)]
    speed_table = speed_rows(gang_list) if speed else []
    meta = {"command": "python -m benchmarks.gang_steps " + shlex.join(sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device(),
            "wall_s": time.perf_counter() - started, "seeds": list(seed_list), "probe_requests": probe_requests}
    text = report(goodput, speed_table, gang_list, names, meta)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gang_steps.json").write_text(json.dumps({**meta, "gangs": gang_list, "goodput": goodput,
                                                     "speed": speed_table}, indent=1, default=str))
    (out / "gang_steps.md").write_text(text)
    print(f"wrote {out / 'gang_steps.json'} and {out / 'gang_steps.md'}")


if __name__ == "__main__":
    typer.run(main)
