"""Contention between the prefill and decode lanes."""
import pytest
from hypothesis import given, settings, strategies as st

from sim.contention import PESSIMISTIC_EXCESS, ContentionModel, NoContention, share_bandwidth
from sim.hardware import GPUS
from sim.latency import RooflineLatency
from sim.model_spec import MODELS
from yoda.backend import Launch, PrefillChunk

H100, A100 = GPUS["h100"], GPUS["a100"]
MODEL = MODELS["llama3-8b"]


def decode(num_sms: int, batch: int = 64, ctx: int = 2048) -> Launch:
    return Launch("decode", num_sms, decode_ids=tuple(range(batch)), decode_kv_len=batch * ctx)


def prefill(num_sms: int, num_new: int = 4096, start_len: int = 0) -> Launch:
    return Launch("prefill", num_sms, prefill=(PrefillChunk(0, start_len, num_new),), layer_start=0,
                  layer_end=4, num_layers=32)


def test_idle_other_lane_no_slowdown():
    assert ContentionModel().slowdown(decode(20), None, H100, MODEL) == 1.0


@pytest.mark.parametrize("gpu", [H100, A100])
def test_bounds(gpu):
    model = ContentionModel()
    for d_sms in range(8, gpu.num_sms - 7, 8):
        p_sms = gpu.num_sms - d_sms
        for batch in (1, 64, 256):
            for n in (512, 4096, 32768):
                d, p = decode(d_sms, batch), prefill(p_sms, n)
                demand = model.demand_bytes_per_s(d, gpu, MODEL) + model.demand_bytes_per_s(p, gpu, MODEL)
                for this, other in ((d, p), (p, d)):
                    s = model.slowdown(this, other, gpu, MODEL)
                    assert s >= 1.0
                    if demand <= model.usable_bytes_per_s(gpu):  # HBM not oversubscribed: the paper's worst case
                        assert s <= 1.0 + gpu.max_contention_slowdown + 1e-12


def test_decode_suffers_more_than_prefill():
    model = ContentionModel()
    d, p = decode(36), prefill(96)
    assert model.slowdown(d, p, H100, MODEL) > model.slowdown(p, d, H100, MODEL) > 1.0
    assert model.slowdown(d, p, H100, MODEL) > 1.1


def test_bigger_neighbour_hurts_more():
    model = ContentionModel()
    small, big = (model.slowdown(decode(20), prefill(s), H100, MODEL) for s in (48, 112))
    assert small < big


def test_deterministic_and_configurable():
    a, b = ContentionModel(), ContentionModel()
    d, p = decode(20), prefill(112)
    assert a.slowdown(d, p, H100, MODEL) == b.slowdown(d, p, H100, MODEL) == a.slowdown(d, p, H100, MODEL)
    assert ContentionModel(max_slowdown=0.0).slowdown(d, p, H100, MODEL) == 1.0
    with pytest.raises(ValueError):
        ContentionModel(max_slowdown=1.5)


def test_no_contention():
    assert NoContention().slowdown(decode(20), prefill(112), H100, MODEL) == 1.0


@pytest.mark.parametrize("batch,ctx", [(1, 16), (8, 700), (64, 2048), (256, 30000)])
@pytest.mark.parametrize("num_sms", [8, 40, 132])
def test_decode_profile_from_its_kv_line_is_the_roofline_profile(batch, ctx, num_sms):
    # decode profiles are memoised as lines in KV per batch and partition: they must equal the profile
    # computed from the roofline at that KV directly (the prefill path)
    model = ContentionModel()
    launch = decode(num_sms, batch, ctx)
    memory_s, compute_s = model._memory_compute_s(RooflineLatency(MODEL, H100), launch)
    memory_bound = memory_s / max(memory_s, compute_s)
    expected = (max(model.min_sensitivity, memory_bound),
                min(1.0, memory_bound * H100.bandwidth_share(num_sms) + (1 - memory_bound) * H100.compute_share(num_sms)))
    assert model.profile(launch, H100, MODEL) == pytest.approx(expected, rel=1e-12)


