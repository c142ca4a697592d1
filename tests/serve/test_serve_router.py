"""`yoda router`: policy-core dispatchers over remote instances (session affinity, load), and a SIGKILL of
one of two instances mid-run loses no accepted request (queued ones are re-sent, streaming ones resume)."""
import asyncio
import json
import os
import random
import signal

import httpx
import pytest

from serve.router import Router
from serve.router_app import create_router_app

MAX_TOKENS = 48


def test_dispatchers_over_remote_views():
    router = Router(["http://a", "http://b"], "slo_aware")
    session = list(range(64))  # 4 full blocks
    first = router.routing_request({"prompt": session, "max_tokens": 8})
    chosen = router.pick(first, set())
    chosen.remember([k for k in _chain(first)])
    chosen.pending_prefill += 40  # busier, but the follow-up reuses 64 of its 80 tokens there
    follow_up = router.routing_request({"prompt": session + list(range(100, 116)), "max_tokens": 8})
    assert router.pick(follow_up, set()) is chosen and router.dispatcher.num_affinity_hits == 1
    stranger = router.routing_request({"prompt": list(range(300, 380)), "max_tokens": 8})
    assert router.pick(stranger, set()) is not chosen  # no reuse anywhere: the idle instance
    assert router.pick(follow_up, {router.instances.index(chosen)}) is not chosen  # exclusions hold
    chosen.healthy = False
    assert router.pick(follow_up, set()) is not chosen
    text = router.routing_request({"messages": [{"role": "user", "content": "x" * 40}]})
    assert text.prompt_len > 40 and len(text.block_hashes) == text.prompt_len // 16

    least = Router(["http://a", "http://b"], "least_loaded")
    least.instances[0].running = 3
    assert least.pick(stranger, set()) is least.instances[1]
    rr = Router(["http://a", "http://b"], "round_robin")
    assert [rr.instances.index(rr.pick(stranger, set())) for _ in range(4)] == [0, 1, 0, 1]


def _chain(request):
    from yoda.kv_cache import chain_keys
    return chain_keys(request.block_keys(16))


async def _run(url: str, prompts: list[list[int]], kill) -> list[dict]:
    """Stream every prompt through the router (a few non-streaming); call `kill` once tokens flow."""
    seen = {"tokens": 0, "killed": False}

    async def one(client: httpx.AsyncClient, i: int, prompt: list[int]) -> dict:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "return_token_ids": True}
        if i % 5 == 4:
            resp = await client.post("/v1/completions", json=body)
            data = resp.json()
            return {"status": resp.status_code, "ids": {data.get("id")},
                    "tokens": data["choices"][0]["token_ids"] if resp.status_code == 200 else []}
        out = {"tokens": [], "ids": set(), "done": False}
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
            out["status"] = resp.status_code
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    out["done"] = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    assert "error" not in event, event
                    out["ids"].add(event["id"])
                    out["tokens"] += event["choices"][0]["token_ids"]
                    seen["tokens"] += 1
                    if seen["tokens"] >= 20 and not seen["killed"]:
                        seen["killed"] = True
                        kill()
        return out

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(one(client, i, p) for i, p in enumerate(prompts)))


