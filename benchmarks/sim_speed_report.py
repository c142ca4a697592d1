"""Tables and files of benchmarks/sim_speed.py: the speed table (ours, Vidur, and a baseline checkout
side by side), the scaling table, results/sim_speed.{json,md}."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def add_rates(rows: list[dict]) -> None:
    """requests per wall second, each row's speed relative to Vidur's on the same trace, and each of our
    rows' speed-up over the baseline checkout's same run (--baseline-ref)."""
    for r in rows:
        r["req_per_wall_s"] = r["requests"] / r["wall_s"] if r.get("wall_s") else None
    for r in rows:
        vidur = next((v for v in rows if v["trace"] == r["trace"] and v["simulator"] == "vidur"
                      and v.get("req_per_wall_s")), None)
        r["vs_vidur"] = r["req_per_wall_s"] / vidur["req_per_wall_s"] if vidur and r["req_per_wall_s"] else None
        base = r.get("baseline_wall_s")
        r["vs_baseline"] = base / r["wall_s"] if base and r.get("wall_s") else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = ["trace", "simulator", "policy", "processes", "requests", "wall s", "process s", "req / wall s", "x Vidur",
          "baseline wall s", "x baseline", "records differ"]


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["trace"], r["simulator"], r["policy"], str(r.get("processes", 1)), str(r["requests"]),
             _fmt(r.get("wall_s"), ".1f"), _fmt(r.get("process_s"), ".1f"), _fmt(r.get("req_per_wall_s"), ",.0f"),
             _fmt(r.get("vs_vidur"), ".1f"), _fmt(r.get("baseline_wall_s"), ".2f"), _fmt(r.get("vs_baseline"), ".2f"),
             _fmt(r.get("records_differ"), "d")]
            for r in rows]


SCALE_HEADER = ["policy", "requests", "wall s", "us / request", "x us / request of smallest", "peak RSS MB",
                "sim s", "completed"]


def scale_table_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        smallest = min((s for s in rows if s["policy"] == r["policy"]), key=lambda s: s["requests"])
        per = r["wall_s"] / r["requests"] * 1e6
        out.append([r["policy"], f"{r['requests']:,}", f"{r['wall_s']:.1f}", f"{per:.0f}",
                    f"{per / (smallest['wall_s'] / smallest['requests'] * 1e6):.2f}", f"{r['peak_rss_mb']:,.0f}",
                    f"{r['sim_end_s']:,.0f}", f"{r['completed']:,}"])
    return out


def print_table(rows: list[dict], scale: list[dict] = ()) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    if not console.is_terminal:
        console.width = 180  # rich's 80-column default for pipes truncates the cells
    for title, header, cells in (("Simulator speed (wall s: ours = simulate(); Vidur = its event loop)", HEADER,
                                  table_rows(rows)),
                                 ("Scaling (Azure-derived, one fresh process per run)", SCALE_HEADER,
                                  scale_table_rows(list(scale)))):
        if not cells:
            continue
        table = Table(title=title)
        for name in header:
            table.add_column(name, justify="left" if name in ("trace", "simulator", "policy") else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)


def device() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor()
    return f"{cpu} CPU, {os.cpu_count()} cores, Python {platform.python_version()}"


def _md_table(header: list[str], cells: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(c) + " |" for c in cells]


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim_speed.json").write_text(json.dumps(report, indent=1, default=str))
    lines = ["# Simulator speed: ours vs Vidur\n", f"Command: `{report['command']}`  ",
             f"Date: {report['date']}  ", f"Device: {report['device']}  ",
             f"Script wall time: {report['script_wall_s']:.0f} s  ", f"Config: {report['config_text']}\n"]
    lines += _md_table(HEADER, table_rows(report["rows"]))
    lines += ["", "wall s: ours = `SimResult.wall_s` (cluster build, event loop, metrics); Vidur = its event loop "
              "(`Simulator.run` less output writing). processes: ours runs one instance per process, up to this "
              "many at a time (the records do not depend on it). process s: Vidur's whole subprocess (interpreter "
              "start-up, imports, predictor training or cache load per replica, trace parsing, output). x Vidur: "
              "requests per wall second relative to Vidur's on the same trace.", ""]
    if report.get("baseline_ref"):
        lines += [f"Baseline: `{report['baseline_ref']}` ({report.get('baseline_commit', '?')}), a git worktree of "
                  "that ref. With a baseline, each of our runs and the baseline's same run are timed in turn, each "
                  "in a fresh process (fastest of --repeat); x baseline = baseline wall s / ours. records differ: "
                  "requests whose record (token times to 1 ns, reused tokens, preemptions, rejection) is not the "
                  "baseline's. The machine is shared, so absolute seconds are noisy; the ratios, measured side "
                  "by side in one run, are what count.", ""]
    if report.get("scale"):
        lines += ["## Scaling\n", report.get("scale_text", ""), ""]
        lines += _md_table(SCALE_HEADER, scale_table_rows(report["scale"])) + [""]
    if report["vidur"].get("skipped"):
        lines.append(f"Vidur skipped: {report['vidur']['skipped']}")
    lines += [f"- {note}" for note in report["notes"]]
    (out / "sim_speed.md").write_text("\n".join(lines) + "\n")
