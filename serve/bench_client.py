"""Replay a trace against any OpenAI-compatible endpoint and report it exactly as `yoda simulate` does.

    yoda bench --endpoint http://localhost:8000 --trace traces/data/mooncake_sample.jsonl --rate 2 --out runs/real

Each trace request becomes a streaming /v1/completions call whose prompt is token ids: synthetic tokens of
the trace's prompt length from `executor.prompts` (shared hash blocks give shared tokens, so prefix reuse
is real), `max_tokens` = the trace's output length and `ignore_eos` = true. The client clock starts at 0
when the replay starts; TTFT and every token gap are measured from the stream (a chunk's arrival time
for each token it carries, counted from `token_ids` when the server returns them, else one per chunk
with text). Requests that get an HTTP error are records with `rejected_reason`.
Modes: `open` sends at the (re-timed) trace times; `sessions` is closed loop: a session's next turn is
sent at the previous turn's finish + its think time. Results go through yoda.metrics.compute_metrics and
sim.outputs, so real and simulated runs compare field by field.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx

from executor.prompts import prompt_for
from yoda.metrics import compute_metrics
from yoda.request import SLO, Request, RequestRecord

MODES = ("open", "sessions")


@dataclass(frozen=True)
class BenchConfig:
    endpoint: str
    trace: str
    format: str | None = None
    rate: float | None = None
    max_requests: int | None = None
    mode: str = "open"
    slo: SLO = field(default_factory=SLO)
    model: str | None = None  # None: the server's first model
    vocab_size: int | None = None  # None: from the server's /v1/models
    seed: int = 0
    timeout_s: float = 600.0
    token_ids: bool = True  # send return_token_ids (yoda, vLLM) to count tokens exactly
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"--endpoint must be an http(s) URL, got {self.endpoint!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout-s must be > 0, got {self.timeout_s}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"--vocab-size must be >= 1, got {self.vocab_size}")


@dataclass
class BenchResult:
    """Shaped like sim.run.SimResult so sim.outputs writes it; `sim_end_s` is the replay's duration."""

    config: BenchConfig
    records: list[RequestRecord]
    metrics: dict
    timelines: list = field(default_factory=list)
    wall_s: float = 0.0
    sim_end_s: float = 0.0


class _Replay:
    def __init__(self, cfg: BenchConfig, client: httpx.AsyncClient, model: str, vocab_size: int) -> None:
        self.cfg, self.client, self.model, self.vocab_size = cfg, client, model, vocab_size
        self.t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def sleep_until(self, at: float) -> None:
        delay = at - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def open_loop(self, requests: Sequence[Request]) -> list[RequestRecord]:
        async def at(r: Request) -> RequestRecord:
            await self.sleep_until(r.arrival_at)
            return await self.send(r)
        return list(await asyncio.gather(*(at(r) for r in requests)))

    async def sessions(self, requests: Sequence[Request]) -> list[RequestRecord]:
        groups: dict[object, list[Request]] = defaultdict(list)
        for r in requests:
            groups[r.session_id if r.session_id is not None else ("request", r.request_id)].append(r)

        async def session(turns: list[Request]) -> list[RequestRecord]:
            out: list[RequestRecord] = []
            for r in sorted(turns, key=lambda r: (r.turn, r.arrival_at)):
                # a later turn's think_time_s is its gap after the previous turn finished
                await self.sleep_until(out[-1].finished_at + r.think_time_s if out else r.arrival_at)
                out.append(await self.send(r))
            return out
        results = await asyncio.gather(*(session(turns) for turns in groups.values()))
        return sorted((rec for recs in results for rec in recs), key=lambda rec: rec.request_id)

    async def send(self, r: Request) -> RequestRecord:
        prompt = prompt_for(r, self.vocab_size, self.cfg.seed)
        record = RequestRecord.for_request(r)
        record.arrival_at = self.now()
        body = {"model": self.model, "prompt": prompt, "max_tokens": r.output_len, "ignore_eos": True,
                "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
        if self.cfg.token_ids:
            body["return_token_ids"] = True
        try:
            async with self.client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    record.rejected_reason = f"http {resp.status_code}: {_message(text)}"
                else:
                    await self._read_stream(resp, record)
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            record.rejected_reason = f"{type(e).__name__}: {e}"[:300]
        record.finished_at = self.now()
        return record

    async def _read_stream(self, resp: httpx.Response, record: RequestRecord) -> None:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            at = self.now()
            if "error" in event:
                record.rejected_reason = f"stream error: {_message(json.dumps(event))}"
                return
            for choice in event.get("choices") or ():
                text = choice.get("text") or (choice.get("delta") or {}).get("content")
                n = len(choice["token_ids"]) if choice.get("token_ids") is not None else int(bool(text))
                record.token_at.extend([at] * n)
            usage = event.get("usage") or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached:
                record.reused_len = int(cached)
        record.rejected_reason = "stream ended without [DONE]"


def _message(text: str) -> str:
    try:
        err = json.loads(text)
        return str(err.get("error", {}).get("message") or err.get("detail") or text)[:300]
    except (json.JSONDecodeError, AttributeError):
        return text[:300]


async def _model_info(client: httpx.AsyncClient, cfg: BenchConfig) -> tuple[str, int]:
    if cfg.model is not None and cfg.vocab_size is not None:
        return cfg.model, cfg.vocab_size
    try:
        resp = await client.get("/v1/models")
        resp.raise_for_status()
        models = resp.json().get("data") or []
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot list models at {cfg.endpoint}/v1/models ({type(e).__name__}: {e}); "
                         "give --model and --vocab-size") from None
    chosen = next((m for m in models if cfg.model in (None, m.get("id"))), None)
    if chosen is None:
        raise ValueError(f"{cfg.endpoint} serves no model {cfg.model!r}; it lists {[m.get('id') for m in models]}")
    vocab = cfg.vocab_size or chosen.get("vocab_size")
    if not vocab:
        raise ValueError(f"{cfg.endpoint} does not report vocab_size: give --vocab-size")
    return chosen["id"], int(vocab)


async def replay(cfg: BenchConfig, requests: Sequence[Request]) -> tuple[list[RequestRecord], str, float]:
    """Records of every request (client clock), the model name used and the replay's duration."""
    limits = httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_connections)
    async with httpx.AsyncClient(base_url=cfg.endpoint, timeout=cfg.timeout_s, limits=limits) as client:
        model, vocab = await _model_info(client, cfg)
        run = _Replay(cfg, client, model, vocab)
        records = await (run.open_loop(requests) if cfg.mode == "open" else run.sessions(requests))
        return records, model, run.now()


def run_bench(cfg: BenchConfig, out: str | Path | None = None,
              command: str = "") -> tuple[BenchResult, dict, dict[str, Path]]:
    """Load and re-time the trace, replay it, compute metrics; write results into `out` when given."""
    from dataclasses import replace

    from sim.outputs import results_dict, write_results
    from sim.workloads import load_workload

    requests, desc = load_workload(cfg.trace, cfg.format, cfg.rate, None, "original", 1.0, cfg.seed, cfg.max_requests)
    started = time.perf_counter()
    records, model, duration_s = asyncio.run(replay(cfg, requests))
    metrics = compute_metrics(records, cfg.slo)
    metrics.update(policy="real", endpoint=cfg.endpoint, model=model, mode=cfg.mode)
    result = BenchResult(replace(cfg, model=model), records, metrics, [], time.perf_counter() - started, duration_s)
    extra = {"workload": desc, "command": command}
    res = results_dict(result, extra)
    paths = write_results(out, result, extra) if out is not None else {}
    return result, res, paths
