"""What one forward pass needs to know about its batch: positions, KV slots, block tables, lengths.

A batch is a list of sequences, each bringing `num_new` tokens at positions [start_len, start_len + num_new):
a decode step is one new token, a prefill chunk many; mixed batches are both. The new tokens' KV is
written to the pool before attention, so attention reads every key (prefix and new) from the pool.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from executor.kv_pool import slot_mapping


class SeqSlice(NamedTuple):
    """New tokens [start_len, start_len + num_new) of one sequence whose KV lives at `block_table`."""

    start_len: int
    num_new: int
    block_table: Sequence[int]


@dataclass(slots=True)
class AttnMetadata:
    positions: torch.Tensor  # [T] int64
    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [S, max_blocks] int32, rows padded with block 0 (never read)
    seq_lens: torch.Tensor  # [S] int32: KV length after this pass (prefix + new)
    query_start: torch.Tensor  # [S + 1] int32: rows of sequence i are query_start[i]:query_start[i+1]
    max_query_len: int
    num_splits: int = 1  # split-KV programs per (sequence, KV head) in decode attention

    @property
    def is_decode(self) -> bool:
        """Every sequence brings exactly one token: the split-KV decode kernel applies."""
        return self.max_query_len == 1

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

    def last_rows(self) -> torch.Tensor:
        """[S] row of each sequence's last new token (where its next-token logits come from)."""
        return (self.query_start[1:] - 1).long()


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int | None,
                      min_tokens_per_split: int = 256, max_splits: int = 32) -> int:
    """Enough split-KV programs to fill about two waves on `num_sms` SMs (the partition's count, not the GPU's)."""
    if not num_sms:
        return 1
    want = -(-2 * num_sms // max(1, num_seqs * num_kv_heads))
    return max(1, min(want, max_splits, -(-max_seq_len // min_tokens_per_split)))


def build_attn_metadata(seqs: Sequence[SeqSlice], block_size: int, device: torch.device | str,
                        num_splits: int = 1) -> AttnMetadata:
    """Host-side tensors for the batch, copied to `device` (pinned and non-blocking on CUDA)."""
    positions = torch.cat([torch.arange(s.start_len, s.start_len + s.num_new) for s in seqs])
    slots = torch.cat([slot_mapping(s.block_table, s.start_len, s.start_len + s.num_new, block_size) for s in seqs])
    query_start = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    query_start[1:] = torch.tensor([s.num_new for s in seqs]).cumsum(0)
    max_blocks = max(len(s.block_table) for s in seqs)
    tables = torch.zeros((len(seqs), max_blocks), dtype=torch.int32)  # padding: block 0, never read
    for i, s in enumerate(seqs):
        tables[i, :len(s.block_table)] = torch.tensor(s.block_table, dtype=torch.int32)
    seq_lens = torch.tensor([s.start_len + s.num_new for s in seqs], dtype=torch.int32)
    cuda = torch.device(device).type == "cuda"

    def to(t: torch.Tensor) -> torch.Tensor:
        # pinned + non_blocking: the host never waits for the stream (pageable copies may)
        return t.pin_memory().to(device, non_blocking=True) if cuda else t

    return AttnMetadata(
        positions=to(positions), slot_mapping=to(slots), block_tables=to(tables), seq_lens=to(seq_lens),
        query_start=to(query_start), max_query_len=max(s.num_new for s in seqs), num_splits=num_splits)
