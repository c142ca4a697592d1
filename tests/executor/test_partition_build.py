"""Green-context partitions built against cuda-bindings' real Python API with the driver calls faked:
each partition on its own, one failure isolated from the rest."""
import pytest

from executor.partitions import build_green
from yoda.backend import DECODE, PREFILL

driver = pytest.importorskip("cuda.bindings.driver", reason="cuda-bindings (cuda-python) not installed")
from executor.fake_driver import FakeDriver  # noqa: E402


def build(**fake):
    return build_green(FakeDriver(driver, **fake), 0, None, 8, wrap=lambda raw: raw)


def test_every_partition_of_an_h100_sized_gpu_is_built() -> None:
    b = build(num_sms=132)
    assert [(p.prefill_sms, p.decode_sms) for p in b.pairs] == [
        (112, 20), (96, 36), (80, 52), (64, 68), (48, 84), (32, 100), (16, 116)]
    assert b.failures == [] and all(i.realised_sms == i.planned_sms for i in b.infos)
    assert sorted(b.streams[DECODE]) == [20, 36, 52, 68, 84, 100, 116, 132]
    assert all(isinstance(s, driver.CUstream) for sms, s in b.streams[PREFILL].items() if sms != 132)


def test_one_failed_partition_drops_only_its_pair() -> None:
    b = build(num_sms=132, refuse=lambda sms: sms == 48)
    assert (48, 84) not in [(p.prefill_sms, p.decode_sms) for p in b.pairs] and len(b.pairs) == 6
    assert len(b.failures) == 1 and b.failures[0].startswith("prefill 48 SMs")
    assert 48 not in b.streams[PREFILL] and 16 in b.streams[PREFILL] and 112 in b.streams[PREFILL]


def test_refused_leftover_sms_fall_back_to_whole_groups() -> None:
    """A Hopper-like driver that refuses descriptors off the 8-SM grid: decode keeps its groups."""
    b = build(num_sms=132, refuse=lambda sms: sms % 8 != 0)
    assert [(p.prefill_sms, p.decode_sms) for p in b.pairs][:2] == [(112, 16), (96, 32)]
    assert all(p.prefill_sms + p.decode_sms == 128 for p in b.pairs)
    assert len(b.failures) == 7 and all("leftover SMs refused" in f for f in b.failures)


def test_realised_count_is_read_back_and_checked() -> None:
    b = build(num_sms=132, short_realised=lambda sms: sms == 112)
    assert any(f.startswith("prefill 112 SMs") and "realised 110" in f for f in b.failures)
    assert 112 not in [p.prefill_sms for p in b.pairs]


def test_fake_checks_argument_types_like_the_real_bindings() -> None:
    fake = FakeDriver(driver)
    with pytest.raises(TypeError):
        fake.cuDevResourceGenerateDesc(["not a resource"], 1)
    with pytest.raises(TypeError):
        fake.cuGreenCtxCreate(5, driver.CUdevice(0), 0)  # a raw int where a descriptor belongs
    with pytest.raises(TypeError):
        fake.cuGreenCtxStreamCreate(driver.CUgreenCtx(1), "non-blocking", 0)
