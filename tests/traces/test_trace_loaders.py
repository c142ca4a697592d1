from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from trace_helpers import AZURE_CONV, MINISWE, MOONCAKE_CONV, MOONCAKE_SYNTH, REPOAGENT, load_shared, shared_path

from traces import SAMPLE_DIR, TraceError, detect_format, load_trace


@pytest.mark.parametrize("name, fmt, count, hash_block_size", [
    (MOONCAKE_CONV, "mooncake", 12031, 512),
    (MOONCAKE_SYNTH, "mooncake", 3993, 512),
    (AZURE_CONV, "azure", 19366, 512),
    (MINISWE, "agent", 402, 16),
    (REPOAGENT, "agent", 186, 16),
])
def test_shared_traces_load(name: str, fmt: str, count: int, hash_block_size: int) -> None:
    trace = load_shared(name)
    reqs = trace.requests
    assert (trace.format, len(reqs), trace.num_skipped, trace.num_clamped) == (fmt, count, 0, 0)
    assert [r.request_id for r in reqs] == list(range(count))
    assert all(a.arrival_at <= b.arrival_at for a, b in zip(reqs, reqs[1:]))
    assert reqs[0].arrival_at == 0.0
    assert {r.hash_block_size for r in reqs} == {hash_block_size}


def test_mooncake_fields() -> None:
    reqs = load_shared(MOONCAKE_CONV).requests
    first = reqs[0]
    assert (first.prompt_len, first.output_len, first.block_hashes[:3]) == (6758, 500, (0, 1, 2))
    assert len(first.block_hashes) == -(-6758 // 512)
    assert reqs[-1].arrival_at == pytest.approx(3536.999)
    assert all(r.session_id is None for r in reqs)


def test_azure_times_are_seconds_from_first() -> None:
    reqs = load_shared(AZURE_CONV).requests
    assert reqs[1].arrival_at == pytest.approx(50.9951690 - 46.6805900, abs=2e-6)  # 7 digits in, microseconds kept
    assert (reqs[0].prompt_len, reqs[0].output_len) == (374, 44)
    assert all(not r.block_hashes for r in reqs)


def test_agent_sessions_and_think_times() -> None:
    reqs = load_shared(MINISWE).requests
    assert len({r.session_id for r in reqs}) == 20
    last_at: dict[str, float] = {}
    for r in reqs:
        expected = r.arrival_at - last_at[r.session_id] if r.session_id in last_at else 0.0
        assert r.think_time_s == pytest.approx(expected)
        assert r.turn == 1 or r.session_id in last_at
        last_at[r.session_id] = r.arrival_at
    assert reqs[1].think_time_s == pytest.approx(2.58678)


def test_bundled_samples_load() -> None:
    mooncake = load_trace(SAMPLE_DIR / "mooncake_sample.jsonl")
    agent = load_trace(SAMPLE_DIR / "miniswe_sample.jsonl")
    assert (mooncake.format, len(mooncake.requests)) == ("mooncake", 600)
    assert (agent.format, len(agent.requests)) == ("agent", 402)


def test_detect_format_by_content(tmp_path: Path) -> None:
    mooncake = tmp_path / "a.txt"
    mooncake.write_text('\n{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": [7]}\n')
    agent = tmp_path / "b.log"
    agent.write_text(shared_path(MINISWE).read_text().splitlines()[0] + "\n")
    azure = tmp_path / "c.data"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    assert [detect_format(p) for p in (mooncake, agent, azure)] == ["mooncake", "agent", "azure"]
    unknown = tmp_path / "d.jsonl"
    unknown.write_text('{"foo": 1}\n')
    with pytest.raises(TraceError, match="cannot tell the trace format"):
        load_trace(unknown)
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(mooncake, format="sharegpt")


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "nope.jsonl", format="mooncake")


def _mooncake_line(timestamp: object = 0, input_length: object = 600, output_length: object = 5,
                   hash_ids: object = (1, 2), drop: str | None = None) -> str:
    obj = {"timestamp": timestamp, "input_length": input_length, "output_length": output_length,
           "hash_ids": list(hash_ids) if isinstance(hash_ids, tuple) else hash_ids}
    obj.pop(drop, None)
    return json.dumps(obj)


