"""Calibration on the CPU with the tiny model: the files a profile holds, resuming, the fitted estimator
and its held-out error, guards from a contention grid, and the specs a profile describes."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import calibration.bench as bench
import calibration.measure as measure
from calibration.fit import best_of_rounds, gpu_spec, load_estimator, load_guards, profile_samples
from executor.runner import open_backend
from sim.profile_table import ProfileTableLatency, read_profile_table

BUNDLED = Path(__file__).resolve().parents[2] / "calibration" / "profiles" / "cpu-tiny"
TINY_GRID = bench.Grid((1, 16, 64, 128, 256), (0, 128), (1,), 512, (1, 4), (64, 256), 3)


@pytest.fixture
def tiny_grid(monkeypatch):
    monkeypatch.setitem(bench.GRIDS["cpu"], "tiny", TINY_GRID)
    return "tiny"


def test_calibrate_writes_a_profile_and_resumes(tmp_path: Path, tiny_grid: str) -> None:
    out = tmp_path / "prof"
    backend = open_backend("tiny")
    first = measure.calibrate(out, backend, tiny_grid, progress=False)
    points = 5 * 2 + 2 * 2
    assert first["measured"] == 3 * points and first["num_points"] == points and first["num_rounds"] == 3 * points
    for name in ("rounds.csv", "samples.csv", "metadata.json", "fit.json", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "contention.csv").exists() and "contention grid skipped" in first["notes"][0]
    rounds = pd.read_csv(out / "rounds.csv")
    assert len(rounds) == 3 * points and set(rounds["round"]) == {0, 1, 2}
    samples, meta = read_profile_table(out)  # one row per point: its fastest round
    assert len(samples) == points and (samples["rounds"] == 3).all() and (samples["latency_s"] > 0).all()
    assert samples["latency_s"].sum() == pytest.approx(rounds.groupby(["phase", "new_len", "reused_len", "batch",
                                                                      "context_len"])["latency_s"].min().sum())
    assert meta["device"]["type"] == "cpu" and meta["model"] == "tiny" and meta["status"] == "complete"
    assert {"torch", "triton", "transformers"} <= set(meta["versions"]) and meta["latency_unit"] == "s"
    assert "this machine" in meta["note"] and meta["grid"]["reps"] == 3
    fit = json.loads((out / "fit.json").read_text())
    assert set(fit["decode_coef"]) == {"132"} and {r["phase"] for r in fit["reports"]} == {"prefill", "decode"}
    latency = ProfileTableLatency(out)  # the simulator reads the directory as a latency source
    assert 0 < latency.prefill_s([64], [0], 132) < latency.prefill_s([256], [128], 132)
    again = measure.calibrate(out, backend, tiny_grid, progress=False)
    assert again["measured"] == 0 and again["num_rounds"] == 3 * points
    pd.testing.assert_frame_equal(read_profile_table(out)[0], samples)
    with pytest.raises(ValueError, match="another setup"):
        measure.calibrate(out, open_backend("tiny", num_layers=1), tiny_grid, progress=False)


def test_fused_iterations_are_measured_and_fitted(tmp_path: Path, monkeypatch) -> None:
    grid = bench.Grid((1, 64, 256), (0,), (1,), 512, (1, 2, 4, 8), (64, 128, 256), 2, mixed_new=(16, 64, 256))
    monkeypatch.setitem(bench.GRIDS["cpu"], "tiny-mixed", grid)
    summary = measure.calibrate(tmp_path / "p", open_backend("tiny"), "tiny-mixed", progress=False)
    rounds = pd.read_csv(tmp_path / "p" / "rounds.csv")
    mixed = rounds[rounds["phase"] == "mixed"]
    assert len(mixed) == 2 * 3 * 2 * 2 and (mixed["latency_s"] > 0).all()  # n x batch[::2] x context[::2] x rounds
    assert (mixed["kv_len"] == mixed["batch"] * (mixed["context_len"] + 1 + (1 + bench.DECODE_STEPS) / 2)).all()
    fit = json.loads((tmp_path / "p" / "fit.json").read_text())
    assert set(fit["mixed_coef"]) == {"132"} and "mixed" in {r["phase"] for r in summary["fit_reports"]}
    est = load_estimator(tmp_path / "p")
    assert est.mixed_s([64], [0], 4, 4 * 128, 132) > 0


def test_fresh_fit_reports_held_out_error(tmp_path: Path) -> None:
    summary = measure.calibrate(tmp_path / "p", open_backend("tiny"), "quick", progress=False)
    for report in summary["fit_reports"]:
        print(f"fresh {report['phase']} fit: held-out mean |error| {report['mean_abs_err']:.1%}")
        assert report["num_holdout"] >= 1
        assert report["mean_abs_err"] < 0.3  # sanity: the paper's formula fits CPU timings at all


def test_bundled_profile_fits_within_10_percent_on_held_out_points() -> None:
    est = load_estimator(BUNDLED)
    for report in est.reports:
        print(f"bundled {report.phase} fit: held-out mean |error| {report.mean_abs_err:.1%} "
              f"(P90 {report.p90_abs_err:.1%}, {report.num_holdout} points)")
        assert report.num_holdout >= 5 and report.mean_abs_err < 0.10
    _, meta = read_profile_table(BUNDLED)
    assert meta["device"]["type"] == "cpu" and "this machine" in meta["note"] and meta["date"]


def test_best_of_rounds_keeps_each_points_fastest_round() -> None:
    rows = [dict(phase="decode", num_sms=132, new_len=0, reused_len=0, batch=2, kv_len=kv, latency_s=t,
                 context_len=64, round=k) for k, (kv, t) in enumerate(((130, 2.0), (132, 9.0), (134, 1.0)))]
    (best,) = best_of_rounds(pd.DataFrame(rows)).itertuples(index=False)
    assert best.latency_s == 1.0 and best.kv_len == 134 and best.rounds == 3
    assert len(profile_samples(BUNDLED)) == len(read_profile_table(BUNDLED)[0])


def test_guards_from_contention_grid(tmp_path: Path) -> None:
    rows = [dict(lane="decode", decode_sms=16, prefill_sms=112, prefill_new=8192, prefill_reused=0, decode_batch=64,
                 decode_context=2048, solo_s=0.01, both_s=0.0125, slowdown=1.25, decode_steps=9),
            dict(lane="prefill", decode_sms=16, prefill_sms=112, prefill_new=8192, prefill_reused=0, decode_batch=64,
                 decode_context=2048, solo_s=0.2, both_s=0.21, slowdown=1.05, decode_steps=9)]
    pd.DataFrame(rows).to_csv(tmp_path / "contention.csv", index=False)
    decode, prefill = load_guards(tmp_path)
    assert decode.factor(16, 8000, 0, 60, 2000) == 1.25 and decode.default == 1.25
    assert prefill.factor(112, 8192, 0, 64, 2048) == 1.05
    none_decode, _ = load_guards(tmp_path / "missing")
    assert none_decode.default == 1.3 and not none_decode.factors


def test_gpu_spec_from_metadata() -> None:
    h100 = gpu_spec({"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "num_sms": 132})
    assert h100.name == "h100" and h100.num_sms == 132 and h100.hbm_gbps == 3350.0
    cpu = gpu_spec(read_profile_table(BUNDLED)[1]["device"])
    assert cpu.name == "cpu" and cpu.num_sms == 132 and cpu.bf16_tflops > 0


def test_calibrate_cli_errors_are_one_line() -> None:
    from yoda.cli import app

    for args in (["calibrate", "--backend", "sim", "--out", "x"], ["calibrate", "--grid", "huge", "--out", "x"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.output.startswith("error:") and result.output.count("\n") == 1
