"""`yoda serve` through the openai client: completions and chat, streaming and not, text and token-id
prompts, prefix reuse, EOS stops, client aborts freeing KV, and the info endpoints."""
import asyncio
import json
import time

import httpx
import openai
import pytest

from executor.tokenizer import ByteTokenizer, IncrementalDetokenizer, token_block_hashes


@pytest.fixture(scope="module")
def served(serve):
    with serve.server_in_thread(policy="yoda", check_every=1) as (url, server):
        yield url, server, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def _wait_idle(server, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.aengine._subs or server.aengine.sched.has_work():
        assert time.monotonic() < deadline, "requests still live"
        time.sleep(0.01)


def test_completion_text_and_token_ids_stream_and_not(served):
    url, server, client = served
    out = client.completions.create(model="tiny", prompt="hello world", max_tokens=7, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (11, 7)
    ids = [5, 17, 300, 2, 9, 44]
    full = client.completions.create(model="tiny", prompt=ids, max_tokens=6, extra_body={"return_token_ids": True})
    tokens = full.choices[0].model_extra["token_ids"]
    assert len(tokens) == 6 and full.choices[0].model_extra["prompt_token_ids"] == ids
    chunks = list(client.completions.create(model="tiny", prompt=ids, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True}))
    token_chunks = [c for c in chunks if c.choices]
    assert [c.choices[0].model_extra["token_ids"][0] for c in token_chunks] == tokens  # greedy: same tokens
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 5 + ["length"]
    assert len({c.id for c in chunks}) == 1 and chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].text for c in token_chunks) == full.choices[0].text


def test_raw_sse_ends_with_done(served):
    url, _, _ = served
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert len(lines) == 4 and json.loads(lines[0][6:])["object"] == "text_completion"


def test_chat_stream_and_not(served):
    _, _, client = served
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == 5
    expected_prompt = len(ByteTokenizer(512).chat_prompt(messages))
    assert out.usage.prompt_tokens == expected_prompt
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert len(chunks) == 5 and "".join(c.choices[0].delta.content for c in chunks) == out.choices[0].message.content


def test_multi_turn_reuses_prefix_blocks(served):
    _, _, client = served
    turn1 = list(range(100, 180))  # 5 full blocks of 16
    first = client.completions.create(model="tiny", prompt=turn1, max_tokens=4, extra_body={"return_token_ids": True})
    turn2 = turn1 + first.choices[0].model_extra["token_ids"] + list(range(200, 230))
    second = client.completions.create(model="tiny", prompt=turn2, max_tokens=4)
    assert second.usage.prompt_tokens_details.cached_tokens == 80
    assert first.usage.prompt_tokens_details.cached_tokens == 0


def test_stop_at_eos_unless_ignore_eos(served):
    _, server, client = served
    prompt = [7, 8, 9, 10]
    greedy = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, extra_body={"return_token_ids": True})
    tokens = greedy.choices[0].model_extra["token_ids"]
    saved = server.tok
    server.tok = ByteTokenizer(512, eos_token_id=tokens[1])  # the second greedy token plays EOS
    try:
        stopped = client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                            extra_body={"return_token_ids": True})
        assert stopped.choices[0].finish_reason == "stop"
        assert stopped.choices[0].model_extra["token_ids"] == tokens[:2] and stopped.usage.completion_tokens == 2
        ignored = client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                            extra_body={"return_token_ids": True, "ignore_eos": True})
        assert ignored.choices[0].model_extra["token_ids"] == tokens
    finally:
        server.tok = saved
    _wait_idle(server)
    assert server.aengine.sched.kv.num_used_blocks == 0