def _check_passthrough(url: str) -> None:
    """Instances' 4xx answers reach the client; chat and non-streaming responses keep their shape."""
    bad = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [1], "max_tokens": 0})
    assert bad.status_code == 400 and "max_tokens" in bad.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/completions", content=b"{oops").status_code == 400
    chat = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "max_tokens": 5,
                                                           "messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["object"] == "chat.completion" and chat["usage"]["completion_tokens"] == 5
    assert isinstance(chat["choices"][0]["message"]["content"], str) and "token_ids" not in chat["choices"][0]
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={"model": "tiny", "max_tokens": 3, "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert len(lines) == 4 and lines[-1] == "data: [DONE]" and '"delta"' in lines[0] and "token_ids" not in lines[0]


async def _greedy(url: str, prompts: list[list[int]]) -> list[list[int]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        body = {"model": "tiny", "max_tokens": MAX_TOKENS, "return_token_ids": True}
        responses = await asyncio.gather(*(client.post("/v1/completions", json={**body, "prompt": p}) for p in prompts))
    return [r.json()["choices"][0]["token_ids"] for r in responses]


def test_a_resumed_stream_keeps_its_sampling_options():
    """The continuation after a mid-stream failure asks for prompt + sent tokens with the rest of max_tokens,
    the same sampling options, and min_tokens less the tokens already sent."""
    from serve.router import _StreamState

    router = Router(["http://a", "http://b"], "round_robin")
    body = {"model": "m", "prompt": [1, 2, 3], "max_tokens": 10, "seed": 7, "temperature": 0.8, "top_p": 0.9,
            "stop_token_ids": [5], "min_tokens": 4, "stop": ["x"], "ignore_eos": True}
    st = _StreamState(chat=False)
    st.accept({"id": "c", "choices": [{"prompt_token_ids": [1, 2, 3], "token_ids": [9, 8, 7]}]}, resumed=False)
    path, out = router._forward("/v1/completions", body, st)
    assert path == "/v1/completions" and out["prompt"] == [1, 2, 3, 9, 8, 7] and out["max_tokens"] == 7
    assert {k: out[k] for k in ("seed", "temperature", "top_p", "stop_token_ids", "stop", "ignore_eos")} == {
        "seed": 7, "temperature": 0.8, "top_p": 0.9, "stop_token_ids": [5], "stop": ["x"], "ignore_eos": True}
    assert out["min_tokens"] == 1


def test_killing_an_instance_loses_no_request(serve):
    rng = random.Random(3)
    prompts = [[rng.randrange(512) for _ in range(rng.randrange(8, 60))] for _ in range(24)]
    # `a` holds KV for ~3 requests: when it dies some of its requests stream and some wait for KV
    a, b = serve.ForkedServer(policy="chunked", kv_blocks=20).start(), serve.ForkedServer(policy="yoda").start()
    with a, b:
        serve.wait_healthy(a.url)
        serve.wait_healthy(b.url)
        router = Router([a.url, b.url], "least_loaded", health_interval_s=0.2)
        with serve.app_in_thread(create_router_app(router)) as url:
            _check_passthrough(url)
            results = asyncio.run(_run(url, prompts, lambda: os.kill(a.proc.pid, signal.SIGKILL)))
            health = httpx.get(f"{url}/health").json()
            metrics = httpx.get(f"{url}/metrics").text
        reference = asyncio.run(_greedy(b.url, prompts))
    assert all(r["status"] == 200 for r in results)
    assert all(r.get("done", True) and len(r["ids"]) == 1 for r in results)  # one stream, one id each
    assert len({next(iter(r["ids"])) for r in results}) == len(prompts)
    for r, ref in zip(results, reference):  # greedy: resumed streams give the uninterrupted output
        assert r["tokens"] == ref
    assert [i["healthy"] for i in health["instances"]] == [False, True]
    # some of a's requests were waiting (re-sent whole), some streaming (resumed from their tokens)
    assert router.num_resent > router.num_resumed >= 1 and router.instances[0].num_failed == router.num_resent
    assert f"yoda_router_resent_total {router.num_resent}" in metrics


@pytest.mark.parametrize("status", [429, 503])
def test_no_instance_left(serve, status):
    """Every instance refusing (429) or gone (nothing listening) gives the client that answer, not a hang."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    busy = FastAPI()
    busy.post("/v1/completions")(lambda: JSONResponse({"error": {"message": "full"}}, 429, {"Retry-After": "3"}))
    busy.get("/health")(lambda: {"status": "ok"})
    with serve.app_in_thread(busy) as busy_url:
        target = busy_url if status == 429 else f"http://127.0.0.1:{serve.free_port()}"
        with serve.app_in_thread(create_router_app(Router([target], "slo_aware", 0.2))) as url:
            resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 2})
    assert resp.status_code == status
    if status == 429:
        assert resp.headers["retry-after"] == "3"
