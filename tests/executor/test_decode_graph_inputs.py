"""Decode-graph input filling (the replay itself needs CUDA): padding rows only touch the scratch block."""
import pytest
import torch

from executor.attn_metadata import SeqSlice
from executor.decode_graph import DecodeGraphs, batch_buckets
from executor.kv_pool import KVPool
from executor.model import build_model


def test_buckets():
    assert batch_buckets(256)[:6] == [1, 2, 4, 8, 16, 32] and batch_buckets(256)[-1] == 256
    assert batch_buckets(40) == [1, 2, 4, 8, 16, 32, 40] and batch_buckets(4) == [1, 2, 4]


def test_fill_pads_to_bucket_with_scratch_rows():
    model = build_model("tiny", use_triton=True)
    pool = KVPool.for_model(model.config, 10, 4, torch.float32, "cpu")
    graphs = DecodeGraphs(model, pool, max_batch=4, max_context_len=16)
    bucket = graphs.fill([7, 9, 11], [SeqSlice(5, 1, [3, 1]), SeqSlice(0, 1, [2]), SeqSlice(12, 1, [0, 4, 5, 6])])
    assert bucket == 4
    assert graphs.token_ids.tolist() == [7, 9, 11, 0] and graphs.positions.tolist() == [5, 0, 12, 0]
    assert graphs.slot_mapping.tolist() == [5, 8, 24, 40]  # row 3 writes the scratch block (10)
    assert graphs.seq_lens.tolist() == [6, 1, 13, 1]
    assert graphs.block_tables.tolist() == [[3, 1, 10, 10], [2, 10, 10, 10], [0, 4, 5, 6], [10, 10, 10, 10]]
    assert graphs.fill([5], [SeqSlice(2, 1, [8])]) == 1  # smaller batch: row 0 rewritten where it is read
    assert graphs.block_tables[0, 0] == 8 and graphs.seq_lens[0] == 3 and graphs.slot_mapping[0] == 34
    with pytest.raises(ValueError, match="beyond captured context"):
        graphs.fill([1], [SeqSlice(16, 1, [0, 1, 2, 3, 4])])
    with pytest.raises(ValueError, match="Triton"):
        DecodeGraphs(build_model("tiny", use_triton=False), pool, 4, 16)
