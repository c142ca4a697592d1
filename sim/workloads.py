"""Workloads for the simulator CLI: a trace path or a synthetic name, re-timed to the requested rate.

    from sim.workloads import load_workload
    requests, desc = load_workload("traces/data/mooncake_sample.jsonl", rate=1.5)
    requests, desc = load_workload("synthetic:sharegpt:200", rate=4.0, replay="poisson")

Re-timing rules (every random step is seeded by `seed`):
- Mooncake timestamps come in ~3 s buckets; they are spread uniformly over their bucket first.
- Traces whose sessions have several turns (agent traces, synthetic sharegpt/loogle): a rate scales the
  whole load. The trace's timeline (session starts and the think times between turns alike) is stretched
  or compressed by one factor so that the mean request rate over the whole trace is the rate asked for:
  `offered_rate` == `requested_rate`, whatever the session lengths. (Moving only session starts, as before,
  left long sessions' tails spread out: `synthetic:sharegpt:2000` at 5 / 20 / 80 req/s offered 4.3 / 10.8 /
  13.6.) Think times shrink at rates above the trace's own, as when more, faster users share the service;
  `poisson` first draws fresh Poisson session starts at the trace's own session rate, then scales.
- Other traces: `original` keeps the arrival shape (burstiness) and rescales its gaps to the rate;
  `poisson` and `gamma` (gap CV `cv`) draw new arrival times at that rate.
`--scale X` means a rate of X times the trace's own mean rate. Times start at 0.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from yoda.request import Request

REPLAYS = ("original", "poisson", "gamma")
SYNTHETIC_PREFIX = "synthetic:"
# generator -> (name in traces.GENERATORS, default N (sessions or requests, about 500 requests), rate)
SYNTHETIC = {
    "sharegpt": ("sharegpt", 125, 0.5),  # N sessions of ~4 turns
    "loogle": ("loogle", 125, 0.5),  # N documents of 2-6 questions
    "openthoughts": ("openthoughts", 500, 1.0),  # N requests
    "system_prompt": ("shared_system_prompt", 500, 2.0),  # N requests
    "shared_system_prompt": ("shared_system_prompt", 500, 2.0),
}


class WorkloadError(ValueError):
    """A workload could not be built from the given flags; the message is fit for `error: <message>`."""


def load_workload(trace: str, format: str | None = None, rate: float | None = None, scale: float | None = None,
                  replay: str = "original", cv: float = 1.0, seed: int = 0, max_requests: int | None = None,
                  skip_bad: bool = False) -> tuple[list[Request], dict]:
    """Requests (arrival-sorted, first at 0) and a JSON-able description of how they were made.
    Raises WorkloadError for bad flags, a missing file or a bad trace."""
    check_replay(rate, scale, replay, cv)
    requests, desc = load_base(trace, format, seed, max_requests, skip_bad)
    return retime(requests, desc, rate, scale, replay, cv, seed)


def check_replay(rate: float | None, scale: float | None, replay: str, cv: float) -> None:
    if rate is not None and scale is not None:
        raise WorkloadError("give --rate or --scale, not both")
    if rate is not None and rate <= 0:
        raise WorkloadError(f"--rate must be > 0, got {rate}")
    if scale is not None and scale <= 0:
        raise WorkloadError(f"--scale must be > 0, got {scale}")
    if replay not in REPLAYS:
        raise WorkloadError(f"unknown replay {replay!r}; choose from {', '.join(REPLAYS)}")
    if cv <= 0:
        raise WorkloadError(f"--cv must be > 0, got {cv}")


def load_base(trace: str, format: str | None = None, seed: int = 0, max_requests: int | None = None,
              skip_bad: bool = False) -> tuple[list[Request], dict]:
    """The trace's requests at their own times (Mooncake buckets spread), cut to `max_requests`."""
    import traces

    if max_requests is not None and max_requests < 1:
        raise WorkloadError(f"--max-requests must be >= 1, got {max_requests}")
    if trace.startswith(SYNTHETIC_PREFIX):
        requests, desc = _synthetic(trace, seed)
    else:
        requests, desc = _from_file(trace, format, seed, skip_bad)
    if not requests:
        raise WorkloadError(f"{trace}: no requests")
    requests = traces.original_times(requests[:max_requests] if max_requests else requests)
    desc.update(seed=seed, max_requests=max_requests, original_rate_rps=traces.mean_rate_rps(requests))
    return requests, desc


