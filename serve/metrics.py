"""Prometheus metrics of one serving engine, through prometheus_client, under vLLM's names with a `yoda:` prefix.

    metrics = EngineMetrics()                # its own registry: several servers in one process do not clash
    metrics.observe_finished(record, now)    # TTFT, inter-token, E2E histograms of a finished request
    text = metrics.render(aengine)           # gauges read from the engine at scrape time, then exposition text

Histograms (seconds): yoda:time_to_first_token_seconds, yoda:inter_token_latency_seconds (every gap: TBT),
yoda:e2e_request_latency_seconds, yoda:request_queue_time_seconds (arrival to first prefill launch).
Counters: yoda:request_accepted_total, yoda:request_success_total{finished_reason}, yoda:request_rejected_total{reason} (queue_full and
expired are the 429s), yoda:num_preemptions_total, yoda:prompt_tokens_total, yoda:generation_tokens_total.
Gauges: yoda:num_requests_running, yoda:num_requests_waiting, yoda:kv_cache_usage_perc, yoda:kv_blocks{state},
yoda:prefix_cache_hit_rate, yoda:decode_batch_size, yoda:sm_split{lane} (SMs of the latest launch per lane),
yoda:lane_busy{lane}.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                  40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                 5.0, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                     240.0, 480.0, 960.0, 1920.0, 7680.0)
_REJECTED = {"rejected_full": "queue_full", "expired": "expired", "failed": "failed"}
_SUCCESS = {"finished": "length", "stopped": "stop", "aborted": "abort"}


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.ttft = Histogram("yoda:time_to_first_token_seconds", "Time to first token.", buckets=TTFT_BUCKETS_S,
                              registry=r)
        self.itl = Histogram("yoda:inter_token_latency_seconds", "Time between consecutive output tokens (TBT).",
                             buckets=ITL_BUCKETS_S, registry=r)
        self.e2e = Histogram("yoda:e2e_request_latency_seconds", "Arrival to last token.", buckets=REQUEST_BUCKETS_S,
                             registry=r)
        self.queue = Histogram("yoda:request_queue_time_seconds", "Arrival to the first prefill launch.",
                               buckets=REQUEST_BUCKETS_S, registry=r)
        self.accepted = Counter("yoda:request_accepted", "Requests taken into the engine's queue.", registry=r)
        self.success = Counter("yoda:request_success", "Requests answered, by finish reason.", ["finished_reason"],
                               registry=r)
        self.rejected = Counter("yoda:request_rejected", "Requests refused (queue_full, expired: 429) or failed.",
                                ["reason"], registry=r)
        self.preemptions = Counter("yoda:num_preemptions", "Recompute preemptions.", registry=r)
        self.prompt_tokens = Counter("yoda:prompt_tokens", "Prompt tokens accepted.", registry=r)
        self.generation_tokens = Counter("yoda:generation_tokens", "Output tokens sent.", registry=r)
        gauge = lambda name, help_, labels=(): Gauge(name, help_, labels, registry=r)  # noqa: E731
        self.running = gauge("yoda:num_requests_running", "Requests holding KV (prefilling or decoding).")
        self.waiting = gauge("yoda:num_requests_waiting", "Accepted requests waiting for KV admission.")
        self.kv_usage = gauge("yoda:kv_cache_usage_perc", "Share of KV blocks held by running requests (0-1).")
        self.kv_blocks = gauge("yoda:kv_blocks", "KV blocks by state.", ["state"])
        self.hit_rate = gauge("yoda:prefix_cache_hit_rate", "Prompt tokens reused / prompt tokens admitted.")
        self.decode_batch = gauge("yoda:decode_batch_size", "Requests in the decode batch.")
        self.sm_split = gauge("yoda:sm_split", "SMs the policy gave the latest launch on each lane.", ["lane"])
        self.lane_busy = gauge("yoda:lane_busy", "1 while a launch runs on the lane.", ["lane"])
        for reason in (*_SUCCESS.values(), *_REJECTED.values()):  # every series present from the start
            (self.success if reason in _SUCCESS.values() else self.rejected).labels(reason)

    def on_finish(self, outcome: str) -> None:
        """`outcome`: an AsyncEngine.counts key ("finished", "stopped", "aborted", "rejected_full", ...)."""
        if outcome in _SUCCESS:
            self.success.labels(_SUCCESS[outcome]).inc()
        elif outcome in _REJECTED:
            self.rejected.labels(_REJECTED[outcome]).inc()

    def observe_finished(self, record, now: float) -> None:
        token_at = record.token_at
        if token_at:
            self.ttft.observe(token_at[0] - record.arrival_at)
            self.e2e.observe(now - record.arrival_at)
        for a, b in zip(token_at, token_at[1:]):
            self.itl.observe(b - a)
        if record.num_preemptions:
            self.preemptions.inc(record.num_preemptions)

    def render(self, aengine) -> bytes:
        """Refresh the gauges from the engine and return the exposition text."""
        kv = aengine.sched.kv
        self.running.set(aengine.num_running)
        self.waiting.set(aengine.num_queued)
        self.kv_usage.set(kv.num_used_blocks / kv.num_blocks)
        for state, value in (("used", kv.num_used_blocks), ("cached", kv.num_cached_blocks), ("total", kv.num_blocks)):
            self.kv_blocks.labels(state).set(value)
        self.hit_rate.set(aengine.prefix_hit_rate())
        self.decode_batch.set(len(aengine.sched.decoding))
        for lane, sms in aengine.lane_sms.items():
            self.sm_split.labels(lane).set(sms)
            self.lane_busy.labels(lane).set(int(lane in aengine.busy_lanes))
        return generate_latest(self.registry)
