"""The request parameters clients send, through the `openai` client, on a tiny transformers checkpoint whose
forward pass is the reference: seed, stop, logprobs, n, echo, top-k/p, min-p, continuous usage, tokenize."""
import json

import httpx
import openai
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PROMPT = list(range(3, 40))  # 37 tokens: two full 16-token blocks


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                                      tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.5 * torch.randn_like(p))  # peaked enough that greedy text is not one repeated token
    path = tmp_path_factory.mktemp("tiny_llama")
    hf.save_pretrained(path)
    return hf, str(path)


@pytest.fixture(scope="module")
def served(serve, ckpt):
    _, path = ckpt
    with serve.server_in_thread(policy="chunked", model=path, weights=path, served_name="tiny") as (url, server):
        yield url, server, openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def _ids(choice) -> list[int]:
    return choice.model_extra["token_ids"]


def _complete(client, **kw):
    return client.completions.create(model="tiny", prompt=PROMPT, extra_body={"return_token_ids": True,
                                                                              **kw.pop("extra_body", {})}, **kw)


def test_seed_twice_gives_the_same_text(served):
    _, _, client = served
    a, b = (_complete(client, max_tokens=24, temperature=1.0, seed=11) for _ in range(2))
    others = {tuple(_ids(_complete(client, max_tokens=24, temperature=1.0, seed=s).choices[0])) for s in range(12, 16)}
    assert _ids(a.choices[0]) == _ids(b.choices[0]) and len(others | {tuple(_ids(a.choices[0]))}) > 1


def test_stop_strings_and_token_ids_truncate(served):
    _, server, client = served
    full = _complete(client, max_tokens=32, extra_body={"ignore_eos": True}).choices[0]
    ids = _ids(full)
    stop_text = server.tok.decode(ids[10:12])
    cut = full.text.index(stop_text)
    stopped = _complete(client, max_tokens=32, stop=[stop_text]).choices[0]
    assert stopped.text == full.text[:cut] and stopped.finish_reason == "stop"
    kept = _complete(client, max_tokens=32, stop=stop_text, extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == full.text[:cut + len(stop_text)]
    streamed = "".join(c.choices[0].text for c in _complete(client, max_tokens=32, stop=[stop_text], stream=True)
                       if c.choices)
    assert streamed == full.text[:cut]
    by_id = _complete(client, max_tokens=32, extra_body={"stop_token_ids": [ids[5]]}).choices[0]
    assert _ids(by_id) == ids[:ids.index(ids[5]) + 1] and by_id.finish_reason == "stop"
    # min_tokens: the stop id cannot be drawn before 4 output tokens (vLLM), so greedy takes the next best
    late = _complete(client, max_tokens=32, extra_body={"stop_token_ids": [ids[0]], "min_tokens": 4}).choices[0]
    assert len(_ids(late)) >= 4 and ids[0] not in _ids(late)[:4] and _ids(late)[0] != ids[0]
    assert late.finish_reason == "length" or _ids(late)[-1] == ids[0]


def test_logprobs_sum_to_the_reference_log_likelihood(served, ckpt):
    hf, _ = ckpt
    _, _, client = served
    out = _complete(client, max_tokens=12, logprobs=3, temperature=1.0, seed=5).choices[0]
    ids, lp = _ids(out), out.logprobs
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([PROMPT + ids])).logits[0].float(), dim=-1)
    ref_lps = [ref[len(PROMPT) - 1 + i, t].item() for i, t in enumerate(ids)]
    assert len(lp.token_logprobs) == len(ids) == 12 and all(1 <= len(t) <= 3 for t in lp.top_logprobs)  # keyed by text
    assert sum(lp.token_logprobs) == pytest.approx(sum(ref_lps), abs=1e-3)
    assert all(max(t.values()) >= c - 1e-6 for t, c in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)  # greedy: the top token


