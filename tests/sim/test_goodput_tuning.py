"""Tuned goodput: declared grids, the seed statistics, and `yoda goodput --tune --seeds --json`."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats
from typer.testing import CliRunner

from sim.tuning import grid_for, mean_ci95, policy_knobs
from yoda.policies import make_scheduler
from yoda.request import SLO
from yoda.scheduler import SchedulerConfig

RUNNER = CliRunner()
# a multi-turn trace, small enough for a test: 12 synthetic ShareGPT-like sessions
MULTI_TURN = ["--trace", "synthetic:sharegpt:12", "--max-probes", "4"]


def _app():
    from yoda.cli import app
    return app


def _goodput(args: list[str]) -> dict:
    result = RUNNER.invoke(_app(), ["goodput", *MULTI_TURN, *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("policy, knob", [("chunked", "long_prefill_token_threshold"), ("yoda", "prefill_tokens")])
def test_tuned_goodput_json_has_the_mean_per_seed_interval_and_chosen_config(policy, knob):
    res = _goodput(["--policy", policy, "--tune", "--seeds", "1,2,3"])
    per_seed = res["goodput_rps_per_seed"]
    assert len(per_seed) == 3 and res["seeds"] == [1, 2, 3]
    assert math.isclose(res["goodput_rps"], sum(per_seed) / 3)
    low, high = res["ci95"]
    assert low <= res["goodput_rps"] <= high
    assert res["config"]["policy"] == policy and knob in res["config"]
    tried = [g["options"] for g in res["grid"]]
    assert tried == grid_for(policy) and all(g["coarse_goodput_rps"] is not None for g in res["grid"])
    chosen = {k: res["config"][k] for k in tried[0]}
    assert chosen in [c["options"] for c in res["confirmed"]]  # the pick is one of the confirmed points


def test_admission_flag_reaches_the_policy_and_the_config():
    fcfs = _goodput(["--policy", "chunked", "--seeds", "1", "--admission", "fcfs"])
    deadline = _goodput(["--policy", "chunked", "--seeds", "1", "--admission", "deadline"])
    assert fcfs["config"]["admission"] == "fcfs" and deadline["config"]["admission"] == "deadline"
    assert _goodput(["--policy", "yoda", "--seeds", "1"])["config"]["admission"] == "deadline"


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "1,x"], "--seeds must be comma-separated integers"),
    (["--seeds", "1,1"], "distinct"),
    (["--seeds", "1", "--admission", "lifo"], "--admission must be fcfs or deadline"),
    (["--seeds", "1", "--workers", "0"], "--workers must be >= 1"),
])
def test_bad_tuning_flags_fail_with_one_line(args, fragment):
    result = RUNNER.invoke(_app(), ["goodput", *MULTI_TURN, *args])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and fragment in result.stderr and result.stderr.count("\n") == 1


def test_mean_ci95_is_the_student_t_interval():
    values = [1.0, 2.0, 4.0]
    mean, low, high = mean_ci95(values)
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / math.sqrt(3)
    assert math.isclose(mean, 7 / 3) and math.isclose(high - mean, half) and math.isclose(mean - low, half)
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5) and mean_ci95([0.7]) == (0.7, 0.7, 0.7)


@pytest.mark.parametrize("policy", ["chunked", "prefill_first", "static_split", "temporal"])
def test_every_grid_point_is_a_valid_scheduler_and_names_known_knobs(policy):
    config = SchedulerConfig(num_sms=132, num_layers=32, kv_blocks=1000)
    for point in grid_for(policy):
        assert set(point) <= set(policy_knobs(policy))
        make_scheduler(policy, config, SLO(), **point)


def test_static_split_grid_keeps_decode_between_a_quarter_and_three_quarters():
    shares = {p["decode_sms"] / 132 for p in grid_for("static_split")}
    assert len(shares) >= 2 and all(0.25 <= s <= 0.75 for s in shares)


@pytest.mark.parametrize("gpus, splits", [(2, {1}), (4, {1, 2, 3}), (8, {2, 4, 6})])
def test_disagg_grid_covers_the_xp_yd_splits(gpus, splits):
    assert {p["num_prefill_instances"] for p in grid_for("disagg", gpus)} == splits
