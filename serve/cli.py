"""`yoda serve`, `yoda bench` and `yoda router`: the real engine behind an OpenAI-compatible HTTP API.

    yoda serve --model tiny --device cpu --policy yoda --port 8000
    yoda bench --endpoint http://localhost:8000 --trace traces/data/mooncake_sample.jsonl --max-requests 50 --out runs/real
    yoda router --instances http://gpu0:8000,http://gpu1:8000 --port 9000 --dispatcher slo_aware

Everything heavy (torch, fastapi, uvicorn, httpx) is imported inside the commands. Bad flags print one
`error: ...` line on stderr and exit with status 2, as `yoda simulate` does.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer

SLO_TTFT = typer.Option(1000.0, "--slo-ttft-ms", help="TTFT target (ms)")
SLO_PER_TOKEN = typer.Option(0.25, "--slo-ttft-ms-per-token", help="TTFT target per prompt token (ms); the "
                             "target is the larger of this x prompt length and --slo-ttft-ms; 0: fixed target")
SLO_TBT = typer.Option(50.0, "--slo-tbt-ms", help="TBT target (ms), every gap between output tokens")
HOST = typer.Option("127.0.0.1", "--host", help="address to listen on")
LOG_LEVEL = typer.Option("warning", "--log-level", help="uvicorn log level")
MAX_BODY = typer.Option(4 << 20, "--max-body-bytes", help="larger request bodies get 413 before parsing")
IDLE_TIMEOUT = typer.Option(5.0, "--idle-timeout-s", help="close keep-alive connections idle this long")


@contextmanager
def _errors() -> Iterator[None]:
    """Bad flags and missing extras end as one `error: ...` line (exit 2)."""
    from sim.cli_errors import fail, user_errors

    try:
        with user_errors():
            yield
    except ImportError as e:
        fail(f"{e}; install the serving extras: pip install -e '.[cpu,serve]'")


def serve_cmd(
    model: str = typer.Option("tiny", "--model", help="built-in config name (tiny, llama3-8b, ...) or config.json path"),
    weights: str | None = typer.Option(None, "--weights", help="local safetensors file or folder (random without)"),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="local tokenizer folder (byte-level without)"),
    device: str = typer.Option("cpu", "--device", help="cuda or cpu"),
    policy: str = typer.Option("yoda", "--policy", help="yoda, chunked, prefill_first, static_split or temporal"),
    port: int = typer.Option(8000, "--port"), host: str = HOST,
    kv_blocks: int | None = typer.Option(None, "--kv-blocks", help="KV blocks of 16 tokens (default: 4096 on the "
                                         "CPU, 80% of free GPU memory on CUDA)"),
    max_queue: int = typer.Option(256, "--max-queue", help="requests waiting for KV before new ones get 429"),
    max_batch: int = typer.Option(256, "--max-batch", help="decode batch cap"),
    temperature: float = typer.Option(0.0, "--temperature", help="default temperature (0: greedy)"),
    seed: int = typer.Option(0, "--seed", help="weights (when random) and sampling seed"),
    gpu: str = typer.Option("h100", "--gpu", help="GPU spec the yoda policy's estimator assumes"),
    slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN, slo_tbt_ms: float = SLO_TBT,
    option: list[str] = typer.Option([], "--option", help="policy option key=value, repeatable"),
    served_model_name: str | None = typer.Option(None, "--served-model-name", help="model name clients send"),
    cuda_graphs: bool = typer.Option(True, "--cuda-graphs/--no-cuda-graphs", help="decode CUDA graphs (CUDA only)"),
    max_queue_wait_s: float = typer.Option(60.0, "--max-queue-wait-s", help="a request not started within this "
                                           "answers 429 + Retry-After instead of being served late"),
    queue_wait_ttft_x: float = typer.Option(0.0, "--queue-wait-ttft-x", help="> 0: also give up past this many "
                                            "times the request's TTFT target"),
    max_body_bytes: int = MAX_BODY,
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", help="408 when a request body takes longer"),
    send_timeout_s: float = typer.Option(30.0, "--send-timeout-s", help="drop a client that reads nothing this "
                                         "long (its request is aborted)"),
    idle_timeout_s: float = IDLE_TIMEOUT,
    api_key: str | None = typer.Option(None, "--api-key", envvar="YODA_API_KEY", help="require Authorization: "
                                       "Bearer KEY (all routes but /health, /version, /metrics)"),
    allowed_origins: str = typer.Option("", "--allowed-origins", help="comma-separated CORS origins (* for any)"),
    log_level: str = LOG_LEVEL,
) -> None:
    """Serve a model with one policy on one GPU (or the CPU) behind an OpenAI-compatible API."""
    from sim.cli_options import policy_options
    from yoda.request import SLO

    with _errors():
        import uvicorn

        from serve.app import AppOptions
        from serve.build import ServeOptions, build_server

        slo = SLO(ttft_ms=slo_ttft_ms, tbt_ms=slo_tbt_ms, ttft_ms_per_token=slo_ttft_ms_per_token)
        opts = ServeOptions(model=model, weights=weights, tokenizer=tokenizer, device=device, policy=policy,
                            kv_blocks=kv_blocks, max_queue=max_queue, max_batch=max_batch, temperature=temperature,
                            seed=seed, gpu=gpu, slo=slo, policy_options=policy_options(policy, option, []),
                            served_name=served_model_name, cuda_graphs=cuda_graphs, max_queue_wait_s=max_queue_wait_s,
                            queue_wait_ttft_x=queue_wait_ttft_x, max_body_bytes=max_body_bytes,
                            body_timeout_s=body_timeout_s, app=AppOptions(api_key, tuple(
                                o.strip() for o in allowed_origins.split(",") if o.strip()), send_timeout_s))
        _, app = build_server(opts)
    typer.echo(f"yoda serve: {opts.served_name or model} on {device}, policy {policy}, http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=idle_timeout_s)


def bench_cmd(
    ctx: typer.Context,
    endpoint: str = typer.Option(..., "--endpoint", help="base URL of an OpenAI-compatible server"),
    trace: str = typer.Option(..., "--trace", help="trace file or synthetic:NAME[:N]"),
    fmt: str | None = typer.Option(None, "--format", help="mooncake, azure or agent; default: detected"),
    rate: float | None = typer.Option(None, "--rate", help="request rate (req/s) to replay at; default: trace times"),
    max_requests: int | None = typer.Option(None, "--max-requests", help="first N requests of the trace"),
    mode: str = typer.Option("open", "--mode", help="open (trace arrival times) or sessions (closed loop: next "
                             "turn at the previous turn's finish + think time)"),
    slo_ttft_ms: float = SLO_TTFT, slo_ttft_ms_per_token: float = SLO_PER_TOKEN, slo_tbt_ms: float = SLO_TBT,
    model: str | None = typer.Option(None, "--model", help="model name to request (default: the server's first)"),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="prompt token ids lie below this (default: "
                                          "the server's /v1/models vocab_size)"),
    seed: int = typer.Option(0, "--seed", help="seed of re-timing and synthetic prompt tokens"),
    timeout_s: float = typer.Option(600.0, "--timeout-s", help="per-request timeout"),
    token_ids: bool = typer.Option(True, "--token-ids/--no-token-ids", help="ask for return_token_ids (yoda, vLLM) "
                                   "to count tokens exactly"),
    out: Path | None = typer.Option(None, "--out", help="write results.json, requests.parquet and plots here"),
    as_json: bool = typer.Option(False, "--json", help="print the results as one JSON object on stdout"),
) -> None:
    """Replay a trace against an endpoint and write the same results as `yoda simulate`."""
    from sim.cli_options import command_line
    from sim.outputs import format_value, print_results, short_trace
    from yoda.request import SLO

    with _errors():
        from serve.bench_client import BenchConfig, run_bench

        slo = SLO(ttft_ms=slo_ttft_ms, tbt_ms=slo_tbt_ms, ttft_ms_per_token=slo_ttft_ms_per_token)
        cfg = BenchConfig(endpoint=endpoint, trace=trace, format=fmt, rate=rate, max_requests=max_requests,
                          mode=mode, slo=slo, model=model, vocab_size=vocab_size, seed=seed, timeout_s=timeout_s,
                          token_ids=token_ids)
        result, res, paths = run_bench(cfg, out, command=command_line(ctx))
    print_results(res, f"bench {result.config.model} at {endpoint} on {short_trace(trace)} ({len(result.records)} "
                       f"requests, {format_value(res['workload']['mean_rate_rps'], 3)} req/s)", as_json, paths)


def router_cmd(
    instances: str = typer.Option(..., "--instances", help="comma-separated base URLs of the servers"),
    port: int = typer.Option(9000, "--port"), host: str = HOST,
    dispatcher: str = typer.Option("slo_aware", "--dispatcher", help="slo_aware, least_loaded or round_robin"),
    health_interval_s: float = typer.Option(0.5, "--health-interval-s", help="seconds between /health polls"),
    max_body_bytes: int = MAX_BODY, idle_timeout_s: float = IDLE_TIMEOUT,
    log_level: str = LOG_LEVEL,
) -> None:
    """Dispatch requests over several servers (session affinity, health checks, re-send on failure)."""
    with _errors():
        import uvicorn

        from serve.router import Router
        from serve.router_app import create_router_app

        urls = [u.strip().rstrip("/") for u in instances.split(",") if u.strip()]
        router = Router(urls, dispatcher, health_interval_s)
        app = create_router_app(router, max_body_bytes)
    typer.echo(f"yoda router: {len(urls)} instances, {dispatcher}, http://{host}:{port}", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=idle_timeout_s)


def register(app: typer.Typer) -> None:
    """Mount `serve`, `bench` and `router` on the main `yoda` app."""
    from sim.cli_errors import OneLineErrors

    app.command("serve", cls=OneLineErrors)(serve_cmd)
    app.command("bench", cls=OneLineErrors)(bench_cmd)
    app.command("router", cls=OneLineErrors)(router_cmd)
