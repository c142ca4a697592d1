"""KVCache: block accounting, prefix reuse and LRU eviction, driven by hypothesis with a content model.

The model tracks which prefix (chain key) each block's KV holds once a sequence computed and committed it,
so every reuse can be checked for correctness, not just for bookkeeping consistency.
"""
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from yoda.kv_cache import KVCache, KVCacheFullError, chain_keys

BS = 4  # tokens per block
NUM_BLOCKS = 12

# prefixes come from a small tree (3 choices per level, depth <= 4), so sequences share prefixes often
paths = st.lists(st.integers(0, 2), min_size=0, max_size=4)


def chain_of(path: list[int]) -> list[int]:
    # node ids that depend on the whole path so far: equal keys mean equal prefixes, as in real traces
    return chain_keys([hash(tuple(path[: i + 1])) for i in range(len(path))])


def snapshot(cache: KVCache) -> tuple:
    return (
        {s: list(t) for s, t in cache._tables.items()}, dict(cache._num_tokens), list(cache._refcount),
        dict(cache._index), list(cache._free), list(cache._lru), list(cache._key_of),
        {s: list(c) for s, c in cache._chains.items()}, dict(cache._num_committed),
        cache.num_hit_tokens, cache.num_query_tokens,
    )


class KVCacheMachine(RuleBasedStateMachine):
    seqs = Bundle("seqs")

    def __init__(self) -> None:
        super().__init__()
        self.cache = KVCache(NUM_BLOCKS, BS)
        self.next_id = 0
        self.content: dict[int, int] = {}  # block -> chain key whose KV it holds (computed and committed)
        self.chains: dict[int, list[int]] = {}
        self.tables: dict[int, list[int]] = {}  # our copy: a live sequence's table never changes under it

    # ---- helpers ------------------------------------------------------------------------------------
    def live_blocks(self) -> set[int]:
        return {b for t in self.tables.values() for b in t}

    def assert_others_untouched(self, except_seq: int | None = None) -> None:
        for seq, table in self.tables.items():
            if seq != except_seq:
                assert self.cache.block_table(seq) == table, f"sequence {seq}'s table changed under it"

    def fresh_blocks_were_unreferenced(self, new_blocks: list[int], live_before: set[int]) -> None:
        for b in new_blocks:
            assert b not in live_before, f"block {b} handed out while a live sequence held it"
            self.content.pop(b, None)  # new owner will overwrite its KV

    # ---- rules --------------------------------------------------------------------------------------
    @rule(target=seqs, path=paths, extra=st.integers(0, 2 * BS), shorten=st.sampled_from([0, 0, 0, 1, 2]))
    def allocate(self, path, extra, shorten):
        chain = chain_of(path)
        # shorten > 0: the chain names more full blocks than the tokens fill; only full blocks may be shared
        num_tokens = max(len(chain) * BS + extra - shorten * BS, 1)
        seq = self.next_id
        self.next_id += 1
        before = snapshot(self.cache)
        live_before = self.live_blocks()
        hit_before = self.cache.match_prefix(chain)
        expected_ok = self.cache.fits_empty(num_tokens) and self.cache.can_allocate(num_tokens, chain)
        try:
            alloc = self.cache.allocate(seq, num_tokens, chain)
        except KVCacheFullError as e:
            assert not expected_ok, "allocate failed although can_allocate said it fits"
            assert snapshot(self.cache) == before, "failed allocate changed the cache"
            if not self.cache.fits_empty(num_tokens):
                assert "whole cache" in str(e)
            else:
                assert "whole cache" not in str(e)
            return None
        assert expected_ok
        need = self.cache.blocks_for(num_tokens)
        assert len(alloc.block_ids) == need, "allocation holds more or fewer blocks than it needs"
        assert alloc.num_reused_blocks == min(hit_before, num_tokens // BS)
        for i, b in enumerate(alloc.block_ids[: alloc.num_reused_blocks]):
            assert self.content.get(b) == chain[i], f"reused block {b} does not hold prefix {i}"
        self.fresh_blocks_were_unreferenced(alloc.block_ids[alloc.num_reused_blocks:], live_before)
        self.assert_others_untouched()
        self.chains[seq] = chain
        self.tables[seq] = list(alloc.block_ids)
        return seq

    @rule(seq=seqs, num_blocks=st.one_of(st.none(), st.integers(0, 5)))
    def commit(self, seq, num_blocks):
        if seq not in self.tables:
            return
        n_tokens = None if num_blocks is None else min(num_blocks * BS, self.cache.num_tokens(seq))
        self.cache.commit(seq, n_tokens)
        chain, table = self.chains[seq], self.tables[seq]
        limit = len(chain) if n_tokens is None else min(len(chain), n_tokens // BS)
        for i in range(min(limit, len(table))):
            assert self.content.get(table[i], chain[i]) == chain[i], "a block was computed for two prefixes"
            self.content[table[i]] = chain[i]
        self.assert_others_untouched()

    @rule(seq=seqs, more=st.integers(0, 3 * BS))
    def extend(self, seq, more):
        if seq not in self.tables:
            return
        target = self.cache.num_tokens(seq) + more
        before = snapshot(self.cache)
        live_before = self.live_blocks()
        can = self.cache.can_extend(seq, target)
        try:
            new = self.cache.extend(seq, target)
        except KVCacheFullError:
            assert not can
            assert snapshot(self.cache) == before, "failed extend changed the cache"
            return
        assert can
        self.fresh_blocks_were_unreferenced(new, live_before)
        self.tables[seq] = self.tables[seq] + new
        assert self.cache.block_table(seq) == self.tables[seq]
        assert self.cache.has_room(seq, target)
        self.assert_others_untouched()

    @rule(seq=consumes(seqs))
    def free(self, seq):
        if seq not in self.tables:
            return
        self.cache.free(seq)
        del self.tables[seq], self.chains[seq]
        assert seq not in self.cache
        self.assert_others_untouched()

    @rule(path=paths)
    def match_prefix(self, path):
        chain = chain_of(path)
        before = snapshot(self.cache)
        n = self.cache.match_prefix(chain)
        assert snapshot(self.cache) == before, "match_prefix modified the cache"
        # prefix-chained: every shorter prefix matches exactly as far, and no longer chain matches less
        for i in range(len(chain) + 1):
            assert self.cache.match_prefix(chain[:i]) == min(i, n)

    # ---- invariants ---------------------------------------------------------------------------------
    @invariant()
    def consistent(self):
        c = self.cache
        c.check_invariants()
        assert c.num_used_blocks + c.num_free_blocks == c.num_blocks
        assert c.num_used_blocks == len(self.live_blocks())
        owners: dict[int, list[tuple[int, int]]] = {}
        for seq, table in self.tables.items():
            assert c.block_table(seq) == table
            for i, b in enumerate(table):
                owners.setdefault(b, []).append((seq, i))
        for b, where in owners.items():
            if len(where) > 1:  # shared: must be the same indexed prefix block in every sequence
                keys = {self.chains[s][i] if i < len(self.chains[s]) else None for s, i in where}
                assert len(keys) == 1 and None not in keys, f"block {b} shared by unrelated sequences {where}"
                assert self.content.get(b) == keys.pop(), f"shared block {b} holds no committed prefix"


KVCacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestKVCacheStateful = KVCacheMachine.TestCase


# ---- hand-made cases ----------------------------------------------------------------------------------
def test_reuse_after_commit_and_free():
    c = KVCache(8, 4)
    chain = chain_of([0, 1, 2])
    a = c.allocate(1, 13, chain)
    assert a.num_reused_blocks == 0 and len(a.block_ids) == 4
    assert c.match_prefix(chain) == 0  # nothing reusable before commit
    c.commit(1, 8)  # only the first two blocks are computed
    assert c.match_prefix(chain) == 2
    c.commit(1)
    c.free(1)
    assert c.num_cached_blocks == 3 and c.num_used_blocks == 0
    b = c.allocate(2, 12, chain)
    assert b.num_reused_blocks == 3 and b.block_ids == a.block_ids[:3]
    assert c.num_hit_tokens == 12 and c.num_query_tokens == 25
    c.check_invariants()


def test_eviction_takes_the_tail_first_and_keeps_a_usable_prefix():
    c = KVCache(4, 4)
    chain = chain_of([0, 0, 0])
    c.allocate(1, 12, chain)
    c.commit(1)
    c.free(1)  # 3 cached blocks + 1 empty
    c.allocate(2, 8)  # needs 2: the empty one and one evicted
    assert c.match_prefix(chain) == 2, "eviction must take the chain's tail, not its head"
    c.check_invariants()


def test_referenced_blocks_are_never_evicted():
    c = KVCache(4, 4)
    chain = chain_of([1, 2])
    c.allocate(1, 8, chain)
    c.commit(1)
    c.allocate(2, 8, chain)  # shares both blocks
    assert c.num_used_blocks == 2
    with pytest.raises(KVCacheFullError, match="not enough free"):
        c.allocate(3, 12)
    c.free(1)
    assert c.match_prefix(chain) == 2 and c.num_cached_blocks == 0  # still held by sequence 2
    c.allocate(3, 8)
    assert c.match_prefix(chain) == 2
    c.check_invariants()


def test_lru_matched_blocks_do_not_count_as_free_for_the_same_allocation():
    c = KVCache(3, 4)
    chain = chain_of([0, 1])
    c.allocate(1, 8, chain)
    c.commit(1)
    c.free(1)  # 2 cached + 1 empty: 3 free
    # 3 blocks needed, 2 reused from the LRU: 1 new block from the empty one
    assert c.can_allocate(12, chain)
    c.allocate(2, 12, chain)
    c.free(2)
    # 4 blocks needed, 2 reused: 2 new, but only 1 is free once the reused ones are taken
    assert not c.can_allocate(16, chain + chain_of([0, 1, 2])[2:])
    c.check_invariants()


def test_chain_longer_than_the_tokens_shares_only_full_blocks():
    # regression: a cached chain of 3 blocks matched for a 6-token sequence gave it all 3 blocks, and the
    # partial second one was shared, so decode would write into another prefix's cached KV
    c = KVCache(8, 4)
    chain = chain_of([1, 2, 3])
    c.allocate(1, 12, chain)
    c.commit(1)
    c.free(1)
    assert c.can_allocate(6, chain)
    a = c.allocate(2, 6, chain)
    assert len(a.block_ids) == 2 and a.num_reused_blocks == 1
    assert c.num_hit_tokens == 4
    c.commit(2)
    c.check_invariants()


def test_request_larger_than_the_whole_cache_says_so():
    c = KVCache(4, 16)
    assert not c.fits_empty(65)
    with pytest.raises(KVCacheFullError, match="whole cache has 4"):
        c.allocate(1, 65)
    assert c.num_free_blocks == 4 and 1 not in c
    c.allocate(1, 64)
    with pytest.raises(KVCacheFullError, match="not enough free KV blocks now"):
        c.allocate(2, 1)


def test_extend_and_has_room():
    c = KVCache(4, 4)
    c.allocate(1, 3)
    assert c.has_room(1, 4) and not c.has_room(1, 5)
    assert c.extend(1, 4) == []
    new = c.extend(1, 9)
    assert len(new) == 2 and len(c.block_table(1)) == 3 and c.num_tokens(1) == 9
    with pytest.raises(KVCacheFullError):
        c.extend(1, 17)
    assert len(c.block_table(1)) == 3
    c.check_invariants()


@pytest.mark.parametrize("num_blocks", [10, 16])  # 10: the empty blocks run out (evicts, as extend does)
def test_extend_many_is_successive_extends(num_blocks):
    def cache():
        c = KVCache(num_blocks, 4)
        c.allocate(9, 8, chain=[101, 102])
        c.commit(9)
        c.free(9)  # two cached blocks, evicted only when the empty ones run out
        for seq, tokens in ((1, 3), (2, 5), (3, 1)):
            c.allocate(seq, tokens)
        return c
    grow = [(1, 4), (2, 13), (3, 9), (1, 6)]
    one, many = cache(), cache()
    for seq, tokens in grow:
        one.extend(seq, tokens)
    many.extend_many(grow)
    for seq in (1, 2, 3):
        assert many.block_table(seq) == one.block_table(seq) and many.num_tokens(seq) == one.num_tokens(seq)
    assert many.num_empty_blocks == one.num_empty_blocks and many.num_cached_blocks == one.num_cached_blocks
    many.check_invariants()


def test_duplicate_sequence_and_bad_sizes_raise():
    c = KVCache(4, 4)
    c.allocate(1, 4)
    with pytest.raises(ValueError, match="already holds"):
        c.allocate(1, 4)
    for blocks, size in ((0, 4), (4, 0)):
        with pytest.raises(ValueError):
            KVCache(blocks, size)


def test_same_prefix_computed_twice_is_indexed_once():
    c = KVCache(8, 4)
    chain = chain_of([2, 2])
    c.allocate(1, 8, chain)
    c.allocate(2, 8, chain)  # concurrent: nothing committed yet, both compute it
    c.commit(1)
    c.commit(2)  # already indexed by sequence 1: sequence 2's blocks stay private
    c.free(2)
    assert c.num_cached_blocks == 0 and c.match_prefix(chain) == 2
    c.free(1)
    assert c.num_cached_blocks == 2
    c.check_invariants()
