"""An HTTP router over several OpenAI-compatible servers, dispatching with the policy core's dispatchers.

    yoda router --instances http://127.0.0.1:8001,http://127.0.0.1:8002 --port 9000 --dispatcher slo_aware

Each instance is seen through a `_RemoteView` shaped like a scheduler, so `yoda.dispatcher` runs unchanged:
queued prefill tokens = prompt tokens sent there whose first token has not come back; decode load =
requests streaming from there; KV reuse = a local record of the prompt blocks (prefix-chained hashes of
16-token blocks) already sent there, for session affinity; free KV from the instance's /health. Text
prompts are hashed as UTF-8 bytes (their length counts bytes), chat prompts after the plain chat join.

The router always streams from instances (with `return_token_ids`) and re-sends on failure: an instance
that refuses connections, errors, or stops answering /health is taken out (back in when /health answers)
and its requests go elsewhere. A request that already streamed tokens continues on another instance as a
completion of prompt + tokens so far (the client sees one uninterrupted stream: greedy outputs are identical,
sampled ones remain valid samples). 429s from every instance become a 429 with the smallest Retry-After.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from contextlib import aclosing
from types import SimpleNamespace
from typing import Any, AsyncIterator

import httpx

from executor.tokenizer import fallback_chat_text, token_block_hashes
from yoda.dispatcher import make_dispatcher
from yoda.kv_cache import chain_keys
from serve.timeouts import within
from yoda.request import Request

BLOCK_SIZE = 16
RESUMED_OPTIONS = ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty", "frequency_penalty",
                   "presence_penalty", "stop", "stop_token_ids", "include_stop_str_in_output")
MAX_SERVED_BLOCKS = 1 << 18  # per instance record of prompt blocks sent there (LRU)
FAILURES_TO_DOWN = 2


class Instance:
    def __init__(self, url: str) -> None:
        self.url = url
        self.healthy = True  # until a check or a request says otherwise
        self.failures = 0
        self.pending_prefill = 0  # prompt tokens sent whose first token has not come back
        self.running = 0  # requests streaming tokens
        self.kv_free_blocks: int | None = None
        self.served: OrderedDict[int, None] = OrderedDict()
        self.num_dispatched = self.num_failed = 0

    def mark_down(self) -> None:
        self.healthy, self.failures = False, max(self.failures, FAILURES_TO_DOWN)

    def remember(self, chain: list[int]) -> None:
        for key in chain:
            self.served[key] = None
            self.served.move_to_end(key)
        while len(self.served) > MAX_SERVED_BLOCKS:
            self.served.popitem(last=False)


class _RemoteKV:
    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        self.num_free_blocks = inst.kv_free_blocks if inst.kv_free_blocks is not None else 1 << 30

    def match_prefix(self, chain: list[int]) -> int:
        n = 0
        for key in chain:
            if key not in self.inst.served:
                break
            n += 1
        return n

    @staticmethod
    def blocks_for(num_tokens: int) -> int:
        return -(-num_tokens // BLOCK_SIZE)


def _view(inst: Instance) -> SimpleNamespace:
    """What yoda.dispatcher reads of a scheduler, for a remote instance."""
    waiting = [SimpleNamespace(target_len=inst.pending_prefill)] if inst.pending_prefill else []
    return SimpleNamespace(config=SimpleNamespace(block_size=BLOCK_SIZE), kv=_RemoteKV(inst), waiting=waiting,
                           prefilling=[], decoding=range(inst.running))


class NoInstance(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.body = status, message, headers, body


class Router:
    def __init__(self, urls: list[str], dispatcher: str = "slo_aware", health_interval_s: float = 0.5) -> None:
        if not urls:
            raise ValueError("--instances needs at least one URL")
        if health_interval_s <= 0:
            raise ValueError(f"--health-interval-s must be > 0, got {health_interval_s}")
        self.instances = [Instance(u) for u in urls]
        self.dispatcher = make_dispatcher(dispatcher)
        self.health_interval_s = health_interval_s
        self.client: httpx.AsyncClient | None = None
        self._next_id = 0
        self.num_resent = 0  # requests sent again after an instance failed or refused them
        self.num_resumed = 0  # of those, streams continued from the tokens already sent
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0), limits=limits)
        self._task = asyncio.get_running_loop().create_task(self._health_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    # ---- health -----------------------------------------------------------------------------------------
    async def _health_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._check(i) for i in self.instances))
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, inst: Instance) -> None:
        try:
            resp = await self.client.get(f"{inst.url}/health", timeout=max(1.0, 2 * self.health_interval_s))
            ok = resp.status_code == 200
            info = resp.json() if ok and resp.headers.get("content-type", "").startswith("application/json") else {}
        except (httpx.HTTPError, ValueError):
            ok, info = False, {}
        if ok:
            inst.healthy, inst.failures = True, 0
            inst.kv_free_blocks = info.get("kv_free_blocks", inst.kv_free_blocks)
        else:
            inst.failures += 1
            inst.healthy = inst.failures < FAILURES_TO_DOWN

    # ---- dispatch ---------------------------------------------------------------------------------------
    def routing_request(self, body: dict) -> Request:
        """A policy-core Request standing for `body` (token ids, or UTF-8 bytes of text, for prefix hashes)."""
        prompt = body.get("prompt")
        if "messages" in body:
            messages = [{"role": m.get("role"), "content": m.get("content") if isinstance(m.get("content"), str)
                         else "".join(p.get("text", "") for p in m.get("content") or [])}
                        for m in body["messages"] if isinstance(m, dict)]
            prompt = fallback_chat_text(messages)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        ids = list(prompt.encode("utf-8")) if isinstance(prompt, str) else (
            prompt if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) else [])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 16
        self._next_id += 1
        return Request(self._next_id, time.monotonic(), max(len(ids), 1), max_tokens,
                       block_hashes=token_block_hashes(ids, BLOCK_SIZE), hash_block_size=BLOCK_SIZE)

    def pick(self, request: Request, exclude: set[int]) -> Instance | None:
        candidates = [i for i, inst in enumerate(self.instances) if inst.healthy and i not in exclude]
        if not candidates:
            return None
        views = [_view(self.instances[i]) for i in candidates]
        return self.instances[candidates[self.dispatcher.pick(request, views, 0.0)]]

    def whole_request(self, path: str, body: dict, request: Request) -> httpx.Request:
        """`body` as is for one instance, without failover: a request with n > 1 has several choices in
        flight, which a continuation cannot resume. Raises NoInstance when no instance is healthy."""
        inst = self.pick(request, set())
        if inst is None:
            raise NoInstance(503, "no healthy instance")
        inst.remember(chain_keys(request.block_keys(BLOCK_SIZE)))
        inst.num_dispatched += 1
        return self.client.build_request("POST", inst.url + path, json=body)

    async def events(self, path: str, body: dict, request: Request) -> AsyncIterator[dict]:
        """Stream events of one request from the instances, failing over until it completes.
        Raises NoInstance when it could not start anywhere (503/429, or an instance's 4xx to pass on)."""
        st = _StreamState(chat=path.endswith("chat/completions"))
        tried: set[int] = set()
        retry_after: list[int] = []
        chain = chain_keys(request.block_keys(BLOCK_SIZE))
        while True:
            inst = self.pick(request, tried)
            if inst is None:
                if st.started:
                    yield {"error": {"message": "every instance failed while streaming this request", "code": 503}}
                    return
                if retry_after:
                    raise NoInstance(429, "every instance is overloaded", {"Retry-After": str(min(retry_after))})
                raise NoInstance(503, "no healthy instance")
            self.num_resent += bool(tried)
            tried.add(self.instances.index(inst))
            forward = self._forward(path, body, st)
            if isinstance(forward, dict):  # nothing left to ask for, or no way to resume
                yield forward
                return
            inst.remember(chain)
            inst.num_dispatched += 1
            outcome: tuple = ("fail", "no answer")
            async with aclosing(self._attempt(inst, *forward, request.prompt_len)) as attempt:
                async for kind, value in attempt:
                    if kind == "event":
                        yield st.accept(value, resumed=forward[0] != path)
                    else:
                        outcome = (kind, value)
            kind, value = outcome
            if kind == "done":
                return
            if kind == "status" and value[0] == 429:
                retry_after.append(_seconds(value[1].get("retry-after")))
            elif kind == "status" and 400 <= value[0] < 500 and not st.started:
                raise NoInstance(value[0], "instance rejected the request", body=value[2])

    def _forward(self, path: str, body: dict, st: "_StreamState") -> tuple[str, dict] | dict:
        """(path, body) of the next attempt: the request itself, or after streamed tokens its continuation
        (a completion of prompt + tokens so far); or a final event to send instead."""
        if not st.started:
            options = body.get("stream_options") or {}
            return path, {**body, "stream": True, "return_token_ids": True, "stream_options": {
                "include_usage": True, "continuous_usage_stats": bool(options.get("continuous_usage_stats"))}}
        if st.prompt_ids is None:
            return {"error": {"message": "instance failed mid-stream and gave no token ids to resume", "code": 502}}
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        left = max_tokens - len(st.sent)
        if left <= 0:  # every requested token was already sent
            return st.rewrite({"choices": [{"index": 0, "text": "", "token_ids": [], "finish_reason": "length"}]})
        self.num_resumed += 1
        out = {"model": body.get("model"), "prompt": st.prompt_ids + st.sent, "max_tokens": left, "stream": True,
               "stream_options": {"include_usage": True}, "return_token_ids": True,
               "ignore_eos": bool(body.get("ignore_eos", False))}
        # the sampling options carry over: a seeded draw depends on (seed, sequence length), the same in the
        # continuation; min_tokens counts the tokens already sent (frequency and presence penalties count
        # those as prompt there, a known difference)
        out.update({k: body[k] for k in RESUMED_OPTIONS if body.get(k) is not None})
        if body.get("min_tokens"):
            out["min_tokens"] = max(int(body["min_tokens"]) - len(st.sent), 0)
        return "/v1/completions", out

    async def _attempt(self, inst: Instance, path: str, body: dict, prompt_len: int):
        """("event", dict)* then one of ("done", None), ("status", (code, headers, json)), ("fail", reason).
        Gives up on the instance when it is marked down while we wait for its next event."""
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.get_running_loop().create_task(self._produce(inst, path, body, queue))
        inst.pending_prefill += prompt_len
        streaming = False
        try:
            while True:
                try:
                    kind, value = await within(queue.get(), self.health_interval_s)
                except asyncio.TimeoutError:
                    if not inst.healthy:
                        inst.num_failed += 1
                        yield "fail", "instance down"
                        return
                    continue
                if kind == "event" and not streaming:
                    streaming = True
                    inst.pending_prefill -= prompt_len
                    inst.running += 1
                if kind == "fail":
                    inst.num_failed += 1
                yield kind, value
                if kind != "event":
                    return
        finally:
            task.cancel()
            if streaming:
                inst.running -= 1
            else:
                inst.pending_prefill -= prompt_len

    async def _produce(self, inst: Instance, path: str, body: dict, queue: asyncio.Queue) -> None:
        try:
            async with self.client.stream("POST", inst.url + path, json=body) as resp:
                if resp.status_code != 200:
                    raw = await resp.aread()
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = {"error": {"message": raw.decode("utf-8", "replace")[:300], "code": resp.status_code}}
                    if resp.status_code >= 500:
                        inst.mark_down() if resp.status_code == 503 else None
                        queue.put_nowait(("fail", f"http {resp.status_code}"))
                    else:
                        queue.put_nowait(("status", (resp.status_code, dict(resp.headers), payload)))
                    return
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        queue.put_nowait(("done", None))
                        return
                    event = json.loads(data)
                    if "error" in event:
                        queue.put_nowait(("fail", str(event["error"])))
                        return
                    queue.put_nowait(("event", event))
            queue.put_nowait(("fail", "stream ended without [DONE]"))
        except (httpx.HTTPError, ValueError, OSError) as e:
            if isinstance(e, httpx.TransportError):
                inst.mark_down()
            queue.put_nowait(("fail", f"{type(e).__name__}: {e}"))


def _seconds(header: str | None) -> int:
    try:
        return max(int(header or 1), 1)
    except ValueError:  # an HTTP date: retry soon
        return 1


@dataclass
class _StreamState:
    """What the client has seen of one request, so another instance can take over the stream."""

    chat: bool
    sent: list[int] = field(default_factory=list)  # output token ids already sent
    prompt_ids: list[int] | None = None  # from the first chunk's prompt_token_ids
    first: dict | None = None  # the first event sent: its id, created and object are kept throughout

    @property
    def started(self) -> bool:
        return self.first is not None

    def accept(self, event: dict, resumed: bool) -> dict:
        """Record an instance's event and return it as the client should see it."""
        choice = (event.get("choices") or [{}])[0]
        if self.prompt_ids is None and choice.get("prompt_token_ids") is not None:
            self.prompt_ids = list(choice["prompt_token_ids"])
        if self.first is None:
            self.first = event
        elif resumed or event.get("id") != self.first.get("id"):
            event = self.rewrite(event)
        self.sent.extend(choice.get("token_ids") or [])
        return event

    def rewrite(self, event: dict) -> dict:
        """A continuation's completion chunk as a chunk of the original stream (same id, chat shape)."""
        first = self.first or {}
        out = {**event, "id": first.get("id", event.get("id")), "created": first.get("created", event.get("created")),
               "object": first.get("object", event.get("object"))}
        choices = []
        for c in event.get("choices") or []:
            c = {k: v for k, v in c.items() if k != "prompt_token_ids"}
            if self.chat and "text" in c:
                c = {"index": 0, "delta": {"content": c.pop("text")}, "finish_reason": c.get("finish_reason"),
                     "token_ids": c.get("token_ids")}
            choices.append(c)
        out["choices"] = choices
        usage = event.get("usage")
        if usage and self.prompt_ids is not None:
            out["usage"] = {**usage, "prompt_tokens": len(self.prompt_ids), "completion_tokens": len(self.sent),
                            "total_tokens": len(self.prompt_ids) + len(self.sent)}
        return out
