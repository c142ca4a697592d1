"""KV pool slots, in-place stores and metadata building."""
import pytest
import torch

from executor.attn_metadata import SeqSlice, build_attn_metadata, choose_num_splits
from executor.config import load_config
from executor.kv_pool import KVPool, slot_mapping


def test_slot_mapping_follows_block_table():
    assert slot_mapping([5, 2, 9], 3, 9, 4).tolist() == [23, 8, 9, 10, 11, 36]
    assert slot_mapping([5, 2, 9], 8, 8, 4).tolist() == []
    with pytest.raises(ValueError, match="cannot hold"):
        slot_mapping([5, 2], 3, 9, 4)


def test_store_writes_only_the_mapped_slots():
    pool = KVPool(num_layers=2, num_blocks=3, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32,
                  device="cpu")
    assert pool.k[1].shape == (4, 4, 2, 8) and pool.scratch_block == 3  # one scratch block beyond the cache's
    k, v = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    pool.store(1, k, v, torch.tensor([9, 10, 0]))
    assert torch.equal(pool.k[1][2, 1:3], k[:2]) and torch.equal(pool.v[1][0, 0], v[2])
    assert pool.k[0].abs().sum() == 0 and pool.k[1][1].abs().sum() == 0


def test_metadata_for_a_mixed_batch():
    meta = build_attn_metadata([SeqSlice(6, 1, [4, 1]), SeqSlice(2, 3, [0, 3, 7])], 4, "cpu")
    assert meta.positions.tolist() == [6, 2, 3, 4] and meta.slot_mapping.tolist() == [6, 2, 3, 12]
    assert meta.block_tables.tolist() == [[4, 1, 0], [0, 3, 7]] and meta.seq_lens.tolist() == [7, 5]
    assert meta.query_start.tolist() == [0, 1, 4] and meta.last_rows().tolist() == [0, 3]
    assert not meta.is_decode and meta.num_seqs == 2


def test_num_splits_uses_the_partition_sm_count():
    assert choose_num_splits(1, 8, 32768, None) == 1
    assert choose_num_splits(1, 8, 32768, 132) == 32  # one sequence, long context: capped
    assert choose_num_splits(1, 8, 32768, 20) == 5  # fewer SMs in the decode partition, fewer splits
    assert choose_num_splits(256, 8, 32768, 132) == 1
    assert choose_num_splits(1, 8, 300, 132) == 2  # at least 256 tokens per split


def test_bytes_per_block_llama3_8b():
    assert KVPool.bytes_per_block(load_config("llama3-8b"), 16, torch.bfloat16) == 2 * 32 * 16 * 8 * 128 * 2
