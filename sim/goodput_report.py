"""`yoda goodput`'s search as the user sees it: a probe bar and a line per probe on stderr, goodput.json and
goodput.png, and the verdict (the rate found, what held there, why the next probe up failed).

    found, reasons = search_with_progress(requests, desc, cfg, flags, as_json=False, probe_line=line_fn)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sim.cli_errors import user_errors


def search_with_progress(requests, desc: dict, cfg, flags: dict, as_json: bool,
                         probe_line: Callable[[float, dict, str], str]):
    """The goodput search with a probe bar (and a line per probe) on stderr; returns the search result and,
    per probed rate, the served rate and why it missed."""
    from sim.outputs import console
    from sim.progress import progress_bar
    from sim.summary import miss_reason
    from sim.sweep import search

    err, reasons = console(stderr=True), {}
    with progress_bar("goodput", flags["max_probes"], "probes (at most)", enabled=not as_json) as update:
        def on_probe(rate: float, metrics: dict) -> None:
            reasons[rate] = {"request_throughput": metrics["request_throughput"],
                             "reason": miss_reason(metrics, flags["criterion"])}
            if update:
                update(len(reasons), f"last: {rate:.3f} req/s")
            if not as_json:
                err.print(probe_line(rate, metrics, flags["criterion"]), highlight=False)

        found = search(requests, desc, cfg, flags["replay"], flags["cv"], flags["seed"], flags["start_rps"],
                       flags["criterion"], flags["max_probes"], on_probe)
    return found, reasons


def write_goodput(out: Path, res: dict) -> list[Path]:
    from sim.outputs import plot_goodput

    with user_errors():
        out.mkdir(parents=True, exist_ok=True)
        (out / "goodput.json").write_text(json.dumps(res, indent=2) + "\n")
        return [out / "goodput.json", plot_goodput(res, out / "goodput.png")]


def print_goodput(res: dict, cfg, desc: dict, notes: list[str], paths: list[Path]) -> None:
    from sim.outputs import console
    from sim.summary import goodput_verdict, short_trace

    c = console()
    c.print(f"goodput of {cfg.policy} on {short_trace(desc['trace'])} ({res['criterion']}, TTFT {cfg.slo.ttft_ms:g} ms, "
            f"TBT {cfg.slo.tbt_ms:g} ms, simulated {cfg.num_instances}x {cfg.gpu}): "
            f"[bold]{res['goodput_rps']:.3f} req/s[/] ({res['num_probes']} probes, {res['wall_s']:.1f} s)",
            highlight=False)
    for line in [*goodput_verdict(res["goodput_rps"], res["probes"]), *notes]:
        c.print(line, highlight=False, markup=False)
    if paths:
        c.print("wrote " + ", ".join(str(p) for p in paths), markup=False)
