"""Request traces: loaders for the upstream formats, replay transforms, synthetic workloads, stats.

    from traces import load_trace, spread_buckets, rescale_to_rate, trace_stats, SAMPLE_DIR
    requests = spread_buckets(load_trace(SAMPLE_DIR / "mooncake_sample.jsonl").requests, rng=0)

Modules: loaders.py (Mooncake JSONL, Azure CSV, agent JSONL -> list[Request]), replay.py (re-timing
and session transforms), synthetic.py (ShareGPT/LooGLE/OpenThoughts-like and shared-system-prompt
generators), writer.py (Mooncake JSONL out), stats.py (trace summary, reuse via KVCache), cli.py
(`yoda trace stats`). Bundled samples live in traces/data/ (see its README for attribution).
"""
from pathlib import Path

from traces.loaders import (LOADERS, LoadedTrace, TraceError, detect_format, load_agent, load_azure,
                            load_mooncake, load_trace)
from traces.replay import (gamma_arrivals, infer_sessions, mean_rate_rps, original_times, overlap_sessions,
                           rescale_to_rate, retime_gamma, retime_poisson, scale_rate, spread_buckets)
from traces.stats import trace_stats
from traces.synthetic import (GENERATORS, LengthDist, loogle_like, openthoughts_like, sharegpt_like,
                              shared_system_prompt)
from traces.writer import mooncake_hash_ids, write_mooncake

SAMPLE_DIR = Path(__file__).parent / "data"

__all__ = [
    "GENERATORS", "LOADERS", "LengthDist", "LoadedTrace", "SAMPLE_DIR", "TraceError", "detect_format",
    "gamma_arrivals", "infer_sessions", "load_agent", "load_azure", "load_mooncake", "load_trace",
    "loogle_like", "mean_rate_rps", "mooncake_hash_ids", "openthoughts_like", "original_times",
    "overlap_sessions", "rescale_to_rate", "retime_gamma", "retime_poisson", "scale_rate", "sharegpt_like",
    "shared_system_prompt", "spread_buckets", "trace_stats", "write_mooncake",
]
