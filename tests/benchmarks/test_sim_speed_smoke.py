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
