"""One timed simulation in a fresh process, for benchmarks/sim_speed.py (not a user command).

    python benchmarks/sim_child.py JOB.pkl RESULT.pkl

The job is a pickled dict: `config` (SimConfig keyword arguments), `workers`, and either `requests` (a
list of Request) or `azure` ((number of requests, rate, seed): the Azure-derived trace, built here so its
memory counts). sim_speed runs it two ways:
- against a baseline checkout: with that checkout first on PYTHONPATH, so `sim` and `yoda` are imported
  from it (this file imports nothing else of the project); the result carries the records to compare;
- for the scaling table: one run per process, so the process's peak RSS is that run's. The records'
  token times are compacted (SimConfig.compact_records) and only the event loop is timed: the metrics
  over every token gap of a million requests would take more memory than the simulation.
"""
from __future__ import annotations

import pickle
import resource
import sys
import time


def _record_rows(records) -> list[tuple]:
    return [(r.request_id, r.reused_len, r.num_preemptions, r.rejected_reason, list(r.token_at)) for r in records]


def run(job: dict) -> dict:
    from sim.run import SimConfig, simulate
    cfg = SimConfig(**job["config"])
    if "azure" in job:
        from benchmarks.sim_speed import azure_conv_resampled
        num, rate, seed = job["azure"]
        requests = azure_conv_resampled(num, rate, seed)
        from sim.replay import run_part
        from sim.run import auto_block_size
        ordered = sorted(requests, key=lambda r: (r.arrival_at, r.request_id))
        started = time.perf_counter()
        part = run_part(ordered, cfg, cfg.block_size or auto_block_size(ordered))
        wall_s = time.perf_counter() - started
        ttft = sorted(r.token_at[0] - r.arrival_at for r in part.records if r.token_at)
        out = {"wall_s": wall_s, "sim_end_s": part.sim_end_s, "completed": sum(r.finished_at is not None
                                                                               for r in part.records),
               "p99_ttft_ms": 1000 * ttft[int(0.99 * (len(ttft) - 1))] if ttft else None,
               "output_tokens": sum(len(r.token_at) for r in part.records)}
    else:
        result = simulate(job["requests"], cfg, workers=job.get("workers", 1))
        m = result.metrics
        out = {"wall_s": result.wall_s, "sim_end_s": result.sim_end_s, "p99_ttft_ms": m["p99_ttft_ms"],
               "p99_tbt_ms": m["p99_tbt_ms"], "kv_reuse_fraction": m["kv_reuse_fraction"]}
        if job.get("records"):
            out["records"] = _record_rows(result.records)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python benchmarks/sim_child.py JOB.pkl RESULT.pkl")
    with open(argv[0], "rb") as f:
        job = pickle.load(f)
    result = run(job)
    with open(argv[1], "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)


if __name__ == "__main__":
    main(sys.argv[1:])
