"""Online serving over the executor: OpenAI-compatible HTTP server, async engine loop, router, bench client.

    server.py           OpenAI route handlers: completions, chat, tokenize, models, health; n choices, queue deadline
    protocol.py         strict pydantic request models; bounded, UTF-8-checked body reading (413/408/400)
    errors.py           every error in OpenAI's {"error": {...}} shape (404/405 too)
    choices.py          one choice's text: incremental detokenizing, stop strings, logprobs objects
    reply.py            SSE chunks (usage per chunk on request) or one JSON body from the choices
    app.py              the FastAPI app: routes, --api-key, CORS, send timeout for clients that stop reading
    build.py            ServeOptions -> model, KV pool, scheduler, engine loop, app
    metrics.py          Prometheus metrics (prometheus_client) under vLLM's names as yoda:...
    async_engine.py     online engine loop: one asyncio task owns scheduler + Engine; submit/abort/stream
    router.py           dispatch over instances with the policy core's dispatchers; failover, stream resume
    router_app.py       the router's HTTP app (request checks, proxying, upstream cancel); `yoda router`
    bench_client.py     replay a trace against any OpenAI endpoint into `yoda simulate` results; `yoda bench`
    cli.py              `yoda serve`, `yoda bench`, `yoda router`

Sits on `executor/` (engine, tokenizer) and `yoda/` (policies, dispatchers); nothing below imports it.
"""
