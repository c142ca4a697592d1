"""`yoda simulate` / `yoda goodput` through typer's CliRunner, and the workloads they build."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from sim.cli import register
from sim.cli_options import parse_option
from sim.workloads import WorkloadError, load_workload
from traces import SAMPLE_DIR

RUNNER = CliRunner()
MOONCAKE = str(SAMPLE_DIR / "mooncake_sample.jsonl")
AGENT = str(SAMPLE_DIR / "miniswe_sample.jsonl")
SMALL = ["--max-requests", "40"]


def _app() -> typer.Typer:
    try:
        from yoda.cli import app
        return app
    except ModuleNotFoundError:  # NOTE: yoda/cli.py cannot mount while a sibling CLI module is missing
        app = typer.Typer()
        register(app)
        return app


APP = _app()


def _json(args: list[str]) -> dict:
    result = RUNNER.invoke(APP, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    return json.loads(result.stdout)


def test_simulate_json_accounts_for_every_request() -> None:
    res = _json(["simulate", "--policy", "chunked", *SMALL, "--json"])
    assert res["num_requests"] == 40
    assert res["completed"] + res["rejected"] == 40
    assert res["config"]["policy"] == "chunked"
    assert res["config"]["slo"] == {"ttft_ms": 1000.0, "tbt_ms": 50.0, "percentile": 99.0, "ttft_ms_per_token": 0.25}
    assert res["workload"]["format"] == "mooncake" and res["workload"]["trace"] == MOONCAKE


def test_simulate_out_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = RUNNER.invoke(APP, ["simulate", "--policy", "yoda", *SMALL, "--rate", "1.0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("results.json", "requests.parquet", "timeline.parquet", "latency_cdf.png", "timeline.png"):
        assert (out / name).stat().st_size > 0, name
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == 40
    assert {"request_id", "ttft_ms", "tpot_ms", "e2e_ms", "reused_len", "num_tokens", "meets_slo"} <= set(requests)
    timeline = pd.read_parquet(out / "timeline.parquet")
    assert len(timeline) > 0 and set(timeline["lane"]) <= {"prefill", "decode"}
    res = json.loads((out / "results.json").read_text())
    assert res["workload"]["target_rate_rps"] == 1.0
    assert res["command"].startswith("yoda simulate --policy yoda --max-requests 40")
    for text in ("served", "TTFT", "SLO attainment", "requests / wall s"):
        assert text in result.stdout


def test_options_and_ablations_reach_the_policy() -> None:
    res = _json(["simulate", "--policy", "chunked", "--max-requests", "10", "--option", "token_budget=1024", "--json"])
    assert res["config"]["policy_options"] == {"token_budget": 1024}
    res = _json(["simulate", "--max-requests", "10", "--ablation", "no_guard", "--option", "chunked.token_budget=8",
                 "--json"])
    assert res["config"]["policy_options"] == {"guard": False}


def test_parse_option_types() -> None:
    assert parse_option("a=3") == ("a", 3)
    assert parse_option("a=0.5") == ("a", 0.5)
    assert parse_option("a=True") == ("a", True)
    assert parse_option("a=ttft") == ("a", "ttft")
    with pytest.raises(ValueError):
        parse_option("novalue")


def test_goodput_json_fields() -> None:
    res = _json(["goodput", "--policy", "chunked", "--max-requests", "20", "--max-probes", "3", "--json"])
    for key in ("goodput_rps", "policy", "trace", "slo_ttft_ms", "slo_tbt_ms", "probes", "criterion"):
        assert key in res
    assert res["policy"] == "chunked" and res["slo_tbt_ms"] == 50.0
    assert len(res["probes"]) == res["num_probes"] <= 3
    assert all({"rate_rps", "ok"} <= set(p) for p in res["probes"])


def test_workers_leave_the_results_unchanged() -> None:
    """A round-robin cluster runs its instances in parallel processes with the same outcome."""
    args = ["simulate", "--policy", "chunked", *SMALL, "--instances", "2", "--dispatcher", "round_robin", "--json"]
    one, two = _json([*args, "--workers", "1"]), _json([*args, "--workers", "2"])
    drop = ("command", "flags", "wall_s", "sim_requests_per_wall_s")
    assert {k: v for k, v in one.items() if k not in drop} == {k: v for k, v in two.items() if k not in drop}


@pytest.mark.parametrize("args, fragment", [
    (["simulate", "--trace", "/no/such/trace.jsonl"], "no such trace file"),
    (["simulate", "--policy", "nope"], "unknown policy 'nope'"),
    (["simulate", "--gpu", "v100"], "unknown GPU"),
    (["simulate", "--model", "gpt5"], "unknown model"),
    (["simulate", "--policy", "disagg"], "at least 2 instances"),
    (["simulate", "--rate", "-1"], "--rate must be > 0"),
    (["simulate", "--rate", "fast"], "Invalid value for '--rate'"),
    (["simulate", "--rate", "1", "--scale", "2"], "not both"),
    (["simulate", "--option", "token_budget"], "key=value"),
    (["simulate", "--policy", "chunked", "--option", "bogus=1"], "bad --option"),
    (["simulate", "--policy", "chunked", "--ablation", "no_guard"], "applies to --policy yoda"),
    (["simulate", "--ablation", "no_brain"], "unknown ablation"),
    (["simulate", "--trace", "synthetic:wiki"], "unknown synthetic workload"),
    (["simulate", "--no-such-flag"], "No such option"),
    (["simulate", "--workers", "0"], "--workers must be >= 1"),
    (["goodput", "--criterion", "best"], "--criterion"),
    (["sweep", "--rates", "1", "--goodput"], "not both"),
])
def test_bad_inputs_fail_with_one_line(args: list[str], fragment: str) -> None:
    result = RUNNER.invoke(APP, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and fragment in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# ---- workloads ----------------------------------------------------------------------------------------
def test_mooncake_buckets_spread_and_rescaled() -> None:
    requests, desc = load_workload(MOONCAKE, rate=1.0, max_requests=100)
    arrivals = [r.arrival_at for r in requests]
    assert arrivals[0] == 0.0 and len(set(arrivals)) == 100  # 3 s buckets spread
    assert desc["mean_rate_rps"] == pytest.approx(1.0)
    again, _ = load_workload(MOONCAKE, rate=1.0, max_requests=100)
    assert [r.arrival_at for r in again] == arrivals  # seeded


def test_scale_and_poisson_replay() -> None:
    _, base = load_workload(MOONCAKE, max_requests=100)
    _, scaled = load_workload(MOONCAKE, scale=2.0, max_requests=100)
    assert scaled["mean_rate_rps"] == pytest.approx(2 * base["mean_rate_rps"])
    poisson, desc = load_workload(MOONCAKE, rate=2.0, replay="poisson", max_requests=100, seed=3)
    assert desc["retimed"] == "poisson arrivals" and 1.0 < desc["mean_rate_rps"] < 4.0


def test_a_rate_scales_a_session_trace_whole_load() -> None:
    # session starts and think times shrink by one factor: the mean rate is the one asked for
    original, base = load_workload(AGENT)
    scaled, desc = load_workload(AGENT, rate=2.0)
    assert desc["num_sessions"] == 20 and "think times" in desc["retimed"]
    assert desc["mean_rate_rps"] == pytest.approx(2.0)
    factor = base["original_rate_rps"] / 2.0
    gaps = {r.request_id: r.think_time_s for r in original}
    assert all(r.think_time_s == pytest.approx(gaps[r.request_id] * factor) for r in scaled)


@pytest.mark.parametrize("trace", ["synthetic:sharegpt:400", "synthetic:loogle:100"])
def test_offered_rate_on_session_traces_follows_the_requested_rate(trace) -> None:
    offered = {}
    for rate in (5.0, 20.0, 80.0):
        requests, desc = load_workload(trace, rate=rate)
        offered[rate] = desc["mean_rate_rps"]
        assert offered[rate] == pytest.approx(rate)
    assert offered[80.0] >= 3.5 * offered[20.0]


def test_simulate_json_writes_requested_beside_offered_rate() -> None:
    res = _json(["simulate", "--policy", "chunked", "--trace", "synthetic:sharegpt:40", "--rate", "3", "--json"])
    assert res["requested_rate"] == 3.0
    assert res["offered_rate"] == pytest.approx(3.0) and res["offered_rate_steady"] > 0
    assert res["config"]["output_len_oracle"] is False
    oracle = _json(["simulate", "--policy", "chunked", "--trace", "synthetic:sharegpt:40", "--rate", "3",
                    "--ablation", "oracle_output_len", "--json"])
    assert oracle["config"]["output_len_oracle"] is True


def test_synthetic_workloads() -> None:
    requests, desc = load_workload("synthetic:system_prompt:30", rate=4.0)
    assert len(requests) == 30 and desc["format"] == "synthetic"
    requests, desc = load_workload("synthetic:sharegpt:5")
    assert desc["num_sessions"] >= 1 and all(r.session_id for r in requests)
    with pytest.raises(WorkloadError, match="integer"):
        load_workload("synthetic:loogle:many")
