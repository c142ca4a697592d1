"""The router's HTTP app: checks each request as the server does, proxies it through a Router (streaming or
aggregated into one body), and cancels the upstream request when the client leaves.

    app = create_router_app(Router(["http://127.0.0.1:8001", "http://127.0.0.1:8002"]))
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request as HttpRequest
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from serve.errors import error_response, install_error_handlers
from serve.protocol import (DEFAULT_MAX_BODY_BYTES, ChatRequest, CompletionRequest, parse, read_json,
                            until_disconnected)
from serve.router import NoInstance, Router


def _client_view(event: dict, want_ids: bool) -> dict:
    if want_ids:
        return event
    choices = [{k: v for k, v in c.items() if k not in ("token_ids", "prompt_token_ids")} for c in event["choices"]]
    return {**event, "choices": choices}


def _aggregate(events: list[dict], chat: bool, want_ids: bool) -> dict:
    """One non-streaming response from the stream's chunks."""
    first = events[0] if events else {}
    text, ids, finish, usage, prompt_ids, logprobs = [], [], "length", None, None, None
    for event in events:
        usage = event.get("usage") or usage
        for c in event.get("choices") or []:
            text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
            ids.extend(c.get("token_ids") or [])
            prompt_ids = c.get("prompt_token_ids", prompt_ids)
            finish = c.get("finish_reason") or finish
            if c.get("logprobs"):  # chunks carry each token's logprobs: concatenate every list field
                logprobs = logprobs or {k: [] for k in c["logprobs"]}
                for k, v in c["logprobs"].items():
                    logprobs.setdefault(k, []).extend(v or [])
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
    if chat:
        choice["message"] = {"role": "assistant", "content": "".join(text)}
    else:
        choice["text"] = "".join(text)
    if want_ids:
        choice.update(token_ids=ids, prompt_token_ids=prompt_ids)
    return {"id": first.get("id"), "object": "chat.completion" if chat else "text_completion",
            "created": first.get("created", int(time.time())), "model": first.get("model"), "choices": [choice],
            "usage": usage}


