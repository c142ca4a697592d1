"""The paged KV pool: one K and one V tensor per layer, shared in place by the prefill and decode lanes.

Block ids come from the policy core's `yoda.kv_cache.KVCache` (`block_table(seq_id)`); the pool only maps
them to tensor slots: token i of a sequence lives in slot `table[i // block_size] * block_size + i % block_size`.
The pool holds one block more than the cache manages: `scratch_block`, where padded (dummy) batch rows of
a CUDA-graph replay write their KV, so padding never touches a live block.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import PretrainedConfig

from executor.config import head_dim


class KVPool:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks
        # k[layer], v[layer]: [num_blocks + 1, block_size, num_kv_heads, head_dim]
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)  # zeroed before any partition stream (no implicit sync) reads it

    @classmethod
    def for_model(cls, config: PretrainedConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                  device: torch.device | str) -> "KVPool":
        return cls(config.num_hidden_layers, num_blocks, block_size, config.num_key_value_heads, head_dim(config),
                   dtype, device)

    @staticmethod
    def bytes_per_block(config: PretrainedConfig, block_size: int, dtype: torch.dtype) -> int:
        """K and V of one block over all layers."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * head_dim(config) * elem

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Write new K/V in place. k, v: [T, Hk, D]; slot_mapping: [T] int64 slots (block * block_size + offset)."""
        self.k[layer].view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
        self.v[layer].view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)


def slot_mapping(block_table: Sequence[int], start_len: int, end_len: int, block_size: int) -> torch.Tensor:
    """[end_len - start_len] int64 pool slots of token positions [start_len, end_len) (a host tensor)."""
    if end_len > len(block_table) * block_size:
        raise ValueError(f"block table of {len(block_table)} blocks of {block_size} cannot hold {end_len} tokens: "
                         "the scheduler must allocate or extend KV blocks before launching")
    first, last = start_len // block_size, -(-end_len // block_size)
    blocks = torch.tensor(block_table[first:last], dtype=torch.int64)
    pos = torch.arange(start_len, end_len)
    return blocks[pos // block_size - first] * block_size + pos % block_size
