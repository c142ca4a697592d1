"""A serving app from flags: model, KV pool, partitions, scheduler, engine loop, Server and app.

    server, app = build_server(ServeOptions(model="tiny", device="cpu", policy="chunked"))
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI

from serve.app import AppOptions, create_app
from serve.protocol import DEFAULT_MAX_BODY_BYTES
from serve.server import Server
from yoda.policies import POLICIES, make_scheduler
from yoda.request import SLO
from yoda.scheduler import SchedulerConfig

BLOCK_SIZE = 16
CPU_KV_BLOCKS = 4096  # 64K tokens
MAX_AUTO_KV_BLOCKS = 1 << 16


@dataclass(frozen=True)
class ServeOptions:
    model: str = "tiny"  # built-in config name or a config.json path
    weights: str | None = None  # local safetensors (random weights without)
    tokenizer: str | None = None  # local tokenizer folder (byte-level fallback without)
    device: str = "cpu"
    policy: str = "yoda"
    kv_blocks: int | None = None  # default: CPU_KV_BLOCKS, or 80% of free GPU memory (at most 65536)
    max_queue: int = 256
    max_batch: int = 256
    temperature: float = 0.0  # default sampling temperature of requests that give none
    seed: int = 0
    gpu: str = "h100"  # GPU spec behind the yoda policy's roofline estimator
    slo: SLO = field(default_factory=SLO)
    policy_options: dict = field(default_factory=dict)
    served_name: str | None = None  # the `model` name clients use (default: --model)
    cuda_graphs: bool = True
    check_every: int = 0  # scheduler invariant checks every N loop iterations (0: never)
    max_queue_wait_s: float = 60.0  # a request not started within this is answered 429 (inf: no deadline)
    queue_wait_ttft_x: float = 0.0  # > 0: also expire past this x the request's TTFT target
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = 30.0  # to receive a request body
    app: AppOptions = field(default_factory=AppOptions)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} cannot serve one GPU; choose from {', '.join(POLICIES)} "
                             "(for disaggregation run several servers behind `yoda router`)")
        for name in ("max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.kv_blocks is not None and self.kv_blocks < 1:
            raise ValueError(f"--kv-blocks must be >= 1, got {self.kv_blocks}")
        for name in ("max_queue_wait_s", "max_body_bytes", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.queue_wait_ttft_x < 0:
            raise ValueError(f"--queue-wait-ttft-x must be >= 0, got {self.queue_wait_ttft_x}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"--temperature must be in [0, 2], got {self.temperature}")


def _kv_blocks(opts: ServeOptions, config, device, dtype) -> int:
    if opts.kv_blocks is not None:
        return opts.kv_blocks
    if device.type != "cuda":
        return CPU_KV_BLOCKS
    import torch

    from executor.kv_pool import KVPool
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return max(1, min(int(0.8 * free_bytes) // KVPool.bytes_per_block(config, BLOCK_SIZE, dtype), MAX_AUTO_KV_BLOCKS))


def _scheduler(opts: ServeOptions, config: SchedulerConfig, model_config):
    options = dict(opts.policy_options)
    if opts.policy == "yoda":
        from dataclasses import replace

        from sim.contention import ContentionModel
        from sim.hardware import get_gpu
        from sim.latency import RooflineLatency
        from sim.model_spec import from_hf_config
        from sim.sampling import estimator_for
        from yoda.partitions import PartitionMenu

        gpu = get_gpu(opts.gpu)
        gpu = replace(gpu, num_sms=config.num_sms) if gpu.num_sms != config.num_sms else gpu
        spec = from_hf_config(model_config.to_dict())
        menu = PartitionMenu(config.num_sms, options.get("granularity", 8), options.get("step_sms", 16))
        options["estimator"] = estimator_for(("serve", gpu, spec, menu), RooflineLatency(spec, gpu), ContentionModel(),
                                             gpu, spec, menu)
    try:
        return make_scheduler(opts.policy, config, opts.slo, **options)
    except TypeError as e:
        raise ValueError(f"bad --option for policy {opts.policy}: {e}") from None


def build_server(opts: ServeOptions) -> tuple[Server, FastAPI]:
    """Model, KV pool, partitions, scheduler, engine and the app (the engine loop starts with the app)."""
    import torch

    from executor.engine import Engine
    from serve.async_engine import AsyncEngine
    from executor.kv_pool import KVPool
    from executor.model import build_model
    from executor.partitions import PartitionManager
    from executor.tokenizer import load_tokenizer

    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    model = build_model(opts.model, device, dtype, weights=opts.weights, seed=opts.seed)
    partitions = PartitionManager.create(device)
    kv_blocks = _kv_blocks(opts, model.config, device, dtype)
    pool = KVPool.for_model(model.config, kv_blocks, BLOCK_SIZE, dtype, device)
    # NOTE: on the CPU (one lane) the SM counts in launches are nominal: those of the --gpu spec
    num_sms = partitions.num_sms if device.type == "cuda" else _gpu_sms(opts.gpu)
    config = SchedulerConfig(num_sms=num_sms, num_layers=model.num_layers, kv_blocks=kv_blocks,
                             block_size=BLOCK_SIZE, max_batch=opts.max_batch)
    scheduler = _scheduler(opts, config, model.config)
    engine = Engine(model, pool, scheduler.kv, device, partitions, seed=opts.seed,
                           use_cuda_graphs=opts.cuda_graphs)
    max_model_len = min(model.config.max_position_embeddings, kv_blocks * BLOCK_SIZE)
    engine.capture_decode_graphs(max_batch=opts.max_batch, max_context_len=max_model_len)
    vocab = model.config.vocab_size
    aengine = AsyncEngine(scheduler, engine, opts.max_queue, max_model_len, opts.check_every, opts.max_queue_wait_s,
                          opts.queue_wait_ttft_x)
    server = Server(aengine, load_tokenizer(opts.tokenizer, vocab), opts.served_name or opts.model, vocab,
                    opts.temperature, opts.max_body_bytes, opts.body_timeout_s)
    return server, create_app(server, opts.app)


def _gpu_sms(name: str) -> int:
    from sim.hardware import get_gpu
    return get_gpu(name).num_sms