async def _unless_client_leaves(coro, http: HttpRequest):
    """(True, the result of `coro`), or (False, None) when the client left first (`coro` is cancelled)."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(until_disconnected(http))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    return (False, None) if work.cancelled() else (True, work.result())


async def _collect(events: AsyncIterator[dict], first: dict, http: HttpRequest) -> list[dict] | None:
    """Every event of a non-streaming request; None when the client left first (the upstream request is
    then cancelled: closing the generator closes the instance's stream, and the instance aborts it)."""
    async def gather() -> list[dict]:
        return [first] + [event async for event in events]

    done, result = await _unless_client_leaves(gather(), http)
    if not done:
        await events.aclose()
    return result


async def _read_or_leave(resp: httpx.Response, http: HttpRequest) -> bytes | None:
    """The upstream body; None (and the upstream closed) when the client leaves first."""
    try:
        return (await _unless_client_leaves(resp.aread(), http))[1]
    finally:
        await resp.aclose()


def create_router_app(router: Router, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                      body_timeout_s: float = 30.0) -> FastAPI:
    async def lifespan(app: FastAPI):
        await router.start()
        yield
        await router.stop()

    app = FastAPI(title="yoda router", lifespan=asynccontextmanager(lifespan))
    install_error_handlers(app)

    async def proxy(http: HttpRequest, path: str):
        body = await read_json(http, max_body_bytes, body_timeout_s)
        chat = path.endswith("chat/completions")
        request = parse(ChatRequest if chat else CompletionRequest, body)  # the instance checks the rest
        if request.n != 1:
            return await relay_whole(http, path, body)
        want_ids = bool(body.get("return_token_ids"))
        options = body.get("stream_options")
        want_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = router.events(path, body, router.routing_request(body))
        try:
            first = await events.__anext__()
        except NoInstance as e:
            if e.body is not None:
                return JSONResponse(e.body, status_code=e.status)
            return error_response(e.status, e.message, headers=e.headers)
        except StopAsyncIteration:
            return error_response(502, "instance closed the stream without output")
        if body.get("stream"):
            return StreamingResponse(_sse(first, events, want_ids, want_usage), media_type="text/event-stream")
        collected = await _collect(events, first, http)
        if collected is None:
            return error_response(499, "client disconnected")
        errors = [e for e in collected if "error" in e]
        if errors:
            return error_response(502, str(errors[0]["error"].get("message")))
        return _aggregate(collected, chat, want_ids)

    async def relay_whole(http: HttpRequest, path: str, body: dict):
        """n > 1: one instance answers the request as is (its choices share the prompt's KV there); its
        answer is relayed, streamed or whole. The upstream request is closed when the client leaves."""
        try:
            upstream = router.whole_request(path, body, router.routing_request(body))
        except NoInstance as e:
            return error_response(e.status, e.message, headers=e.headers)
        try:
            answered, resp = await _unless_client_leaves(router.client.send(upstream, stream=True), http)
        except httpx.HTTPError as e:
            return error_response(502, f"instance failed: {type(e).__name__}")
        if not answered:  # the client left before the instance answered
            return error_response(499, "client disconnected")
        headers = {k: v for k, v in resp.headers.items() if k.lower() in ("retry-after", "x-ignored-fields")}
        if resp.status_code != 200 or not body.get("stream"):
            content = await _read_or_leave(resp, http)
            if content is None:
                return error_response(499, "client disconnected")
            return Response(content, status_code=resp.status_code, headers=headers,
                            media_type=resp.headers.get("content-type", "application/json"))

        async def lines():
            try:
                async for line in resp.aiter_lines():
                    if line:
                        yield line + "\n\n"
            finally:
                await resp.aclose()
        return StreamingResponse(lines(), media_type="text/event-stream", headers=headers)

    async def _sse(first: dict, events: AsyncIterator[dict], want_ids: bool, want_usage: bool):
        try:
            event: dict | None = first
            while event is not None:
                if "error" in event:
                    yield f"data: {json.dumps(event)}\n\n"
                    break
                if event.get("choices") or want_usage:
                    yield f"data: {json.dumps(_client_view(event, want_ids))}\n\n"
                event = await anext(events, None)
            yield "data: [DONE]\n\n"
        finally:
            await events.aclose()

    @app.post("/v1/completions")
    async def completions(http: HttpRequest):
        return await proxy(http, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(http: HttpRequest):
        return await proxy(http, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models():
        for inst in router.instances:
            if inst.healthy:
                try:
                    resp = await router.client.get(f"{inst.url}/v1/models", timeout=5.0)
                    return JSONResponse(resp.json(), status_code=resp.status_code)
                except (httpx.HTTPError, ValueError):
                    inst.mark_down()
        return error_response(503, "no healthy instance")

    @app.get("/health")
    async def health():
        up = any(i.healthy for i in router.instances)
        body = {"status": "ok" if up else "no healthy instance", "instances": [
            {"url": i.url, "healthy": i.healthy, "pending_prefill_tokens": i.pending_prefill, "running": i.running}
            for i in router.instances]}
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        lines = []
        for name, kind, get in (("yoda_router_instance_up", "gauge", lambda i: int(i.healthy)),
                                ("yoda_router_pending_prefill_tokens", "gauge", lambda i: i.pending_prefill),
                                ("yoda_router_running_requests", "gauge", lambda i: i.running),
                                ("yoda_router_dispatched_total", "counter", lambda i: i.num_dispatched),
                                ("yoda_router_failed_total", "counter", lambda i: i.num_failed)):
            lines.append(f"# TYPE {name} {kind}")
            lines += [f'{name}{{instance="{i.url}"}} {get(i)}' for i in router.instances]
        lines += ["# TYPE yoda_router_resent_total counter", f"yoda_router_resent_total {router.num_resent}",
                  "# TYPE yoda_router_resumed_total counter", f"yoda_router_resumed_total {router.num_resumed}"]
        return "\n".join(lines) + "\n"

    return app
