"""Cross-check: our chunked prefill against Vidur 0.0.26's Sarathi scheduler, same iteration time in both.

    python3 -m venv .vidur-venv && .vidur-venv/bin/pip install vidur==0.0.26   # once (the `bench` extra)
    python -m benchmarks.vidur_crosscheck [--requests 300] [--out results]

Both simulators replay the same requests on one GPU. The iteration time is injected into both, so any
difference in per-request TTFT, TPOT or E2E comes from scheduling alone: which requests each iteration
holds, how many prompt tokens it takes, when KV runs out and whom that preempts. The time of an iteration
is `A + B * q + C * kv` seconds, q = tokens it computes (prompt chunks plus one per decode), kv = KV tokens
they attend to, counted as Vidur counts them (a decode attends to its context plus the token it produces).

Settings: a batch cap that binds, one that does not, and a KV cache small enough that decodes preempt.
Our side runs `ChunkedPrefill` through the simulator's `GpuInstance` (multi-step decode runs included).
Vidur's side runs in its own venv (`benchmarks/vidur_adapter.py` starts it) with three patches, applied in
that child process only:
- the execution-time predictor is replaced by the injected formula (no profile, no training);
- `Request.restart()` also resets the stage counters (`_num_stage_processed_tokens`,
  `_is_prefill_stage_complete`): without it Vidur 0.0.26 fails an assertion after any preemption;
- Sarathi's check before a running request's next token asks for a free block only when that token
  needs a new one (vLLM's `can_append_slots`); Vidur asks for one always, so with a full cache it preempts
  requests that need no block. `--no-vidur-fixes` drops this patch (the restart one is needed to run).
Writes `<out>/<name>.json` and `.md` (name: vidur_crosscheck). Agreement target: 1e-6 s per request.
NOTE: with `--decode-steps 64` (the simulator's default speed-up) the KV-tight setting disagrees: a
multi-step decode run takes the KV blocks of all its steps (and a few ahead) at launch, so when an arrival
cuts the run short, admission sees fewer free blocks than after one-step launches
(results/vidur_crosscheck_multistep.md). The two other settings agree either way.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class IterationTime:
    """Injected time of one iteration: a + b * q + c * kv seconds."""

    a_s: float = 0.006
    b_s: float = 4e-5
    c_s: float = 2e-8

    def of(self, q_tokens: int, kv_tokens: int) -> float:
        return self.a_s + self.b_s * q_tokens + self.c_s * kv_tokens


@dataclass(frozen=True)
class Setting:
    name: str
    batch_cap: int
    kv_blocks: int
    rate_rps: float
    chunk: int = 512
    block_size: int = 16


SETTINGS = (
    Setting("binding batch cap", batch_cap=8, kv_blocks=100_000, rate_rps=6.0),
    Setting("non-binding batch cap", batch_cap=128, kv_blocks=100_000, rate_rps=6.0),
    Setting("KV tight (preemption)", batch_cap=128, kv_blocks=400, rate_rps=6.0),
)


def workload(num: int, rate_rps: float, seed: int = 0) -> list[tuple[float, int, int]]:
    """(arrival_s, prompt_len, output_len): Poisson arrivals, prompts 32-2048, outputs 8-400 tokens."""
    import numpy as np

    gen = np.random.default_rng(seed)
    arrivals = np.cumsum(gen.exponential(1.0 / rate_rps, size=num))
    prompts = gen.integers(32, 2049, size=num)
    outputs = gen.integers(8, 401, size=num)
    return [(float(t), int(p), int(o)) for t, p, o in zip(arrivals, prompts, outputs)]


# ---- our side (main venv) ---------------------------------------------------------------------------
class InjectedLatency:
    """A LatencySource pricing every launch with `IterationTime`, in Vidur's token counts."""

    def __init__(self, it: IterationTime) -> None:
        self.it = it

    def prefill_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], num_sms: int) -> float:
        from sim.latency import LAYER_GROUP_LAUNCH_S  # a whole-model prefill launch adds it: take it back out

        kv = sum(n + r for n, r in zip(new_lens, reused_lens))
        return self.it.of(sum(new_lens), kv) - LAYER_GROUP_LAUNCH_S

    def decode_s(self, batch: int, kv_len: int, num_sms: int) -> float:
        return self.it.of(batch, kv_len + batch)

    def mixed_s(self, new_lens: Sequence[int], reused_lens: Sequence[int], batch: int, kv_len: int,
                num_sms: int) -> float:
        kv = sum(n + r for n, r in zip(new_lens, reused_lens)) + kv_len + batch
        return self.it.of(sum(new_lens) + batch, kv)


