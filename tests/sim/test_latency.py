"""Latency sources: roofline sanity and monotonicity, the public pdmux fits, measured profile tables."""
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from sim.hardware import GPUS
from sim.latency import (FIT_PATHS, LAYER_GROUP_LAUNCH_S, MIN_PREDICTION_S, PdmuxFitLatency, RooflineLatency,
                         fit_table_for, launch_solo_s)
from sim.model_spec import MODELS, get_model
from sim.profile_table import ProfileTableLatency, read_profile_table, write_profile_table
from yoda.backend import Launch, PrefillChunk

H100 = GPUS["h100"]
ROOF_8B = RooflineLatency(MODELS["llama3-8b"], H100)


# ---- roofline ------------------------------------------------------------------------------------------
def test_roofline_sanity_llama3_8b_h100():
    # 8B params * 2 FLOPs * 4096 tokens ~ 66 TFLOP at ~650 TFLOP/s, plus attention
    assert 0.08 < ROOF_8B.prefill_s([4096], [0], 132) < 0.13
    # (16 GB weights + 64 * 1K * 128 KiB KV) / ~2.7 TB/s
    assert 0.008 < ROOF_8B.decode_s(64, 64 * 1024, 132) < 0.012
    assert 0.005 < ROOF_8B.decode_s(1, 1024, 132) < 0.008


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 256), per_request=st.integers(1, 32768), sms=st.sampled_from([8, 16, 40, 64, 132]),
       model=st.sampled_from(["llama3-8b", "llama3-70b"]))
def test_roofline_decode_line_is_the_roofline(batch, per_request, sms, model):
    # decode_s is memoised as a line in the batch's KV (two evaluations per batch and partition): it must
    # agree with the roofline evaluated directly, at any KV, for a TP model too
    roof = RooflineLatency(get_model(model, tp=8) if model == "llama3-70b" else get_model(model), H100)
    kv = batch * per_request
    direct = roof.time_s(roof.work((), (), batch, kv), sms)
    assert roof.decode_s(batch, kv, sms) == pytest.approx(direct, rel=1e-12)
    assert roof.decode_s(batch, kv + batch, sms) > roof.decode_s(batch, kv, sms)


def test_roofline_decode_saturates_prefill_scales():
    for batch, ctx in [(1, 1024), (64, 1024), (64, 8192)]:
        full = ROOF_8B.decode_s(batch, batch * ctx, 132)
        assert ROOF_8B.decode_s(batch, batch * ctx, 66) < 1.15 * full
    assert ROOF_8B.prefill_s([4096], [0], 66) > 1.8 * ROOF_8B.prefill_s([4096], [0], 132)


@settings(max_examples=60, deadline=None)
@given(new=st.lists(st.integers(1, 20000), min_size=0, max_size=4), reused=st.integers(0, 50000),
       batch=st.integers(0, 300), ctx=st.integers(1, 20000), sms=st.integers(8, 124))
def test_roofline_more_sms_never_slower(new, reused, batch, ctx, sms):
    reused_lens = [reused] * len(new)
    for more in (sms + 8, 132):
        assert ROOF_8B.mixed_s(new, reused_lens, batch, batch * ctx, more) <= \
            ROOF_8B.mixed_s(new, reused_lens, batch, batch * ctx, sms)


def test_roofline_monotone_in_work():
    assert ROOF_8B.prefill_s([2048], [8192], 64) > ROOF_8B.prefill_s([2048], [0], 64)
    assert ROOF_8B.decode_s(64, 64 * 4096, 32) > ROOF_8B.decode_s(64, 64 * 1024, 32)
    assert ROOF_8B.mixed_s([512], [0], 32, 32 * 1024, 132) > ROOF_8B.decode_s(32, 32 * 1024, 132)


def test_roofline_tensor_parallel_is_faster_per_gpu():
    r70 = RooflineLatency(get_model("llama3-70b", tp=8), H100)
    assert r70.decode_s(64, 64 * 1024, 132) < 0.03
    assert r70.prefill_s([4096], [0], 132) < 0.3


