"""Partition menu arithmetic and the one-lane fallback (green contexts themselves need a GPU)."""
import pytest
import torch

from executor.partitions import PartitionManager, PartitionPair, default_menu, menu_from_sms, partition_resources
from yoda.backend import DECODE, PREFILL


def test_default_menu_on_h100():
    pairs = default_menu(num_groups=16, group_sms=8, remainder_sms=4)  # 132 SMs
    assert [(p.prefill_sms, p.decode_sms) for p in pairs] == [
        (112, 20), (96, 36), (80, 52), (64, 68), (48, 84), (32, 100), (16, 116)]
    assert all(p.prefill_groups + p.decode_groups == 16 for p in pairs)
    assert all(p.prefill_sms + p.decode_sms == 132 for p in pairs)


def test_menu_from_requested_sms_rounds_to_disjoint_groups():
    pairs = menu_from_sms([(112, 20), (72, 60), (100, 30), (64, 64)], 16, 8, 4)
    assert [(p.prefill_sms, p.decode_sms) for p in pairs] == [(112, 20), (72, 60), (96, 36), (64, 68)]
    assert all(p.prefill_groups + p.decode_groups <= 16 for p in pairs)
    assert menu_from_sms([(120, 4)], 16, 8, 4) == [PartitionPair(15, 0, 8, 4)]  # decode on the leftover only
    with pytest.raises(ValueError, match="without SMs"):
        menu_from_sms([(4, 128)], 16, 8, 4)
    with pytest.raises(ValueError, match="without SMs"):
        menu_from_sms([(128, 0)], 16, 8, 0)


def test_any_prefill_and_decode_partition_that_fit_are_disjoint():
    """Prefill takes groups from the low end, decode from the high end: sizes that fit never overlap."""
    pairs = default_menu(16, 8, 4)
    for p in pairs:
        for d in pairs:
            prefill = set(range(p.prefill_groups))
            decode = set(range(16 - d.decode_groups, 16))
            fits = p.prefill_sms + d.decode_sms <= 132
            assert fits == (p.prefill_groups + d.decode_groups <= 16)
            assert not fits or not prefill & decode


def test_partition_resources_are_shared_contexts_with_disjoint_groups():
    groups, leftover = [f"g{i}" for i in range(16)], ["rem"]
    pairs = menu_from_sms([(112, 20), (96, 36), (64, 68)], 16, 8, 4)
    plan = {(lane, sms): res for lane, sms, res in partition_resources(pairs, groups, leftover)}
    assert sorted(plan) == [(DECODE, 20), (DECODE, 36), (DECODE, 68), (PREFILL, 64), (PREFILL, 96), (PREFILL, 112)]
    assert plan[(PREFILL, 112)] == groups[:14] and plan[(DECODE, 20)] == ["g14", "g15", "rem"]
    assert not set(plan[(PREFILL, 96)]) & set(plan[(DECODE, 20)])  # (96, 20) also fits: disjoint too
    assert set(plan[(PREFILL, 112)]) & set(plan[(DECODE, 36)])  # (112, 36) does not fit 132 SMs


def test_cpu_is_one_lane_without_streams():
    manager = PartitionManager.create("cpu")
    assert not manager.is_partitioned and "cpu" in manager.reason
    assert manager.stream_for(PREFILL, 1) is None and manager.stream_for(DECODE, 132) is None
    assert manager.sm_options(DECODE) == [manager.num_sms] and manager.decode_streams() == {}
    with pytest.raises(ValueError, match="lane"):
        manager.stream_for("both", 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="green contexts need a GPU")
def test_green_partitions_realise_planned_sms():
    manager = PartitionManager.create("cuda")
    if not manager.is_partitioned:
        pytest.skip(manager.reason)
    for info in manager.infos:
        assert info.realised_sms == info.planned_sms, info
    for pair in manager.menu:
        assert manager.stream_for(PREFILL, pair.prefill_sms) is not manager.stream_for(DECODE, pair.decode_sms)
