"""The gang-size benchmark end to end on a tiny setting: one cell per gang size, warm-started from the first
one's search, and a report of goodput ratios to the first gang size and of speed per gang size."""
import json

from typer.testing import CliRunner

import benchmarks.gang_steps as gs


def test_cells_set_the_gang_and_its_decode_step_cap():
    cells, keys = gs.goodput_cells([1, 32, 128], ["sharegpt_like"], (0, 1), 40)
    assert keys == [("sharegpt_like", 1), ("sharegpt_like", 32), ("sharegpt_like", 128)]
    assert [c.config.policy_options["gang_steps"] for c in cells] == [1, 32, 128]
    assert [c.config.max_decode_steps for c in cells] == [64, 64, 128]  # a gang never outgrows the run cap
    assert [c.warm_from for c in cells] == [None, 0, 0]
    assert all(c.variants == ({"admission": "deadline"},) for c in cells)


def test_tiny_run_writes_tables_with_ratios(tmp_path, monkeypatch):
    # the speed table on 40 Mooncake requests instead of the whole trace
    whole = gs.mooncake_conversation
    monkeypatch.setattr(gs, "mooncake_conversation", lambda: whole(40))
    result = CliRunner().invoke(_app(), [
        "--gangs", "1,32", "--seeds", "0,1", "--workloads", "sharegpt_like", "--probe-requests", "40",
        "--workers", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "gang_steps.json").read_text())
    assert [(r["workload"], r["gang_steps"]) for r in data["goodput"]] == [("sharegpt_like", 1), ("sharegpt_like", 32)]
    one, many = data["speed"]
    assert one["requests"] == many["requests"] == 40
    assert one["decisions"] > many["decisions"] > 0  # one-step gangs decide more often
    text = (tmp_path / "gang_steps.md").read_text()
    ratio = data["goodput"][1]["goodput_rps"] / data["goodput"][0]["goodput_rps"]
    assert "| sharegpt_like | " in text and f"{ratio:.2f}x" in text and "x 1 (gang 32)" in text


def _app():
    import typer
    app = typer.Typer()
    app.command()(gs.main)
    return app


def test_bad_gangs_are_refused(tmp_path):
    result = CliRunner().invoke(_app(), ["--gangs", "0,32", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "gangs" in result.output
    assert not (tmp_path / "gang_steps.json").exists()
