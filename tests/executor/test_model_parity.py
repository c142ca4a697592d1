"""Our decoder's logits equal transformers' (same random weights, tiny config, fp32) on every path."""
import torch

from executor.attn_metadata import SeqSlice, build_attn_metadata
from executor.kv_pool import KVPool
from yoda.kv_cache import KVCache, chain_keys

BLOCK = 4
RTOL, ATOL = 1e-4, 1e-4


def _tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _run(model, pool, cache, seqs: list[tuple[int, list[int], int]]) -> torch.Tensor:
    """seqs: (seq_id, token_ids of the new tokens, start_len) -> [total new tokens, vocab] logits (all rows)."""
    slices = [SeqSlice(start, len(toks), cache.block_table(sid)) for sid, toks, start in seqs]
    meta = build_attn_metadata(slices, BLOCK, "cpu")
    ids = torch.tensor([t for _, toks, _ in seqs for t in toks])
    hidden = model.run_layers(model.embed(ids), 0, model.num_layers, meta, pool)
    return model.logits(hidden)


def _setup(ckpt, use_triton, num_blocks=32):
    model = ckpt.ours(use_triton)
    return model, KVPool.for_model(model.config, num_blocks, BLOCK, torch.float32, "cpu"), KVCache(num_blocks, BLOCK)


def test_full_prefill(hf_checkpoint, use_triton):
    ckpt = hf_checkpoint
    model, pool, cache = _setup(ckpt, use_triton)
    prompt = _tokens(29, 1)  # two query tiles, several key tiles, last block partially filled
    cache.allocate(0, len(prompt))
    torch.testing.assert_close(_run(model, pool, cache, [(0, prompt, 0)]), ckpt.logits(prompt), rtol=RTOL, atol=ATOL)


def test_prefill_over_cached_prefix(hf_checkpoint, use_triton):
    ckpt = hf_checkpoint
    model, pool, cache = _setup(ckpt, use_triton)
    prompt = _tokens(23, 2)
    cache.allocate(0, len(prompt))
    first = _run(model, pool, cache, [(0, prompt[:10], 0)])  # prefix ends mid-block
    second = _run(model, pool, cache, [(0, prompt[10:], 10)])
    ref = ckpt.logits(prompt)
    torch.testing.assert_close(first, ref[:10], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(second, ref[10:], rtol=RTOL, atol=ATOL)


def test_every_decode_step_ragged_batch(hf_checkpoint, use_triton):
    ckpt = hf_checkpoint
    model, pool, cache = _setup(ckpt, use_triton)
    seqs = {0: _tokens(15, 3), 1: _tokens(6, 4)}
    prompt_len = {0: 9, 1: 3}
    for sid, toks in seqs.items():
        cache.allocate(sid, prompt_len[sid])
    _run(model, pool, cache, [(sid, seqs[sid][:prompt_len[sid]], 0) for sid in seqs])  # batched prefill
    refs = {sid: ckpt.logits(toks) for sid, toks in seqs.items()}
    for step in range(3):  # both sequences decode in one batch, at different lengths
        batch = []
        for sid in seqs:
            pos = prompt_len[sid] + step
            cache.extend(sid, pos + 1)
            batch.append((sid, [seqs[sid][pos]], pos))
        out = _run(model, pool, cache, batch)
        for row, (sid, _, pos) in enumerate(batch):
            torch.testing.assert_close(out[row], refs[sid][pos], rtol=RTOL, atol=ATOL)
        cache.check_invariants()


def test_mixed_decode_and_prefill_chunk(hf_checkpoint, use_triton):
    ckpt = hf_checkpoint
    model, pool, cache = _setup(ckpt, use_triton)
    a, b = _tokens(12, 5), _tokens(14, 6)
    cache.allocate(0, 12)
    cache.allocate(1, 14)
    _run(model, pool, cache, [(0, a[:11], 0), (1, b[:5], 0)])
    out = _run(model, pool, cache, [(0, a[11:], 11), (1, b[5:], 5)])  # one decode token + a 9-token chunk
    torch.testing.assert_close(out[0], ckpt.logits(a)[11], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out[1:], ckpt.logits(b)[5:], rtol=RTOL, atol=ATOL)


def test_prefix_reuse_through_kv_cache_matches_recompute(hf_checkpoint):
    ckpt = hf_checkpoint
    model, pool, cache = _setup(ckpt, use_triton=False)
    shared = _tokens(8, 7)
    a, b = shared + _tokens(5, 8), shared + _tokens(6, 9)
    keys_a = chain_keys([hash(tuple(a[:i + BLOCK])) for i in range(0, 12, BLOCK)])
    keys_b = chain_keys([hash(tuple(b[:i + BLOCK])) for i in range(0, 12, BLOCK)])
    cache.allocate(0, len(a), keys_a)
    _run(model, pool, cache, [(0, a, 0)])
    cache.commit(0)
    cache.free(0)
    alloc = cache.allocate(1, len(b), keys_b)
    assert alloc.num_reused_blocks == 2  # the 8 shared tokens' KV is reused in place
    reused = _run(model, pool, cache, [(1, b[8:], 8)])
    cache.check_invariants()
    torch.testing.assert_close(reused, ckpt.logits(b)[8:], rtol=RTOL, atol=ATOL)
    fresh_model, fresh_pool, fresh_cache = _setup(ckpt, use_triton=False)
    fresh_cache.allocate(1, len(b))
    recomputed = _run(fresh_model, fresh_pool, fresh_cache, [(1, b, 0)])
    torch.testing.assert_close(reused, recomputed[8:], rtol=RTOL, atol=ATOL)