def run_ours(rows: list[tuple[float, int, int]], setting: Setting, it: IterationTime,
             decode_steps: int = 1) -> list[dict]:
    import simpy

    from sim.cluster import Cluster
    from sim.contention import NoContention
    from sim.gpu_instance import GpuInstance
    from sim.hardware import get_gpu
    from sim.model_spec import get_model
    from yoda.baselines import ChunkedPrefill
    from yoda.dispatcher import RoundRobin
    from yoda.request import SLO, Request
    from yoda.scheduler import SchedulerConfig

    gpu, model = get_gpu("h100"), get_model("llama3-8b")
    cfg = SchedulerConfig(num_sms=gpu.num_sms, num_layers=model.num_layers, kv_blocks=setting.kv_blocks,
                          block_size=setting.block_size, max_batch=setting.batch_cap)
    env = simpy.Environment()
    sched = ChunkedPrefill(cfg, SLO(), token_budget=setting.chunk)
    instance = GpuInstance(env, 0, sched, InjectedLatency(it), NoContention(), gpu, model, False,
                           max_decode_steps=decode_steps)
    cluster = Cluster(env, [instance], RoundRobin())
    env.process(cluster.replay_open_loop([Request(i, t, p, o) for i, (t, p, o) in enumerate(rows)]))
    env.run()
    return [{"id": r.request_id, "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "tpot_s": r.tpot_s, "arrival_at": r.arrival_at,
             "finished_at": r.finished_at, "num_preemptions": r.num_preemptions, "rejected": r.rejected_reason}
            for r in cluster.records()]


def peak_in_system(records: list[dict]) -> int:
    """Most requests present at once (arrived, not finished): above the batch cap, the cap binds."""
    events = sorted([(r["arrival_at"], 1) for r in records] + [(r["finished_at"], -1) for r in records])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