def _synthetic(trace: str, seed: int) -> tuple[list[Request], dict]:
    from traces import GENERATORS

    parts = trace[len(SYNTHETIC_PREFIX):].split(":")
    if parts[0] not in SYNTHETIC or len(parts) > 2:
        raise WorkloadError(f"unknown synthetic workload {trace!r}; use synthetic:NAME[:N] with NAME one of "
                            f"{', '.join(SYNTHETIC)}")
    generator, default_n, rate_rps = SYNTHETIC[parts[0]]
    try:
        n = int(parts[1]) if len(parts) == 2 else default_n
    except ValueError:
        raise WorkloadError(f"{trace}: N must be an integer, got {parts[1]!r}") from None
    if n < 1:
        raise WorkloadError(f"{trace}: N must be >= 1, got {n}")
    requests = GENERATORS[generator](n, rate_rps, rng=seed)
    return requests, {"trace": trace, "format": "synthetic", "generator": generator, "synthetic_n": n,
                      "skipped_lines": 0, "clamped_outputs": 0}


def _from_file(path: str, format: str | None, seed: int, skip_bad: bool) -> tuple[list[Request], dict]:
    from traces import LOADERS, TraceError, load_trace, spread_buckets

    if format is not None and format not in LOADERS:
        raise WorkloadError(f"unknown format {format!r}; expected one of {', '.join(LOADERS)}")
    try:
        loaded = load_trace(path, format, skip_bad=skip_bad)
    except FileNotFoundError:
        raise WorkloadError(f"no such trace file: {path} (or use synthetic:NAME[:N])") from None
    except IsADirectoryError:
        raise WorkloadError(f"trace is a directory, not a file: {path}") from None
    except (TraceError, ValueError, OSError, UnicodeDecodeError) as e:
        raise WorkloadError(str(e)) from None
    requests = loaded.requests
    if loaded.format == "mooncake" and len({r.arrival_at for r in requests}) > 1:
        requests = spread_buckets(requests, rng=seed)
    return requests, {"trace": path, "format": loaded.format, "skipped_lines": loaded.num_skipped,
                      "clamped_outputs": loaded.num_clamped}


def num_sessions(requests: Sequence[Request]) -> int:
    """Sessions with at least two turns (single requests do not count)."""
    counts = Counter(r.session_id for r in requests if r.session_id is not None)
    return sum(1 for c in counts.values() if c > 1)


def retime(requests: list[Request], desc: dict, rate: float | None = None, scale: float | None = None,
           replay: str = "original", cv: float = 1.0, seed: int = 0) -> tuple[list[Request], dict]:
    """Re-time `requests` (from `load_base`) to `rate` or `scale` x their own rate, as `replay` says."""
    import traces

    check_replay(rate, scale, replay, cv)
    own_rps = desc.get("original_rate_rps")
    target = rate if scale is None else (own_rps * scale if own_rps else None)
    if target is None and (scale is not None or replay != "original"):
        if own_rps is None:
            raise WorkloadError("the trace's requests all arrive at once: give --rate to re-time them")
        target = own_rps
    sessioned = num_sessions(requests) > 0
    if target is None:
        out, how = requests, "original times"
    elif sessioned:
        if replay == "gamma" and cv != 1.0:
            raise WorkloadError("session traces are re-timed by scaling their whole timeline; --replay gamma "
                                "with --cv != 1 is not supported for them")
        base, how = requests, "whole timeline scaled (session starts and think times)"
        if replay == "poisson" and own_rps:
            base = traces.overlap_sessions(requests, own_rps * _num_units(requests) / len(requests), rng=seed)
            how = "Poisson session starts, then " + how
        try:
            out = traces.rescale_to_rate(base, target)
        except ValueError as e:
            raise WorkloadError(str(e)) from None
    elif replay == "original":
        try:
            out = traces.rescale_to_rate(requests, target)
        except ValueError as e:
            raise WorkloadError(str(e)) from None
        how = "original shape rescaled"
    elif replay == "poisson":
        out, how = traces.retime_poisson(requests, target, rng=seed), "poisson arrivals"
    else:
        out, how = traces.retime_gamma(requests, target, cv, rng=seed), f"gamma arrivals (cv {cv})"
    out = traces.original_times(out)
    desc = {**desc, "replay": replay, "cv": cv, "rate_rps": rate, "scale": scale, "target_rate_rps": target,
            "retimed": how, "num_requests": len(out), "num_sessions": num_sessions(out),
            "span_s": out[-1].arrival_at if out else 0.0, "mean_rate_rps": traces.mean_rate_rps(out)}
    return out, desc


def _num_units(requests: Sequence[Request]) -> int:
    """Sessions, counting each request without a session as a session of one."""
    return len({r.session_id if r.session_id is not None else ("request", r.request_id) for r in requests})
