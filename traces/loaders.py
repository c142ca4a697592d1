"""Loaders that parse the upstream trace formats (../shared/traces/README.md) into `list[Request]`.

    from traces import load_trace
    trace = load_trace("traces/data/mooncake_sample.jsonl")   # format detected from the content

Every loader returns requests sorted by arrival (stable: file order breaks ties) with request_id 0..n-1
in that order. A bad line raises TraceError naming the file and the 1-based line number, or with
skip_bad=True is skipped and counted.

Length policy (Request needs both lengths >= 1): a prompt length of 0 is a bad line (nothing to
prefill); an output length of 0 is clamped to 1 (the first token comes out of prefill anyway) and
counted in `LoadedTrace.num_clamped`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from yoda.request import Request

MOONCAKE_HASH_BLOCK_SIZE = 512


class TraceError(ValueError):
    """A trace file could not be read; the message starts with `path:line:` where a line is to blame."""


@dataclass(frozen=True, slots=True)
class LoadedTrace:
    requests: list[Request]
    format: str
    path: str
    num_skipped: int = 0  # bad lines skipped (skip_bad=True)
    num_clamped: int = 0  # requests whose output length 0 was raised to 1


Row = dict[str, Any]  # Request keyword arguments, request_id left out


class _Reader:
    """Runs a per-line parser over a file; a ValueError from it becomes a TraceError or a skip."""

    def __init__(self, path: str | Path, skip_bad: bool) -> None:
        self.path = str(path)
        self.skip_bad = skip_bad
        self.num_skipped = 0
        self.num_clamped = 0

    def lines(self) -> Iterator[tuple[int, str]]:
        with open(self.path, encoding="utf-8") as f:
            for lineno, text in enumerate(f, 1):
                if text.strip():
                    yield lineno, text

    def rows(self, parse: Callable[[str], Row], lines: Iterator[tuple[int, str]] | None = None) -> list[Row]:
        out = []
        for lineno, text in lines if lines is not None else self.lines():
            try:
                out.append(parse(text))
            except ValueError as e:
                if not self.skip_bad:
                    raise TraceError(f"{self.path}:{lineno}: {e}") from None
                self.num_skipped += 1
        return out

    def output_len(self, value: int) -> int:
        if value == 0:
            self.num_clamped += 1
            return 1
        return value

    def result(self, requests: list[Request], fmt: str) -> LoadedTrace:
        return LoadedTrace(requests, fmt, self.path, self.num_skipped, self.num_clamped)


# ---- field checks: each raises ValueError with a message fit for `path:line: <message>` ----------
def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _field(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise ValueError(f"missing field {name!r}")
    return obj[name]


def _as_int(value: Any, name: str, min_value: int = 0) -> int:
    """An integer count; integral floats (12.0) pass, other floats, strings and bools do not."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value!r}")
    return int(value)


