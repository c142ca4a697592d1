"""Each Triton kernel matches its torch reference on random inputs (interpreter on the CPU, small sizes)."""
import pytest
import torch

from executor import torch_reference as ref

tk = pytest.importorskip("executor.triton_kernels")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def test_rms_norm_odd_width():
    x, w = _randn(5, 48), _randn(48, seed=1)
    torch.testing.assert_close(tk.rms_norm(x, w, 1e-5), ref.rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_heads,num_kv_heads,dim", [(4, 2, 16), (3, 1, 32)])
def test_rope_in_place_on_strided_views(num_heads, num_kv_heads, dim):
    qkv = _randn(7, (num_heads + 2 * num_kv_heads) * dim)
    q, k, _ = qkv.split([num_heads * dim, num_kv_heads * dim, num_kv_heads * dim], dim=-1)
    q, k = q.view(7, num_heads, dim), k.view(7, num_kv_heads, dim)
    positions = torch.tensor([0, 1, 5, 99, 3, 4095, 17], device=DEVICE)
    freqs = torch.outer(torch.arange(4096.0), 1.0 / 10000 ** (torch.arange(0, dim, 2) / dim))
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], -1).to(DEVICE)
    want_q, want_k = ref.apply_rope(q, k, positions, cos_sin)
    got_q, got_k = tk.apply_rope(q, k, positions, cos_sin)
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-5)
    assert got_q.data_ptr() == q.data_ptr()  # in place


def test_silu_mul_partial_tile():
    x = _randn(3, 2 * 80)
    torch.testing.assert_close(tk.silu_mul(x), ref.silu_mul(x), rtol=1e-5, atol=1e-5)


def _paged_kv(seq_lens, num_kv_heads, dim, block_size, seed):
    """Random caches and shuffled block tables; unused slots hold garbage that must never be read."""
    num_blocks = sum(-(-n // block_size) for n in seq_lens) + 3
    k = _randn(num_blocks, block_size, num_kv_heads, dim, seed=seed)
    v = _randn(num_blocks, block_size, num_kv_heads, dim, seed=seed + 1)
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
    tables, width = [], max(-(-n // block_size) for n in seq_lens)
    for n in seq_lens:
        need = -(-n // block_size)
        tables.append([perm.pop() for _ in range(need)] + [0] * (width - need))
    return k, v, torch.tensor(tables, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("num_heads,num_kv_heads,num_splits", [(4, 2, 1), (4, 2, 3), (8, 1, 2), (2, 2, 4)])
def test_decode_attention_ragged(num_heads, num_kv_heads, num_splits):
    seq_lens, dim, block_size = [1, 17, 45], 16, 4  # partial last blocks; a split may get nothing
    k, v, tables = _paged_kv(seq_lens, num_kv_heads, dim, block_size, seed=2)
    q = _randn(3, num_heads, dim, seed=9)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    want = ref.decode_attention(q, k, v, tables, lens, 0.25)
    got = tk.decode_attention(q, k, v, tables, lens, 0.25, num_splits)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_heads,num_kv_heads,block_size", [(4, 2, 4), (4, 4, 16), (6, 2, 5)])
def test_prefill_attention_with_cached_prefix(num_heads, num_kv_heads, block_size):
    prefix, new = [0, 13, 7, 30], [20, 5, 1, 18]  # ragged: fresh prompt, prefixes mid-block, one token
    seq_lens = [p + n for p, n in zip(prefix, new)]
    dim = 16
    k, v, tables = _paged_kv(seq_lens, num_kv_heads, dim, block_size, seed=4)
    q = _randn(sum(new), num_heads, dim, seed=8)
    query_start = torch.tensor([0] + torch.tensor(new).cumsum(0).tolist(), dtype=torch.int32, device=DEVICE)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    want = ref.prefill_attention(q, k, v, tables, lens, query_start, 0.25, max(new))
    got = tk.prefill_attention(q, k, v, tables, lens, query_start, 0.25, max(new))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_reference_attention_is_causal_softmax():
    """The reference itself against a dense computation: one sequence, contiguous blocks."""
    dim, n = 8, 6
    k, v = _randn(2, 4, 1, dim, seed=1), _randn(2, 4, 1, dim, seed=2)
    q = _randn(n, 1, dim, seed=3)
    table = torch.tensor([[0, 1]], dtype=torch.int32, device=DEVICE)
    out = ref.prefill_attention(q, k, v, table, torch.tensor([n], device=DEVICE),
                                torch.tensor([0, n], device=DEVICE), 1.0, n)
    kk, vv = k.flatten(0, 1)[:n, 0], v.flatten(0, 1)[:n, 0]
    scores = (q[:, 0] @ kk.T).masked_fill(torch.ones(n, n, device=DEVICE).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(out[:, 0], scores.softmax(-1) @ vv)


def test_bf16_kernels_within_rounding():
    """bf16 storage: attention within a few bf16 ulps of the reference (the interpreter computes in fp32)."""
    big = torch.cuda.is_available()
    seq_lens, dim, heads = ([300, 1, 1000], 128, (32, 8)) if big else ([9, 1, 30], 16, (4, 2))
    k, v, tables = _paged_kv(seq_lens, heads[1], dim, 16, seed=5)
    k, v = k.bfloat16(), v.bfloat16()
    q = _randn(3, heads[0], dim, seed=6, dtype=torch.bfloat16)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    want = ref.decode_attention(q, k, v, tables, lens, dim ** -0.5).float()
    got = tk.decode_attention(q, k, v, tables, lens, dim ** -0.5, 3).float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    x, w = _randn(4, 96, dtype=torch.bfloat16), _randn(96, seed=1, dtype=torch.bfloat16)
    torch.testing.assert_close(tk.rms_norm(x, w, 1e-5).float(), ref.rms_norm(x, w, 1e-5).float(),
                               rtol=2e-2, atol=3e-2)