# ---- launch durations -----------------------------------------------------------------------------
def test_launch_solo_s_kinds():
    chunk = PrefillChunk(request_id=1, start_len=1024, num_new=2048)
    decode = Launch("decode", 32, decode_ids=(1, 2), decode_kv_len=3000)
    assert launch_solo_s(ROOF_8B, decode, 32) == ROOF_8B.decode_s(2, 3000, 32)
    group = Launch("prefill", 100, prefill=(chunk,), layer_start=8, layer_end=16, num_layers=32)
    expected = ROOF_8B.prefill_s([2048], [1024], 100) / 4 + LAYER_GROUP_LAUNCH_S
    assert launch_solo_s(ROOF_8B, group, 32) == pytest.approx(expected)
    mixed = Launch("decode", 132, decode_ids=(3,), decode_kv_len=500, prefill=(chunk,), layer_end=32, num_layers=32)
    assert launch_solo_s(ROOF_8B, mixed, 32) == ROOF_8B.mixed_s([2048], [1024], 1, 500, 132)


# ---- public pdmux fits ----------------------------------------------------------------------------
def test_fit_copy_matches_shared():
    shared, copy = FIT_PATHS
    if shared.exists():
        assert json.loads(shared.read_text()) == json.loads(copy.read_text())
    assert PdmuxFitLatency("H800", path=copy).num_sms == 132


def test_pdmux_fit_exact_at_keys_and_interpolates():
    fit = PdmuxFitLatency("H800")
    a, b, c, d = json.loads(FIT_PATHS[1].read_text())["gpus"]["H800"]["prefill"]["seqlen_lt_2k"]["64"]
    assert fit.prefill_s([1024], [1024], 64) == pytest.approx((a + b + c + d) / 1e3)
    mid = fit.prefill_s([1024], [0], 68)
    assert mid == pytest.approx((fit.prefill_s([1024], [0], 64) + fit.prefill_s([1024], [0], 72)) / 2)
    assert fit.decode_s(1, 1024, 4) == fit.decode_s(1, 1024, 8)  # clamped below the smallest key
    assert fit.decode_s(1, 1024, 200) == fit.decode_s(1, 1024, 132)


def test_pdmux_fit_regimes_and_clamp():
    fit = PdmuxFitLatency("H800")
    assert fit.prefill_s([100], [0], 132) == fit.prefill_s([512], [0], 132)  # T >= 512
    rows = json.loads(FIT_PATHS[1].read_text())["gpus"]["H800"]["prefill"]
    a, b, c, d = rows["seqlen_bt_2k_8k"]["132"]
    assert fit.prefill_s([4096], [0], 132) == pytest.approx((16 * a + 4 * c + d) / 1e3)
    a, b, c, d = rows["seqlen_gt_8k"]["132"]
    assert fit.prefill_s([16384], [0], 132) == pytest.approx((256 * a + 16 * c + d) / 1e3)
    a, b, c = json.loads(FIT_PATHS[1].read_text())["gpus"]["H800"]["decode"]["seqlen_gt_128k"]["132"]
    assert fit.decode_s(4, 200 * 1024, 132) == pytest.approx((200 * a + 4 * b + c) / 1e3)


def test_pdmux_fit_shapes():
    fit = PdmuxFitLatency.for_gpu(H100)
    assert fit.table_name == "H800"
    # decode saturates with ~half the SMs, prefill keeps scaling (DESIGN 1)
    assert fit.decode_s(64, 64 * 1024, 64) < 1.15 * fit.decode_s(64, 64 * 1024, 132)
    assert fit.prefill_s([4096], [0], 64) > 1.3 * fit.prefill_s([4096], [0], 132)
    mixed = fit.mixed_s([512], [0], 16, 16 * 1024, 132)
    assert mixed > fit.prefill_s([512], [0], 132)
    assert fit.mixed_s([], [], 16, 16 * 1024, 132) == fit.decode_s(16, 16 * 1024, 132)


def test_pdmux_fit_tables_never_negative():
    for name in ("H800", "A100", "A100_8B", "RTX3090"):
        fit = PdmuxFitLatency(name)
        for sms in range(1, fit.num_sms + 9, 4):
            for n in (1, 512, 2048, 8192, 100_000):
                assert fit.prefill_s([n], [n], sms) >= MIN_PREDICTION_S
            assert fit.decode_s(1, 10, sms) >= MIN_PREDICTION_S


