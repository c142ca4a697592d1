"""The executor backend's real-time driver: serve a trace on the model, the same loop as the simulator.

    yoda run --backend executor --model tiny --device cpu --trace synthetic:sharegpt:6 --max-output-len 8
    from executor.runner import RunConfig, serve
    result = serve(requests, RunConfig(model="tiny", policy="yoda"))      # records, metrics, output tokens

Loop (yoda/backend.py): arrivals are released at their trace times on the wall clock (scheduler.on_arrival
+ engine.add_request with executor.prompts tokens); after any arrival or completion the scheduler plans
(`schedule(now, busy)`), the engine starts each launch, and finished launches are reported with their
finish times (`on_launch_done`). The loop never waits on a lane: it polls.
On CUDA with green contexts each lane runs on its SM partition; the scheduler's partition sizes map to the
nearest stream (decode rounds up, prefill down, as executor.partitions builds the pairs). On the CPU the
scheduler plans for a logical 132-SM GPU (so partition menus work) but there is one lane: the engine runs
a launch inside `start`, so launches of one plan run one after the other.
Preemption: the scheduler frees a preempted request's KV and later recomputes prompt + generated tokens;
the runner then re-adds the request to the engine with those tokens as its prompt.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from executor.clocks import CLOCKS
from executor.engine import Engine
from executor.kv_pool import KVPool
from executor.memory_plan import fixed_rows, kv_blocks_within, num_params
from executor.model import DecoderModel, build_model
from executor.partitions import PartitionManager
from executor.prompts import prompt_for
from yoda.backend import DECODE, PREFILL, Launch, Timeline
from yoda.metrics import compute_metrics
from yoda.policies import POLICIES, make_scheduler
from yoda.request import SLO, Request, RequestRecord, clamp_lengths  # noqa: F401  (clamp_lengths: re-exported)
from yoda.scheduler import SchedulerConfig

LOGICAL_SMS = 132  # the CPU lane poses as an H100-sized GPU so the policies' partition menus work
CPU_KV_BUDGET_BYTES = 2 << 30
SPIN_S = 20e-6  # sleep between polls while a launch runs on the GPU
PRECOMPUTE_PROMPT_TOKENS = 20_000_000


@dataclass(frozen=True)
class RunConfig:
    model: str = "tiny"  # built-in config name or config.json path (executor.config)
    weights: str | None = None  # local safetensors; random seeded weights without
    device: str = "cpu"
    policy: str = "yoda"
    profile: str | None = None  # calibration profile dir for the yoda estimator
    slo: SLO = field(default_factory=SLO)
    policy_options: dict = field(default_factory=dict)
    num_layers: int | None = None  # keep only the first layers (as calibrated with --num-layers)
    block_size: int = 16
    kv_blocks: int | None = None  # None: enough for the trace (CPU) or the free GPU memory (CUDA)
    max_batch: int = 256
    seed: int = 0  # weights, prompt tokens and sampling
    temperature: float = 0.0
    cuda_graphs: bool = True
    cpu_threads: int = 1
    warmup: bool = True
    check_every: int = 0  # scheduler invariant checks every N launches (0: never)
    clock: str = "wall"  # CPU only: "cpu" counts this thread's CPU time (see CpuClock)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"the executor serves one GPU; policy must be one of {', '.join(POLICIES)}, "
                             f"got {self.policy!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if self.clock not in CLOCKS or (self.clock == "cpu" and self.device != "cpu"):
            raise ValueError(f"clock must be wall, or cpu on the CPU device; got {self.clock!r} on {self.device}")
        if self.block_size < 1 or self.max_batch < 1 or self.cpu_threads < 1:
            raise ValueError("block_size, max_batch and cpu_threads must be >= 1")




@dataclass
class RunResult:
    """Same fields as sim.run.SimResult (so sim.outputs writes it), plus what only a real run has."""

    config: RunConfig
    records: list[RequestRecord]
    metrics: dict
    timelines: list[Timeline | None]
    wall_s: float
    sim_end_s: float  # run clock at the last event
    output_tokens: dict[int, list[int]] = field(default_factory=dict)
    estimator_source: str = ""


@dataclass
class Backend:
    """Model, device and SM partitions of one process: built once, served many times (the KV pool and
    its decode graphs are kept for the next run of the same size)."""

    model: DecoderModel
    partitions: PartitionManager
    device: torch.device
    model_name: str
    _pool: tuple | None = None  # ((num_blocks, block_size, max_batch), KVPool, DecodeGraphs | None)
    warmed_len: int = 0  # longest prompt warm_up ran

    def kv_pool(self, num_blocks: int, block_size: int, max_batch: int) -> tuple[KVPool, object]:
        """(pool, decode graphs or None) for this size: the kept one, else a new one replacing it."""
        key = (num_blocks, block_size, max_batch)
        if self._pool is None or self._pool[0] != key:
            self._pool = None  # free the old pool before allocating the new one
            pool = KVPool.for_model(self.model.config, num_blocks, block_size, self.model.dtype, self.device)
            self._pool = (key, pool, None)
        return self._pool[1], self._pool[2]

    def keep_graphs(self, graphs) -> None:
        if self._pool is not None:
            self._pool = (self._pool[0], self._pool[1], graphs)

    @property
    def num_sms(self) -> int:
        return self.partitions.num_sms if self.device.type == "cuda" else LOGICAL_SMS

    def stream_sms(self, lane: str, num_sms: int) -> int:
        """The partition a scheduler's `num_sms` runs on: exact, else decode rounds up and prefill down."""
        options = self.partitions.sm_options(lane)
        if num_sms in options or not self.partitions.is_partitioned:
            return num_sms
        if lane == DECODE:
            return min((s for s in options if s >= num_sms), default=options[-1])
        return max((s for s in options if s <= num_sms), default=options[0])


