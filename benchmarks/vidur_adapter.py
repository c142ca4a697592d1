"""Glue for timing Vidur (PyPI `vidur`, MIT) on our requests, run in its own venv.

    python3 -m venv .vidur-venv && .vidur-venv/bin/pip install vidur    # once; no torch needed
    python -m benchmarks.sim_speed                                      # uses this module

Our side (main venv) writes the requests as a Vidur trace CSV and a Vidur-format profile, then starts
`.vidur-venv/bin/python benchmarks/vidur_adapter.py ARGS.json`; that child process (this file's
`_child_main`) builds Vidur's `Simulator`, times its phases and prints one JSON line. This module imports
only the standard library at the top so that both interpreters can load it.

NOTE: vidur 0.0.26 fetches its kernel profiles from HuggingFace datasets at run time, and no H100
Llama-3-8B profile can be fetched here (no network beyond PyPI; the public GitHub copies hold A100 data
only, as Git LFS pointers). So we synthesise a profile in Vidur's own CSV schema (mlp.csv, attention.csv)
from our roofline (`sim.latency.RooflineLatency` constants, per Vidur operator) and point Vidur's
`snapshot_download` at it. Both simulators then see about the same kernel times and schedule about the
same batches, which is what a speed comparison needs; Vidur's fidelity is not what is measured here.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
VIDUR_VENV = REPO / ".vidur-venv"
VIDUR_MODEL = "meta-llama/Llama-3-8B"  # vidur's name for our llama3-8b (same shapes: 32 x 4096, GQA 8, 14336)
PROFILE_NAME = "yoda/roofline-llama3-8b-h100"  # stands in for vidur's HuggingFace profile dataset id
NETWORK_NAME = "yoda/roofline-h100-dgx"
TRACE_DATE = "2023-08-21"  # vidur's trace reader keeps the rows of one date


@dataclass(frozen=True)
class VidurSetup:
    """One Vidur run: cluster, scheduler and predictor settings (CLI flags of `vidur.main`)."""

    num_replicas: int = 4
    scheduler: str = "sarathi"  # sarathi = chunked prefill; vllm = whole-prompt prefill batches
    chunk_size: int = 512
    batch_size_cap: int = 128
    block_size: int = 16
    num_blocks: int | None = None  # KV blocks per replica; None: vidur's memory planner
    max_tokens: int = 4096  # longest request (prompt + output); vidur clips longer prompts
    device: str = "h100"
    network_device: str = "h100_dgx"
    global_scheduler: str = "round_robin"
    native_predictor: bool = False  # vidur's C++ execution-time predictor (off by default in vidur)
    rf_estimators: int = 64  # random forest grid: one point keeps training to seconds
    rf_max_depth: int = 16
    cv_splits: int = 3

    def __post_init__(self) -> None:
        if self.scheduler not in ("sarathi", "vllm"):
            raise ValueError(f"scheduler must be 'sarathi' or 'vllm', got {self.scheduler!r}")
        if self.num_replicas < 1 or self.max_tokens < 1:
            raise ValueError("num_replicas and max_tokens must be positive")

    @property
    def prediction_max_tokens(self) -> int:
        """Vidur precomputes predictions up to this many tokens per request (its default is 2M)."""
        return -(-self.max_tokens // 256) * 256

    def cli_args(self, trace_csv: Path, cache_dir: Path, output_dir: Path) -> list[str]:
        rf = "random_forrest_execution_time_predictor_config"  # sic: vidur's spelling
        sched = f"{self.scheduler}_scheduler_config"
        args = {
            "log_level": "warning", "seed": 0,
            "cluster_config_num_replicas": self.num_replicas,
            "replica_config_model_name": VIDUR_MODEL, "replica_config_device": self.device,
            "replica_config_network_device": self.network_device,
            "replica_config_tensor_parallel_size": 1, "replica_config_num_pipeline_stages": 1,
            "cache_config_block_size": self.block_size,
            "global_scheduler_config_type": self.global_scheduler,
            "replica_scheduler_config_type": self.scheduler,
            f"{sched}_batch_size_cap": self.batch_size_cap,
            "request_generator_config_type": "trace_replay",
            "trace_request_generator_config_trace_file": str(trace_csv),
            "trace_request_generator_config_date": TRACE_DATE,
            "trace_request_generator_config_max_tokens": self.max_tokens,
            "trace_request_generator_config_prefill_scale_factor": 1,
            "trace_request_generator_config_decode_scale_factor": 1,
            "trace_request_generator_config_time_scale_factor": 1,
            "execution_time_predictor_config_type": "random_forrest",
            f"{rf}_model_profiling_dataset": PROFILE_NAME,
            f"{rf}_network_profiling_dataset": NETWORK_NAME,
            f"{rf}_cache_dir": str(cache_dir),
            f"{rf}_prediction_max_tokens_per_request": self.prediction_max_tokens,
            f"{rf}_prediction_max_batch_size": self.batch_size_cap,
            f"{rf}_k_fold_cv_splits": self.cv_splits,
            f"{rf}_num_estimators": [self.rf_estimators],
            f"{rf}_max_depth": [self.rf_max_depth],
            f"{rf}_min_samples_split": [2],
            f"{rf}_use_native_execution_time_predictor": self.native_predictor,
            "metrics_config_output_dir": str(output_dir),
            "metrics_config_enable_chrome_trace": False, "metrics_config_store_plots": False,
            "metrics_config_write_json_trace": False,
        }
        if self.scheduler == "sarathi":
            args["sarathi_scheduler_config_chunk_size"] = self.chunk_size
        else:
            args["vllm_scheduler_config_max_tokens_in_batch"] = max(self.max_tokens, 4096)
            args[f"{rf}_prediction_max_prefill_chunk_size"] = max(self.max_tokens, 4096)
        if self.num_blocks:
            args["cache_config_num_blocks"] = self.num_blocks
        return _flags(args)


def _flags(args: dict[str, Any]) -> list[str]:
    """vidur's flat argparse: booleans are --x / --no-x, lists take several values."""
    out: list[str] = []
    for key, value in args.items():
        if isinstance(value, bool):
            out.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            out += [f"--{key}", *map(str, value)]
        else:
            out += [f"--{key}", str(value)]
    return out


