"""Contention between the prefill and decode lanes."""
import pytest

from sim.contention import ContentionModel, NoContention
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
                for this, other in ((d, p), (p, d)):
                    s = model.slowdown(this, other, gpu, MODEL)
                    assert 1.0 <= s <= 1.0 + gpu.max_contention_slowdown + 1e-12


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
