"""Triton kernels of the executor, with the same signatures as torch_reference.

Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (set it before triton is first imported).
Uses nothing newer than Triton 3.6. NOTE: `apply_rope` works in place (on strided views of q and k).
Each kernel's launch parameters (constexprs and num_warps) come from one `*_params` function, which
executor.kernel_report also compiles for sm_90 ahead of time: tile sizes and warps below were chosen
there so that no kernel spills registers on Hopper (`python -m executor.gpu_check --preflight`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu"  # interpreter: small tiles keep multi-tile paths covered and fast


# ---- launch parameters (shared with executor.kernel_report) -------------------------------------------
# sm_90, bf16, head_dim 128: decode 4 warps x BLOCK_N 64 spilled 24 B of stack at 255 registers and prefill
# 4 warps x 64 x 64 spilled 536 B; 8 warps keep both in registers (decode 122, prefill 178 per thread).
DECODE_BLOCK_N, DECODE_WARPS = 32, 8
PREFILL_BLOCK_M, PREFILL_BLOCK_N, PREFILL_WARPS = 64, 64, 8


def rms_norm_params(n_cols: int, on_cpu: bool) -> dict:
    block = triton.next_power_of_2(n_cols)
    return {"BLOCK_ROWS": 16 if on_cpu else 1, "BLOCK": block, "num_warps": min(16, max(1, block // 256))}


def rope_params(num_q_heads: int, num_k_heads: int, head_dim: int, on_cpu: bool) -> dict:
    return {"HALF": head_dim // 2, "BLOCK_T": 16 if on_cpu else 1, "BLOCK_HQ": triton.next_power_of_2(num_q_heads),
            "BLOCK_HK": triton.next_power_of_2(num_k_heads)}


def silu_mul_params(on_cpu: bool) -> dict:
    return {"BLOCK_ROWS": 16 if on_cpu else 1, "BLOCK": 64 if on_cpu else 1024}


# INTERPRETED (on the CPU, where triton runs only under TRITON_INTERPRET=1): the attention kernels walk the KV
# tiles with a `while` loop instead of `range(start, end, BLOCK_N)`. Triton 3.6's interpreter turns a range
# bound that is a tensor into an int with int() on its 1-element array, which numpy >= 2.4 refuses ("only
# 0-dimensional arrays can be converted to Python scalars"; 3.7+ squeezes it first). Compiled, the `for`
# loop stays: the software pipeliner works only on it.
def decode_split_params(group: int, head_dim: int, block_size: int, num_splits: int, dtype: torch.dtype,
                        on_cpu: bool) -> dict:
    # NOTE: the interpreter computes bf16 arithmetic on raw bits, so on the CPU every dot runs in fp32;
    # fp32 uses exact ("ieee") products, never TF32.
    dot = torch.float32 if on_cpu else dtype
    return {"GROUP": group, "HEAD_DIM": head_dim, "BLOCK_H": max(16, triton.next_power_of_2(group)),
            "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_N": 16 if on_cpu else DECODE_BLOCK_N,
            "BLOCK_SIZE": block_size, "NUM_SPLITS": num_splits, "DOT_DTYPE": _TL_DTYPES[dot],
            "PRECISION": "ieee" if dot == torch.float32 else "tf32", "INTERPRETED": on_cpu,
            "num_warps": 4 if on_cpu else DECODE_WARPS}


def decode_reduce_params(head_dim: int, num_splits: int) -> dict:
    return {"HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim), "NUM_SPLITS": num_splits,
            "BLOCK_S": triton.next_power_of_2(num_splits)}


def prefill_params(group: int, head_dim: int, block_size: int, dtype: torch.dtype, on_cpu: bool) -> dict:
    dot = torch.float32 if on_cpu else dtype
    return {"GROUP": group, "HEAD_DIM": head_dim, "BLOCK_M": 16 if on_cpu else PREFILL_BLOCK_M,
            "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_N": 16 if on_cpu else PREFILL_BLOCK_N,
            "BLOCK_SIZE": block_size, "DOT_DTYPE": _TL_DTYPES[dot],
            "PRECISION": "ieee" if dot == torch.float32 else "tf32", "INTERPRETED": on_cpu,
            "num_warps": 4 if on_cpu else PREFILL_WARPS}


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, x_stride, out_stride, n_rows, n_cols, eps,
                     BLOCK_ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = x / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)[:, None]  # [BLOCK_ROWS, BLOCK]
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    # as transformers: weight * y rounded to the input dtype (exact in fp32, rounded once more on store)
    out = w * y.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, hidden] (rows contiguous) -> [T, hidden]."""
    assert x.stride(-1) == 1
    out = torch.empty_like(x)
    if x.shape[0]:
        params = rms_norm_params(x.shape[1], _on_cpu(x))
        _rms_norm_kernel[(triton.cdiv(x.shape[0], params["BLOCK_ROWS"]),)](
            x, weight, out, x.stride(0), out.stride(0), x.shape[0], x.shape[1], eps, **params)
    return out


