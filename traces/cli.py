"""`yoda trace ...` commands (mounted by yoda/cli.py as `app.add_typer(trace_app, name="trace")`).

    yoda trace stats traces/data/mooncake_sample.jsonl --cache-blocks 2000
    yoda trace stats ../shared/traces/agents/miniswe.common.jsonl --json
"""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from traces.loaders import LOADERS, TraceError, load_trace
from traces.stats import PERCENTILES, trace_stats

trace_app = typer.Typer(help="Inspect request traces (Mooncake, Azure, agent formats).", no_args_is_help=True)


@trace_app.callback()
def _group() -> None:
    """Inspect request traces (Mooncake, Azure, agent formats)."""


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@trace_app.command("stats")
def stats(
    path: str = typer.Argument(..., help="trace file"),
    fmt: str | None = typer.Option(None, "--format", help=f"one of {', '.join(LOADERS)}; default: detect"),
    cache_blocks: int | None = typer.Option(None, "--cache-blocks", help="LRU cache size in blocks"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip malformed lines instead of failing"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Print request count, span, rate, length percentiles, sessions and prefix reuse of a trace."""
    if fmt is not None and fmt not in LOADERS:
        _fail(f"unknown format {fmt!r}; expected one of {', '.join(LOADERS)}")
    try:
        trace = load_trace(path, fmt, skip_bad=skip_bad)
        result = trace_stats(trace.requests, cache_blocks)
    except FileNotFoundError:
        _fail(f"no such file: {path}")
    except (TraceError, ValueError, OSError) as e:
        _fail(str(e))
    result = {"path": trace.path, "format": trace.format, "skipped_lines": trace.num_skipped,
              "clamped_outputs": trace.num_clamped, **result}
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        Console().print(_table(result))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(s: dict[str, Any]) -> Table:
    table = Table(title=f"{s['path']} ({s['format']})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests", _fmt(s["requests"])),
        ("span", f"{_fmt(s['span_s'], 1)} s"),
        ("rate", f"{_fmt(s['rate_rps'])} req/s"),
    ]
    for kind in ("prompt", "output"):
        percentiles = " / ".join(_fmt(s[f"{kind}_len_p{p}"], 0) for p in PERCENTILES)
        rows.append((f"{kind} len p{'/p'.join(map(str, PERCENTILES))}", percentiles))
        rows.append((f"{kind} len mean", _fmt(s[f"{kind}_len_mean"], 0)))
    rows += [
        ("sessions", _fmt(s["sessions"])),
        ("mean turns per session", _fmt(s["mean_turns_per_session"], 2)),
        ("hash block size", _fmt(s["block_size"])),
        ("reusable prompt tokens (unbounded cache)", _fmt(s["reusable_token_fraction"])),
        (f"LRU hit fraction ({_fmt(s['cache_blocks'])} blocks)" if s["cache_blocks"] else "LRU hit fraction",
         _fmt(s["lru_hit_fraction"])),
        ("skipped lines / clamped outputs", f"{s['skipped_lines']} / {s['clamped_outputs']}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
