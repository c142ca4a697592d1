"""Hostile input to the server and to the router in front of it: each gets the stated 4xx in OpenAI's error
shape, and a well-formed streaming request running meanwhile is served in full."""
import json
import threading
import time

import httpx
import pytest

from serve.router import Router
from serve.router_app import create_router_app

GOOD = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LIMIT = 4 << 20


@pytest.fixture(scope="module")
def endpoints(serve):
    """{"server": url, "router": url}: a tiny server and a router over it."""
    with serve.server_in_thread(policy="chunked") as (url, server):
        with serve.app_in_thread(create_router_app(Router([url], "round_robin"))) as router_url:
            yield {"server": url, "router": router_url}, server


def _raw(text: str) -> bytes:
    return text.encode("utf-8")


HOSTILE = [  # (path, method, raw body or None, status, words in the message)
    ("/v1/completions", "POST", _raw('{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 4}'), 400,
     "unpaired surrogate"),
    ("/v1/chat/completions", "POST", _raw('{"model": "tiny", "messages": [{"role": "user", "content": "\\udfff"}]}'),
     400, "unpaired surrogate"),
    ("/v1/completions", "POST", b'{"model": "tiny", "prompt": "\xff\xfe", "max_tokens": 4}', 400, "not valid UTF-8"),
    ("/v1/chat/completions", "POST", json.dumps({**CHAT, "messages": [{"role": "user", "content": 5}]}).encode(), 400,
     "messages.0.content"),
    ("/v1/chat/completions", "POST", json.dumps({**CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]})
     .encode(), 400, "messages.0.content"),
    ("/v1/chat/completions", "POST", json.dumps({**CHAT, "messages": "hi"}).encode(), 400, "messages"),
    ("/v1/completions", "POST", json.dumps({**GOOD, "max_tokens": "10"}).encode(), 400, "max_tokens"),
    ("/v1/completions", "POST", json.dumps({**GOOD, "max_tokens": True}).encode(), 400, "max_tokens"),
    ("/v1/completions", "POST", json.dumps({**GOOD, "max_tokens": 3.0}).encode(), 400, "max_tokens"),
    ("/v1/completions", "POST", b"[1, 2]", 400, "JSON object"),
    ("/v1/completions", "POST", b"{nope", 400, "not valid JSON"),
    ("/v1/completions", "POST", b'{"prompt": "' + b"x" * (LIMIT + 10) + b'"}', 413, "exceeds the limit"),
    ("/v1/nothing", "POST", b"{}", 404, "no route /v1/nothing"),
    ("/v1/completions", "GET", None, 405, "method GET not allowed"),
]


