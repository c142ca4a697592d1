"""The executor's real-time driver (executor/runner.py) on the CPU with the tiny model: a small multi-turn
trace served under yoda and chunked prefill; every request ends with exactly its output tokens, and
the tokens equal a plain greedy decode of the prompt without prefix reuse or preemption."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from executor.engine import Engine
from executor.kv_pool import KVPool
from executor.partitions import PartitionManager
from executor.prompts import prompt_for
from executor.runner import Backend, RunConfig, clamp_lengths, open_backend, serve
from traces.synthetic import HashIds, LengthDist, SYNTHETIC_HASH_BLOCK_SIZE
from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.kv_cache import KVCache
from yoda.request import Request

BUNDLED = Path(__file__).resolve().parents[2] / "calibration" / "profiles" / "cpu-tiny"


def chat_trace(num_sessions: int = 5, turns: int = 4, seed: int = 0) -> list[Request]:
    """Multi-turn chat with short messages: turn k's prompt = turn k-1's prompt + output + a message,
    so later turns reuse earlier prompts' KV blocks (sharegpt_like with CPU-sized lengths)."""
    import numpy as np

    gen, ids, out = np.random.default_rng(seed), HashIds(), []
    message, output = LengthDist(60, 20, 150), LengthDist(6, 2, 12)
    for s in range(num_sessions):
        at, prompt_len = 0.05 * s, message.sample(gen)
        hashes = ids.chain(prompt_len)
        for turn in range(1, turns + 1):
            out_len = output.sample(gen)
            out.append(Request(len(out), at, prompt_len, out_len, f"s{s}", turn, hashes, SYNTHETIC_HASH_BLOCK_SIZE))
            at += 0.03
            grown = prompt_len + out_len + message.sample(gen)
            hashes, prompt_len = ids.chain(grown, hashes, prompt_len), grown
    return sorted(out, key=lambda r: (r.arrival_at, r.request_id))


@pytest.fixture(scope="module")
def backend() -> Backend:
    return open_backend("tiny")


def greedy_reference(backend: Backend, request: Request, seed: int = 0) -> list[int]:
    """The request alone in a fresh engine: whole prompt in one launch, then decode steps."""
    model, bs = backend.model, 16
    prompt = prompt_for(request, model.config.vocab_size, seed)
    cache = KVCache(-(-(len(prompt) + request.output_len) // bs) + 1, bs)
    engine = Engine(model, KVPool.for_model(model.config, cache.num_blocks, bs, model.dtype, "cpu"), cache, "cpu")
    engine.add_request(0, prompt)
    cache.allocate(0, len(prompt))
    n = model.num_layers
    launches = [Launch(PREFILL, 132, prefill=(PrefillChunk(0, 0, len(prompt)),), layer_end=n, num_layers=n)]
    for step in range(request.output_len - 1):
        launches.append(Launch(DECODE, 132, decode_ids=(0,)))
    for i, launch in enumerate(launches):
        if i:
            cache.extend(0, len(prompt) + i)
        engine.start(launch, 0.0)
        engine.poll(1.0)
    return engine.output_tokens(0)


def check_served(result, requests: list[Request], backend: Backend) -> None:
    assert result.metrics["completed"] == len(requests) and result.metrics["rejected"] == 0
    by_id = {r.request_id: r for r in requests}
    for record in result.records:
        assert len(record.token_at) == by_id[record.request_id].output_len
        assert len(result.output_tokens[record.request_id]) == by_id[record.request_id].output_len
    for request in requests:  # prefix reuse and preemption do not change greedy tokens
        assert result.output_tokens[request.request_id] == greedy_reference(backend, request), request.request_id


@pytest.mark.parametrize("policy", ["yoda", "chunked"])
def test_serves_multi_turn_trace_with_exact_tokens(backend: Backend, policy: str) -> None:
    from calibration.fit import load_estimator

    requests = chat_trace()
    cfg = RunConfig(policy=policy, clock="cpu", check_every=1,
                    policy_options={"token_budget": 64} if policy == "chunked" else {})
    estimator = load_estimator(BUNDLED) if policy == "yoda" else None
    result = serve(requests, cfg, backend, estimator, "bundled profile")
    check_served(result, requests, backend)
    assert result.metrics["kv_reuse_fraction"] > 0.3  # later turns hit the cache
    assert len(result.timelines[0].at) >= sum(r.output_len for r in requests) // 8
    assert all(d > 0 for d in result.timelines[0].duration_s)


def test_preempted_requests_restart_and_finish(backend: Backend) -> None:
    requests = [Request(i, 0.0, 40 + 8 * i, 24) for i in range(6)]
    cfg = RunConfig(policy="chunked", clock="cpu", kv_blocks=14, check_every=1, warmup=False)
    result = serve(requests, cfg, backend)
    assert result.metrics["num_preemptions"] > 0
    check_served(result, requests, backend)


def test_wall_clock_releases_arrivals_on_time(backend: Backend) -> None:
    requests = [Request(0, 0.0, 30, 3), Request(1, 0.15, 30, 3)]
    result = serve(requests, RunConfig(policy="prefill_first"), backend)
    second = next(r for r in result.records if r.request_id == 1)
    assert second.token_at[0] >= 0.15 and result.sim_end_s >= 0.15


def test_bad_configs_and_too_long_requests(backend: Backend) -> None:
    with pytest.raises(ValueError, match="one GPU"):
        RunConfig(policy="disagg")
    with pytest.raises(ValueError, match="clock"):
        RunConfig(device="cuda", clock="cpu")
    with pytest.raises(ValueError, match="max-prompt-len"):
        serve([Request(0, 0.0, 4000, 200)], RunConfig(policy="chunked", clock="cpu"), backend)


def test_clamp_keeps_shared_prefixes() -> None:
    requests = clamp_lengths(chat_trace(2, 3), max_prompt_len=64, max_output_len=2)
    assert all(r.prompt_len <= 64 and r.output_len <= 2 for r in requests)
    assert all(len(r.block_hashes) == -(-r.prompt_len // r.hash_block_size) for r in requests)


def test_scheduler_partition_sizes_map_to_streams() -> None:
    streams = {PREFILL: {s: object() for s in (16, 32, 112, 132)}, DECODE: {s: object() for s in (20, 36, 116, 132)}}
    parts = PartitionManager(torch.device("cpu"), 132, [], streams, "", [])
    backend = Backend(model=None, partitions=parts, device=torch.device("cuda"), model_name="x")
    assert backend.stream_sms(DECODE, 16) == 20 and backend.stream_sms(DECODE, 112) == 116
    assert backend.stream_sms(DECODE, 132) == 132 and backend.stream_sms(PREFILL, 112) == 112
    assert backend.stream_sms(PREFILL, 66) == 32 and backend.stream_sms(DECODE, 66) == 116


def test_run_cli_json_and_files(tmp_path: Path) -> None:
    from yoda.cli import app

    trace = tmp_path / "trace.jsonl"
    from traces import write_mooncake
    write_mooncake(chat_trace(2, 2), trace)
    out = tmp_path / "run"
    args = ["run", "--backend", "executor", "--model", "tiny", "--device", "cpu", "--trace", str(trace),
            "--policy", "chunked", "--clock", "cpu", "--max-output-len", "3", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["completed"] == 4 and res["backend"] == "executor" and res["config"]["policy"] == "chunked"
    for name in ("results.json", "requests.parquet", "timeline.parquet", "latency_cdf.png", "timeline.png"):
        assert (out / name).stat().st_size > 0
    bad = CliRunner().invoke(app, ["run", "--trace", str(trace), "--device", "tpu"])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error:") and bad.output.count("\n") == 1