# ---- Vidur's side ------------------------------------------------------------------------------------
def run_vidur(rows: list[tuple[float, int, int]], setting: Setting, it: IterationTime, work: Path,
              fixes: bool = True) -> list[dict]:
    from benchmarks.vidur_adapter import VidurSetup, vidur_python, write_trace_csv

    work.mkdir(parents=True, exist_ok=True)
    trace = work / "trace.csv"
    write_trace_csv(rows, trace)
    max_tokens = max(p + o for _, p, o in rows)
    setup = VidurSetup(num_replicas=1, scheduler="sarathi", chunk_size=setting.chunk, batch_size_cap=setting.batch_cap,
                       block_size=setting.block_size, num_blocks=setting.kv_blocks, max_tokens=max_tokens)
    spec = {"argv": setup.cli_args(trace, work / "cache", work / "out"), "iteration": asdict(it),
            "fixes": fixes, "out": str(work / "vidur_requests.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)  # the child must not import this repository's packages
    done = subprocess.run([str(vidur_python()), str(Path(__file__).resolve()), "--child", str(work / "spec.json")],
                          cwd=work, capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode:
        raise RuntimeError(f"vidur failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    out = json.loads((work / "vidur_requests.json").read_text())
    for r, (_, _, output_len) in zip(out, rows):
        r["tpot_s"] = (r["completed_at"] - r["prefill_completed_at"]) / (output_len - 1) if output_len > 1 else None
        r["ttft_s"] = r["prefill_completed_at"] - r["arrived_at"]
        r["e2e_s"] = r["completed_at"] - r["arrived_at"]
    return out


def _child(spec_path: str) -> None:
    """Runs under .vidur-venv/bin/python: patch Vidur, run it, dump every request's times."""
    spec = json.loads(Path(spec_path).read_text())
    from vidur.config import SimulationConfig
    from vidur.entities import Request
    from vidur.scheduler.global_scheduler import base_global_scheduler
    from vidur.scheduler.replica_scheduler.sarathi_replica_scheduler import SarathiReplicaScheduler
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds

    it = IterationTime(**spec["iteration"])

    class Time:  # what BatchStage reads of an ExecutionTime
        def __init__(self, total_s: float) -> None:
            self.total_time = self.model_time = total_s

    class Injected:
        def get_execution_time(self, batch, pipeline_stage):
            return Time(it.of(batch.total_num_q_tokens, batch.total_num_kv_tokens))

    class Registry:
        @staticmethod
        def get(*_args, **_kwargs):
            return Injected()

    base_global_scheduler.ExecutionTimePredictorRegistry = Registry
    restart = Request.restart

    def restart_with_stage_counters(self):
        restart(self)
        self._num_stage_processed_tokens = 0
        self._is_prefill_stage_complete = False

    Request.restart = restart_with_stage_counters
    if spec["fixes"]:
        can_allocate = SarathiReplicaScheduler._can_allocate_request

        def can_allocate_like_vllm(self, request):
            if request.id in self._allocation_map:
                reserved = self._allocation_map[request.id] * self._cache_config.block_size
                if request.num_processed_tokens <= reserved:
                    return True  # the next token fits in the blocks it holds
            return can_allocate(self, request)

        SarathiReplicaScheduler._can_allocate_request = can_allocate_like_vllm
    requests = []
    init = Request.__init__

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        requests.append(self)

    Request.__init__ = tracked_init
    sys.argv = ["vidur.main", *spec["argv"]]
    config = SimulationConfig.create_from_cli_args()
    set_seeds(config.seed)
    simulator = Simulator(config)
    simulator.run()
    out = [{"arrived_at": r.arrived_at, "prefill_completed_at": r.prefill_completed_at,
            "completed_at": r.completed_at, "num_restarts": r.num_restarts} for r in requests]
    Path(spec["out"]).write_text(json.dumps(out))


# ---- comparison ----------------------------------------------------------------------------------------
def compare(ours: list[dict], vidur: list[dict]) -> dict:
    diffs = {}
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        pairs = [(a[key], b[key]) for a, b in zip(ours, vidur) if a[key] is not None and b[key] is not None]
        diffs[f"max_abs_diff_{key}"] = max((abs(x - y) for x, y in pairs), default=0.0)
    worst = max(diffs.values())
    return {**diffs, "num_requests": len(ours), "num_compared": min(len(ours), len(vidur)),
            "max_abs_diff_s": worst, "requests_within_tolerance": sum(
                all(abs(a[k] - b[k]) <= TOLERANCE_S for k in ("ttft_s", "e2e_s")
                    if a[k] is not None and b[k] is not None) for a, b in zip(ours, vidur)),
            "preemptions_ours": sum(r["num_preemptions"] for r in ours),
            "preemptions_vidur": sum(r["num_restarts"] for r in vidur),
            "agree": len(ours) == len(vidur) and worst <= TOLERANCE_S}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "vidur_crosscheck")
    parser.add_argument("--no-vidur-fixes", action="store_true", help="run Vidur without the can-allocate patch")
    parser.add_argument("--decode-steps", type=int, default=1,
                        help="decode steps one simulated launch of ours may cover (the simulator's speed-up; "
                        "1: every iteration is its own launch, as in Vidur)")
    parser.add_argument("--name", default="vidur_crosscheck", help="stem of the result files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from benchmarks.vidur_adapter import vidur_status

    version, why = vidur_status()
    if version is None:
        print(f"error: {why}", file=sys.stderr)
        return 2
    it, rows_out = IterationTime(), []
    started = time.perf_counter()
    for setting in SETTINGS:
        rows = workload(args.requests, setting.rate_rps)
        ours = run_ours(rows, setting, it, args.decode_steps)
        vidur = run_vidur(rows, setting, it, args.work / setting.name.split()[0], fixes=not args.no_vidur_fixes)
        row = {"setting": setting.name, **asdict(setting), "peak_in_system": peak_in_system(ours),
               **compare(ours, vidur)}
        rows_out.append(row)
        print(f"{setting.name:24s} requests {row['num_compared']:4d}  within {TOLERANCE_S:g} s: "
              f"{row['requests_within_tolerance']:4d}  max |diff| TTFT {row['max_abs_diff_ttft_s']:.2e} s  "
              f"TPOT {row['max_abs_diff_tpot_s']:.2e} s  E2E {row['max_abs_diff_e2e_s']:.2e} s  "
              f"preemptions {row['preemptions_ours']}/{row['preemptions_vidur']}  "
              + ("agree" if row["agree"] else "DISAGREE"))
    result = {"vidur_version": version, "iteration_time": asdict(it), "tolerance_s": TOLERANCE_S,
              "vidur_fixes": not args.no_vidur_fixes, "decode_steps": args.decode_steps, "wall_s": time.perf_counter() - started,
              "command": "python -m benchmarks.vidur_crosscheck " + " ".join(argv or sys.argv[1:]), "rows": rows_out}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(_markdown(result))
    return 0 if all(r["agree"] for r in rows_out) else 1


def _markdown(result: dict) -> str:
    it = result["iteration_time"]
    lines = ["# Cross-check: chunked prefill vs Vidur 0.0.26 Sarathi, same iteration time", "",
             f"Command: `{result['command']}`. Vidur {result['vidur_version']}, one GPU, chunk 512, block 16. "
             f"Iteration time injected into both: {it['a_s']} + {it['b_s']} q + {it['c_s']} kv s. "
             f"Our decode launches cover up to {result['decode_steps']} step(s). "
             f"Vidur patched in its process: restart() resets stage counters; "
             + ("a running request asks for a free block only when its next token needs one (vLLM)."
                if result["vidur_fixes"] else "no can-allocate patch."), "",
             "| setting | cap | peak in system | KV blocks | rate | requests | within 1e-6 s | max diff TTFT | TPOT "
             "| E2E | preemptions ours / Vidur | agree |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['setting']} | {r['batch_cap']} | {r['peak_in_system']} | {r['kv_blocks']} | {r['rate_rps']} | "
                     f"{r['num_compared']} | {r['requests_within_tolerance']} | {r['max_abs_diff_ttft_s']:.1e} | "
                     f"{r['max_abs_diff_tpot_s']:.1e} | {r['max_abs_diff_e2e_s']:.1e} | "
                     f"{r['preemptions_ours']} / {r['preemptions_vidur']} | {'yes' if r['agree'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
