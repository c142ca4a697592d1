"""Online serving over the executor: OpenAI-compatible HTTP server, async engine loop, router, bench client.

    server.py           OpenAI-compatible HTTP API (FastAPI) over the async engine loop; `yoda serve`
    async_engine.py     online engine loop: one asyncio task owns scheduler + Engine; submit/abort/stream
    router.py           HTTP router over instances with the policy core's dispatchers; failover; `yoda router`
    bench_client.py     replay a trace against any OpenAI endpoint into `yoda simulate` results; `yoda bench`
    cli.py              `yoda serve`, `yoda bench`, `yoda router`

Sits on `executor/` (engine, tokenizer) and `yoda/` (policies, dispatchers); nothing below imports it.
"""
