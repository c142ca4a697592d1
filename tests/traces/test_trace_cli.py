from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from traces import SAMPLE_DIR
from traces.cli import trace_app

RUNNER = CliRunner()
SAMPLE = str(SAMPLE_DIR / "mooncake_sample.jsonl")


def test_stats_table() -> None:
    result = RUNNER.invoke(trace_app, ["stats", SAMPLE, "--cache-blocks", "2000"])
    assert result.exit_code == 0, result.output
    for text in ("requests", "600", "prompt len", "reusable", "LRU hit fraction (2,000 blocks)"):
        assert text in result.stdout


def test_stats_json_is_one_object() -> None:
    result = RUNNER.invoke(trace_app, ["stats", str(SAMPLE_DIR / "miniswe_sample.jsonl"), "--json",
                                       "--format", "agent"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    summary = (stats["requests"], stats["format"], stats["sessions"], stats["lru_hit_fraction"])
    assert summary == (402, "agent", 20, None)
    assert result.stdout.count("\n") == 1


def _assert_clean_error(args: list[str], fragment: str) -> None:
    result = RUNNER.invoke(trace_app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and fragment in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert isinstance(result.exception, SystemExit)


def test_missing_file(tmp_path: Path) -> None:
    _assert_clean_error(["stats", str(tmp_path / "nope.jsonl")], "no such file")


def test_bad_trace(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": []}\n{"timestamp": 1}\n')
    _assert_clean_error(["stats", str(path), "--json"], "bad.jsonl:2: missing field 'input_length'")
    result = RUNNER.invoke(trace_app, ["stats", str(path), "--json", "--skip-bad"])
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped_lines"] == 1


def test_bad_options() -> None:
    _assert_clean_error(["stats", SAMPLE, "--format", "sharegpt"], "unknown format")
    _assert_clean_error(["stats", SAMPLE, "--cache-blocks", "0"], "cache_blocks must be >= 1")
    _assert_clean_error(["stats", SAMPLE, "--format", "azure"], "header lacks column")