def test_both_lanes_at_once_match_one_at_a_time_and_layers_do_not_matter():
    """`slowdowns` (what the simulator asks) is `slowdown` both ways; a prefill job's layer groups share one
    profile, so a group's layer range must not change it."""
    d, p = decode(48, 96, 3000), prefill(80, 6000, 1024)
    model = ContentionModel()
    assert model.slowdowns(d, p, H100, MODEL) == (model.slowdown(d, p, H100, MODEL), model.slowdown(p, d, H100, MODEL))
    later_group = Launch("prefill", 80, prefill=p.prefill, layer_start=4, layer_end=30, num_layers=32)
    fresh = ContentionModel()
    assert fresh.slowdown(d, later_group, H100, MODEL) == model.slowdown(d, p, H100, MODEL)
    assert model.slowdown(d, prefill(40, 6000, 1024), H100, MODEL) != model.slowdown(d, p, H100, MODEL)
    assert NoContention().slowdowns(d, p, H100, MODEL) == (1.0, 1.0)


def _traffic(model, launch, other, gpu):
    """HBM bytes/s `launch` draws beside `other`: its solo demand over its slowdown."""
    return model.demand_bytes_per_s(launch, gpu, MODEL) / model.slowdown(launch, other, gpu, MODEL)


launches = st.one_of(
    st.builds(lambda b, ctx: ("decode", b, ctx), st.integers(1, 512), st.integers(1, 131072)),
    st.builds(lambda n, r: ("prefill", n, r), st.integers(1, 65536), st.integers(0, 131072)))


@settings(max_examples=300, deadline=None)
@given(a=launches, b=launches, a_groups=st.integers(1, 15), gpu=st.sampled_from([H100, A100, GPUS["h200"]]),
       mode=st.sampled_from(["default", "pessimistic"]))
def test_two_lanes_never_exceed_hbm_bandwidth_or_sms(a, b, a_groups, gpu, mode):
    a_sms = min(8 * a_groups, gpu.num_sms - 8)
    b_sms = gpu.num_sms - a_sms  # the lanes' partitions never overlap (sim.gpu_instance refuses that)
    make = {"decode": lambda sms, x, y: decode(sms, x, y), "prefill": lambda sms, x, y: prefill(sms, x, y)}
    la, lb = make[a[0]](a_sms, a[1], a[2]), make[b[0]](b_sms, b[1], b[2])
    model = ContentionModel.for_mode(mode)
    assert la.num_sms + lb.num_sms <= gpu.num_sms
    total = _traffic(model, la, lb, gpu) + _traffic(model, lb, la, gpu)
    assert total <= model.usable_bytes_per_s(gpu) * (1 + 1e-9) <= gpu.hbm_bytes_per_s


def test_two_memory_bound_decodes_share_bandwidth():
    # two decode lanes on half the GPU each would each draw ~78% of HBM alone: the old model let them
    # draw 108-113% together; now they stretch to fit
    model = ContentionModel()
    a, b = decode(64, 256, 8192), decode(64, 256, 8192)
    slow_a, slow_b = model.slowdowns(a, b, H100, MODEL)
    assert slow_a > 1.0 + H100.max_contention_slowdown
    total = model.demand_bytes_per_s(a, H100, MODEL) / slow_a + model.demand_bytes_per_s(b, H100, MODEL) / slow_b
    assert total == pytest.approx(model.usable_bytes_per_s(H100), rel=1e-9)


@pytest.mark.parametrize("demands", [(1.0, 1.0), (0.2, 3.0), (3.0, 0.2), (0.9, 0.05), (5.0, 5.0)])
def test_share_bandwidth_is_max_min_fair(demands):
    got = share_bandwidth(*demands, capacity=1.0)
    assert sum(got) <= 1.0 + 1e-12 and all(g <= d + 1e-12 for g, d in zip(got, demands))
    if sum(demands) > 1.0:
        assert sum(got) == pytest.approx(1.0)
        assert min(got) == pytest.approx(min(min(demands), 0.5))


def test_pessimistic_is_one_and_a_half_times_the_excess():
    d, p = decode(36), prefill(96, 512)
    for this, other in ((d, p), (p, d)):
        default = ContentionModel().slowdown(this, other, H100, MODEL)
        worse = ContentionModel.for_mode("pessimistic").slowdown(this, other, H100, MODEL)
        assert worse - 1.0 == pytest.approx(PESSIMISTIC_EXCESS * (default - 1.0))
    with pytest.raises(ValueError, match="unknown contention mode"):
        ContentionModel.for_mode("optimistic")