# ---- inputs ------------------------------------------------------------------------------------------
def write_trace_csv(rows: Iterable[tuple[float, int, int]], path: Path) -> int:
    """(arrival_s, prompt_len, output_len) rows -> vidur's trace_replay CSV; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
        for arrival_s, prompt_len, output_len in rows:
            out.writerow([TRACE_DATE, repr(float(arrival_s)), int(prompt_len), int(output_len)])
            count += 1
    return count


def _grid(*segments: tuple[int, int, int]) -> list[int]:
    return sorted({v for lo, hi, step in segments for v in range(lo, hi + 1, step)})


def profile_rows(model: Any, gpu: Any, roofline: Any, block_size: int, max_kv: int) -> tuple[list[dict], list[dict]]:
    """Per-layer kernel times (ms) in vidur's profile schema, from our roofline's constants.

    `model` is a sim.model_spec.ModelSpec, `gpu` a sim.hardware.GpuSpec, `roofline` a RooflineLatency
    (for its efficiencies and overheads). GEMMs: max(FLOPs / (peak * gemm_efficiency(n)), bytes / usable
    HBM); element-wise ops: bytes / usable HBM; attention as in RooflineLatency. Our per-iteration and
    per-layer overheads are folded into `add`; vidur has no LM-head operator, so that part is left out."""
    flops_s, bw = gpu.peak_flops, gpu.hbm_bytes_per_s * roofline.mbu
    h, q, kv, inter, b = model.hidden, model.q_dim, model.kv_dim, model.intermediate, model.dtype_bytes
    kv_token_layer = model.kv_bytes_per_token / model.num_layers
    overhead_ms = 1e3 * (roofline.layer_overhead_s + roofline.step_overhead_s / model.num_layers)

    def gemm_ms(n: int, k: int, m: int) -> float:
        compute = 2.0 * n * k * m / (flops_s * roofline.gemm_efficiency(n))
        return 1e3 * max(compute, (k * m + n * (k + m)) * b / bw)

    def elementwise_ms(n: int, passes: int) -> float:
        return 1e3 * max(passes * n * h * b / bw, 2e-6)  # 2 us kernel floor

    dims = dict(n_head=model.num_heads, n_kv_head=model.num_kv_heads, n_embd=h, n_expanded_embd=inter,
                vocab_size=model.vocab, use_gated_mlp=True, num_tensor_parallel_workers=1)
    mlp = []
    for n in _grid((1, 128, 1), (136, 1024, 8), (1088, 8192, 64), (8448, 32768, 512)):
        times = dict(attn_pre_proj=gemm_ms(n, h, q + 2 * kv), attn_post_proj=gemm_ms(n, q, h),
                     mlp_up_proj=gemm_ms(n, h, 2 * inter), mlp_down_proj=gemm_ms(n, inter, h),
                     mlp_act=elementwise_ms(n * inter // h, 3), input_layernorm=elementwise_ms(n, 2),
                     post_attention_layernorm=elementwise_ms(n, 2), attn_rope=elementwise_ms(n * (q + kv) // h, 2),
                     add=elementwise_ms(n, 3) + overhead_ms)
        mlp.append({**{f"time_stats.{k}.median": v for k, v in times.items()}, **dims, "num_tokens": n})

    def attention_ms(pairs: float, kv_bytes: float) -> float:
        compute = model.attention_flops_per_pair * pairs / (flops_s * roofline.attention_mfu)
        return 1e3 * max(compute, kv_bytes / bw, 2e-6)

    attn_dims = dict(n_embd=h, n_q_head=model.num_heads, n_kv_head=model.num_kv_heads, block_size=block_size,
                     num_tensor_parallel_workers=1)
    kv_grid = _grid((0, 4096, 256), (5120, 32768, 1024), (36864, max(max_kv, 36864), 4096))
    attention = []
    for kv_len in kv_grid:  # prefill: one request, `chunk` new tokens after `kv_len` cached ones
        for chunk in _grid((32, 4096, 32)):
            pairs = chunk * kv_len + chunk * (chunk + 1) / 2
            prefill_ms = attention_ms(pairs, kv_token_layer * (kv_len + 2 * chunk))
            attention.append({"time_stats.attn_prefill.median": prefill_ms,
                              "time_stats.attn_decode.median": 0.0,
                              "time_stats.attn_kv_cache_save.median": 1e3 * max(chunk * kv_token_layer / bw, 2e-6),
                              **attn_dims, "batch_size": 1, "prefill_chunk_size": chunk, "kv_cache_size": kv_len,
                              "is_prefill": True})
    for kv_len in kv_grid[1:]:  # decode: `batch` requests with `kv_len` cached tokens each
        for batch in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 112, 128):
            decode_ms = attention_ms(batch * kv_len, kv_token_layer * batch * kv_len)
            attention.append({"time_stats.attn_prefill.median": 0.0, "time_stats.attn_decode.median": decode_ms,
                              "time_stats.attn_kv_cache_save.median": 1e3 * max(batch * kv_token_layer / bw, 2e-6),
                              **attn_dims, "batch_size": batch, "prefill_chunk_size": 0, "kv_cache_size": kv_len,
                              "is_prefill": False})
    return mlp, attention


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(rows[0]))
        out.writeheader()
        out.writerows(rows)


def write_profile(root: Path, model: Any, gpu: Any, roofline: Any, setup: VidurSetup) -> str:
    """Write compute/ and network/ profile folders (vidur's dataset layout) under `root`; returns a short
    hash of their content, which names the predictor cache (vidur's own cache key ignores the data)."""
    mlp, attention = profile_rows(model, gpu, roofline, setup.block_size, setup.prediction_max_tokens)
    compute, network = root / "compute", root / "network"
    compute.mkdir(parents=True, exist_ok=True)
    network.mkdir(parents=True, exist_ok=True)
    _write_csv(compute / "mlp.csv", mlp)
    _write_csv(compute / "attention.csv", attention)
    (compute / "config.json").write_text(json.dumps({"model": VIDUR_MODEL, "device_sku": setup.device}))
    (network / "config.json").write_text(json.dumps({"sku": setup.network_device}))
    for name in ("all_reduce.csv", "send_recv.csv"):  # read only with TP or PP > 1
        (network / name).write_text("size,num_workers,devices_per_node,collective,time_stats.all_reduce.median\n")
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# ---- parent side --------------------------------------------------------------------------------------
def vidur_python() -> Path:
    return VIDUR_VENV / "bin" / "python"


def vidur_status(timeout_s: float = 120.0) -> tuple[str | None, str]:
    """(vidur version, "") when the separate venv imports vidur, else (None, why not)."""
    python = vidur_python()
    if not python.exists():
        return None, (f"no Vidur venv at {VIDUR_VENV} (create it: python3 -m venv {VIDUR_VENV.name} && "
                      f"{VIDUR_VENV.name}/bin/pip install vidur)")
    probe = "import importlib.metadata as m, vidur.simulator; print(m.version('vidur'))"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"importing vidur took over {timeout_s:.0f} s"
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no error output"])[-1]
        return None, f"importing vidur failed: {last}"
    return done.stdout.strip(), ""


@dataclass
class VidurRun:
    ok: bool
    error: str = ""
    process_s: float = 0.0  # whole child process, interpreter start-up included
    timings: dict[str, float] = field(default_factory=dict)  # phases measured inside the child
    num_requests: int = 0
    num_completed: int = 0
    sim_end_s: float = 0.0
    log_tail: str = ""


def run_vidur(setup: VidurSetup, trace_csv: Path, profile_dir: Path, cache_dir: Path, work_dir: Path,
              timeout_s: float = 3600.0) -> VidurRun:
    """Run one Vidur simulation in the separate venv and return its timings."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": setup.cli_args(trace_csv, cache_dir, work_dir / "out"), "profile_dir": str(profile_dir),
            "setup": asdict(setup)}
    spec_path = work_dir / "vidur_args.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    try:
        done = subprocess.run([str(vidur_python()), str(Path(__file__).resolve()), str(spec_path)], cwd=work_dir,
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return VidurRun(False, f"timed out after {timeout_s:.0f} s", time.perf_counter() - started,
                        log_tail=stderr[-2000:])
    process_s = time.perf_counter() - started
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{\"vidur_result\"")]
    tail = (done.stderr or "")[-3000:]
    if done.returncode or not lines:
        return VidurRun(False, f"vidur exited with {done.returncode}", process_s, log_tail=tail)
    result = json.loads(lines[-1])["vidur_result"]
    return VidurRun(True, "", process_s, result["timings"], result["num_requests"], result["num_completed"],
                    result["sim_end_s"], tail)


# ---- child side (runs under .vidur-venv/bin/python) ----------------------------------------------------
def _patch_profile_source(profile_dir: Path) -> None:
    """Serve vidur's profile 'datasets' from local folders and skip its HuggingFace prediction download."""
    from vidur.execution_time_predictor import sklearn_execution_time_predictor as skl

    folders = {PROFILE_NAME: profile_dir / "compute", NETWORK_NAME: profile_dir / "network"}

    def snapshot_download(repo_id: str, **_: Any) -> str:
        if repo_id not in folders:
            raise FileNotFoundError(f"offline: no local copy of {repo_id}")
        return str(folders[repo_id])

    def no_hf_predictions(self: Any) -> dict:
        raise FileNotFoundError("offline: predictions are trained locally")

    skl.snapshot_download = snapshot_download
    skl.SklearnExecutionTimePredictor._load_predictions_from_hf = no_hf_predictions
    # vidur reads .csv.xz names; ours are plain CSV
    original = skl.SklearnExecutionTimePredictor._get_input_files
    skl.SklearnExecutionTimePredictor._get_input_files = lambda self: tuple(
        p.removesuffix(".xz") for p in original(self))


def _child_main(spec_path: str) -> None:
    started = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    from vidur.config import SimulationConfig
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds
    imported = time.perf_counter()
    _patch_profile_source(Path(spec["profile_dir"]))
    sys.argv = ["vidur.main", *spec["argv"]]
    config = SimulationConfig.create_from_cli_args()
    set_seeds(config.seed)
    simulator = Simulator(config)  # trains / loads the predictor per replica, reads the trace
    built = time.perf_counter()
    num_requests = len(simulator._event_queue)
    outputs: dict[str, float] = {}
    write_output = simulator._write_output

    def timed_write_output() -> None:
        t = time.perf_counter()
        write_output()
        outputs["write_output_s"] = time.perf_counter() - t

    simulator._write_output = timed_write_output
    simulator.run()
    finished = time.perf_counter()
    num_completed = num_requests - len(simulator.scheduler.get_pending_requests())  # run() asserts none left
    timings = {"import_s": imported - started, "setup_s": built - imported,
               "run_s": finished - built, **outputs}
    timings["loop_s"] = timings["run_s"] - outputs.get("write_output_s", 0.0)
    print(json.dumps({"vidur_result": {"timings": timings, "num_requests": num_requests,
                                       "num_completed": num_completed, "sim_end_s": float(simulator._time)}}))


if __name__ == "__main__":
    _child_main(sys.argv[1])