@triton.jit
def _rope_heads(x_ptr, t, t_mask, stride_t, stride_h, num_heads, cos, sin, HALF: tl.constexpr,
                BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HALF)
    mask = t_mask[:, None, None] & (h < num_heads)[None, :, None]
    ptr = x_ptr + t[:, None, None] * stride_t + h[None, :, None] * stride_h + d[None, None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_H, HALF]
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(ptr + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, pos_ptr, cos_sin_ptr, q_stride_t, q_stride_h, k_stride_t, k_stride_h, num_tokens,
                 num_q_heads, num_k_heads, HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr,
                 BLOCK_HK: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < num_tokens
    pos = tl.load(pos_ptr + t, mask=t_mask, other=0).to(tl.int64)
    d = tl.arange(0, HALF)
    row = cos_sin_ptr + pos[:, None] * 2 * HALF + d[None, :]
    cos = tl.load(row, mask=t_mask[:, None], other=0.0)[:, None, :]  # [BLOCK_T, 1, HALF] fp32
    sin = tl.load(row + HALF, mask=t_mask[:, None], other=0.0)[:, None, :]
    _rope_heads(q_ptr, t, t_mask, q_stride_t, q_stride_h, num_q_heads, cos, sin, HALF, BLOCK_HQ)
    _rope_heads(k_ptr, t, t_mask, k_stride_t, k_stride_h, num_k_heads, cos, sin, HALF, BLOCK_HK)


def apply_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
               cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place. q: [T, Hq, D], k: [T, Hk, D] (last dim contiguous), positions: [T], cos_sin: [max_pos, D] fp32."""
    half = q.shape[-1] // 2
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and half == triton.next_power_of_2(half)
    if q.shape[0]:
        params = rope_params(q.shape[1], k.shape[1], q.shape[-1], _on_cpu(q))
        _rope_kernel[(triton.cdiv(q.shape[0], params["BLOCK_T"]),)](
            q, k, positions, cos_sin, q.stride(0), q.stride(1), k.stride(0), k.stride(1), q.shape[0],
            q.shape[1], k.shape[1], **params)
    return q, k


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, x_stride, out_stride, n_rows, n_cols, BLOCK_ROWS: tl.constexpr,
                     BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    ptr = x_ptr + rows[:, None] * x_stride + cols[None, :]
    gate = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_ROWS, BLOCK]
    up = tl.load(ptr + n_cols, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + rows[:, None] * out_stride + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [T, 2 * I] (gate | up) -> [T, I] = silu(gate) * up."""
    num_tokens, inter = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((num_tokens, inter), dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens:
        params = silu_mul_params(_on_cpu(gate_up))
        _silu_mul_kernel[(triton.cdiv(num_tokens, params["BLOCK_ROWS"]), triton.cdiv(inter, params["BLOCK"]))](
            gate_up, out, gate_up.stride(0), out.stride(0), num_tokens, inter, **params)
    return out


@triton.jit
def _load_paged(cache_ptr, table_row_ptr, offs_n, n_mask, kv_head, d, d_mask, stride_blk, stride_tok, stride_head,
                BLOCK_SIZE: tl.constexpr):
    """Gather [BLOCK_N, BLOCK_D] of one KV head for token positions offs_n of a sequence's block table."""
    blk = tl.load(table_row_ptr + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    row = blk * stride_blk + (offs_n % BLOCK_SIZE) * stride_tok + kv_head * stride_head
    return tl.load(cache_ptr + row[:, None] + d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)


@triton.jit
def _attend_tile(q, m_i, l_i, acc, n0, end, q_pos, k_ptr, v_ptr, table_row, kv_head, d, d_mask, scale, stride_blk,
                 stride_tok, stride_head, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, CAUSAL: tl.constexpr):
    """One online-softmax step over keys [n0, n0 + BLOCK_N) (those < end; causal: those <= q_pos per row)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_mask = offs_n < end
    k = _load_paged(k_ptr, table_row, offs_n, n_mask, kv_head, d, d_mask, stride_blk, stride_tok, stride_head,
                    BLOCK_SIZE).to(DOT_DTYPE)
    v = _load_paged(v_ptr, table_row, offs_n, n_mask, kv_head, d, d_mask, stride_blk, stride_tok, stride_head,
                    BLOCK_SIZE).to(DOT_DTYPE)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [rows, BLOCK_N]
    if CAUSAL:
        s = tl.where(n_mask[None, :] & (offs_n[None, :] <= q_pos[:, None]), s, float("-inf"))
    else:
        s = tl.where(n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    p = tl.exp(s - m_new[:, None])
    alpha = tl.exp(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, tables_ptr, seq_lens_ptr, part_out_ptr, part_lse_ptr, scale,
                         q_stride_b, q_stride_h, table_stride, stride_blk, stride_tok, stride_head,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                         NUM_SPLITS: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                         INTERPRETED: tl.constexpr):
    b, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    split_len = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    hh = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + hh
    h_mask = hh < GROUP
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + b * q_stride_b + heads[:, None] * q_stride_h + d[None, :],
                mask=h_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)  # [BLOCK_H, BLOCK_D]
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    table_row = tables_ptr + b * table_stride
    if INTERPRETED:  # see decode_split_params
        n0 = start
        while n0 < end:
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, n0, end, hh, k_ptr, v_ptr, table_row, kv_head, d, d_mask,
                                         scale, stride_blk, stride_tok, stride_head, BLOCK_N, BLOCK_SIZE, DOT_DTYPE,
                                         PRECISION, False)
            n0 += BLOCK_N
    else:
        for n0 in range(start, end, BLOCK_N):
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, n0, end, hh, k_ptr, v_ptr, table_row, kv_head, d, d_mask,
                                         scale, stride_blk, stride_tok, stride_head, BLOCK_N, BLOCK_SIZE, DOT_DTYPE,
                                         PRECISION, False)
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    row = (b * GROUP * tl.num_programs(1) + heads) * NUM_SPLITS + split  # [b, head, split]
    tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=h_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + row, lse, mask=h_mask)


@triton.jit
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, out_stride_b, out_stride_h, num_heads,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
                          BLOCK_S: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    base = (b * num_heads + h) * NUM_SPLITS
    lse = tl.load(part_lse_ptr + base + s, mask=s < NUM_SPLITS, other=float("-inf"))  # [BLOCK_S]
    w = tl.exp(lse - tl.max(lse, axis=0))
    part = tl.load(part_out_ptr + (base + s)[:, None] * HEAD_DIM + d[None, :],
                   mask=(s < NUM_SPLITS)[:, None] & (d < HEAD_DIM)[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    out = tl.sum(part * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b * out_stride_b + h * out_stride_h + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     num_splits: int = 1) -> torch.Tensor:
    """Split-KV (flash-decoding) paged attention, one new token per sequence.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hk, D]; block_tables: [B, max_blocks] int32;
    seq_lens: [B] (>= 1). `num_splits` KV ranges per (sequence, KV head) run as separate programs and are
    merged by log-sum-exp; it is fixed per call so a CUDA graph can replay it for any lengths.
    """
    batch, num_heads, dim = q.shape
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    group = num_heads // num_kv_heads
    assert k_cache.stride() == v_cache.stride() and q.stride(-1) == 1
    out = torch.empty_like(q)
    if batch == 0:
        return out
    part_out = torch.empty((batch, num_heads, num_splits, dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, scale,
        q.stride(0), q.stride(1), block_tables.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        **decode_split_params(group, dim, block_size, num_splits, q.dtype, _on_cpu(q)))
    _decode_reduce_kernel[(batch, num_heads)](
        part_out, part_lse, out, out.stride(0), out.stride(1), num_heads, **decode_reduce_params(dim, num_splits))
    return out


@triton.jit
def _prefill_kernel(q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, seq_lens_ptr, query_start_ptr, scale,
                    q_stride_t, q_stride_h, out_stride_t, out_stride_h, table_stride, stride_blk, stride_tok,
                    stride_head, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    seq, m_block, head = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix_len = seq_len - q_len
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < q_len
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    rows = (q_start + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * q_stride_t + head * q_stride_h + d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)  # [BLOCK_M, BLOCK_D]
    q_pos = prefix_len + offs_m
    # causal: this tile of queries sees keys [0, prefix_len + last query + 1); nothing if the tile is empty
    end = tl.minimum(seq_len, prefix_len + (m_block + 1) * BLOCK_M)
    end = tl.where(m_block * BLOCK_M < q_len, end, 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    table_row = tables_ptr + seq * table_stride
    # key 0 is visible to every row of a non-empty tile: m_i is finite after the first tile
    if INTERPRETED:  # see decode_split_params
        n0 = 0
        while n0 < end:
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, n0, end, q_pos, k_ptr, v_ptr, table_row, kv_head, d,
                                         d_mask, scale, stride_blk, stride_tok, stride_head, BLOCK_N, BLOCK_SIZE,
                                         DOT_DTYPE, PRECISION, True)
            n0 += BLOCK_N
    else:
        for n0 in range(0, end, BLOCK_N):
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, n0, end, q_pos, k_ptr, v_ptr, table_row, kv_head, d,
                                         d_mask, scale, stride_blk, stride_tok, stride_head, BLOCK_N, BLOCK_SIZE,
                                         DOT_DTYPE, PRECISION, True)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] * out_stride_t + head * out_stride_h + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start: torch.Tensor,
                      scale: float, max_query_len: int) -> torch.Tensor:
    """Causal attention of new tokens over cached prefix + themselves, all read from the paged pool.

    q: [T, Hq, D]; seq i owns rows query_start[i]:query_start[i+1] and has seq_lens[i] tokens of KV.
    """
    num_heads, dim = q.shape[1], q.shape[2]
    num_kv_heads, block_size = k_cache.shape[2], k_cache.shape[1]
    assert k_cache.stride() == v_cache.stride() and q.stride(-1) == 1
    out = torch.empty_like(q)
    if q.shape[0] == 0:
        return out
    params = prefill_params(num_heads // num_kv_heads, dim, block_size, q.dtype, _on_cpu(q))
    grid = (seq_lens.shape[0], triton.cdiv(max_query_len, params["BLOCK_M"]), num_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens, query_start, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), block_tables.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), **params)
    return out
