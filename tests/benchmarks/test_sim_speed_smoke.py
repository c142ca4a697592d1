"""Smoke test of benchmarks/sim_speed.py's own-simulator half on ~300 requests (no Vidur)."""
import json

import pytest

from benchmarks import sim_speed, vidur_adapter

pytestmark = pytest.mark.skipif(not (sim_speed.MOONCAKE.exists() and sim_speed.AZURE_CONV.exists()),
                                reason="shared traces not present")


def test_own_simulator_rows_and_report(tmp_path):
    traces = {"mooncake_conversation": sim_speed.mooncake_conversation(limit=150),
              "azure_conv": sim_speed.azure_conv_resampled(150, rate_rps=20.0)}
    rows = sim_speed.run_ours(traces, ["chunked", "prefill_first"], num_instances=2)
    sim_speed.add_rates(rows)
    assert [(r["trace"], r["policy"]) for r in rows] == [
        ("mooncake_conversation", "chunked"), ("mooncake_conversation", "prefill_first"),
        ("azure_conv", "chunked"), ("azure_conv", "prefill_first")]
    for r in rows:
        assert r["requests"] == 150 and r["wall_s"] > 0 and r["req_per_wall_s"] > 0
        assert r["vs_vidur"] is None  # no Vidur row to compare against
    report = {"command": "test", "date": "today", "device": sim_speed.device(), "config": {}, "config_text": "",
              "vidur": {"version": None, "skipped": "--no-vidur given"}, "rows": rows, "notes": [],
              "script_wall_s": 1.0}
    sim_speed.write_report(tmp_path, report)
    assert json.loads((tmp_path / "sim_speed.json").read_text())["rows"][0]["policy"] == "chunked"
    assert "Vidur skipped: --no-vidur given" in (tmp_path / "sim_speed.md").read_text()


def test_vidur_inputs(tmp_path):
    """The Vidur side's inputs are built without Vidur: trace CSV, CLI flags, profile schema."""
    requests = sim_speed.azure_conv_resampled(20, rate_rps=5.0)
    assert vidur_adapter.write_trace_csv(((r.arrival_at, r.prompt_len, r.output_len) for r in requests),
                                         tmp_path / "t.csv") == 20
    assert (tmp_path / "t.csv").read_text().startswith("Date,Time,PromptTokenCount,CompletionTokenCount\n")
    setup = sim_speed.vidur_setup(requests, num_instances=2)
    flags = setup.cli_args(tmp_path / "t.csv", tmp_path / "cache", tmp_path / "out")
    assert flags[flags.index("--cluster_config_num_replicas") + 1] == "2"
    assert "--no-metrics_config_enable_chrome_trace" in flags
    from sim.hardware import get_gpu
    from sim.latency import RooflineLatency
    from sim.model_spec import get_model
    model, gpu = get_model("llama3-8b"), get_gpu("h100")
    mlp, attention = vidur_adapter.profile_rows(model, gpu, RooflineLatency(model, gpu), 16, 8192)
    big, small = mlp[-1], mlp[0]
    assert big["time_stats.mlp_up_proj.median"] > small["time_stats.mlp_up_proj.median"] > 0
    assert all(row["time_stats.attn_prefill.median"] > 0 for row in attention if row["is_prefill"])


def test_records_differ_counts_records_beyond_float_noise():
    from benchmarks.speed_runs import records_differ
    a = [(0, 0, 0, None, [1.0, 2.0]), (1, 16, 0, None, [3.0])]
    assert records_differ(a, [(0, 0, 0, None, [1.0, 2.0 + 1e-12]), (1, 16, 0, None, [3.0])]) == 0
    assert records_differ(a, [(0, 0, 0, None, [1.0, 2.001]), (1, 0, 0, None, [3.0])]) == 2
    assert records_differ(a, a[:1]) == 2


def test_scale_table_reports_cost_per_request_against_the_smallest_run():
    from benchmarks.sim_speed_report import scale_table_rows
    rows = [{"policy": "chunked", "requests": n, "wall_s": w, "peak_rss_mb": 100.0, "sim_end_s": 1.0,
             "completed": n} for n, w in ((1000, 1.0), (10000, 12.0))]
    cells = scale_table_rows(rows)
    assert [c[3] for c in cells] == ["1000", "1200"] and [c[4] for c in cells] == ["1.00", "1.20"]


def test_side_by_side_against_this_checkout_gives_the_same_records():
    """--baseline-ref machinery end to end: a worktree of HEAD, both sides in fresh processes."""
    import subprocess
    from benchmarks import speed_runs as sr
    if subprocess.run(["git", "-C", str(sr.ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    requests = sim_speed.azure_conv_resampled(40, rate_rps=10.0)
    with sr.baseline_checkout("HEAD") as tree:
        assert (tree / "sim" / "run.py").exists()
        ours, base, differ = sr.time_side_by_side(requests, sim_speed.sim_config("chunked", 2), 1, tree)
    assert not tree.exists() and differ == 0
    assert ours["wall_s"] > 0 and base["wall_s"] > 0 and ours["p99_tbt_ms"] == base["p99_tbt_ms"]
    with pytest.raises(sr.ChildError):
        with sr.baseline_checkout("no-such-ref-xyz"):
            pass
