"""OpenAI-compatible HTTP server over the AsyncEngine (FastAPI + uvicorn).

    yoda serve --model tiny --device cpu --policy chunked --port 8000
    curl localhost:8000/v1/completions -d '{"model": "tiny", "prompt": "hi", "max_tokens": 8}'

Endpoints: POST /v1/completions, POST /v1/chat/completions (both `stream` SSE chunks ending with
`data: [DONE]`, or one JSON body), GET /v1/models, /health, /metrics (Prometheus text).
Requests are checked before they reach the engine: unknown fields, bad types, empty prompts, token ids
outside the vocabulary, prompt + max_tokens beyond the context or the KV pool get 400; an unknown model
404; more than --max-queue waiting requests 429 with Retry-After. A client that disconnects is aborted.
Nonstandard request fields: `ignore_eos` (default false: stop at the tokenizer's EOS, if it has one) and
`return_token_ids` (vLLM's: adds `token_ids` to every choice and `prompt_token_ids` to the first).
Default max_tokens: 16. Default temperature: the server's --temperature (0: greedy).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serve.async_engine import AsyncEngine, EngineDeadError, QueueFullError, Submission
from executor.tokenizer import IncrementalDetokenizer, Tokenizer
from yoda.policies import POLICIES, make_scheduler
from yoda.request import SLO
from yoda.scheduler import SchedulerConfig

DEFAULT_MAX_TOKENS = 16
DISCONNECT_CHECK_S = 0.25  # how often a waiting handler asks whether its client is still there


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]


class ContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart]
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


class Server:
    """Route handlers bound to one AsyncEngine, tokenizer and model name."""

    def __init__(self, aengine: AsyncEngine, tokenizer: Tokenizer, model_name: str, vocab_size: int,
                 default_temperature: float = 0.0) -> None:
        self.aengine, self.tok, self.model_name = aengine, tokenizer, model_name
        self.vocab_size = vocab_size
        self.default_temperature = default_temperature
        self.created = int(time.time())

    # ---- request checks -------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ApiError(400, "batched prompts (n > 1 prompts in one request) are not supported", "prompt")
            prompt = prompt[0]
        ids = self.tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})", "prompt")
        return ids

    def _check(self, body: _Sampling, ids: list[int], max_tokens: int | None) -> tuple[int, float, list[int]]:
        if body.model != self.model_name:
            raise ApiError(404, f"model {body.model!r} does not exist; this server serves {self.model_name!r}",
                           "model")
        if not ids:
            raise ApiError(400, "prompt is empty", "prompt")
        limit = self.aengine.max_model_len
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if len(ids) + max_tokens > limit:
            raise ApiError(400, f"this model's maximum context length (bounded by the KV pool) is {limit} tokens; "
                           f"the request needs {len(ids) + max_tokens} ({len(ids)} in the prompt, {max_tokens} "
                           "for the completion)", "max_tokens")
        temperature = self.default_temperature if body.temperature is None else body.temperature
        eos = self.tok.eos_token_id
        return max_tokens, temperature, [] if body.ignore_eos or eos is None else [eos]

    def _submit(self, ids: list[int], max_tokens: int, temperature: float, stop_ids: list[int]) -> Submission:
        try:
            return self.aengine.submit(ids, max_tokens, temperature, stop_ids)
        except QueueFullError as e:
            raise ApiError(429, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
        except EngineDeadError as e:
            raise ApiError(503, str(e)) from None

    # ---- endpoints --------------------------------------------------------------------------------------
    async def completions(self, body: CompletionRequest, http: HttpRequest):
        ids = self._prompt_ids(body.prompt)
        max_tokens, temperature, stop_ids = self._check(body, ids, body.max_tokens)
        sub = self._submit(ids, max_tokens, temperature, stop_ids)
        return await self._respond(sub, body, http, chat=False)

    async def chat(self, body: ChatRequest, http: HttpRequest):
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                     else "".join(p.text for p in m.content)} for m in body.messages]
        ids = self.tok.chat_prompt(messages)
        max_tokens, temperature, stop_ids = self._check(body, ids, body.max_completion_tokens or body.max_tokens)
        sub = self._submit(ids, max_tokens, temperature, stop_ids)
        return await self._respond(sub, body, http, chat=True)

    async def _respond(self, sub: Submission, body: _Sampling, http: HttpRequest, chat: bool):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._sse(sub, rid, chat, include_usage, body.return_token_ids, http),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            check_at = time.monotonic() + DISCONNECT_CHECK_S
            while not sub.done:
                try:
                    await asyncio.wait_for(sub.events.get(), DISCONNECT_CHECK_S)
                except asyncio.TimeoutError:
                    pass
                if time.monotonic() >= check_at:
                    check_at = time.monotonic() + DISCONNECT_CHECK_S
                    if await http.is_disconnected():
                        self.aengine.abort(sub.request_id)
                        return error_response(499, "client disconnected")
        except asyncio.CancelledError:
            self.aengine.abort(sub.request_id)
            raise
        if sub.finish_reason in ("error", "abort"):
            return error_response(500 if sub.finish_reason == "error" else 503, sub.error or "request aborted")
        text = self.tok.decode(sub.output_ids)
        choice: dict[str, Any] = {"index": 0, "finish_reason": _finish(sub)}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        if body.return_token_ids:
            choice.update(token_ids=sub.output_ids, prompt_token_ids=sub.prompt_ids)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice], "usage": _usage(sub)}

    async def _sse(self, sub: Submission, rid: str, chat: bool, include_usage: bool, token_ids: bool,
                   http: HttpRequest) -> AsyncIterator[str]:
        """One chunk per output token; finish_reason rides on the last token's chunk."""
        detok = IncrementalDetokenizer(self.tok)
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name}
        first = True

        def chunk(ids: list[int], text: str, finish: str | None) -> str:
            nonlocal first
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
            else:
                choice.update(text=text, logprobs=None)
            if token_ids:
                choice["token_ids"] = ids
                if first:
                    choice["prompt_token_ids"] = sub.prompt_ids
            first = False
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

        try:
            while True:
                try:
                    ids = await asyncio.wait_for(sub.events.get(), 0.5)
                except asyncio.TimeoutError:
                    if await http.is_disconnected():
                        self.aengine.abort(sub.request_id)
                        return
                    continue
                if ids is None or sub.done:  # everything left is queued already: finish on the last chunk
                    tokens = list(ids or [])
                    while ids is not None and (more := sub.events.get_nowait()) is not None:
                        tokens += more
                    if sub.finish_reason in ("error", "abort"):  # engine failure or shutdown: not a result
                        yield f"data: {json.dumps({'error': {'message': sub.error or 'aborted', 'code': 500}})}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    for i, t in enumerate(tokens):
                        last = i == len(tokens) - 1
                        text = detok.add([t]) + (detok.flush() if last else "")
                        yield chunk([t], text, _finish(sub) if last else None)
                    if not tokens:
                        yield chunk([], detok.flush(), _finish(sub))
                    break
                for t in ids:
                    yield chunk([t], detok.add([t]), None)
            if include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(sub)})}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not sub.done:
                self.aengine.abort(sub.request_id)  # client went away mid-stream

    def models(self) -> dict:
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self.created, "owned_by": "yoda",
            "max_model_len": self.aengine.max_model_len, "vocab_size": self.vocab_size}]}

    def health(self):
        a = self.aengine
        body = {"status": "ok" if not a.dead else "dead", "queued": a.num_queued, "running": a.num_running,
                "max_queue": a.max_queue, "kv_free_blocks": a.sched.kv.num_free_blocks,
                "kv_total_blocks": a.sched.kv.num_blocks, "block_size": a.block_size}
        if a.dead:
            body["error"] = a.dead
        return JSONResponse(body, status_code=503 if a.dead else 200)

    def metrics(self) -> str:
        return prometheus_text(self.aengine)


