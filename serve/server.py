"""OpenAI-compatible route handlers over the AsyncEngine (the app around them: serve/app.py).

    yoda serve --model tiny --device cpu --policy chunked --port 8000
    curl localhost:8000/v1/completions -d '{"model": "tiny", "prompt": "hi", "max_tokens": 8}'

Endpoints: POST /v1/completions, POST /v1/chat/completions (both `stream` SSE chunks ending with
`data: [DONE]`, or one JSON body), GET /v1/models, POST /tokenize, POST /detokenize, GET /version, /health,
/metrics (Prometheus). Requests are checked before they reach the engine (serve/protocol.py): bad types,
empty prompts, token ids outside the vocabulary, prompt + max_tokens beyond the context or the KV pool get
400; an unknown model 404; more than --max-queue waiting requests, or a request that could not start
within its queue deadline, 429 with Retry-After. A client that disconnects is aborted.
Sampling: temperature, top_p, top_k, min_p, the three penalties, seed (executor/sampling.py); `stop` strings
(here) and `stop_token_ids` (engine); `n` choices: the first is prefilled alone, the others are submitted
when its first token arrives, so they reuse its prompt blocks from the prefix cache. `logprobs`, `echo`,
`ignore_eos`, `min_tokens`, `stream_options.include_usage` and vLLM's `continuous_usage_stats` (usage in
every chunk), `return_token_ids` (vLLM's: `token_ids` on every choice, `prompt_token_ids` on the first).
Default max_tokens: 16. Default temperature: the server's --temperature (0: greedy).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from executor.sampling import SamplingParams
from executor.tokenizer import Tokenizer
from serve.async_engine import AsyncEngine, EngineDeadError, QueueFullError, Submission
from serve.choices import Choice
from serve.errors import ApiError, error_body, error_response
from serve.reply import Reply
from serve.protocol import (DEFAULT_MAX_BODY_BYTES, ChatRequest, CompletionRequest, DetokenizeRequest,
                            SamplingRequest, TokenizeRequest, ignored_fields, parse, read_json, until_disconnected)

DEFAULT_MAX_TOKENS = 16
VERSION = "0.1.0"


class ClientGone(Exception):
    pass


class Server:
    """Route handlers bound to one AsyncEngine, tokenizer and model name."""

    def __init__(self, aengine: AsyncEngine, tokenizer: Tokenizer, model_name: str, vocab_size: int,
                 default_temperature: float = 0.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_timeout_s: float = 30.0) -> None:
        self.aengine, self.tok, self.model_name = aengine, tokenizer, model_name
        self.vocab_size = vocab_size
        self.default_temperature = default_temperature
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.created = int(time.time())

    async def _body(self, http: HttpRequest, model):
        return parse(model, await read_json(http, self.max_body_bytes, self.body_timeout_s))

    # ---- request checks -------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ApiError(400, "batched prompts (several prompts in one request) are not supported; use n",
                               "prompt")
            prompt = prompt[0]
        ids = self.tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._check_ids(ids, "prompt")
        return ids

    def _check_ids(self, ids: list[int], param: str) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})", param)

    def _check(self, body: SamplingRequest, ids: list[int], max_tokens: int | None) -> int:
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
        self._check_ids(body.stop_token_ids or [], "stop_token_ids")
        return max_tokens

    def _sampling(self, body: SamplingRequest, index: int, num_logprobs: int | None) -> SamplingParams:
        temperature = self.default_temperature if body.temperature is None else body.temperature
        seed = None if body.seed is None else body.seed + index
        return SamplingParams(temperature, body.top_p, body.top_k, body.min_p, body.presence_penalty,
                              body.frequency_penalty, body.repetition_penalty, seed, num_logprobs)

    def _submit(self, ids: list[int], max_tokens: int, body: SamplingRequest, index: int,
                num_logprobs: int | None) -> Submission:
        eos = self.tok.eos_token_id
        stop_ids = [*(body.stop_token_ids or []), *([] if body.ignore_eos or eos is None else [eos])]
        try:
            return self.aengine.submit(ids, max_tokens, self._sampling(body, index, num_logprobs), stop_ids,
                                       body.min_tokens)
        except QueueFullError as e:
            raise ApiError(429, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
        except EngineDeadError as e:
            raise ApiError(503, str(e)) from None

    # ---- endpoints --------------------------------------------------------------------------------------
    async def completions(self, http: HttpRequest):
        body = await self._body(http, CompletionRequest)
        ids = self._prompt_ids(body.prompt)
        max_tokens = self._check(body, ids, body.max_tokens)
        echo = self.tok.decode(ids) if body.echo else ""
        return await self._serve(body, http, ids, max_tokens, chat=False, num_logprobs=body.logprobs, echo=echo)

    async def chat(self, http: HttpRequest):
        body = await self._body(http, ChatRequest)
        ids = self.tok.chat_prompt([{"role": m.role, "content": m.text} for m in body.messages])
        max_tokens = self._check(body, ids, body.max_completion_tokens or body.max_tokens)
        num_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return await self._serve(body, http, ids, max_tokens, chat=True, num_logprobs=num_logprobs)

    async def _serve(self, body, http: HttpRequest, ids: list[int], max_tokens: int, chat: bool,
                     num_logprobs: int | None, echo: str = ""):
        """Submit choice 0, wait for its first token (429 if it expires in the queue), then the other n - 1."""
        subs = [self._submit(ids, max_tokens, body, 0, num_logprobs)]
        merged: asyncio.Queue = asyncio.Queue()
        events = _Events(merged, http)
        pumps = [events.gone, asyncio.get_running_loop().create_task(_pump(0, subs[0], merged))]
        try:
            first = await events.next()
            if first[1] == [None]:
                _raise_unserved(subs[0], self.aengine)
            subs += [self._submit(ids, max_tokens, body, i, num_logprobs) for i in range(1, body.n)]
            pumps += [asyncio.get_running_loop().create_task(_pump(i, s, merged)) for i, s in enumerate(subs) if i]
        except ClientGone:
            self._cancel(subs, pumps)
            return error_response(499, "client disconnected")
        except BaseException:
            self._cancel(subs, pumps)
            raise
        stop, include_stop = body.stop_strings, body.include_stop_str_in_output
        choices = [Choice(i, s, self.tok, self.aengine, stop, include_stop) for i, s in enumerate(subs)]
        reply = Reply(self, body, chat, choices, echo, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}")
        headers = {"X-Ignored-Fields": ",".join(ignored_fields(body))} if ignored_fields(body) else {}
        if body.stream:
            return StreamingResponse(self._sse(reply, first, events, subs, pumps), headers={
                "Cache-Control": "no-cache", **headers}, media_type="text/event-stream")
        try:
            batches = [first]
            while sum(None in batch for _, batch in batches) < len(subs):
                batches.append(await events.next())
        except ClientGone:
            return error_response(499, "client disconnected")
        finally:
            self._cancel(subs, pumps)  # aborts what is unfinished; stops the disconnect watcher
        failed = next((s for s in subs if s.finish_reason in ("error", "abort", "expired")), None)
        if failed is not None:  # a later choice that expired in the queue, or an engine failure
            status = {"error": 500, "expired": 429}.get(failed.finish_reason, 503)
            headers = {"Retry-After": str(self.aengine.retry_after_s())} if status == 429 else None
            return error_response(status, failed.error or "request aborted", headers=headers)
        for index, batch in batches:
            reply.feed(index, batch)
        return JSONResponse(reply.body(), headers=headers)

    async def _sse(self, reply: Reply, first, events: "_Events", subs, pumps) -> AsyncIterator[str]:
        try:
            event = first
            while True:
                index, batch = event
                for chunk in reply.chunks(index, batch):
                    yield f"data: {json.dumps(chunk)}\n\n"
                if None in batch and subs[index].finish_reason in ("error", "abort", "expired"):
                    body = error_body(500, subs[index].error or "aborted")
                    yield f"data: {json.dumps(body)}\n\n"
                    break
                if reply.num_finished == len(subs):
                    if reply.include_usage:
                        yield f"data: {json.dumps(reply.usage_chunk())}\n\n"
                    break
                event = await events.next()
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        finally:
            self._cancel(subs, pumps)  # client went away mid-stream (or we are done: no-op)

    def _cancel(self, subs: list[Submission], pumps: list[asyncio.Task]) -> None:
        for sub in subs:
            if not sub.done:
                self.aengine.abort(sub.request_id)
        for task in pumps:
            task.cancel()

    async def tokenize(self, http: HttpRequest):
        body = await self._body(http, TokenizeRequest)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt and messages")
        ids = self.tok.encode(body.prompt) if body.prompt is not None else self.tok.chat_prompt(
            [{"role": m.role, "content": m.text} for m in body.messages])
        return {"tokens": ids, "count": len(ids), "max_model_len": self.aengine.max_model_len}

    async def detokenize(self, http: HttpRequest):
        body = await self._body(http, DetokenizeRequest)
        self._check_ids(body.tokens, "tokens")
        return {"prompt": self.tok.decode(body.tokens)}

    def version(self) -> dict:
        return {"version": VERSION}

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


async def _pump(index: int, sub: Submission, merged: asyncio.Queue) -> None:
    """Forward a submission's events as (index, batch): everything queued at once, so a batch that ends the
    request holds its last tokens and the final None together (finish_reason rides on the last token)."""
    while True:
        batch = [await sub.events.get()]
        while not sub.events.empty():
            batch.append(sub.events.get_nowait())
        merged.put_nowait((index, batch))
        if None in batch:
            return


class _Events:
    """(index, batch) events of one request's choices, or ClientGone as soon as the client disconnects."""

    def __init__(self, merged: asyncio.Queue, http: HttpRequest) -> None:
        self.merged = merged
        self.gone = asyncio.ensure_future(until_disconnected(http))

    async def next(self):
        get = asyncio.ensure_future(self.merged.get())
        try:
            await asyncio.wait({get, self.gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        raise ClientGone()


def _raise_unserved(sub: Submission, aengine: AsyncEngine) -> None:
    """A request that ended before its first token: expired in the queue (429), failed, or shut down."""
    if sub.finish_reason == "expired":
        raise ApiError(429, sub.error or "queue deadline passed", headers={"Retry-After": str(aengine.retry_after_s())})
    if sub.finish_reason == "error":
        raise ApiError(500, sub.error or "engine error")
    if sub.finish_reason == "abort":
        raise ApiError(503, sub.error or "request aborted")