@pytest.mark.parametrize("target", ["server", "router"])
@pytest.mark.parametrize("path, method, raw, status, words", HOSTILE)
def test_hostile_input_gets_a_clear_4xx(endpoints, target, path, method, raw, status, words):
    urls, server = endpoints
    accepted = server.aengine.counts["accepted"]
    resp = httpx.request(method, urls[target] + path, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert words in error["message"] and error["code"] == status and error["type"]
    assert server.aengine.counts["accepted"] == accepted  # never reached the engine


@pytest.mark.parametrize("target", ["server", "router"])
def test_streamed_body_over_the_limit_is_cut_off(endpoints, target):
    urls, _ = endpoints

    def chunks():  # no Content-Length: chunked transfer, counted as it arrives
        yield b'{"prompt": "'
        for _ in range(LIMIT // (1 << 16) + 2):
            yield b"x" * (1 << 16)
    resp = httpx.post(urls[target] + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "exceeds the limit" in resp.json()["error"]["message"]


@pytest.mark.parametrize("target", ["server", "router"])
def test_a_good_stream_is_served_while_hostile_requests_arrive(endpoints, target):
    urls, _ = endpoints
    result = {}

    def good():
        body = {**GOOD, "prompt": list(range(1, 40)), "max_tokens": 64, "stream": True, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", urls[target] + "/v1/completions", json=body, timeout=60) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
        result.update(status=resp.status_code, done=lines[-1] == "data: [DONE]",
                      usage=json.loads(lines[-2][6:])["usage"])
    thread = threading.Thread(target=good)
    thread.start()
    for path, method, raw, status, _ in HOSTILE * 2:
        assert httpx.request(method, urls[target] + path, content=raw).status_code == status
    thread.join(60)
    assert result["status"] == 200 and result["done"] and result["usage"]["completion_tokens"] == 64


@pytest.mark.parametrize("target", ["server", "router"])
def test_unknown_and_vllm_fields_are_accepted_and_listed(endpoints, target):
    urls, _ = endpoints
    body = {**GOOD, "frobnicate": 1, "skip_special_tokens": True, "spaces_between_special_tokens": False,
            "return_tokens_as_token_ids": False, "min_tokens": 2, "include_stop_str_in_output": False,
            "best_of": 1, "guided_json": None}
    resp = httpx.post(urls[target] + "/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    if target == "server":
        assert "frobnicate" in resp.headers["x-ignored-fields"] and "min_tokens" not in resp.headers["x-ignored-fields"]


def test_router_cancels_upstream_when_a_non_streaming_client_leaves(endpoints):
    urls, server = endpoints
    aborted = server.aengine.counts["aborted"]
    body = {**GOOD, "prompt": list(range(1, 30)), "max_tokens": 3000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(urls["router"] + "/v1/completions", json=body, timeout=0.5)
    deadline = time.monotonic() + 10
    while server.aengine.counts["aborted"] == aborted:
        assert time.monotonic() < deadline, f"the instance kept generating for a client that left: {server.aengine.counts}"
        time.sleep(0.05)
    while server.aengine._subs:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert server.aengine.sched.kv.num_used_blocks == 0


def test_slow_body_gets_408(serve):
    import socket
    with serve.server_in_thread(policy="chunked", body_timeout_s=0.5) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"model\": ")  # then nothing: a slowloris
            reply = b""
            while b"not received" not in reply and (data := sock.recv(4096)):
                reply += data
        assert reply.startswith(b"HTTP/1.1 408") and b"not received within 0.5 s" in reply


def test_a_client_that_stops_reading_is_dropped():
    """SendTimeout: a send that cannot complete ends the response, so the handler's `finally` aborts."""
    import asyncio

    from serve.app import SendTimeout
    cleaned = []

    async def app(scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        finally:
            cleaned.append(True)

    async def stuck_send(message):
        await asyncio.sleep(3600)

    async def run():
        await asyncio.wait_for(SendTimeout(app, 0.1)({"type": "http"}, None, stuck_send), 5)
    asyncio.run(run())
    assert cleaned == [True]


@pytest.mark.parametrize("chat", [False, True])
def test_router_passes_sampling_parameters_and_logprobs(endpoints, chat):
    urls, _ = endpoints
    extra = {"seed": 3, "temperature": 1.0, "top_k": 50, "max_tokens": 6, "ignore_eos": True}
    if chat:
        body = {**CHAT, **extra, "logprobs": True, "top_logprobs": 2}
        path = "/v1/chat/completions"
    else:
        body = {**GOOD, **extra, "logprobs": 2}
        path = "/v1/completions"
    direct, routed = (httpx.post(urls[t] + path, json=body).json() for t in ("server", "router"))
    assert routed["choices"][0]["logprobs"] == direct["choices"][0]["logprobs"]  # same seed: same tokens
    assert routed["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize("stream", [False, True])
def test_router_relays_n_choices_from_one_instance(endpoints, stream):
    urls, _ = endpoints
    body = {**GOOD, "n": 3, "max_tokens": 5, "ignore_eos": True, "seed": 7, "temperature": 1.0, "stream": stream}
    if not stream:
        direct, routed = (httpx.post(urls[t] + "/v1/completions", json=body).json() for t in ("server", "router"))
        assert sorted(c["index"] for c in routed["choices"]) == [0, 1, 2]
        assert [c["text"] for c in routed["choices"]] == [c["text"] for c in direct["choices"]]  # same seed
        assert routed["usage"]["completion_tokens"] == 15
        return
    seen: dict[int, int] = {}
    with httpx.stream("POST", urls["router"] + "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                for c in json.loads(line[5:])["choices"]:
                    seen[c["index"]] = seen.get(c["index"], 0) + 1
    assert sorted(seen) == [0, 1, 2]
