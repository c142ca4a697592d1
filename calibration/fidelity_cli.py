"""`yoda fidelity`: every latency source against measured kernel times it was not built from.

    yoda fidelity                     # a table
    yoda fidelity --json              # {"checks": {CHECK: {SOURCE: {"median", "p90", "max", "points"}}}}
    yoda fidelity --out results       # also fidelity.json, fidelity.md and fidelity.png there
"""
from __future__ import annotations

import json
from pathlib import Path

import typer

from calibration.fidelity import CHECKS, SOURCES, fidelity

COMMAND = "yoda fidelity --out results"
TARGETS = {"median": 0.03, "p90": 0.08, "max": 0.15}  # issue 17: measured source on `transfer`


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict) -> str:
    lines = ["# Latency-source fidelity", "", f"Made by `{COMMAND}` (calibration/fidelity.py says what each "
             "check builds from and predicts). Relative error |predicted / measured - 1| per point.", "",
             "| check | source | median | P90 | max | points |", "|---|---|---|---|---|---|"]
    for check in CHECKS:
        for source in SOURCES:
            s = report["checks"][check][source]
            lines.append(f"| {check} | {source} | {_pct(s['median'])} | {_pct(s['p90'])} | {_pct(s['max'])} | "
                         f"{s['points']} |")
    lines += ["", "Target for `measured` on `transfer`: " + ", ".join(
        f"{k} <= {_pct(v)}" for k, v in TARGETS.items()) + ".", "",
        "pdmux is the reference of `sm_scaling` (0 by construction) and has no TP: TP1 points only (TP8 for the "
        "70B tables, whose fit is likely Llama-3-70B TP8); its `transfer`/`leave_out`/`tp8` rows are whole-layer "
        "times from fits of unknown models, shown for scale, not as like-for-like.", ""]
    context = report.get("transfer_context")
    if context:
        lines += ["What bounds `transfer` (same points, per-layer linear time or per GEMM):", "",
                  "| reference | median | P90 | max | points |", "|---|---|---|---|---|"]
        for name, s in context.items():
            lines.append(f"| {name} | {_pct(s['median'])} | {_pct(s['p90'])} | {_pct(s['max'])} | {s['points']} |")
        lines += ["", "`flop_ratio_baseline`: each Llama-2-7b operator scaled by its FLOP ratio. "
                  "`identical_shape_floor`: the same GEMM shape timed in both A100 tables (per GEMM): how far "
                  "two measurements of one kernel disagree, a floor no transfer can beat. `*_tpN`: the same per TP "
                  "column.", "",
                  "Issue 17 quotes 2.4% / 7.1% / 12.9% for the FLOP-ratio baseline. That figure is not reproducible "
                  "from the raw Vidur CSVs under the check's definition (per-layer sum of the four GEMMs, num_tokens "
                  "1..4096, TP 1/2/4/8, each TP column against the same TP column): the median, mean or min statistic "
                  "and averaging, first, last or median of the duplicated (tp, num_tokens) rows all give 3.2% / "
                  "10.0-10.1% / 38.8% (3.4% / 10.4% / 39.8% on min), per-GEMM errors 4.0% / 17.2% / 78.1%, and adding "
                  "the elementwise operators 2.9% / 9.0% / 31.5%; TP1 alone gives 2.9% / 8.0% / 14.2%. The max is set "
                  "by kernel-selection spikes one table has and the other does not: the Llama-2-7b TP8 gate+up GEMM "
                  "at 792-832 tokens (0.160 ms against 0.09 ms either side) and the Llama-3-8B TP4 gate+up GEMM at "
                  "584-624 tokens (0.242 ms against 0.168 ms; at TP1 the same GEMM steps from 0.598 to 0.775 ms at "
                  "584 tokens, which the Llama-2-7b shapes do not); no prediction from the other table can see "
                  "them.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CHECKS), figsize=(4 * len(CHECKS), 3.2))
    for ax, check in zip(axes, CHECKS):
        for i, source in enumerate(SOURCES):
            s = report["checks"][check][source]
            if not s["points"]:
                continue
            values = [100 * s[k] for k in ("median", "p90", "max")]
            ax.bar([x + 0.25 * i for x in range(3)], values, width=0.25, label=source, color=f"C{i}")
        ax.set_xticks([0.25 + x for x in range(3)], ["median", "P90", "max"])
        ax.set_yscale("log")
        ax.set_title(check)
        ax.set_ylabel("relative error (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fidelity_cmd(
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object, nothing else"),
    out: Path | None = typer.Option(None, "--out", help="write fidelity.json, fidelity.md and fidelity.png here"),
) -> None:
    """Check the roofline, pdmux and measured latency sources against measured kernel times they were not
    built from: transfer (A100 Llama-2-7b -> Meta-Llama-3-8B), leave_out, tp8 and sm_scaling."""
    report = fidelity()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "fidelity.md").write_text(markdown(report))
        plot(report, out / "fidelity.png")
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(markdown(report))


def register(app: typer.Typer) -> None:
    app.command("fidelity")(fidelity_cmd)