def test_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [_mooncake_line(timestamp=t) for t in range(6)] + [_mooncake_line(6, drop="input_length")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert str(err.value) == f"{path}:7: missing field 'input_length'"
    assert isinstance(err.value, ValueError)


MOONCAKE_BAD = [
    ('{"timestamp": 0, "input_length": 600,', "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_mooncake_line(input_length=-3), "input_length must be >= 1"),
    (_mooncake_line(input_length=0), "input_length must be >= 1"),
    (_mooncake_line(output_length=-1), "output_length must be >= 0"),
    (_mooncake_line(input_length=12.5), "input_length must be an integer"),
    (_mooncake_line(input_length="600"), "input_length must be an integer"),
    (_mooncake_line(output_length=True), "output_length must be an integer"),
    (_mooncake_line(timestamp=-5), "timestamp must be >= 0"),
    (_mooncake_line(hash_ids=(1, 2, 3)), "hash_ids has 3 blocks"),
    (_mooncake_line(hash_ids="1,2"), "hash_ids must be a list of integers"),
    (_mooncake_line(timestamp=5), "before the previous line's 10 ms"),  # after a line at 10 ms
]


@pytest.mark.parametrize("bad_line, message", MOONCAKE_BAD)
def test_mooncake_bad_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([_mooncake_line(0), "", _mooncake_line(10), bad_line, _mooncake_line(20)]))
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:4: .*{message}"):
        load_trace(path)
    trace = load_trace(path, skip_bad=True)
    assert trace.num_skipped == 1
    assert [r.arrival_at for r in trace.requests] == [0.0, 0.01, 0.02]


def test_skip_bad_counts_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(line for line, _ in MOONCAKE_BAD[:-1]) + "\n" + _mooncake_line(3) + "\n")
    trace = load_trace(path, format="mooncake", skip_bad=True)
    assert (trace.num_skipped, len(trace.requests)) == (len(MOONCAKE_BAD) - 1, 1)


AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


@pytest.mark.parametrize("bad_row, message", [
    ("2023-11-16 18:15:47.0,12", "expected 3 columns"),
    ("yesterday,12,4", "bad TIMESTAMP"),
    ("2023-11-16 18:15:47.0,-12,4", "ContextTokens must be >= 1"),
    ("2023-11-16 18:15:47.0,0,4", "ContextTokens must be >= 1"),
    ("2023-11-16 18:15:47.0,12,4.5", "GeneratedTokens must be an integer"),
    ("2023-11-16 18:15:47.0,twelve,4", "ContextTokens must be an integer"),
])
def test_azure_bad_row(tmp_path: Path, bad_row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"{AZURE_HEADER}\n2023-11-16 18:15:46.5,10,3\n{bad_row}\n2023-11-16 18:15:48.5,10,3\n")
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:3: {message}"):
        load_trace(path)
    trace = load_trace(path, skip_bad=True)
    assert trace.num_skipped == 1
    assert [r.arrival_at for r in trace.requests] == [0.0, 2.0]


def test_azure_zero_output_is_clamped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "zero.csv"
    path.write_text(f"{AZURE_HEADER}\n2023-11-16 18:15:46.5,10,0\n2023-11-16 18:15:46.0,20,3\n")
    trace = load_trace(path)
    assert trace.num_clamped == 1
    assert [(r.arrival_at, r.prompt_len, r.output_len) for r in trace.requests] == [(0.0, 20, 3), (0.5, 10, 1)]


def test_azure_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("TIMESTAMP,Tokens\n2023-11-16 18:15:46.5,10\n")
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:1: header lacks column"):
        load_trace(path, skip_bad=True)


@pytest.mark.parametrize("field, value, message", [
    ("session_id", None, "session_id must be a string"),
    ("turn", 0, "turn must be >= 1"),
    ("block_size", "16", "block_size must be an integer"),
    ("prompt_tokens", 1.5, "prompt_tokens must be an integer"),
    ("arrival_time_s", float("nan"), "arrival_time_s must be a finite number"),
])
def test_agent_bad_line(tmp_path: Path, field: str, value: object, message: str) -> None:
    good = json.loads(shared_path(MINISWE).read_text().splitlines()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, field: value}) + "\n")
    with pytest.raises(TraceError, match=f"^{re.escape(str(path))}:2: {message}"):
        load_trace(path, format="agent")
    assert load_trace(path, format="agent", skip_bad=True).num_skipped == 1