def _cell_number(text: str) -> int | float | str:
    """A CSV cell as a number when it reads as one (so that _as_int can judge it), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _as_time(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _as_hashes(value: Any, prompt_len: int, block_size: int) -> tuple[int, ...]:
    if not isinstance(value, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in value):
        raise ValueError("hash_ids must be a list of integers")
    max_blocks = -(-prompt_len // block_size)
    if len(value) > max_blocks:
        raise ValueError(f"hash_ids has {len(value)} blocks but {prompt_len} tokens fill at most {max_blocks}")
    return tuple(value)


# ---- formats ----------------------------------------------------------------------------------------
def load_mooncake(path: str | Path, skip_bad: bool = False) -> LoadedTrace:
    """Mooncake JSONL: `timestamp` (ms from start, non-decreasing), `input_length`, `output_length`,
    `hash_ids` (prefix-chained ids of 512-token blocks). No sessions."""
    reader = _Reader(path, skip_bad)
    last_ms = -math.inf

    def parse(text: str) -> Row:
        nonlocal last_ms
        obj = _json_object(text)
        timestamp_ms = _as_time(_field(obj, "timestamp"), "timestamp")
        prompt_len = _as_int(_field(obj, "input_length"), "input_length", 1)
        output_len = _as_int(_field(obj, "output_length"), "output_length")
        hashes = _as_hashes(_field(obj, "hash_ids"), prompt_len, MOONCAKE_HASH_BLOCK_SIZE)
        if timestamp_ms < last_ms:
            raise ValueError(f"timestamp {timestamp_ms:g} ms is before the previous line's {last_ms:g} ms")
        last_ms = timestamp_ms
        return dict(arrival_at=timestamp_ms / 1000.0, prompt_len=prompt_len,
                    output_len=reader.output_len(output_len), block_hashes=hashes,
                    hash_block_size=MOONCAKE_HASH_BLOCK_SIZE)

    return reader.result(requests_from_rows(reader.rows(parse)), "mooncake")


AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_EPOCH, _MICROSECOND = datetime(1970, 1, 1), timedelta(microseconds=1)


def load_azure(path: str | Path, skip_bad: bool = False) -> LoadedTrace:
    """Azure LLM inference CSV: `TIMESTAMP,ContextTokens,GeneratedTokens` with wall-clock timestamps;
    arrivals become seconds from the earliest one. No reuse information."""
    reader = _Reader(path, skip_bad)
    lines = reader.lines()
    header_line = next(lines, None)
    if header_line is None:
        raise TraceError(f"{reader.path}: empty file, expected a header {','.join(AZURE_COLUMNS)}")
    header = [h.strip() for h in header_line[1].split(",")]
    missing = [c for c in AZURE_COLUMNS if c not in header]
    if missing:
        raise TraceError(f"{reader.path}:{header_line[0]}: header lacks column(s) {', '.join(missing)}")
    cols = [header.index(c) for c in AZURE_COLUMNS]

    def parse(text: str) -> Row:
        cells = [c.strip() for c in text.split(",")]
        if len(cells) != len(header):
            raise ValueError(f"expected {len(header)} columns, got {len(cells)}")
        when, context, generated = (cells[i] for i in cols)
        try:
            at_us = (datetime.fromisoformat(when) - _EPOCH) // _MICROSECOND  # int: no float rounding
        except (ValueError, TypeError):
            raise ValueError(f"bad TIMESTAMP {when!r}") from None
        prompt_len = _as_int(_cell_number(context), "ContextTokens", 1)
        output_len = _as_int(_cell_number(generated), "GeneratedTokens")
        return dict(arrival_at=at_us, prompt_len=prompt_len,
                    output_len=reader.output_len(output_len))

    rows = reader.rows(parse, lines)
    first_us = min((row["arrival_at"] for row in rows), default=0)
    for row in rows:
        row["arrival_at"] = (row["arrival_at"] - first_us) / 1e6
    return reader.result(requests_from_rows(rows), "azure")


def load_agent(path: str | Path, skip_bad: bool = False) -> LoadedTrace:
    """Agent common JSONL (LMCache agent traces): `arrival_time_s`, `session_id`, `turn`, `prompt_tokens`,
    `output_tokens`, `block_size`, `hash_ids`. think_time_s is the arrival gap to the previous turn of
    the same session (0 for a session's first turn): the trace does not say when a turn finished, so this
    gap also holds the previous turn's service time as recorded."""
    reader = _Reader(path, skip_bad)

    def parse(text: str) -> Row:
        obj = _json_object(text)
        arrival_at = _as_time(_field(obj, "arrival_time_s"), "arrival_time_s")
        session_id = _field(obj, "session_id")
        if not isinstance(session_id, (str, int)) or isinstance(session_id, bool):
            raise ValueError(f"session_id must be a string, got {session_id!r}")
        turn = _as_int(_field(obj, "turn"), "turn", 1)
        prompt_len = _as_int(_field(obj, "prompt_tokens"), "prompt_tokens", 1)
        output_len = _as_int(_field(obj, "output_tokens"), "output_tokens")
        block_size = _as_int(_field(obj, "block_size"), "block_size", 1)
        hashes = _as_hashes(_field(obj, "hash_ids"), prompt_len, block_size)
        return dict(arrival_at=arrival_at, prompt_len=prompt_len, output_len=reader.output_len(output_len),
                    session_id=str(session_id), turn=turn, block_hashes=hashes, hash_block_size=block_size)

    return reader.result(with_think_times(requests_from_rows(reader.rows(parse))), "agent")


LOADERS: dict[str, Callable[..., LoadedTrace]] = {
    "mooncake": load_mooncake,
    "azure": load_azure,
    "agent": load_agent,
}


def detect_format(path: str | Path) -> str:
    """Tell the format from the extension (.csv: azure) or the first non-blank line's fields."""
    path = str(path)
    if path.endswith(".csv"):
        return "azure"
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("{"):
        try:
            keys = json.loads(first).keys()
        except (json.JSONDecodeError, AttributeError):
            raise TraceError(f"{path}:1: cannot tell the trace format: first line is not a JSON object") from None
        if "timestamp" in keys:
            return "mooncake"
        if "arrival_time_s" in keys:
            return "agent"
    elif "TIMESTAMP" in first:
        return "azure"
    raise TraceError(f"{path}: cannot tell the trace format; pass one of {', '.join(LOADERS)}")


def load_trace(path: str | Path, format: str | None = None, skip_bad: bool = False) -> LoadedTrace:
    """Load a trace in `format` (mooncake, azure, agent), detected from the file when None.
    Raises FileNotFoundError for a missing file, TraceError for bad content."""
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise TraceError(f"unknown trace format {fmt!r}; expected one of {', '.join(LOADERS)}")
    return LOADERS[fmt](path, skip_bad=skip_bad)


# ---- shared post-processing ------------------------------------------------------------------------
def requests_from_rows(rows: list[Row]) -> list[Request]:
    """Requests from keyword rows, sorted by arrival (stable), request_id 0..n-1 in that order."""
    rows = sorted(rows, key=lambda row: row["arrival_at"])  # stable: file order breaks ties
    return [Request(request_id=i, **row) for i, row in enumerate(rows)]


def with_think_times(requests: list[Request]) -> list[Request]:
    """Set think_time_s of each sessioned request to its arrival gap after the previous turn of its
    session (requests taken in list order; 0 for a session's first request). Others are kept as is."""
    last_at: dict[str, float] = {}
    out = []
    for r in requests:
        if r.session_id is not None:
            gap = r.arrival_at - last_at.get(r.session_id, r.arrival_at)
            last_at[r.session_id] = r.arrival_at
            if gap != r.think_time_s:
                r = replace(r, think_time_s=max(gap, 0.0))
        out.append(r)
    return out