def test_n_choices_share_the_prompt_kv(served):
    _, server, client = served
    kv = server.aengine.sched.kv
    prompt = [7] + list(range(100, 147))  # 48 tokens: 3 full blocks; fresh, so only its own choices reuse it
    before = kv.num_hit_tokens
    out = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, n=3, temperature=1.0, seed=1)
    assert [c.index for c in out.choices] == [0, 1, 2] and out.usage.completion_tokens == 24
    assert len({c.text for c in out.choices}) > 1  # seeds 1, 2, 3
    assert kv.num_hit_tokens - before == 2 * 48  # choices 1 and 2 reuse the 3 blocks choice 0 prefilled
    assert out.usage.prompt_tokens == 48 and out.usage.prompt_tokens_details.cached_tokens >= 2 * 32
    streamed = client.completions.create(model="tiny", prompt=prompt, max_tokens=4, n=2, stream=True)
    finished = [c.choices[0].index for c in streamed if c.choices and c.choices[0].finish_reason]
    assert sorted(finished) == [0, 1]


def test_filters_that_leave_one_token_are_greedy_and_echo_prepends(served):
    _, _, client = served
    greedy = _ids(_complete(client, max_tokens=10).choices[0])
    for kw in ({"top_k": 1}, {"min_p": 1.0}, {"top_p": 1e-6}):
        out = _complete(client, max_tokens=10, temperature=1.5, extra_body=kw)
        assert _ids(out.choices[0]) == greedy, kw
    plain = client.completions.create(model="tiny", prompt="abc", max_tokens=3)
    echo = client.completions.create(model="tiny", prompt="abc", max_tokens=3, echo=True)
    assert echo.choices[0].text == "abc" + plain.choices[0].text
    penalised = _complete(client, max_tokens=10, frequency_penalty=2.0, presence_penalty=2.0,
                          extra_body={"repetition_penalty": 1.5})
    assert len(_ids(penalised.choices[0])) == 10


def test_vllm_client_chat_stream_with_usage_in_every_chunk(served):
    url, _, _ = served
    body = {"model": "tiny", "messages": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "hello "},
                                                                       {"type": "text", "text": "there"}]}],
            "max_tokens": 6, "max_completion_tokens": 6, "stream": True, "temperature": 0.0, "top_p": 1.0,
            "top_k": -1, "min_p": 0.0, "seed": 0, "n": 1, "ignore_eos": True, "min_tokens": 0, "stop": [],
            "stop_token_ids": [], "skip_special_tokens": True, "spaces_between_special_tokens": True,
            "include_stop_str_in_output": False, "repetition_penalty": 1.0, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "logprobs": False, "best_of": 1, "use_beam_search": False,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert all("usage" in c for c in chunks) and chunks[-1]["usage"]["completion_tokens"] == 6
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert counts == sorted(counts) and counts[-1] == 6 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_tokenize_detokenize_version(served):
    url, server, _ = served
    tok = httpx.post(f"{url}/tokenize", json={"model": "tiny", "prompt": "héllo"}).json()
    assert tok["tokens"] == server.tok.encode("héllo") and tok["count"] == len(tok["tokens"])
    assert httpx.post(f"{url}/detokenize", json={"tokens": tok["tokens"]}).json()["prompt"] == "héllo"
    assert httpx.post(f"{url}/detokenize", json={"tokens": [10**6]}).status_code == 400
    assert httpx.get(f"{url}/version").json()["version"]


def test_api_key_and_cors(serve):
    from serve.app import AppOptions
    with serve.server_in_thread(policy="chunked", app=AppOptions(api_key="sk-test",
                                                                 allowed_origins=("http://ui.example",))) as (url, _):
        assert httpx.get(f"{url}/health").status_code == 200
        denied = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert denied.status_code == 401 and denied.json()["error"]["type"] == "authentication_error"
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        assert client.completions.create(model="tiny", prompt="hi", max_tokens=2).usage.completion_tokens >= 1
        preflight = httpx.options(f"{url}/v1/completions", headers={
            "Origin": "http://ui.example", "Access-Control-Request-Method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
        other = httpx.options(f"{url}/v1/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