def open_backend(model: str, device: str = "cpu", weights: str | None = None, num_layers: int | None = None,
                 seed: int = 0, cpu_threads: int = 1) -> Backend:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    if device == "cpu":
        torch.set_num_threads(cpu_threads)  # NOTE: process-wide; tiny models run fastest on one thread
        keep_freed_memory()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    check_fits(model, device, dtype, num_layers)
    net = build_model(model, device, dtype, weights=weights, seed=seed, num_layers=num_layers)
    return Backend(net, PartitionManager.create(device), torch.device(device), model)


def check_fits(model: str, device: str, dtype: torch.dtype, num_layers: int | None = None) -> None:
    """Refuse (ValueError) a model whose weights would take most of the device's free memory."""
    from executor.config import load_config

    config = load_config(model)
    layers = num_layers or config.num_hidden_layers
    need = num_params(config, layers) * torch.empty((), dtype=dtype).element_size()
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > 0.7 * free:
        raise ValueError(f"{model} ({layers} layers) needs {need / 2**30:.1f} GiB of {dtype} "
                         f"weights; {device} has {free / 2**30:.1f} GiB free: use --num-layers or another device")


def keep_freed_memory() -> None:
    """glibc: serve large buffers from the heap and never trim it. By default every prefill's activations
    are mmapped fresh and returned after the launch: thousands of page faults per launch, whose cost
    swings with the machine's load. NOTE: process-wide; a no-op where glibc is not the allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def kv_blocks_for(backend: Backend, requests: Sequence[Request], block_size: int, max_batch: int = 256) -> int:
    """CPU: every request's prompt and output at once (capped by a memory budget). CUDA: what the memory
    plan (executor.memory_plan: graphs, logits, prefill activations, workspace) leaves of free memory."""
    config, dtype = backend.model.config, backend.model.dtype
    if backend.device.type == "cuda":
        if backend._pool is not None and backend._pool[0][1] == block_size:
            return backend._pool[0][0]  # the kept pool: runs on one backend see the same KV size
        # memory torch's allocator holds but does not use is free for the pool too
        free = (torch.cuda.mem_get_info(backend.device)[0] + torch.cuda.memory_reserved(backend.device)
                - torch.cuda.memory_allocated(backend.device))
        elem = torch.empty((), dtype=dtype).element_size()
        fixed = sum(fixed_rows(config, backend.model.num_layers, elem, max_batch, include_weights=False).values())
        return max(16, kv_blocks_within(free, config, block_size, elem, backend.model.num_layers, fixed))
    per_block = KVPool.bytes_per_block(config, block_size, dtype)
    need = sum(-(-(r.prompt_len + r.output_len) // block_size) for r in requests) + 16
    return max(16, min(need, CPU_KV_BUDGET_BYTES // per_block))


def serve(requests: Sequence[Request], cfg: RunConfig, backend: Backend | None = None,
          estimator=None, estimator_source: str = "given",
          progress: Callable[[int], None] | None = None) -> RunResult:
    """Serve `requests` (arrival times from 0) in real time. Builds the backend unless given. Policy yoda
    needs `estimator` (a yoda.estimator.Estimator; calibration.estimators.run_estimator makes one from a
    profile, a quick measurement or the roofline): the executor itself imports no calibration or sim.
    `progress(requests finished)` is called as each request finishes."""
    if cfg.policy == "yoda" and estimator is None:
        raise ValueError("policy yoda needs an estimator: pass one (calibration.estimators.run_estimator)")
    started = time.perf_counter()
    backend = backend or open_backend(cfg.model, cfg.device, cfg.weights, cfg.num_layers, cfg.seed, cfg.cpu_threads)
    model = backend.model
    context = model.config.max_position_embeddings
    too_long = [r.request_id for r in requests if r.prompt_len + r.output_len > context]
    if too_long:
        raise ValueError(f"{len(too_long)} requests exceed {model.config.model_type} {cfg.model}'s {context}-token "
                         f"context (first: {too_long[0]}); cut them with --max-prompt-len / --max-output-len")
    kv_blocks = cfg.kv_blocks or kv_blocks_for(backend, requests, cfg.block_size, cfg.max_batch)
    sched_cfg = SchedulerConfig(num_sms=backend.num_sms, num_layers=model.num_layers, kv_blocks=kv_blocks,
                                block_size=cfg.block_size, max_batch=cfg.max_batch)
    options = dict(cfg.policy_options)
    if cfg.policy == "yoda":
        options["estimator"] = estimator
    else:
        options = {k: v for k, v in options.items() if k not in ("granularity", "step_sms")}
        estimator_source = "none (policy does not estimate)"
    scheduler = make_scheduler(cfg.policy, sched_cfg, cfg.slo, **options)
    pool, graphs = backend.kv_pool(kv_blocks, cfg.block_size, cfg.max_batch)
    engine = Engine(model, pool, scheduler.kv, backend.device, backend.partitions, cfg.seed, cfg.temperature,
                    use_cuda_graphs=cfg.cuda_graphs)
    if engine.use_cuda_graphs and graphs is not None:
        engine.decode_graphs = graphs  # captured on this pool by an earlier run
    else:
        engine.capture_decode_graphs(cfg.max_batch)
        backend.keep_graphs(engine.decode_graphs)
    if cfg.warmup:
        longest = max((r.prompt_len for r in requests), default=48)
        warm_up(engine, backend, min(max(longest, 48), 8192, kv_blocks // 2 * cfg.block_size - 1))
    driver = _Driver(backend, engine, scheduler, cfg, progress)
    records = driver.run(sorted(requests, key=lambda r: (r.arrival_at, r.request_id)))
    metrics = compute_metrics(records, cfg.slo)
    metrics.update(policy=cfg.policy, backend="executor", device=cfg.device, model=cfg.model,
                   num_layers=model.num_layers, kv_blocks=kv_blocks, estimator=estimator_source,
                   partitions=backend.partitions.reason or "green contexts",
                   scheduler_counters=dict(getattr(scheduler, "counters", {})))
    return RunResult(cfg, records, metrics, [driver.timeline], time.perf_counter() - started, driver.end_at,
                     driver.outputs, estimator_source)


def warm_up(engine: Engine, backend: Backend, longest: int) -> None:
    """Before the clock starts: short prefills (fresh, and after a cached prefix) on every prefill
    partition and a decode step on every decode partition (kernels compile per partition and shape), then
    one prefill as long as the longest prompt on the whole device (the allocator grows to it). Once per
    backend and length. Uses and frees request ids < 0."""
    if longest <= backend.warmed_len:
        return
    from yoda.backend import PrefillChunk

    cache, layers, vocab = engine.kv_cache, backend.model.num_layers, backend.model.config.vocab_size
    ids = (-1, -2)

    def run(launch: Launch) -> None:
        engine.start(launch, 0.0)
        while not engine.poll(float("inf")):
            time.sleep(SPIN_S)

    def prefill(sms: int, start: int, length: int) -> Launch:
        chunks = tuple(PrefillChunk(rid, start, length - start) for rid in ids)
        return Launch(PREFILL, sms, prefill=chunks, layer_end=layers, num_layers=layers)

    def with_requests(length: int, *launches: Callable[[], Launch]) -> None:
        for rid in ids:
            engine.add_request(rid, [(7 * i - rid) % vocab for i in range(length)])
            cache.allocate(rid, length + 1)  # room for one decode step
        for make in launches:
            run(make())
        for rid in ids:
            engine.free(rid)
            cache.free(rid)

    prefill_sms, short = backend.partitions.sm_options(PREFILL), min(longest, 256)
    for sms in prefill_sms:
        for start in (0, short // 2):
            with_requests(short, lambda: prefill(sms, start, short))
    for sms in backend.partitions.sm_options(DECODE):
        with_requests(short, lambda: prefill(prefill_sms[-1], 0, short),
                      lambda: Launch(DECODE, sms, decode_ids=ids, decode_kv_len=2 * (short + 1)))
    with_requests(longest, lambda: prefill(prefill_sms[-1], 0, longest))
    backend.warmed_len = longest


class _Driver:
    """One run: wall clock, arrivals, the plan/start/poll loop and per-request token bookkeeping."""

    def __init__(self, backend: Backend, engine: Engine, scheduler, cfg: RunConfig,
                 progress: Callable[[int], None] | None = None) -> None:
        self.backend, self.engine, self.scheduler, self.cfg = backend, engine, scheduler, cfg
        self.progress = progress
        self.vocab = backend.model.config.vocab_size
        self.busy: dict[str, Launch] = {}
        self.live: dict[int, tuple[Request, RequestRecord, list[int]]] = {}  # id -> request, record, prompt
        self.carried: dict[int, list[int]] = {}  # tokens generated before a preemption re-added the request
        self.seen_preemptions: dict[int, int] = {}
        self.outputs: dict[int, list[int]] = {}
        self.timeline = Timeline([], [], [], [], [], [], [])
        self._running: dict[int, tuple[Launch, int, float]] = {}  # id(engine launch) -> launch, log row, start
        self.clock = CLOCKS[cfg.clock]()
        self.prompts: dict[int, list[int]] = {}
        self.end_at = 0.0
        self._num_done = 0

    def now(self) -> float:
        return self.clock.now()

    def run(self, requests: list[Request]) -> list[RequestRecord]:
        # prompts arrive as tokens: make them before the clock starts (unless they would fill memory)
        if sum(r.prompt_len for r in requests) <= PRECOMPUTE_PROMPT_TOKENS:
            self.prompts = {r.request_id: prompt_for(r, self.vocab, self.cfg.seed) for r in requests}
        self.clock = CLOCKS[self.cfg.clock]()
        i, dirty = 0, False
        while i < len(requests) or self.scheduler.has_work() or self.busy:
            now = self.now()
            with self.clock.device():
                done = self.engine.poll(now)
            for launch, finished_at in sorted(done, key=lambda d: d[1]):
                self._complete(launch, finished_at)
                dirty = True
            # NOTE: 1e-9: a CPU clock jump to an arrival may land an ulp short of it
            while i < len(requests) and requests[i].arrival_at <= now + 1e-9:
                self._arrive(requests[i])
                i, dirty = i + 1, True
            if dirty:
                dirty = False
                if self._decide(self.now()):
                    continue  # on the CPU the launches already ran: report them before waiting
            if self.busy:
                time.sleep(SPIN_S)
            elif i < len(requests):
                self.clock.wait_until(requests[i].arrival_at)
            elif self.scheduler.has_work():
                raise RuntimeError(f"scheduler stalled with {len(self.live)} requests left and nothing running")
        self.end_at = self.now()
        return self.scheduler.records

    def _arrive(self, request: Request) -> None:
        self.scheduler.on_arrival(request, request.arrival_at)
        record = self.scheduler.records[-1]
        record.instance = 0
        if record.rejected_reason is None:
            prompt = self.prompts.pop(request.request_id, None) or prompt_for(request, self.vocab, self.cfg.seed)
            self.engine.add_request(request.request_id, prompt)
            self.live[request.request_id] = (request, record, prompt)
            self.seen_preemptions[request.request_id] = 0

    def _decide(self, now: float) -> bool:
        launches = self.scheduler.schedule(now, dict(self.busy))
        self._sync_preempted()
        if not launches:
            return False
        for launch in launches:
            if launch.lane in self.busy:
                raise RuntimeError(f"scheduler launched on the busy {launch.lane} lane")
            sms = self.backend.stream_sms(launch.lane, launch.num_sms)
            run = launch if sms == launch.num_sms else dataclasses.replace(launch, num_sms=sms)
            self.busy[launch.lane] = launch
            at = self.now()
            self._running[id(run)] = (launch, self._log(launch, at), at)
            with self.clock.device():
                self.engine.start(run, at)
        return True

    def _complete(self, run: Launch, finished_at: float) -> None:
        launch, row, started_at = self._running.pop(id(run))
        del self.busy[launch.lane]
        self.timeline.duration_s[row] = finished_at - started_at
        self.scheduler.on_launch_done(launch, finished_at)
        self.end_at = max(self.end_at, finished_at)
        for rid in (*launch.decode_ids, *(c.request_id for c in launch.prefill)):
            entry = self.live.get(rid)
            if entry is not None and entry[1].finished_at is not None:
                self._finish(rid, entry)
        self._num_done += 1
        if self.cfg.check_every and self._num_done % self.cfg.check_every == 0:
            self.scheduler.check_invariants()

    def _finish(self, rid: int, entry: tuple[Request, RequestRecord, list[int]]) -> None:
        request, record, _ = entry
        tokens = self.carried.pop(rid, []) + self.engine.output_tokens(rid)
        if len(tokens) != request.output_len or len(record.token_at) != request.output_len:
            raise RuntimeError(f"request {rid} finished with {len(tokens)} engine tokens and {len(record.token_at)} "
                               f"token times, expected {request.output_len}")
        self.outputs[rid] = tokens
        self.engine.free(rid)
        del self.live[rid], self.seen_preemptions[rid]
        if self.progress is not None:
            self.progress(len(self.outputs))

    def _sync_preempted(self) -> None:
        """Requests preempted in this plan restart from a prompt of their prompt + generated tokens."""
        for rid, (request, record, prompt) in self.live.items():
            if record.num_preemptions == self.seen_preemptions[rid]:
                continue
            self.seen_preemptions[rid] = record.num_preemptions
            carried = self.carried.get(rid, []) + self.engine.output_tokens(rid)
            self.carried[rid] = carried
            self.engine.free(rid)
            self.engine.add_request(rid, prompt + carried)

    def _log(self, launch: Launch, at: float) -> int:
        tl = self.timeline
        tl.at.append(at)
        tl.lane.append(launch.lane)
        tl.num_sms.append(launch.num_sms)
        tl.decode_batch.append(len(launch.decode_ids))
        tl.prefill_tokens.append(launch.num_prefill_tokens if launch.layer_start == 0 else 0)
        tl.queued.append(len(self.scheduler.waiting))
        tl.duration_s.append(0.0)  # filled in when the launch completes
        return len(tl.at) - 1
