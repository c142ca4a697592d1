"""The README's results sections, generated from the benchmarks' JSON so that its numbers are the tables'.

    python -m benchmarks.readme_results [--json results/goodput_vs_baselines.json] [--speed-json
        results/sim_speed.json] [--readme README.md]
    python -m benchmarks.readme_results --check     # exit 1 when the README differs from the JSON

Each section lies between its two marker comments in the README; everything else is left as it is.
Goodput (START, END): per setup, Yoda's goodput with its interval and its ratio over each tuned baseline as
shipped (FCFS) and with the same (deadline) admission, their geometric means, and every cell where Yoda
loses; then the ablations as Yoda's default-knob goodput over each mechanism turned off. Simulator speed
(SPEED_START, SPEED_END): the side-by-side speed-ups, Vidur, and the scaling table's extremes.
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from benchmarks.goodput_vs_baselines import ABLATIONS, SETUPS, _fmt, _geomean, _ratio

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- goodput-results:start (python -m benchmarks.readme_results) -->"
END = "<!-- goodput-results:end -->"
SPEED_START = "<!-- sim-speed:start (python -m benchmarks.readme_results) -->"
SPEED_END = "<!-- sim-speed:end -->"

CAVEATS = (
    "What could still make these wrong: the latency source (measured Vidur kernels, transfer error 3.0 / 9.0 / "
    "19.5% median / P90 / max, `results/fidelity.md`; H100 Llama-3-8B and -70B are derived from the Llama-2 "
    "tables), the contention model between the two lanes (an analytic model bounded by HBM bandwidth, never "
    "checked on a GPU; `--contention pessimistic` did not lower Yoda's goodput in the quick runs because "
    "Yoda's estimator is fitted on the model it runs under), the seeds (intervals are wide where a "
    "workload's goodput depends on a few long prompts), and the searches (bisection to 5% per seed, each "
    "started near an earlier search's result). No line of this has run on a GPU.")


def _by(rows: list[dict]) -> dict:
    return {(r["setup"], r["workload"], r["policy"], r["admission"], r["ablation"]): r for r in rows}


def setup_section(rows: list[dict], setup, workloads: list[str]) -> list[str]:
    by = _by(rows)
    baselines = [p for p in setup.policies if p != "yoda"]
    head = ["workload", "Yoda (deadline), req/s"] + [f"vs {b}: shipped / same adm." for b in baselines]
    out = [f"**{setup.name}** (TBT {setup.tbt_ms:g} ms, TTFT max({setup.ttft_ms:g} ms, "
           f"{setup.ttft_ms_per_token:g} ms/token), P99)\n", "| " + " | ".join(head) + " |",
           "|---" * len(head) + "|"]
    ratios: dict[str, list[float]] = {f"{b}/{k}": [] for b in baselines for k in ("shipped", "same")}
    losses = []
    for w in workloads:
        yoda = by.get((setup.name, w, "yoda", "deadline", None))
        if yoda is None:
            continue
        cells = [_fmt(yoda)]
        for b in baselines:
            pair = []
            for kind, adm in (("shipped", "fcfs"), ("same", "deadline")):
                r = _ratio(yoda, by.get((setup.name, w, b, adm, None)))
                ratios[f"{b}/{kind}"].append(r)
                pair.append(f"{r:.2f}x")
                if r < 1:
                    losses.append(f"{w} vs {b} ({'as shipped' if kind == 'shipped' else 'same admission'}) {r:.2f}x")
            cells.append(" / ".join(pair))
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    out.append("| **geomean** | | " + " | ".join(
        f"**{_geomean(ratios[f'{b}/shipped']):.2f}x / {_geomean(ratios[f'{b}/same']):.2f}x**" for b in baselines) + " |")
    out.append("\nYoda loses: " + ("; ".join(losses) if losses else "nowhere in this setup") + ".\n")
    return out


def ablation_section(rows: list[dict], workloads: list[str]) -> list[str]:
    by = _by(rows)
    first = SETUPS[0].name
    if not any(r["ablation"] for r in rows):
        return []
    out = [f"**Ablations** ({first}): Yoda at its default knobs over Yoda with one mechanism off (above 1: the "
           "mechanism helps)\n", "| workload | " + " | ".join(ABLATIONS) + " |", "|---" * (1 + len(ABLATIONS)) + "|"]
    per: dict[str, list[float]] = {a: [] for a in ABLATIONS}
    for w in workloads:
        base = by.get((first, w, "yoda", None, "defaults"))
        cells = []
        for a in ABLATIONS:
            r = _ratio(base, by.get((first, w, "yoda", None, a)))
            per[a].append(r)
            cells.append(f"{r:.2f}x")
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    out.append("| **geomean** | " + " | ".join(f"**{_geomean(per[a]):.2f}x**" for a in ABLATIONS) + " |\n")
    return out


def render(data: dict, source: str) -> str:
    rows = data["rows"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    names = list(dict.fromkeys(r["setup"] for r in rows))
    setups = [s for s in SETUPS if s.name in names]
    nominal = max(r["probe_requests"] for r in rows)
    short = {}
    for r in rows:
        if r["probe_requests"] < nominal:
            short[r["workload"]] = min(short.get(r["workload"], nominal), r["probe_requests"])
    fewer = "".join(f"; {w}: {n:,}" for w, n in sorted(short.items()))
    seeds = sorted({s for r in rows for s in r["seeds"]})
    when = f", {data['date'][:10]}" if data.get("date") else ""
    out = [START, "",
           f"Made by `{data['command']}` ({data['wall_s'] / 60:.0f} min wall{when}; every cell in `{source}` with its "
           f"interval, tuned configs and plot). Goodput: the highest rate at which P99 TTFT, the pooled P99 TBT and "
           f"90% of requests' own P99 gap are within target, nothing refused, the run stable; seeds {seeds}, each cell "
           f"the mean with a 95% t-interval; probes of {nominal:,} requests (fewer where a trace or its sessions run "
           f"out{fewer}). Every baseline is tuned over its "
           "declared grid (`sim/tuning.py`); **shipped** = over the baseline with FCFS admission as its system ships, "
           "**same adm.** = both with Yoda's deadline admission (what PD multiplexing alone buys). Below 1x: Yoda "
           "loses.\n"]
    for s in setups:
        out += setup_section(rows, s, workloads)
    out += ablation_section(rows, workloads)
    out += [CAVEATS, "", END]
    return "\n".join(out)


def render_speed(data: dict) -> str:
    """The simulator-speed paragraph from benchmarks/sim_speed.py's JSON."""
    rows = {(r["trace"], r["simulator"], r["policy"], r.get("processes", 1)): r for r in data["rows"]}
    moon = {p: rows.get(("mooncake_conversation", "ours", p, 1)) for p in ("yoda", "chunked")}
    vidur = rows.get(("mooncake_conversation", "vidur", "vidur-sarathi", 1))
    ref = data.get("baseline_ref")
    latency = data.get("config", {}).get("latency")
    latency_text = f", {latency} latency source" if latency else ""
    out = [f"Simulator speed (`results/sim_speed.md`, made by `{data['command']}`, {data['date'][:10]}, "
           f"{data['device']}): on the Mooncake conversation trace (12,031 requests, 4 simulated H100s, round-robin, "
           f"one process{latency_text})"]
    parts = []
    for policy, name in (("yoda", "Yoda"), ("chunked", "chunked prefill")):
        r = moon[policy]
        if r is None:
            continue
        text = f"{name} simulates {r['req_per_wall_s']:,.0f} requests per wall second ({r['wall_s']:.1f} s)"
        if r.get("vs_baseline"):
            text += (f", {r['vs_baseline']:.2f}x the code of `{ref}` timed side by side "
                     f"({r['records_differ']:,} of {r['requests']:,} records differ)")
        parts.append(text)
    out[-1] += " " + "; ".join(parts) + "."
    if vidur and vidur.get("wall_s"):
        out.append(f"Vidur {data['vidur']['version']} (Sarathi, its own event loop) takes {vidur['wall_s']:.1f} s on the "
                   f"same trace" + (f": ours is {moon['yoda']['vs_vidur']:.1f}x (Yoda) and "
                                    f"{moon['chunked']['vs_vidur']:.1f}x (chunked) its requests per second."
                                    if moon["yoda"] and moon["chunked"] else "."))
    else:
        out.append(f"Vidur was not timed in that run ({data['vidur'].get('skipped')}).")
    scale = data.get("scale") or []
    for policy, name in (("chunked", "chunked prefill"), ("yoda", "Yoda")):
        mine = sorted((r for r in scale if r["policy"] == policy), key=lambda r: r["requests"])
        if len(mine) > 1:
            us = [1e6 * r["wall_s"] / r["requests"] for r in mine]
            out.append(f"Scaling, {name}: {mine[-1]['requests']:,} Azure-derived requests in {mine[-1]['wall_s']:.0f} s "
                       f"and {mine[-1]['peak_rss_mb'] / 1024:.1f} GB peak RSS; "
                       + ", ".join(f"{r['requests']:,}: {u:.0f} us" for r, u in zip(mine, us)) + " per request.")
    return "\n".join([SPEED_START, "", " ".join(out), "", SPEED_END])


