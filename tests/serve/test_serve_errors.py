"""Bad requests get a 4xx with a clear message and never reach the engine; bad `yoda serve` flags exit 2."""
import httpx
import pytest
from typer.testing import CliRunner

from yoda.cli import app

KV_BLOCKS = 64  # 1024 tokens: smaller than the tiny model's 4096-token context
GOOD = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def served(serve):
    with serve.server_in_thread(policy="chunked", kv_blocks=KV_BLOCKS) as (url, server):
        yield url, server


BAD_COMPLETIONS = [
    ({"model": "tiny", "max_tokens": 4}, 400, "prompt: Field required"),
    ({**GOOD, "prompt": 5}, 400, "prompt"),
    ({**GOOD, "prompt": ""}, 400, "prompt is empty"),
    ({**GOOD, "prompt": []}, 400, "prompt is empty"),
    ({**GOOD, "prompt": [1, 2, 512]}, 400, "token id 512 is outside the vocabulary [0, 512)"),
    ({**GOOD, "prompt": [1, -1]}, 400, "token id -1"),
    ({**GOOD, "prompt": ["a", "b"]}, 400, "batched prompts"),
    ({**GOOD, "max_tokens": -3}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens: Input should be greater than or equal to 1"),
    ({**GOOD, "max_tokens": 10**12}, 400, "maximum context length"),
    ({**GOOD, "max_tokens": "many"}, 400, "max_tokens"),
    ({**GOOD, "prompt": list(range(500)) * 9}, 400, "maximum context length"),  # > the 4096 context
    ({**GOOD, "prompt": list(range(500)) * 3}, 400, "1024 tokens"),  # fits the context, not the KV pool
    ({**GOOD, "temperature": -1}, 400, "temperature"),
    ({**GOOD, "max_tokens": "10"}, 400, "max_tokens: Input should be a valid integer"),
    ({**GOOD, "max_tokens": True}, 400, "max_tokens: Input should be a valid integer"),
    ({**GOOD, "max_tokens": 3.0}, 400, "max_tokens: Input should be a valid integer"),
    ({**GOOD, "stream": "yes"}, 400, "stream: Input should be a valid boolean"),
    ({**GOOD, "n": 17}, 400, "n: Input should be less than or equal to 16"),
    ({**GOOD, "top_p": 0}, 400, "top_p"),
    ({**GOOD, "logprobs": 21}, 400, "logprobs"),
    ({**GOOD, "stop_token_ids": [600]}, 400, "token id 600 is outside the vocabulary"),
    ({**GOOD, "model": "gpt-4"}, 404, "model 'gpt-4' does not exist"),
]


@pytest.mark.parametrize("body, status, message", BAD_COMPLETIONS)
def test_bad_completion_requests(served, body, status, message):
    url, server = served
    accepted = server.aengine.counts["accepted"]
    resp = httpx.post(f"{url}/v1/completions", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert message in error["message"] and error["code"] == status
    assert server.aengine.counts["accepted"] == accepted  # never reached the engine


@pytest.mark.parametrize("body, message", [
    ({**CHAT, "messages": []}, "messages: List should have at least 1 item"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({**CHAT, "messages": [{"role": "user"}]}, "messages.0.content: Field required"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}, "messages.0.content"),
    ({**CHAT, "messages": ["hi"]}, "messages.0"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages.0"),
    ({**CHAT, "max_completion_tokens": 10**9}, "maximum context length"),
])
def test_bad_chat_requests(served, body, message):
    url, server = served
    resp = httpx.post(f"{url}/v1/chat/completions", json=body)
    assert resp.status_code == 400 and message in resp.json()["error"]["message"], resp.text
    assert server.aengine.counts["accepted"] == 0


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_bodies(served, raw):
    url, server = served
    resp = httpx.post(f"{url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error"]["message"], resp.text
    assert server.aengine.counts["accepted"] == 0


def test_good_request_after_bad_ones(served):
    url, server = served
    resp = httpx.post(f"{url}/v1/completions", json={**GOOD, "prompt": [i % 512 for i in range(1000)], "max_tokens": 24})
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 24  # exactly fills the pool


@pytest.mark.parametrize("args, message", [
    (["serve", "--policy", "disagg"], "cannot serve one GPU"),
    (["serve", "--policy", "nope"], "cannot serve one GPU"),
    (["serve", "--max-queue", "0"], "--max-queue must be >= 1"),
    (["serve", "--kv-blocks", "-1"], "--kv-blocks must be >= 1"),
    (["serve", "--max-queue-wait-s", "0"], "--max-queue-wait-s must be > 0"),
    (["serve", "--max-body-bytes", "0"], "--max-body-bytes must be > 0"),
    (["serve", "--send-timeout-s", "-1"], "--send-timeout-s must be > 0"),
    (["serve", "--queue-wait-ttft-x", "-1"], "--queue-wait-ttft-x must be >= 0"),
    (["serve", "--model", "no-such-model"], "neither a built-in config"),
    (["serve", "--policy", "chunked", "--option", "token_budget=0"], "token_budget must be >= 1"),
    (["serve", "--policy", "chunked", "--option", "bogus=1"], "bad --option"),
    (["bench", "--endpoint", "localhost:1", "--trace", "x"], "--endpoint must be an http(s) URL"),
    (["bench", "--endpoint", "http://127.0.0.1:9", "--trace", "x", "--mode", "both"], "--mode must be one of"),
    (["router", "--instances", ","], "--instances needs at least one URL"),
    (["router", "--instances", "http://a", "--dispatcher", "best"], "unknown dispatcher"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("error:") == 1
