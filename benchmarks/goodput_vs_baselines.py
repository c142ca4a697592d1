"""Headline goodput of Yoda against every baseline, plus ablations, in simulation.

    python -m benchmarks.goodput_vs_baselines [--requests 400] [--workers 2] [--out results]

Goodput = highest request rate at which P99 TTFT (against its target) and P99 TBT are both met (rate
search by bisection, fixed seeds). Setups: one H100 with Llama-3-8B (TBT 50 ms), one 8-GPU Llama-3-70B
instance at TP=8 (TBT 100 ms), and two H100s with Llama-3-8B, where PD disaggregation (1P:1D) competes
with two instances of the other policies behind the SLO-aware dispatcher. Chunked prefill's token budget
is tuned per workload and SLO (best of several budgets). Writes markdown tables, JSON and a plot.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

if __package__ in (None, ""):
    from workloads import WORKLOADS  # type: ignore[no-redef]
else:
    from benchmarks.workloads import WORKLOADS

CHUNK_BUDGETS = (256, 512, 1024, 2048)


@dataclass(frozen=True)
class Setup:
    name: str
    model: str
    tp: int
    num_gpus: int
    tbt_ms: float
    ttft_ms: float
    ttft_ms_per_token: float
    policies: tuple[str, ...]


SETUPS = (
    Setup("1xH100 Llama-3-8B", "llama3-8b", 1, 1, 50, 1000, 0.25,
          ("yoda", "chunked", "prefill_first", "static_split", "temporal")),
    Setup("8xH100 Llama-3-70B TP8", "llama3-70b", 8, 8, 100, 2000, 0.5,
          ("yoda", "chunked", "prefill_first", "static_split", "temporal")),
    Setup("2xH100 Llama-3-8B", "llama3-8b", 1, 2, 50, 1000, 0.25, ("yoda", "chunked", "disagg")),
)
ABLATIONS = ("no_layerwise", "no_query_merge", "no_guard", "static_partition", "no_preemption")


def _goodput(cell: dict) -> dict:
    """One goodput search (runs in a worker process)."""
    from sim.run import SimConfig, simulate
    from traces import rescale_to_rate
    from yoda.gang_scheduler import ABLATIONS as ABL
    from yoda.goodput import search_goodput
    from yoda.request import SLO

    setup: Setup = cell["setup"]
    cache: dict[int, list] = {}

    def requests_at(rate: float) -> list:
        # a fixed arrival window, so every probe is a steady-state run rather than a burst of N requests
        n = int(min(max(rate * cell["span_s"], cell["min_requests"]), cell["num_requests"]))
        if n not in cache:
            cache[n] = WORKLOADS[cell["workload"]](n, cell["seed"])
        return rescale_to_rate(cache[n], rate)
    slo = SLO(ttft_ms=setup.ttft_ms, tbt_ms=setup.tbt_ms, ttft_ms_per_token=setup.ttft_ms_per_token)
    options = dict(cell.get("options", {}))
    if cell.get("ablation"):
        options.update(ABL[cell["ablation"]])
    instances = setup.num_gpus // setup.tp
    cfg = SimConfig(policy=cell["policy"], model=setup.model, tp=setup.tp, num_instances=instances,
                    slo=slo, policy_options=options, record_timeline=False)
    started = time.perf_counter()
    result = search_goodput(lambda rate: simulate(requests_at(rate), cfg).records, slo,
                            cell["start_rps"], rel_tol=0.04, max_probes=14)
    return {**{k: v for k, v in cell.items() if k != "setup"}, "setup": setup.name,
            "goodput_rps": result.goodput_rps, "probes": result.probes, "wall_s": time.perf_counter() - started}


def _cells(num_requests: int, seed: int, workloads: list[str], setups: list[Setup], span_s: float) -> list[dict]:
    cells = []
    for setup in setups:
        for workload in workloads:
            base = {"setup": setup, "workload": workload, "num_requests": num_requests, "seed": seed,
                    "span_s": span_s, "min_requests": min(300, num_requests),
                    "start_rps": 0.5 * setup.num_gpus / setup.tp * (2 if setup.tp > 1 else 1)}
            for policy in setup.policies:
                if policy == "chunked":
                    cells += [{**base, "policy": policy, "variant": f"chunked@{b}", "options": {"token_budget": b}}
                              for b in CHUNK_BUDGETS]
                else:
                    cells.append({**base, "policy": policy, "variant": policy})
            if setup is setups[0]:
                cells += [{**base, "policy": "yoda", "variant": f"yoda-{a}", "ablation": a} for a in ABLATIONS]
    return cells


def _summarise(rows: list[dict], setups: list[Setup], workloads: list[str]) -> tuple[str, str, dict]:
    table, ablation, summary = [], [], {}
    for setup in setups:
        best: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["setup"] != setup.name or r.get("ablation"):
                continue
            best.setdefault(r["workload"], {})
            name = r["policy"]
            best[r["workload"]][name] = max(best[r["workload"]].get(name, 0.0), r["goodput_rps"])
        baselines = [p for p in setup.policies if p != "yoda"]
        head = "| workload | yoda | " + " | ".join(baselines) + " | " + " | ".join(f"yoda/{b}" for b in baselines) + " |"
        table += [f"\n### {setup.name} (TBT {setup.tbt_ms:g} ms, TTFT max({setup.ttft_ms:g} ms, "
                  f"{setup.ttft_ms_per_token:g} ms/token), P99)\n", head, "|" + "---|" * (2 + 2 * len(baselines))]
        ratios: dict[str, list[float]] = {b: [] for b in baselines}
        for w in workloads:
            g = best.get(w, {})
            y = g.get("yoda", 0.0)
            cells = [f"{g.get(b, 0.0):.3f}" for b in baselines]
            rat = []
            for b in baselines:
                r = y / g[b] if g.get(b) else float("inf") if y > 0 else float("nan")
                ratios[b].append(r)
                rat.append(f"{r:.2f}x")
            table.append(f"| {w} | {y:.3f} | " + " | ".join(cells) + " | " + " | ".join(rat) + " |")
        means = {b: float(np.exp(np.mean(np.log([x for x in v if np.isfinite(x) and x > 0])))) if any(
            np.isfinite(x) and x > 0 for x in v) else float("nan") for b, v in ratios.items()}
        avg = {b: float(np.mean([x for x in v if np.isfinite(x)])) if any(np.isfinite(x) for x in v) else float("nan")
               for b, v in ratios.items()}
        table.append("| **mean ratio** | | " + " | " * (len(baselines) - 1) + " | " + " | ".join(
            f"**{avg[b]:.2f}x** (geo {means[b]:.2f}x)" for b in baselines) + " |")
        summary[setup.name] = {"goodput": best, "mean_ratio": avg, "geomean_ratio": means}
    first = setups[0].name
    ablation += [f"\n### Ablations ({first})\n", "| workload | yoda | " + " | ".join(ABLATIONS) + " |",
                 "|" + "---|" * (2 + len(ABLATIONS))]
    for w in workloads:
        full = summary.get(first, {}).get("goodput", {}).get(w, {}).get("yoda", 0.0)
        vals = {r["ablation"]: r["goodput_rps"] for r in rows
                if r["setup"] == first and r["workload"] == w and r.get("ablation")}
        ablation.append(f"| {w} | {full:.3f} | " + " | ".join(f"{vals.get(a, float('nan')):.3f}" for a in ABLATIONS) + " |")
    return "\n".join(table), "\n".join(ablation), summary


def _plot(summary: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
    for ax, (setup, data) in zip(axes[0], summary.items()):
        workloads = list(data["goodput"])
        policies = sorted({p for g in data["goodput"].values() for p in g}, key=lambda p: (p != "yoda", p))
        width = 0.8 / max(len(policies), 1)
        for i, p in enumerate(policies):
            ax.bar(np.arange(len(workloads)) + i * width, [data["goodput"][w].get(p, 0) for w in workloads], width, label=p)
        ax.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2, workloads, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("goodput (req/s)")
        ax.set_title(setup, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(requests: int = typer.Option(1500, help="most requests per probe (sessions/4 for session generators)"),
         span: float = typer.Option(240.0, help="arrival window per probe, seconds (requests = rate x span)"),
         seed: int = 0, workers: int = typer.Option(2, help="parallel processes"),
         workloads: str = typer.Option(",".join(WORKLOADS), help="comma-separated workload names"),
         setups: str = typer.Option("all", help="'all' or comma-separated setup indices (0,1,2)"),
         out: Path = Path("results")) -> None:
    from rich.progress import Progress
    names = [w for w in workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise typer.BadParameter(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    chosen = list(SETUPS) if setups == "all" else [SETUPS[int(i)] for i in setups.split(",")]
    cells = _cells(requests, seed, names, chosen, span)
    rows = []
    started = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool, Progress() as progress:
        task = progress.add_task("goodput searches", total=len(cells))
        for row in pool.map(_goodput, cells):
            rows.append(row)
            progress.advance(task)
    table, ablation, summary = _summarise(rows, chosen, names)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.goodput_vs_baselines " + shlex.join(sys.argv[1:])
    header = (f"# Goodput: Yoda vs baselines (simulated)\n\nCommand: `{command}`  \n"
              f"Arrival window {span:g} s per probe (requests = rate x window, {min(300, requests)}..{requests}), seed {seed}; wall {time.perf_counter() - started:.0f} s. "
              "Goodput in req/s; chunked prefill shows its best token budget of "
              f"{list(CHUNK_BUDGETS)}. Ratios: yoda / baseline.\n")
    (out / "goodput_vs_baselines.md").write_text(header + table + "\n" + ablation + "\n")
    (out / "goodput_vs_baselines.json").write_text(json.dumps({"command": command, "rows": rows, "summary": summary},
                                                              indent=1, default=str))
    _plot(summary, out / "goodput_vs_baselines.png")
    print(header + table + "\n" + ablation)


if __name__ == "__main__":
    typer.run(main)