def splice(readme: str, section: str, start: str = START, end: str = END) -> str:
    if start not in readme or end not in readme:
        raise ValueError(f"README has no results markers; add the lines {start!r} and {end!r} where the section goes")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + section + tail


def render_readme(readme: str, goodput: dict, speed: dict, source: str = "results/goodput_vs_baselines.md") -> str:
    """`readme` with both generated sections rendered from the two benchmarks' JSON."""
    return splice(splice(readme, render(goodput, source)), render_speed(speed), SPEED_START, SPEED_END)


def main(json_path: Path = typer.Option(ROOT / "results" / "goodput_vs_baselines.json", "--json"),
         speed_json: Path = typer.Option(ROOT / "results" / "sim_speed.json", "--speed-json"),
         readme: Path = typer.Option(ROOT / "README.md"),
         check: bool = typer.Option(False, help="only compare: exit 1 when the README is not the JSON's")) -> None:
    data = json.loads(json_path.read_text())
    source = str(json_path.with_suffix(".md").relative_to(ROOT)) if json_path.is_relative_to(ROOT) else str(json_path)
    text = readme.read_text()
    new = render_readme(text, data, json.loads(speed_json.read_text()), source)
    if check:
        if new != text:
            typer.echo(f"{readme} differs from {json_path} or {speed_json}: run python -m benchmarks.readme_results",
                       err=True)
            raise typer.Exit(1)
        typer.echo("README results match the JSON")
        return
    readme.write_text(new)
    typer.echo(f"wrote the results section of {readme} from {json_path}")


if __name__ == "__main__":
    typer.run(main)
