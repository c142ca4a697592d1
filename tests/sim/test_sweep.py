"""`yoda sweep` and the sweep grid/worker functions (sim/sweep.py)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import typer
from typer.testing import CliRunner

from sim.cli import register
from sim.run import SimConfig
from sim.sweep import config_from_dict, config_to_dict, make_cells, run_cell, run_cells
from traces import SAMPLE_DIR

RUNNER = CliRunner()
MOONCAKE = str(SAMPLE_DIR / "mooncake_sample.jsonl")


def _app() -> typer.Typer:
    try:
        from yoda.cli import app
        return app
    except ModuleNotFoundError:  # NOTE: yoda/cli.py cannot mount while a sibling CLI module is missing
        app = typer.Typer()
        register(app)
        return app


APP = _app()


def _cells(rates=(0.5, 1.0), policies=("chunked", "prefill_first"), max_requests=12) -> list[dict]:
    workload = {"format": None, "replay": "original", "cv": 1.0, "seed": 0, "max_requests": max_requests,
                "skip_bad": False}
    return make_cells(list(policies), [MOONCAKE], list(rates), [50.0], config_to_dict(SimConfig()), workload)


def test_sweep_cli_writes_csv_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = RUNNER.invoke(APP, ["sweep", "--policies", "yoda,chunked", "--rates", "0.5,1", "--max-requests", "30",
                                 "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "sweep.csv")
    assert len(rows) == 4
    assert sorted(zip(rows["policy"], rows["rate_rps"])) == [("chunked", 0.5), ("chunked", 1.0), ("yoda", 0.5),
                                                              ("yoda", 1.0)]
    assert rows["error"].isna().all() and (rows["completed"] + rows["rejected"] == 30).all()
    assert (out / "attainment_vs_rate.png").stat().st_size > 0
    assert len(json.loads((out / "sweep.json").read_text())["rows"]) == 4


def test_goodput_sweep_over_slos(tmp_path: Path) -> None:
    out = tmp_path / "gp"
    result = RUNNER.invoke(APP, ["sweep", "--policies", "chunked", "--goodput", "--slo-tbt-ms", "50,100",
                                 "--max-probes", "2", "--max-requests", "15", "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "sweep.csv")
    assert list(rows["slo_tbt_ms"]) == [50.0, 100.0] and rows["goodput_rps"].notna().all()
    assert (out / "goodput_vs_slo.png").exists()


def test_cells_are_picklable_and_config_round_trips() -> None:
    cells = _cells()
    assert len(cells) == 4
    assert pickle.loads(pickle.dumps(cells)) == cells
    cfg = SimConfig(policy="chunked", policy_options={"token_budget": 256})
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_process_pool_matches_serial() -> None:
    cells = _cells()
    pooled = run_cells(cells, workers=2)
    serial = [run_cell(cell) for cell in cells]
    drop = ("wall_s", "sim_wall_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in pooled] == \
           [{k: v for k, v in r.items() if k not in drop} for r in serial]


def test_failed_cell_becomes_an_error_row() -> None:
    cell = _cells(rates=(1.0,), policies=("chunked",))[0]
    cell["workload"]["trace"] = "/no/such/trace.jsonl"
    row = run_cell(cell)
    assert row["error"].startswith("WorkloadError") and row["policy"] == "chunked"
