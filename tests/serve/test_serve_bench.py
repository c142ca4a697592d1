"""`yoda bench` against `yoda serve` on the CPU writes the results `yoda simulate` writes, with request and
token counts matching the trace, in open-loop and closed-loop session modes."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from yoda.cli import app
from yoda.metrics import compute_metrics
from yoda.request import SLO


@pytest.fixture(scope="module")
def url(serve):
    with serve.server_in_thread(policy="yoda") as (base, _):
        yield base


def _mooncake(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _bench(*args: str) -> dict:
    result = CliRunner().invoke(app, ["bench", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_open_loop_matches_trace_counts(url, tmp_path):
    # every prompt starts inside the shared 512-token hash block 0: shorter prompts are prefixes of longer ones
    rows = [{"timestamp": 40 * i, "input_length": 20 + 31 * i, "output_length": 2 + i % 7, "hash_ids": [0]}
            for i in range(16)]
    rows[5].update(input_length=700, hash_ids=[0, 99])
    trace = _mooncake(tmp_path / "trace.jsonl", rows)
    out = tmp_path / "run"
    res = _bench("--endpoint", url, "--trace", trace, "--rate", "40", "--out", str(out))
    assert res["num_requests"] == res["completed"] == 16 and res["rejected"] == 0
    assert res["total_output_tokens"] == sum(r["output_length"] for r in rows)
    assert res["total_input_tokens"] == sum(r["input_length"] for r in rows)
    assert res["mode"] == "open" and res["model"] == "tiny" and res["policy"] == "real"
    assert set(compute_metrics([], SLO())) <= set(res)  # every field `yoda simulate` reports
    assert res["p50_ttft_ms"] > 0 and res["p99_tbt_ms"] > 0 and res["kv_reuse_fraction"] > 0
    written = json.loads((out / "results.json").read_text())
    assert written["total_output_tokens"] == res["total_output_tokens"]
    frame = pd.read_parquet(out / "requests.parquet")
    assert list(frame["num_tokens"]) == [r["output_length"] for r in rows]
    assert (out / "latency_cdf.png").exists()


def test_sessions_closed_loop_reuses_prefixes(url, tmp_path):
    rows, think_s = [], 0.05
    for s in range(3):
        hashes = []
        for turn in range(1, 4):
            hashes = hashes + [1000 * s + 10 * turn + k for k in range(3)]  # each turn extends the last
            rows.append({"arrival_time_s": 0.01 * s + think_s * (turn - 1), "session_id": f"s{s}", "turn": turn,
                         "prompt_tokens": 16 * len(hashes), "output_tokens": 3, "block_size": 16, "hash_ids": hashes})
    trace = _mooncake(tmp_path / "agent.jsonl", sorted(rows, key=lambda r: r["arrival_time_s"]))
    res = _bench("--endpoint", url, "--trace", trace, "--format", "agent", "--mode", "sessions", "--out",
                 str(tmp_path / "run"))
    assert res["num_requests"] == res["completed"] == 9 and res["total_output_tokens"] == 27
    assert res["kv_reuse_fraction"] > 0.4  # later turns hit their session's earlier blocks
    frame = pd.read_parquet(tmp_path / "run" / "requests.parquet").sort_values(["session_id", "arrival_at"])
    for _, turns in frame.groupby("session_id"):  # closed loop: a turn starts after the previous one ends
        starts, ends = turns["arrival_at"].to_numpy(), turns["finished_at"].to_numpy()
        assert (starts[1:] >= ends[:-1] + think_s - 1e-3).all()


def test_requests_the_server_refuses_become_rejected_records(url, tmp_path):
    rows = [{"timestamp": 0, "input_length": 30, "output_length": 3, "hash_ids": [1]},
            {"timestamp": 10, "input_length": 5000, "output_length": 3, "hash_ids": list(range(2, 12))}]  # > context
    res = _bench("--endpoint", url, "--trace", _mooncake(tmp_path / "t.jsonl", rows))
    assert (res["num_requests"], res["completed"], res["rejected"]) == (2, 1, 1)
    assert res["total_output_tokens"] == 3
