"""Plain-torch reference implementations of the executor's kernels (same signatures as triton_kernels).

Readable, slow (attention loops over sequences in Python and syncs with the host), numerically the
ground truth for the Triton kernels. Every function returns new tensors; none modifies its inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [num_tokens, hidden] -> [num_tokens, hidden]; fp32 statistics, as transformers' LlamaRMSNorm."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE. q: [T, Hq, D], k: [T, Hk, D], positions: [T], cos_sin: [max_pos, D] (cos | sin)."""
    half = q.shape[-1] // 2
    cs = cos_sin[positions]  # [T, D]
    cos, sin = cs[:, None, :half], cs[:, None, half:]  # [T, 1, D/2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float()[..., :half], x.float()[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 * I] (gate | up) -> [T, I] = silu(gate) * up."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def _gather_kv(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """cache: [num_blocks, block_size, Hk, D], block_table: [max_blocks] -> [seq_len, Hk, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    return cache[block_table[:num_blocks].long()].flatten(0, 1)[:seq_len]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, scale: float) -> torch.Tensor:
    """q: [n, Hq, D] at positions q_pos: [n]; k, v: [L, Hk, D] at positions 0..L-1 -> [n, Hq, D] (causal)."""
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # [L, Hq, D]
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,lhd->hnl", q.float(), k) * scale  # [Hq, n, L]
    key_pos = torch.arange(k.shape[0], device=q.device)
    scores = scores.masked_fill(key_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
    return torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v).to(q.dtype)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start: torch.Tensor,
                      scale: float, max_query_len: int) -> torch.Tensor:
    """Causal attention of new tokens over their sequence's paged KV (cached prefix + the new tokens).

    q: [T, Hq, D] new tokens of all sequences back to back; seq i owns rows query_start[i]:query_start[i+1]
    and has seq_lens[i] tokens of KV (its new tokens are the last ones, already written to the cache).
    k_cache, v_cache: [num_blocks, block_size, Hk, D]; block_tables: [S, max_blocks] -> [T, Hq, D].
    """
    del max_query_len  # only the Triton kernel needs it (grid size)
    out = torch.empty_like(q)
    starts, lens = query_start.tolist(), seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        a, b = starts[i], starts[i + 1]
        q_pos = torch.arange(seq_len - (b - a), seq_len, device=q.device)
        k = _gather_kv(k_cache, block_tables[i], seq_len)
        v = _gather_kv(v_cache, block_tables[i], seq_len)
        out[a:b] = _attend(q[a:b], k, v, q_pos, scale)
    return out


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     num_splits: int = 1) -> torch.Tensor:
    """One new token per sequence. q: [B, Hq, D] (its KV already written at position seq_lens-1) -> [B, Hq, D]."""
    del num_splits  # a split-KV schedule does not change the result
    query_start = torch.arange(q.shape[0] + 1, device=q.device)
    return prefill_attention(q, k_cache, v_cache, block_tables, seq_lens, query_start, scale, 1)
