"""Goodput of Yoda against tuned baselines, each as shipped (FCFS) and with Yoda's admission, in simulation.

    python -m benchmarks.goodput_vs_baselines [--workers 2] [--seeds 0,1,2] [--out results]
    python -m benchmarks.goodput_vs_baselines --quick      # 2 workloads, 2 setups, 2 seeds: a few minutes

Goodput = highest request rate at which P99 TTFT (against its target) and P99 TBT are both met (rate
search by bisection; each probe replays at least `--min-requests` requests, so each P99 rests on at least
10 requests beyond it). Every policy is tuned over its declared grid (sim/tuning.py: chunked prefill's token
budget x per-request chunk cap x partial prefills, prefill-first's max prefill tokens, the static split's
decode share x chunk size, the temporal split's layers per group, disaggregation's xP:yD x prefill chunking,
Yoda's prefill job size): the grid on the first seed with a coarse search on probes a quarter as long, the best
`--top` points on every seed with the shipped admission layer and the best one with the other (fcfs: as the
systems ship; deadline: Yoda's TTFT-deadline order). Each cell
is the mean over the seeds with a Student-t 95% interval. Setups: one H100 with Llama-3-8B (TBT 50 ms),
one 8-GPU Llama-3-70B instance at TP=8 (TBT 100 ms), and 2, 4 and 8 H100s with Llama-3-8B, where PD
disaggregation (best xP:yD) competes with as many instances of Yoda and chunked prefill behind the
SLO-aware dispatcher. Ablations of Yoda on the first setup. Writes markdown, JSON and a plot
(`goodput_vs_baselines[_quick].*`).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import typer

if __package__ in (None, ""):
    from workloads import WORKLOADS  # type: ignore[no-redef]
else:
    from benchmarks.workloads import WORKLOADS

PER_GPU = ("yoda", "chunked", "prefill_first", "static_split", "temporal")
ABLATIONS = ("no_layerwise", "no_query_merge", "no_guard", "static_partition", "no_preemption")
QUICK_WORKLOADS = ("mooncake_conversation", "sharegpt_like")


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

    @property
    def num_instances(self) -> int:
        return self.num_gpus // self.tp


SETUPS = (
    Setup("1xH100 Llama-3-8B", "llama3-8b", 1, 1, 50, 1000, 0.25, PER_GPU),
    Setup("8xH100 Llama-3-70B TP8", "llama3-70b", 8, 8, 100, 2000, 0.5, PER_GPU),
    *(Setup(f"{n}xH100 Llama-3-8B", "llama3-8b", 1, n, 50, 1000, 0.25, ("yoda", "chunked", "disagg"))
      for n in (2, 4, 8)),
)


@dataclass(frozen=True)
class BenchWorkload:
    """A benchmark workload (benchmarks/workloads.py) with a fixed arrival window per probe: requests =
    rate x window, within [min_requests, max_requests], so every probe is a steady-state run."""

    name: str
    span_s: float
    min_requests: int
    max_requests: int

    def runner(self, cfg, seed: int, criterion: str = "strict"):
        from sim.run import simulate_probe
        from traces import rescale_to_rate

        cache: dict[int, list] = {}

        def run(rate: float):
            n = int(min(max(rate * self.span_s, self.min_requests), self.max_requests))
            if n not in cache:
                cache[n] = WORKLOADS[self.name](n, seed)
            return simulate_probe(rescale_to_rate(cache[n], rate), cfg, criterion)
        return run, 1.0


def _variants(policy: str) -> tuple[dict, ...]:
    """Admission layers, the shipped one first (the grid is searched with it)."""
    if policy == "yoda":
        return ({"admission": "deadline"}, {"admission": "fcfs"})
    return ({"admission": "fcfs"}, {"admission": "deadline"})


def make_cells(setups, workloads, seeds, min_requests, max_requests, span_s, top, with_ablations=True,
               latency: str = "measured", contention: str = "default"):
    from sim.run import SimConfig
    from sim.tuning import TuneCell, grid_for
    from yoda.gang_scheduler import ABLATIONS as ABL
    from yoda.request import SLO

    cells, keys = [], []
    for s in setups:
        slo = SLO(ttft_ms=s.ttft_ms, tbt_ms=s.tbt_ms, ttft_ms_per_token=s.ttft_ms_per_token)
        start = 0.5 * s.num_gpus / s.tp * (2 if s.tp > 1 else 1)
        for w in workloads:
            load = BenchWorkload(w, span_s, min_requests, max_requests)
            # the grid is ranked on probes a quarter as long, but of at least 250 requests (ranking on fewer
            # picked a chunked config 45% worse on Mooncake conversation); the chosen points are confirmed on
            # full-length probes
            shortest = min(max(min_requests // 4, 250), min_requests)
            coarse = BenchWorkload(w, span_s / 4, shortest, max(max_requests // 4, shortest))

            def cell(policy, options=None, grid=None, variants=None, warm_from=None):
                cfg = SimConfig(policy=policy, model=s.model, tp=s.tp, num_instances=s.num_instances, slo=slo,
                                policy_options=options or {}, record_timeline=False, latency=latency,
                                contention_mode=contention)
                return TuneCell(load, cfg, seeds, grid or grid_for(policy, s.num_instances), start_rps=start,
                                max_probes=14, top=top, variants=variants or _variants(policy), coarse_workload=coarse,
                                warm_from=warm_from)
            for policy in s.policies:
                cells.append(cell(policy))
                keys.append((s.name, w, policy, None))
            if with_ablations and s is SETUPS[0]:
                tuned = keys.index((s.name, w, "yoda", None))  # ablations start from tuned Yoda's first search
                for a in ("defaults", *ABLATIONS):
                    cells.append(cell("yoda", ABL.get(a, {}), [{}], ({},), warm_from=tuned))
                    keys.append((s.name, w, "yoda", a))
    return cells, keys


def _fmt(row: dict | None) -> str:
    if row is None:
        return "-"
    low, high = row["ci95"]
    return f"{row['goodput_rps']:.3f} [{max(low, 0):.3f}, {high:.3f}]"


SHORT = {"token_budget": "budget", "long_prefill_token_threshold": "cap", "max_num_partial_prefills": "partial",
         "max_long_partial_prefills": "long", "max_prefill_tokens": "max_tokens", "decode_sms": "decode_sms",
         "chunk_tokens": "chunk", "layers_per_group": "layers", "num_prefill_instances": "xP",
         "prefill_tokens": "job_tokens"}


def _knobs(row: dict, grid_keys: set[str]) -> str:
    cfg = row["config"]
    return " ".join(f"{SHORT.get(k, k)}={cfg[k]}" for k in sorted(grid_keys) if k in cfg) or "defaults"


def _ratio(a: dict | None, b: dict | None) -> float:
    if not a or not b:
        return float("nan")
    return a["goodput_rps"] / b["goodput_rps"] if b["goodput_rps"] > 0 else float("inf") if a["goodput_rps"] > 0 else float("nan")


def _geomean(values: list[float]) -> float:
    ok = [v for v in values if np.isfinite(v) and v > 0]
    return float(np.exp(np.mean(np.log(ok)))) if ok else float("nan")


def summarise(rows: list[dict], setups, workloads) -> tuple[str, dict]:
    """Markdown (goodput with intervals, ratios, tuned configs, ablations) and a JSON summary."""
    by = {(r["setup"], r["workload"], r["policy"], r["admission"], r["ablation"]): r for r in rows}
    out, summary = [], {}
    for s in setups:
        cols = [(p, a["admission"]) for p in s.policies for a in _variants(p)]
        out += [f"\n### {s.name} (TBT {s.tbt_ms:g} ms, TTFT max({s.ttft_ms:g} ms, {s.ttft_ms_per_token:g} ms/token), "
                "P99)\n", "Goodput, req/s: mean over seeds [95% interval]. Admission: fcfs as shipped, deadline "
                "= Yoda's TTFT-deadline order.\n",
                "| workload | " + " | ".join(f"{p} ({a})" for p, a in cols) + " |", "|---" * (1 + len(cols)) + "|"]
        for w in workloads:
            out.append(f"| {w} | " + " | ".join(_fmt(by.get((s.name, w, p, a, None))) for p, a in cols) + " |")
        baselines = [p for p in s.policies if p != "yoda"]
        out += ["\nRatios yoda / baseline: **shipped** = Yoda (deadline) over the baseline as shipped (fcfs); "
                "**same admission** = both with deadline admission (what PD multiplexing alone buys). Below 1: "
                "Yoda loses.\n", "| workload | " + " | ".join(f"vs {b} shipped | vs {b} same admission"
                                                               for b in baselines) + " |",
                "|---" * (1 + 2 * len(baselines)) + "|"]
        ratios: dict[str, list[float]] = {f"{b}/{k}": [] for b in baselines for k in ("shipped", "same")}
        for w in workloads:
            yoda = by.get((s.name, w, "yoda", "deadline", None))
            cells = []
            for b in baselines:
                for kind, adm in (("shipped", "fcfs"), ("same", "deadline")):
                    r = _ratio(yoda, by.get((s.name, w, b, adm, None)))
                    ratios[f"{b}/{kind}"].append(r)
                    cells.append(f"{r:.2f}x")
            out.append(f"| {w} | " + " | ".join(cells) + " |")
        geo = {k: _geomean(v) for k, v in ratios.items()}
        out.append("| **geomean** | " + " | ".join(f"**{geo[f'{b}/{k}']:.2f}x**" for b in baselines
                                                   for k in ("shipped", "same")) + " |")
        out += ["\nTuned configs (the grid's knobs; shipped / other admission where they differ; cap 0: none):\n", "| workload | " + " | ".join(s.policies) + " |",
                "|---" * (1 + len(s.policies)) + "|"]
        for w in workloads:
            cells = []
            for p in s.policies:
                got = [by.get((s.name, w, p, a["admission"], None)) for a in _variants(p)]
                keys = {k for r in got if r for g in r["grid"] for k in g["options"]}
                shown = [_knobs(r, keys) if r else "-" for r in got]
                cells.append(shown[0] if len(set(shown)) == 1 else " / ".join(shown))
            out.append(f"| {w} | " + " | ".join(cells) + " |")
        summary[s.name] = {"geomean_ratio": geo, "goodput": {
            w: {f"{p} ({a})": by[(s.name, w, p, a, None)]["goodput_rps"] for p, a in cols
                if (s.name, w, p, a, None) in by} for w in workloads}}
    abl = [r for r in rows if r["ablation"]]
    if abl:
        first = setups[0].name
        names = ("defaults", *ABLATIONS)
        out += [f"\n### Ablations ({first}; Yoda at its default knobs, each mechanism off in turn)\n",
                "| workload | " + " | ".join(names) + " |", "|---" * (1 + len(names)) + "|"]
        for w in workloads:
            out.append(f"| {w} | " + " | ".join(_fmt(by.get((first, w, "yoda", None, a))) for a in names) + " |")
    return "\n".join(out), summary


def _plot(rows: list[dict], setups, workloads, out: Path) -> None:
    """Per setup, each policy's goodput as shipped over Yoda's (deadline admission) on each workload, log
    scale, with the 95% interval: workloads whose rates differ a hundredfold read on one axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(setups))
    nrows = -(-len(setups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
    for ax, s in zip(axes.flat, setups):
        mine = {(r["workload"], r["policy"]): r for r in rows if r["setup"] == s.name and not r["ablation"]
                and r["admission"] == _variants(r["policy"])[0]["admission"]}
        width = 0.8 / len(s.policies)
        for i, p in enumerate(s.policies):
            rel, err = [], []
            for w in workloads:
                g, yoda = mine.get((w, p)), mine.get((w, "yoda"))
                if not g or not yoda or yoda["goodput_rps"] <= 0 or g["goodput_rps"] <= 0:
                    rel.append(np.nan)
                    err.append((0.0, 0.0))
                    continue
                scale = yoda["goodput_rps"]
                m = g["goodput_rps"] / scale
                low = max(g["ci95"][0], g["goodput_rps"] * 0.01) / scale
                rel.append(m)
                err.append((m - low, g["ci95"][1] / scale - m))
            ax.bar(np.arange(len(workloads)) + i * width, rel, width, yerr=np.array(err).T, capsize=2, label=p)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(workloads)) + 0.4 - width / 2, workloads, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("goodput / Yoda's (as shipped, log)")
        ax.set_title(s.name, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(setups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def replot(json_path: Path) -> Path:
    """The plot again from a run's JSON (beside it, same stem)."""
    data = json.loads(json_path.read_text())
    rows = data["rows"]
    names = {r["setup"] for r in rows}
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    out = json_path.with_suffix(".png")
    _plot(rows, [s for s in SETUPS if s.name in names], workloads, out)
    return out


def main(quick: bool = typer.Option(False, help="development run: 2 workloads, 1 and 2 GPUs, seeds 0,1, "
                                    "300..600-request probes, best point only; writes *_quick files"),
         seeds: str = typer.Option("0,1,2", help="comma-separated seeds (>= 3 for the headline tables)"),
         min_requests: int = typer.Option(1000, help="fewest requests per probe"),
         max_requests: int = typer.Option(1000, help="most requests per probe (sessions/4 for session generators)"),
         span: float = typer.Option(240.0, help="arrival window per probe, seconds (requests = rate x span)"),
         top: int = typer.Option(1, help="grid points confirmed on every seed (2 adds about a third to the run)"),
         workers: int = typer.Option(2, help="parallel processes"),
         workloads: str = typer.Option(",".join(WORKLOADS), help="comma-separated workload names"),
         setups: str = typer.Option("all", help="'all' or comma-separated setup indices (0..4)"),
         latency: str = typer.Option("measured", help="latency source: measured (the default), roofline or pdmux"),
         contention: str = typer.Option("default", help="contention model: default or pessimistic"),
         out: Path = Path("results"),
         replot_json: Path = typer.Option(None, "--replot", help="only redraw the plot of a run's JSON")) -> None:
    from rich.progress import Progress

    if replot_json is not None:
        print(f"wrote {replot(replot_json)}")
        return

    from sim.tuning import num_searches, run_tuning

    names = list(QUICK_WORKLOADS) if quick else [w for w in workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise typer.BadParameter(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    chosen = [SETUPS[0], SETUPS[2]] if quick else list(SETUPS) if setups == "all" else [
        SETUPS[int(i)] for i in setups.split(",")]
    seed_list = (0, 1) if quick else tuple(int(x) for x in seeds.split(","))
    if quick:
        min_requests, max_requests, span, top = 300, 600, 150.0, 1
    cells, keys = make_cells(chosen, names, seed_list, min_requests, max_requests, span, top, not quick, latency,
                             contention)
    started = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("goodput searches", total=num_searches(cells))
        results = run_tuning(cells, workers, lambda: progress.advance(task))
    rows = []
    for (setup, w, policy, ablation), cell, variants in zip(keys, cells, results):
        for variant, res in zip(cell.variants, variants):
            rows.append({"setup": setup, "workload": w, "policy": policy, "ablation": ablation,
                         "admission": variant.get("admission"), **res})
    wall = time.perf_counter() - started
    body, summary = summarise(rows, chosen, names)
    command = "python -m benchmarks.goodput_vs_baselines " + shlex.join(sys.argv[1:])
    least = min(r["probe_requests"] for r in rows)
    short = sorted({(r["workload"], r["probe_requests"]) for r in rows if r["probe_requests"] < min_requests})
    shorter = "".join(f"; {w}: probes of {n} requests (the whole trace), {int(n * 0.01)} beyond each P99"
                      for w, n in dict(short).items())
    cpu = sum(r["search_cpu_s"] for r in rows)
    header = (f"# Goodput: Yoda vs tuned baselines (simulated)\n\nCommand: `{command}`  \n"
              f"Seeds {list(seed_list)}; probes of {min_requests}..{max_requests} requests over a {span:g} s window "
              f"(fewest in a confirmed search: {least}, i.e. {int(least * 0.01)} requests beyond each P99{shorter}); "
              f"{len(cells)} cells, {num_searches(cells)} goodput searches, wall {wall:.0f} s on {workers} "
              f"processes ({cpu:.0f} CPU-seconds of searches). Latency source: {latency}; contention model: "
              f"{contention}. Goodput criterion: strict (P99 TTFT, pooled P99 TBT and each request's own P99 "
              "gap within target for 90% of requests; nothing refused; stable).\n")
    out.mkdir(parents=True, exist_ok=True)
    stem = "goodput_vs_baselines_quick" if quick else "goodput_vs_baselines"
    if (latency, contention) != ("measured", "default"):
        stem += f"_{latency}_{contention}"
    (out / f"{stem}.md").write_text(header + body + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"command": command, "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "workers": workers, "wall_s": wall, "search_cpu_s": cpu, "rows": rows,
                                                  "summary": summary}, indent=1, default=str))
    _plot(rows, chosen, names, out / f"{stem}.png")
    print(header + body)


if __name__ == "__main__":
    typer.run(main)