def test_fit_table_choice():
    assert fit_table_for(GPUS["a100"], MODELS["llama3-8b"]) == "A100_8B"
    assert fit_table_for(GPUS["a100"], MODELS["llama3-70b"]) == "A100"
    assert fit_table_for(GPUS["h200"]) == "H800"
    with pytest.raises(KeyError, match="H800"):
        PdmuxFitLatency("B200")


# ---- measured profile tables ----------------------------------------------------------------------
def _samples() -> pd.DataFrame:
    rows = []
    for sms in (32, 64, 132):
        for n in (512, 1024, 4096, 16384):
            for r in (0, 4096, 32768):
                rows.append(("prefill", sms, n, r, 1, 0, ROOF_8B.prefill_s([n], [r], sms) * 1.03))
        for batch in (1, 16, 64, 256):
            for ctx in (256, 1024, 8192):
                rows.append(("decode", sms, 0, 0, batch, batch * ctx, ROOF_8B.decode_s(batch, batch * ctx, sms)))
    return pd.DataFrame(rows, columns=["phase", "num_sms", "new_len", "reused_len", "batch", "kv_len", "latency_s"])


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    directory = tmp_path_factory.mktemp("profile")
    write_profile_table(directory, _samples(), {"model": "llama3-8b", "gpu": "h100"})
    return ProfileTableLatency(directory)


def test_profile_table_round_trip(table, tmp_path):
    assert table.metadata == {"gpu": "h100", "model": "llama3-8b"}
    for row in _samples().itertuples():
        got = (table.prefill_s([row.new_len], [row.reused_len], row.num_sms) if row.phase == "prefill"
               else table.decode_s(row.batch, row.kv_len, row.num_sms))
        assert got == pytest.approx(row.latency_s, rel=1e-6)
    with pytest.raises(ValueError, match="columns"):
        write_profile_table(tmp_path, _samples().drop(columns="kv_len"), {})
    write_profile_table(tmp_path, _samples(), {"gpu": "h100"})
    samples, meta = read_profile_table(tmp_path)
    pd.testing.assert_frame_equal(samples, _samples())
    assert meta == {"gpu": "h100"}


def test_profile_table_between_samples(table):
    for sms in (48, 100):
        assert table.prefill_s([2048], [0], sms) == pytest.approx(ROOF_8B.prefill_s([2048], [0], sms), rel=0.35)
        assert table.decode_s(32, 32 * 2048, sms) == pytest.approx(ROOF_8B.decode_s(32, 32 * 2048, sms), rel=0.2)
    lo, mid, hi = (table.prefill_s([2048], [0], s) for s in (32, 48, 64))
    assert hi < mid < lo
    assert table.decode_s(16, 16 * 512, 64) < table.decode_s(16, 16 * 4096, 64)


def test_profile_table_scattered_samples(tmp_path):
    samples = _samples().drop(index=0)  # no longer a full grid: Delaunay path
    write_profile_table(tmp_path, samples, {})
    scattered = ProfileTableLatency(tmp_path)
    for row in samples[samples["phase"] == "prefill"].itertuples():
        assert scattered.prefill_s([row.new_len], [row.reused_len], row.num_sms) == \
            pytest.approx(row.latency_s, rel=1e-6)


def test_profile_table_extrapolates_with_fit(table):
    far = table.prefill_s([65536], [0], 132)
    assert far > table.prefill_s([16384], [0], 132) * 3
    assert np.isfinite(table.decode_s(512, 512 * 16384, 132))
    assert table.mixed_s([1024], [0], 8, 8 * 1024, 64) > table.prefill_s([1024], [0], 64)


def test_pdmux_refuses_chunks_smaller_than_its_fits():
    import simpy

    from sim.run import SimConfig, build

    build(SimConfig(policy="chunked", latency="pdmux", policy_options={"token_budget": 512}), simpy.Environment())
    with pytest.raises(ValueError, match="prices any batch under 512 tokens as 512"):
        build(SimConfig(policy="chunked", latency="pdmux", policy_options={"token_budget": 256}), simpy.Environment())
    build(SimConfig(policy="chunked", latency="measured", policy_options={"token_budget": 256}), simpy.Environment())
