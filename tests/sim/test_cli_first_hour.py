"""A new user's first hour: refusals are one line naming the fix (exit 2, no traceback), bugs are one line
and a traceback file, guards on mismatched profiles and too-long prompts, sweep --json, goodput's verdict."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sim.guards import fit_context, resolve_traces
from sim.summary import goodput_verdict, miss_reason
from traces import SAMPLE_DIR
from yoda.request import Request

from yoda.cli import app as APP

RUNNER = CliRunner()
MOONCAKE = str(SAMPLE_DIR / "mooncake_sample.jsonl")
CPU_TINY = str(Path(__file__).resolve().parents[2] / "calibration" / "profiles" / "cpu-tiny")


def _refused(args: list[str], *needles: str) -> str:
    """The command exits 2 with exactly one `error:` line on stderr that names every needle."""
    result = RUNNER.invoke(APP, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [["run"], ["calibrate", "--out", "x"], ["validate", "--profile", CPU_TINY]])
def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if not installed
    _refused(args, "torch", "pip install 'yoda-serve[cpu]'")


def test_profile_for_another_gpu_and_model_is_refused_or_forced() -> None:
    _refused(["simulate", "--latency", CPU_TINY, "--max-requests", "10"], "--force", "h100", "llama3-8b")
    result = RUNNER.invoke(APP, ["simulate", "--latency", CPU_TINY, "--model", "tiny", "--force", "--truncate",
                                 "--max-requests", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: ") and "--force" in result.stderr
    assert json.loads(result.stdout)["completed"] == 10


def test_prompts_beyond_the_context_are_refused_or_truncated_with_a_count() -> None:
    _refused(["simulate", "--model", "qwen2.5-7b"], "32,768-token context", "--truncate")
    result = RUNNER.invoke(APP, ["simulate", "--model", "qwen2.5-7b", "--truncate", "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert res["workload"]["num_truncated"] == 50 and res["completed"] + res["rejected"] == 600


def test_run_refuses_a_trace_longer_than_the_tiny_model_before_loading_it() -> None:
    pytest.importorskip("torch")
    _refused(["run", "--trace", MOONCAKE], "4,096-token context", "--truncate")


def test_unexpected_error_is_one_line_and_a_traceback_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import sim.run

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sim.run, "simulate", broken)
    monkeypatch.delenv("YODA_DEBUG", raising=False)
    result = RUNNER.invoke(APP, ["simulate", "--max-requests", "5"])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: unexpected RuntimeError: boom") and "--debug" in line
    path = Path(line.split("full traceback in ")[1].split(";")[0])
    assert "Traceback" in path.read_text() and "boom" in path.read_text()
    path.unlink()
    debug = RUNNER.invoke(APP, ["--debug", "simulate", "--max-requests", "5"])
    assert isinstance(debug.exception, RuntimeError)


def test_missing_trace_file_is_refused_before_any_cell_runs() -> None:
    _refused(["sweep", "--traces", "no/such/trace.jsonl", "--rates", "1"], "no such file")


def test_relative_trace_paths_leave_as_absolute_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_traces(["t.jsonl", "synthetic:sharegpt:3"]) == [str(tmp_path / "t.jsonl"), "synthetic:sharegpt:3"]


def test_sweep_json_parses_and_writes_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = RUNNER.invoke(APP, ["sweep", "--policies", "chunked", "--rates", "1,2", "--max-requests", "20",
                                 "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    assert [row["rate_rps"] for row in res["rows"]] == [1.0, 2.0] and res["num_cells"] == 2
    assert all(row["error"] is None and row["num_requests"] == 20 for row in res["rows"])
    assert result.stderr == "" and not any(tmp_path.iterdir())


def test_ray_sweep_with_a_relative_trace_path_runs_every_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    result = RUNNER.invoke(APP, ["sweep", "--policies", "chunked", "--rates", "1,2", "--max-requests", "10",
                                 "--traces", "traces/data/mooncake_sample.jsonl", "--ray", "local", "--json"])
    assert result.exit_code == 0, result.output
    assert all(row["error"] is None for row in json.loads(result.stdout)["rows"])


def test_help_keeps_bracketed_text() -> None:
    result = RUNNER.invoke(APP, ["sweep", "--help"])
    assert "[ray]" in result.stdout


def test_goodput_prints_its_verdict_and_draws_the_search(tmp_path: Path) -> None:
    result = RUNNER.invoke(APP, ["goodput", "--policy", "chunked", "--max-requests", "60", "--max-probes", "5",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "failed:" in result.stdout or "no probed rate" in result.stdout
    res = json.loads((tmp_path / "goodput.json").read_text())
    assert all("reason" in p and "request_throughput" in p for p in res["probes"])
    assert (tmp_path / "goodput.png").stat().st_size > 0


def test_simulate_summary_explains_rates_and_is_labelled_simulated() -> None:
    result = RUNNER.invoke(APP, ["simulate", "--max-requests", "30", "--rate", "0.5"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for label in ("0.500 req/s requested", "req/s arrived", "served rate", "TTFT attainment", "TPOT attainment",
                  "simulated time", "times the decode/prefill SM split changed"):
        assert label in out, label
    assert result.stderr == ""  # no progress bar when stderr is not a terminal


def _metrics(**over) -> dict:
    base = {"slo_percentile": 99.0, "slo_ttft_ratio_at_percentile": 0.5, "slo_tbt_at_percentile_ms": 40.0,
            "slo_tbt_ms": 50.0, "completed": 10, "rejected": 0, "slo_attainment": 1.0, "e2e_trend": 1.0,
            "throughput_ratio": 1.0}
    return {**base, **over}


def test_miss_reason_names_the_slo_and_its_excess_or_instability() -> None:
    assert miss_reason(_metrics(), "fleet") == "met"
    assert miss_reason(_metrics(slo_tbt_at_percentile_ms=60.0), "fleet") == "P99 TBT 60.0 ms > 50 ms (+20%)"
    assert "P99 TTFT 1.50x" in miss_reason(_metrics(slo_ttft_ratio_at_percentile=1.5), "fleet")
    assert miss_reason(_metrics(e2e_trend=3.0), "fleet").startswith("unstable: latency grows")
    assert miss_reason(_metrics(slo_attainment=0.8), "attainment") == "attainment 80.0% < 90%"
    probes = [{"rate_rps": 1.0, "ok": True, "slo_attainment": 0.99, "request_throughput": 0.9, "reason": "met"},
              {"rate_rps": 2.0, "ok": False, "slo_attainment": 0.5, "request_throughput": 1.0, "reason": "X"}]
    assert goodput_verdict(1.0, probes)[-1] == "next probe up, 2.000 req/s, failed: X"


def _request(i: int, prompt_len: int, output_len: int) -> Request:
    return Request(request_id=i, arrival_at=float(i), prompt_len=prompt_len, output_len=output_len)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20000), st.integers(1, 5000)), min_size=1, max_size=30),
       st.integers(64, 8192))
def test_truncation_fits_every_request_and_counts_the_cut_ones(lengths: list[tuple[int, int]], context: int) -> None:
    requests = [_request(i, p, o) for i, (p, o) in enumerate(lengths)]
    fitted, num_cut = fit_context(requests, context, "m", truncate=True)
    assert num_cut == sum(p + o > context for p, o in lengths)
    for before, after in zip(requests, fitted):
        assert after.prompt_len + after.output_len <= context and after.prompt_len >= 1 and after.output_len >= 1
        assert after == before or before.prompt_len + before.output_len > context


def test_run_refuses_a_profile_of_another_model() -> None:
    pytest.importorskip("torch")
    _refused(["run", "--profile", CPU_TINY, "--model", "llama3-8b", "--max-requests", "2"], "model tiny", "--force")