def test_disconnects_abort_and_free_kv(served):
    url, server, _ = served
    aborted = _metric(url, 'yoda:request_success_total{finished_reason="abort"}')
    body = {"model": "tiny", "prompt": list(range(40)), "max_tokens": 3000, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")  # streaming has started; now hang up
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: the client times out and closes the socket
        httpx.post(f"{url}/v1/completions", json={**body, "stream": False}, timeout=0.5)
    _wait_idle(server)
    assert _metric(url, 'yoda:request_success_total{finished_reason="abort"}') == aborted + 2
    assert server.aengine.sched.kv.num_used_blocks == 0 and not server.aengine.engine._seqs
    server.aengine.sched.check_invariants()


def test_info_endpoints(served):
    url, _, client = served
    # serve two requests here (not rely on other tests having run on this worker): the second reuses the
    # first one's full prefix blocks, so the metrics below have a TTFT sample and a partial prefix hit rate
    prompt = list(range(1, 49))
    for extra in ([], [7, 8, 9]):
        client.completions.create(model="tiny", prompt=prompt + extra, max_tokens=4)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["kv_total_blocks"] == 4096
    text = httpx.get(f"{url}/metrics").text
    for name in ("yoda:num_requests_waiting", "yoda:num_requests_running", "yoda:kv_cache_usage_perc",
                 "yoda:prefix_cache_hit_rate", 'yoda:sm_split{lane="decode"}', 'yoda:lane_busy{lane="prefill"}',
                 "yoda:time_to_first_token_seconds_bucket", "yoda:inter_token_latency_seconds_count",
                 "yoda:e2e_request_latency_seconds_sum", "yoda:request_queue_time_seconds_count",
                 'yoda:request_rejected_total{reason="queue_full"}', "yoda:num_preemptions_total",
                 "yoda:generation_tokens_total"):
        assert name in text
    assert _metric(url, "yoda:time_to_first_token_seconds_count") >= 1
    assert 0 < _metric(url, "yoda:prefix_cache_hit_rate") < 1
    assert _metric(url, "yoda:e2e_request_latency_seconds_count") >= 2
    assert _metric(url, "yoda:request_queue_time_seconds_count") >= 2
    assert _metric(url, 'yoda:sm_split{lane="decode"}') > 0  # yoda gave decode an SM share (nominal on the CPU)


def test_token_helpers():
    tok = ByteTokenizer(512)
    assert tok.decode(tok.encode("héllo ✓")) == "héllo ✓"
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([t]) for t in tok.encode("✓ ok")]
    assert pieces[:2] == ["", ""] and "".join(pieces) + detok.flush() == "✓ ok"  # held back mid-character
    a, b = token_block_hashes(list(range(40)), 16), token_block_hashes(list(range(32)) + [0] * 20, 16)
    assert len(a) == 2 and a == b[:2] and len(b) == 3


def test_sampled_and_greedy_requests_share_a_batch(served):
    url, _, _ = served
    prompt = list(range(30, 60))

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            bodies = [{"model": "tiny", "prompt": prompt, "max_tokens": 12, "return_token_ids": True,
                       "temperature": t} for t in (0.0, 1.5, 0.0, 1.5, 1.5)]
            return [r.json() for r in await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))]

    out = [r["choices"][0]["token_ids"] for r in asyncio.run(run())]
    greedy = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 12,
                                                       "return_token_ids": True}).json()["choices"][0]["token_ids"]
    assert out[0] == out[2] == greedy and all(len(t) == 12 and max(t) < 512 for t in out)
    assert any(t != greedy for t in out[1::2])  # temperature 1.5 over 512 tokens: sampled, not argmax


def test_engine_failure_answers_everyone_and_refuses_new_work(serve):
    with serve.server_in_thread(policy="chunked") as (url, server):
        def broken_start(launch, now):
            raise RuntimeError("simulated kernel failure")
        server.aengine.engine.start = broken_start
        resp = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert resp.status_code == 500 and "simulated kernel failure" in resp.json()["error"]["message"]
        assert httpx.get(f"{url}/health").status_code == 503
        again = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert again.status_code == 503


def _hf_tokenizer_dir(path) -> str:
    """A small byte-level BPE tokenizer with EOS and a chat template, saved like a checkpoint's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["hello world, a tiny corpus"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}[assistant] {% endif %}")
    fast.save_pretrained(path)
    return str(path)


def test_local_transformers_tokenizer(serve, tmp_path):
    with serve.server_in_thread(policy="chunked", tokenizer=_hf_tokenizer_dir(tmp_path / "tok")) as (url, server):
        tok = server.tok
        assert tok.eos_token_id == 1 and tok.decode(tok.encode("hello world")) == "hello world"
        assert tok.decode(tok.chat_prompt([{"role": "user", "content": "hi"}])) == "[user] hi\n[assistant] "
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert chat.usage.prompt_tokens == len(tok.chat_prompt([{"role": "user", "content": "hi"}]))
        out = client.completions.create(model="tiny", prompt="hello", max_tokens=64, extra_body={"ignore_eos": True,
                                                                                               "return_token_ids": True})
        assert out.usage.completion_tokens == 64 and out.choices[0].finish_reason == "length"
        ids = out.choices[0].model_extra["token_ids"]
        stopped = client.completions.create(model="tiny", prompt="hello", max_tokens=64)
        expected = ids[:ids.index(1) + 1] if 1 in ids else ids  # greedy: stops at the first EOS, if any
        assert stopped.usage.completion_tokens == len(expected)
        assert stopped.choices[0].finish_reason == ("stop" if 1 in ids else "length")
