"""The FastAPI app around a Server: routes, OpenAI-shaped errors, API key, CORS and a send timeout.

    app = create_app(server, AppOptions(api_key="sk-...", allowed_origins=("https://ui.example",)))

`api_key`: every route but /health, /version and /metrics needs `Authorization: Bearer <key>` (401 otherwise,
as vLLM's --api-key). `send_timeout_s`: a client that stops reading its response for that long (its socket
buffer full) is dropped and its request aborted, so a slow reader holds no KV for ever. Idle keep-alive
connections are closed by uvicorn (`timeout_keep_alive`, `yoda serve --idle-timeout-s`).
"""
from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from serve.errors import error_response, install_error_handlers
from serve.timeouts import within

OPEN_PATHS = frozenset({"/health", "/version", "/metrics"})


@dataclass(frozen=True)
class AppOptions:
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    send_timeout_s: float | None = 30.0

    def __post_init__(self) -> None:
        if self.send_timeout_s is not None and self.send_timeout_s <= 0:
            raise ValueError(f"--send-timeout-s must be > 0, got {self.send_timeout_s}")


class SendTimeout:
    """ASGI middleware: a `send` that waits longer than `timeout_s` (client not reading) ends the request."""

    def __init__(self, app, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def bounded_send(message):
            try:
                await within(send(message), self.timeout_s)
            except asyncio.TimeoutError:
                raise OSError(f"client read nothing for {self.timeout_s:g} s") from None

        try:
            await self.app(scope, receive, bounded_send)
        except OSError:
            pass  # the response generator's `finally` aborted the request


def add_middlewares(app: FastAPI, options: AppOptions) -> None:
    if options.api_key:
        key = options.api_key.encode()

        @app.middleware("http")
        async def _auth(request, call_next):
            if request.method != "OPTIONS" and request.url.path not in OPEN_PATHS:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), b"Bearer " + key):
                    return error_response(401, "invalid or missing API key (Authorization: Bearer <key>)")
            return await call_next(request)
    if options.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(options.allowed_origins), allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
    if options.send_timeout_s is not None:
        app.add_middleware(SendTimeout, timeout_s=options.send_timeout_s)


def create_app(server, options: AppOptions | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.aengine.start()
        yield
        await server.aengine.stop()

    app = FastAPI(title="yoda serve", lifespan=lifespan)
    install_error_handlers(app)
    add_middlewares(app, options or AppOptions())
    app.post("/v1/completions")(server.completions)
    app.post("/v1/chat/completions")(server.chat)
    app.get("/v1/models")(server.models)
    app.post("/tokenize")(server.tokenize)
    app.post("/detokenize")(server.detokenize)
    app.get("/version")(server.version)
    app.get("/health")(server.health)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(server.aengine.metrics.render(server.aengine), media_type="text/plain; version=0.0.4")

    return app