def _finish(sub: Submission) -> str:
    return "stop" if sub.finish_reason == "stop" else "length"


def _usage(sub: Submission) -> dict:
    n = len(sub.output_ids)
    return {"prompt_tokens": len(sub.prompt_ids), "completion_tokens": n, "total_tokens": len(sub.prompt_ids) + n,
            "prompt_tokens_details": {"cached_tokens": sub.cached_tokens}}


def prometheus_text(a: AsyncEngine) -> str:
    """The Prometheus text exposition format, written by hand (no prometheus_client dependency)."""
    kv = a.sched.kv
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    metric("yoda_queue_depth", "gauge", "Accepted requests waiting for KV admission.", [("", a.num_queued)])
    metric("yoda_running_requests", "gauge", "Requests holding KV (prefilling or decoding).", [("", a.num_running)])
    metric("yoda_decode_batch_size", "gauge", "Requests in the decode batch.", [("", len(a.sched.decoding))])
    metric("yoda_kv_blocks", "gauge", "KV blocks by state.", [('{state="used"}', kv.num_used_blocks),
           ('{state="cached"}', kv.num_cached_blocks), ('{state="total"}', kv.num_blocks)])
    metric("yoda_kv_usage_ratio", "gauge", "Share of KV blocks held by running requests.",
           [("", kv.num_used_blocks / kv.num_blocks)])
    metric("yoda_prefix_hit_rate", "gauge", "Prompt tokens reused from the prefix cache / prompt tokens admitted.",
           [("", a.prefix_hit_rate())])
    metric("yoda_sm_split", "gauge", "SMs the policy gave the latest launch on each lane (CPU: nominal).",
           [(f'{{lane="{lane}"}}', sms) for lane, sms in sorted(a.lane_sms.items())])
    metric("yoda_lane_busy", "gauge", "1 while a launch runs on the lane.",
           [(f'{{lane="{lane}"}}', int(lane in a.busy_lanes)) for lane in sorted(a.lane_sms)])
    metric("yoda_requests_total", "counter", "Requests by outcome.",
           [(f'{{outcome="{k}"}}', v) for k, v in sorted(a.counts.items())])
    metric("yoda_prompt_tokens_total", "counter", "Prompt tokens accepted.", [("", a.num_prompt_tokens)])
    metric("yoda_generation_tokens_total", "counter", "Output tokens sent.", [("", a.num_output_tokens)])
    for name, hist, help_ in (("yoda_ttft_seconds", a.ttft, "Time to first token."),
                              ("yoda_tbt_seconds", a.tbt, "Time between consecutive output tokens.")):
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} histogram"])
        cumulative = 0
        for bound, count in zip([*hist.buckets_s, float("inf")], hist.counts):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{"+Inf" if bound == float("inf") else f"{bound:g}"}"}} {cumulative}')
        lines += [f"{name}_sum {hist.sum_s:g}", f"{name}_count {hist.count}"]
    return "\n".join(lines) + "\n"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON: {err.get('msg')}"
        if err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: unknown or unsupported field")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.aengine.start()
        yield
        await server.aengine.stop()

    app = FastAPI(title="yoda serve", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: HttpRequest, exc: RequestValidationError):
        return error_response(400, _validation_message(exc))

    @app.exception_handler(ApiError)
    async def _api_error(request: HttpRequest, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat)
    app.get("/v1/models")(server.models)
    app.get("/health")(server.health)
    app.get("/metrics", response_class=PlainTextResponse)(server.metrics)
    return app


# ---- building a server from flags ------------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r} cannot serve one GPU; choose from {', '.join(POLICIES)} "
                             "(for disaggregation run several servers behind `yoda router`)")
        for name in ("max_queue", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.kv_blocks is not None and self.kv_blocks < 1:
            raise ValueError(f"--kv-blocks must be >= 1, got {self.kv_blocks}")
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

    from serve.async_engine import ServingEngine
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
    engine = ServingEngine(model, pool, scheduler.kv, device, partitions, seed=opts.seed,
                           use_cuda_graphs=opts.cuda_graphs)
    max_model_len = min(model.config.max_position_embeddings, kv_blocks * BLOCK_SIZE)
    engine.capture_decode_graphs(max_batch=opts.max_batch, max_context_len=max_model_len)
    vocab = model.config.vocab_size
    aengine = AsyncEngine(scheduler, engine, opts.max_queue, max_model_len, opts.check_every)
    server = Server(aengine, load_tokenizer(opts.tokenizer, vocab), opts.served_name or opts.model, vocab,
                    opts.temperature)
    return server, create_app(server)


def _gpu_sms(name: str) -> int:
    from sim.hardware import get_gpu
    return get_gpu(name).num_sms
