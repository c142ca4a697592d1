"""The goodput benchmark end to end on a tiny setting: tuned cells for both admission layers, tables with
intervals, the admission columns and the tuned configs."""
import json

from benchmarks.goodput_vs_baselines import SETUPS, Setup, make_cells, replot, summarise
from sim.tuning import num_searches, run_tuning


def test_tiny_benchmark_tables_show_intervals_admission_and_configs(tmp_path):
    setup = Setup(SETUPS[0].name, "llama3-8b", 1, 1, 50, 1000, 0.25, ("yoda", "chunked"))
    cells, keys = make_cells([setup], ["sharegpt_like"], (0, 1), 20, 40, 10.0, 1, with_ablations=False)
    assert [k[2] for k in keys] == ["yoda", "chunked"] and all(len(c.seeds) == 2 for c in cells)
    done = []
    results = run_tuning(cells, 1, lambda: done.append(1))
    assert len(done) == num_searches(cells)
    rows = [{"setup": setup.name, "workload": w, "policy": p, "ablation": a, "admission": v["admission"], **r}
            for (_, w, p, a), cell, res in zip(keys, cells, results) for v, r in zip(cell.variants, res)]
    assert {(r["policy"], r["admission"]) for r in rows} == {
        ("yoda", "deadline"), ("yoda", "fcfs"), ("chunked", "fcfs"), ("chunked", "deadline")}
    text, summary = summarise(rows, [setup], ["sharegpt_like"])
    assert "chunked (fcfs)" in text and "chunked (deadline)" in text and "vs chunked same admission" in text
    assert "cap=" in text and "budget=" in text  # the chosen chunk cap is shown
    for r in rows:
        low, high = r["ci95"]
        assert low <= r["goodput_rps"] <= high and f"{r['goodput_rps']:.3f} [" in text
    assert set(summary[setup.name]["goodput"]["sharegpt_like"]) == {
        "yoda (deadline)", "yoda (fcfs)", "chunked (fcfs)", "chunked (deadline)"}
    # the plot is redrawn from the run's JSON alone (--replot)
    (tmp_path / "run.json").write_text(json.dumps({"rows": rows}, default=str))
    png = replot(tmp_path / "run.json")
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
