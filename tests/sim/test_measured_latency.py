"""The measured latency source (Vidur's operator tables shipped in calibration/profiles/vidur/)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sim.hardware import GPUS, GpuSpec
from sim.measured_latency import MeasuredLatency
from sim.model_spec import get_model
from sim.operator_tables import GEMM_OPS, TABLE_DIR, AllReduceTable, GemmLibrary, OperatorTable, tables_for
from sim.run import SimConfig, make_latency

H100, H200, A100 = GPUS["h100"], GPUS["h200"], GPUS["a100"]
M8 = MeasuredLatency(get_model("llama3-8b"), H100)
M8_A100 = MeasuredLatency(get_model("llama3-8b"), A100)


def test_tables_ship_inside_the_project_with_licence():
    for name in ("LICENSE-MIT", "README.md", "h100_llama-2-7b.csv", "a100_llama-3-8b.csv", "h100_dgx_all_reduce.csv"):
        assert (TABLE_DIR / name).exists()
    assert "calibration" in TABLE_DIR.parts and "shared" not in TABLE_DIR.parts


def test_default_source_is_measured():
    assert SimConfig().latency == "measured"
    assert isinstance(make_latency("measured", get_model("llama3-8b"), H100), MeasuredLatency)
    with pytest.raises(ValueError, match="no measured table covers"):
        MeasuredLatency(get_model("llama3-8b"), GpuSpec("mi300", 304, 1307.0, 5300.0, 192.0))


def test_measured_shape_is_read_exactly_and_keeps_steps():
    # a shape present in the table is the table itself at its points, steps included (no smoothing)
    table = OperatorTable("h100_llama-2-7b")
    library = GemmLibrary([table])
    tokens = table.tokens(1)
    for op, kn in table.shape.gemms(1).items():
        np.testing.assert_allclose(library.gemm_ms(tokens, *kn), table.op_ms(op, 1))
    up = table.op_ms("mlp_up_proj", 1)
    jumps = np.abs(np.diff(up)) / up[:-1]
    assert jumps.max() > 0.2  # the table has wave steps ...
    i = int(jumps.argmax())
    got = library.gemm_ms(tokens[i:i + 2], *table.shape.gemms(1)["mlp_up_proj"])
    assert abs(got[1] / got[0] - 1) == pytest.approx(jumps[i])  # ... and the source keeps them


def test_llama3_70b_tp8_layer_is_the_h100_table_plus_measured_all_reduce():
    model = get_model("llama3-70b", tp=8)  # same linear shapes as Llama-2-70b's table
    source = MeasuredLatency(model, H100)
    table = OperatorTable("h100_llama-2-70b")
    tokens = table.tokens(8)
    gemms = sum(table.op_ms(op, 8) for op in GEMM_OPS) / 1e3
    np.testing.assert_allclose(sum(source._gemms[op] for op in GEMM_OPS), gemms)
    all_reduce = AllReduceTable()
    assert 20e-6 <= all_reduce.time_s(8, 4096 * 2) <= 40e-6  # NCCL's small-message latency, measured
    # the iteration pays two all-reduces per layer on top of single-GPU work
    assert source._all_reduce_s(1) == pytest.approx(2 * all_reduce.time_s(8, model.hidden * 2))


def test_h200_speeds_up_memory_bound_work_only():
    h200 = MeasuredLatency(get_model("llama3-8b"), H200)
    assert h200.decode_s(32, 32 * 2048, 132) < 0.85 * M8.decode_s(32, 32 * 2048, 132)
    assert h200.prefill_s([4096], [0], 132) == pytest.approx(M8.prefill_s([4096], [0], 132), rel=0.05)


def test_model_without_table_is_derived_by_shape():
    # Llama-3-8B on H100 has no table: derived from the 7B/70B shapes; it costs more than Llama-2-7b-like
    # work (wider MLP) and far less than 70B
    m70 = MeasuredLatency(get_model("llama3-70b"), H100)
    for n in (16, 512, 4096):
        assert M8.prefill_s([n], [0], 132) < m70.prefill_s([n], [0], 132) / 4
    qwen = MeasuredLatency(get_model("qwen2.5-7b"), H100)
    assert 0.5 < qwen.prefill_s([2048], [0], 132) / M8.prefill_s([2048], [0], 132) < 1.5


def test_decode_floor_and_long_context():
    # the tables carry a per-layer floor: a one-token step of 32 layers costs several ms
    assert M8.decode_s(1, 1, 132) > 32 * 150e-6
    # a chunk after a long prefix is slower than the same chunk alone by more than its attention FLOPs say
    alone, after = M8.prefill_s([1024], [0], 132), M8.prefill_s([1024], [32768], 132)
    assert after > 1.2 * alone


@settings(max_examples=80, deadline=None)
@given(new=st.integers(1, 20000), reused=st.integers(0, 60000), batch=st.integers(1, 256),
       ctx=st.integers(1, 32768), sms=st.sampled_from([8, 16, 24, 40, 64, 96, 120]),
       gpu=st.sampled_from([H100, A100]))
def test_more_sms_never_slower(new, reused, batch, ctx, sms, gpu):
    source = M8 if gpu is H100 else M8_A100
    more = min(sms + 8, gpu.num_sms)
    assert source.prefill_s([new], [reused], more) <= source.prefill_s([new], [reused], sms) * (1 + 1e-12)
    assert source.decode_s(batch, batch * ctx, more) <= source.decode_s(batch, batch * ctx, sms) * (1 + 1e-12)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 256), kv=st.integers(0, 1 << 22), sms=st.sampled_from([16, 64, 132]))
def test_decode_is_linear_in_kv(batch, kv, sms):
    # decode_linear_in_kv lets the simulator treat a decode run as an arithmetic progression
    a, b = M8.decode_s(batch, 0, sms), M8.decode_s(batch, 1 << 20, sms)
    assert M8.decode_s(batch, kv, sms) == pytest.approx(a + (b - a) * kv / (1 << 20), rel=1e-9)


def test_sm_scaling_waves_and_bandwidth():
    # prefill (compute-bound) scales ~ with SMs; a decode step keeps most of its speed on half the GPU
    assert 1.7 < M8.prefill_s([8192], [0], 64) / M8.prefill_s([8192], [0], 132) < 2.3
    assert M8.decode_s(32, 32 * 1024, 64) / M8.decode_s(32, 32 * 1024, 132) < 1.15


def test_tables_for_each_family():
    assert [t.name for t in tables_for("h100")] == ["h100_llama-2-7b", "h100_llama-2-70b"]
    assert 0.0 < OperatorTable("a100_llama-3-8b").relative_spread() < 0.2


@pytest.mark.parametrize("source", ["measured", "roofline"])
@pytest.mark.parametrize("tp", [1, 2])
def test_chunk_step_s_is_mixed_s_exactly(source, tp):
    """The simulator's per-step form of a chunked launch gives mixed_s's times to the last bit."""
    from sim.latency import RooflineLatency
    model, gpu = get_model("llama3-8b", tp=tp), GPUS["h100"]
    latency = MeasuredLatency(model, gpu) if source == "measured" else RooflineLatency(model, gpu)
    for n, start, b, kv, sms in ((512, 0, 3, 900, 132), (256, 40000, 64, 200_000, 96), (1, 7, 1, 5, 8)):
        step_s = latency.chunk_step_s(n, start, b, kv, sms)
        for j in (0, 1, 5, 63):
            assert step_s(j) == latency.mixed_s([n], [start + j * n], b, kv + j * b, sms)
