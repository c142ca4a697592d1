"""Checks that refuse a mismatched run before it starts (each raises CliError with the fix in its message).

    warning = check_profile("prof/h100", gpu="h100", model="llama3-8b", force=False)
    requests, num_cut = fit_context(requests, context_len=4096, model="tiny", truncate=True)
    traces = resolve_traces(["traces/data/mooncake_sample.jsonl"])   # absolute paths, readable
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import typer

from sim.cli_errors import CliError
from yoda.request import Request, clamp_lengths, with_lengths  # noqa: F401  (clamp_lengths: used by the CLIs from here)

# max_position_embeddings of the built-in models' public checkpoints (Llama 3.1, Qwen2.5 without YaRN)
CONTEXT_LEN = {"llama3-8b": 131072, "llama3-70b": 131072, "qwen2.5-7b": 32768, "qwen2.5-32b": 32768, "tiny": 4096}


def check_profile(profile: str | Path, gpu: str, model: str, force: bool = False, flag: str = "--latency") -> str | None:
    """A calibration profile must have been measured on `gpu` (a GPU name, or for `yoda run` the device
    type cpu / cuda) with `model`. Mismatch: CliError, or with `force` the warning to print. None when it
    matches."""
    meta_path = Path(profile) / "metadata.json"
    if not meta_path.is_file():
        return None  # a hand-made table without metadata: nothing to compare
    meta = json.loads(meta_path.read_text())
    device = meta.get("device") or {}
    where = device.get("name") or device.get("type") or "?"
    measured_model = str(meta.get("model") or "?")
    wrong = []
    if gpu in ("cpu", "cuda"):
        if device.get("type") != gpu:
            wrong.append(f"on {where} (not {gpu})")
    elif device.get("type") == "cpu" or gpu.lower() not in str(device.get("name", "")).lower():
        wrong.append(f"on {where} (not {gpu})")
    if Path(measured_model).name.lower() != Path(model).name.lower():
        wrong.append(f"with model {measured_model} (not {model})")
    if not wrong:
        return None
    message = f"{flag} {profile} was measured {' and '.join(wrong)}"
    if not force:
        fix = "--gpu/--model" if flag == "--latency" else "--device/--model"
        raise CliError(f"{message}: pass the matching {fix}, another {flag}, or --force to use it anyway")
    return f"warning: {message}; used anyway (--force)"


def model_context_len(model: str) -> int | None:
    """Longest prompt + output the model takes: built-in table, or a config.json's max_position_embeddings."""
    key = model.lower()
    if key in CONTEXT_LEN:
        return CONTEXT_LEN[key]
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    try:
        value = json.loads(path.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if value else None


def fit_context(requests: Sequence[Request], context_len: int | None, model: str,
                truncate: bool = False) -> tuple[list[Request], int]:
    """Requests whose prompt + output exceed `context_len`: refused (CliError naming --truncate), or with
    `truncate` cut to fit (outputs to at most half the context, prompts to the rest). Returns the
    requests and how many were cut."""
    if context_len is None:
        return list(requests), 0
    too_long = [r for r in requests if r.prompt_len + r.output_len > context_len]
    if not too_long:
        return list(requests), 0
    if not truncate:
        longest = max(r.prompt_len + r.output_len for r in too_long)
        raise CliError(f"{len(too_long)} of {len(requests)} requests exceed {model}'s {context_len:,}-token context "
                       f"(longest prompt + output: {longest:,} tokens): pass --truncate to cut them, or another "
                       f"--trace/--model")
    return [_cut(r, context_len) if r.prompt_len + r.output_len > context_len else r for r in requests], len(too_long)


def _cut(r: Request, context_len: int) -> Request:
    output_len = min(r.output_len, context_len // 2)
    return with_lengths(r, min(r.prompt_len, context_len - output_len), output_len)




def resolve_traces(traces: Sequence[str]) -> list[str]:
    """Trace files as absolute paths (a remote worker has another working directory); synthetic names
    unchanged. An unreadable file is refused here, before any worker starts."""
    out = []
    for trace in traces:
        if trace.startswith("synthetic:"):
            out.append(trace)
            continue
        path = Path(trace).expanduser().resolve()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise CliError(f"trace {trace}: {'cannot read it' if path.is_file() else 'no such file'} "
                           f"({path}); workers need it readable at this path")
        out.append(str(path))
    return out


# ---- the checks as the simulator commands run them (flags: the command's options by name) ----------
def check_latency(flags: dict) -> list[str]:
    """Refuse a --latency profile measured on another GPU or model (CliError); with --force, the warning
    (also printed on stderr now)."""
    if not Path(flags["latency"]).is_dir():
        return []
    warning = check_profile(flags["latency"], flags["gpu"], flags["model"], flags.get("force", False))
    if warning:
        typer.echo(warning, err=True)
    return [warning] if warning else []


def fit_trace(requests: list, desc: dict, flags: dict) -> tuple[list, list[str]]:
    """Refuse requests longer than the model's context, or cut them with --truncate (noted in `desc`)."""
    context = model_context_len(flags["model"])
    requests, num_cut = fit_context(requests, context, flags["model"], flags.get("truncate", False))
    if not num_cut:
        return requests, []
    desc["num_truncated"] = num_cut
    return requests, [f"--truncate: {num_cut} of {len(requests)} requests cut to {flags['model']}'s "
                      f"{context:,}-token context"]
