"""Paged KV cache manager with prefix reuse: block accounting shared by the simulator and the executor.

Blocks hold `block_size` tokens. Each sequence owns a block table. Full prompt blocks carry prefix-chained
keys; once a sequence's prefill is computed, `commit` registers those blocks in the prefix index so later
sequences can reuse them (block i matches only if blocks 0..i match: the index is keyed by the hash of
the whole chain). Blocks whose reference count drops to zero stay cached and are evicted LRU-first.

Every block is in exactly one state: empty (on the free list), cached (indexed, refcount 0, in the LRU),
or used (refcount > 0). used + free == capacity, where free = empty + cached.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Sequence

_ROOT = 0x9E3779B97F4A7C15  # chain seed


class KVCacheFullError(RuntimeError):
    """Raised when an operation needs more blocks than can be freed."""


class Allocation(NamedTuple):
    block_ids: list[int]
    num_reused_blocks: int


def chain_keys(block_keys: Sequence[int]) -> list[int]:
    """Hash each key together with everything before it, so equal chain keys mean equal prefixes."""
    out, h = [], _ROOT
    for k in block_keys:
        h = hash((h, k))
        out.append(h)
    return out


class KVCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"KV cache needs num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() gives low ids first
        self._lru: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; front = evict first
        self._index: dict[int, int] = {}  # chain key -> block id
        self._key_of: list[int | None] = [None] * num_blocks
        self._refcount = [0] * num_blocks
        self._tables: dict[int, list[int]] = {}
        self._num_tokens: dict[int, int] = {}
        self._chains: dict[int, list[int]] = {}  # seq -> chain keys of its full prompt blocks
        self._num_committed: dict[int, int] = {}  # seq -> leading blocks already offered to the index
        self.num_hit_tokens = 0  # reused tokens over all allocations (for hit-rate metrics)
        self.num_query_tokens = 0

    # ---- queries (no side effects) -------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks obtainable without touching live sequences (empty + evictable cached)."""
        return len(self._free) + len(self._lru)

    @property
    def num_empty_blocks(self) -> int:
        """Free blocks that hold no cached prefix (taking them evicts nothing)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._lru)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def match_prefix(self, chain: Sequence[int]) -> int:
        """Number of leading blocks of `chain` (from `chain_keys`) present in the cache. Does not modify it."""
        n = 0
        for key in chain:
            if key not in self._index:
                break
            n += 1
        return n

    def can_allocate(self, num_tokens: int, chain: Sequence[int] = ()) -> bool:
        chain = chain[: num_tokens // self.block_size]  # only full blocks may be shared (decode writes the last)
        hit = self.match_prefix(chain)
        need = self.blocks_for(num_tokens) - hit
        # matched blocks that sit in the LRU stop being evictable once we take them
        hit_in_lru = sum(1 for key in chain[:hit] if self._index[key] in self._lru)
        return need <= self.num_free_blocks - hit_in_lru

    def fits_empty(self, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) <= self.num_blocks

    def block_table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]

    def num_tokens(self, seq_id: int) -> int:
        return self._num_tokens[seq_id]

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._tables

    # ---- mutations -----------------------------------------------------------------------------
    def allocate(self, seq_id: int, num_tokens: int, chain: Sequence[int] = ()) -> Allocation:
        """Give `seq_id` blocks for `num_tokens`, reusing the longest cached prefix of `chain`.

        Raises KVCacheFullError (cache unchanged) if the blocks cannot be found, with a distinct message
        when the request could not fit even in an empty cache.
        """
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id} already holds blocks")
        chain = chain[: num_tokens // self.block_size]  # only full blocks may be shared (decode writes the last)
        if not self.fits_empty(num_tokens):
            raise KVCacheFullError(
                f"sequence {seq_id} needs {self.blocks_for(num_tokens)} blocks of {self.block_size} tokens "
                f"({num_tokens} tokens) but the whole cache has {self.num_blocks}")
        if not self.can_allocate(num_tokens, chain):
            raise KVCacheFullError(f"sequence {seq_id}: not enough free KV blocks now")
        hit = self.match_prefix(chain)
        table = []
        for key in chain[:hit]:
            b = self._index[key]
            self._take(b)
            table.append(b)
        table.extend(self._pop_many(self.blocks_for(num_tokens) - hit))
        self._tables[seq_id] = table
        self._num_tokens[seq_id] = num_tokens
        self._chains[seq_id] = list(chain)
        self._num_committed[seq_id] = hit
        reused = min(hit * self.block_size, num_tokens)
        self.num_hit_tokens += reused
        self.num_query_tokens += num_tokens
        return Allocation(table, hit)

    def has_room(self, seq_id: int, num_tokens: int) -> bool:
        """True if the sequence's blocks already hold `num_tokens` tokens (no allocation needed)."""
        return num_tokens <= len(self._tables[seq_id]) * self.block_size

    def can_extend(self, seq_id: int, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(self._tables[seq_id]) <= self.num_free_blocks

    def extend(self, seq_id: int, num_tokens: int) -> list[int]:
        """Grow `seq_id` to hold `num_tokens` tokens (decode growth). Returns the new block ids."""
        table = self._tables[seq_id]
        need = self.blocks_for(num_tokens) - len(table)
        if need > self.num_free_blocks:
            raise KVCacheFullError(f"sequence {seq_id}: no free KV block to grow to {num_tokens} tokens")
        new = self._pop_many(need)
        table.extend(new)
        self._num_tokens[seq_id] = max(num_tokens, self._num_tokens[seq_id])
        return new

    def extend_many(self, grow_to: list[tuple[int, int]]) -> None:
        """`extend(seq_id, num_tokens)` for each pair in order (the same block ids), in one pass when the
        empty blocks cover them all (a multi-step decode run's reservation)."""
        bs, tables, free = self.block_size, self._tables, self._free
        needs = [-(-n // bs) - len(tables[seq]) for seq, n in grow_to]
        if sum(k for k in needs if k > 0) > len(free):
            for seq, n in grow_to:
                self.extend(seq, n)
            return
        refcount, counts = self._refcount, self._num_tokens
        for (seq, n), k in zip(grow_to, needs):
            if k > 0:  # _pop_many(k), empty blocks only: low ids first
                taken = free[len(free) - k:]
                del free[len(free) - k:]
                taken.reverse()
                for b in taken:
                    refcount[b] = 1
                tables[seq].extend(taken)
            counts[seq] = max(n, counts[seq])

    def truncate(self, seq_id: int, num_blocks: int) -> None:
        """Give back the sequence's blocks past its first `num_blocks` (decode growth reserved and not
        used). They must be its own: past its prompt's keyed blocks and past the tokens it has written."""
        table = self._tables[seq_id]
        if num_blocks >= len(table):
            return
        if num_blocks < len(self._chains[seq_id]):
            raise ValueError(f"sequence {seq_id}: cannot truncate into its prompt's shared blocks")
        tail = table[num_blocks:]
        del table[num_blocks:]
        for b in tail:
            self._refcount[b] = 0
        self._free.extend(reversed(tail))
        self._num_tokens[seq_id] = min(self._num_tokens[seq_id], num_blocks * self.block_size)

    def commit(self, seq_id: int, num_computed_tokens: int | None = None) -> None:
        """Index the sequence's keyed blocks whose KV is computed, so later sequences can reuse them."""
        table, chain = self._tables[seq_id], self._chains[seq_id]
        limit = len(chain) if num_computed_tokens is None else min(len(chain), num_computed_tokens // self.block_size)
        for i in range(self._num_committed[seq_id], limit):
            key, b = chain[i], table[i]
            if self._key_of[b] is None and key not in self._index:
                self._index[key] = b
                self._key_of[b] = key
        self._num_committed[seq_id] = max(limit, self._num_committed[seq_id])

    def free(self, seq_id: int) -> None:
        """Release a sequence's blocks. Indexed blocks stay cached (tail first in eviction order)."""
        table = self._tables.pop(seq_id)
        del self._num_tokens[seq_id]
        num_keyed = len(self._chains.pop(seq_id))
        del self._num_committed[seq_id]
        refcount, key_of, lru, free = self._refcount, self._key_of, self._lru, self._free
        # blocks past the prompt's full blocks (decode growth, a partial last block) are this sequence's
        # alone and never indexed: they go straight back to the free list (most of a long output's blocks)
        private = table[num_keyed:]
        for b in private:
            refcount[b] = 0
        free.extend(reversed(private))
        for b in reversed(table[:num_keyed]):
            refcount[b] -= 1
            if refcount[b] == 0:
                if key_of[b] is not None:
                    lru[b] = None
                else:
                    free.append(b)

    # ---- internals -------------------------------------------------------------------------------
    def _take(self, b: int) -> None:
        if self._refcount[b] == 0:
            del self._lru[b]
        self._refcount[b] += 1

    def _pop_many(self, n: int) -> list[int]:
        """`n` blocks for a sequence: empty ones first (low ids first, as `_pop_free` gives them), then
        evicted cached ones."""
        if n <= 0:
            return []
        free = self._free
        k = min(n, len(free))
        taken = free[len(free) - k:]
        del free[len(free) - k:]
        taken.reverse()
        refcount = self._refcount
        for b in taken:
            refcount[b] = 1
        if k < n:  # evict cached blocks, least recently used first (as _pop_free, inlined: a hot loop)
            lru, index, key_of = self._lru, self._index, self._key_of
            for _ in range(n - k):
                b, _ = lru.popitem(last=False)
                del index[key_of[b]]
                key_of[b] = None
                refcount[b] = 1
                taken.append(b)
        return taken

    def _pop_free(self) -> int:
        if self._free:
            b = self._free.pop()
        else:
            b, _ = self._lru.popitem(last=False)
            del self._index[self._key_of[b]]
            self._key_of[b] = None
        self._refcount[b] = 1
        return b

    def check_invariants(self) -> None:
        owners: dict[int, int] = {}
        for seq, table in self._tables.items():
            assert len(set(table)) == len(table), f"sequence {seq} holds a block twice"
            assert len(table) >= self.blocks_for(self._num_tokens[seq])
            for b in table:
                owners[b] = owners.get(b, 0) + 1
        free_set, lru_set = set(self._free), set(self._lru)
        assert len(free_set) == len(self._free) and not free_set & lru_set
        for b in range(self.num_blocks):
            rc = self._refcount[b]
            assert rc == owners.get(b, 0), f"block {b}: refcount {rc} != owners {owners.get(b, 0)}"
            if rc > 1:
                assert self._key_of[b] is not None, f"private block {b} shared by {rc} sequences"
            in_free, in_lru = b in free_set, b in lru_set
            assert (rc > 0) + in_free + in_lru == 1, f"block {b} in {(rc > 0) + in_free + in_lru} states"
            if in_lru:
                assert self._key_of[b] is not None
            if in_free:
                assert self._key_of[b] is None
        for key, b in self._index.items():
            assert self._key_of[b] == key
        assert self.num_used_blocks + self.num_free_blocks == self.num_blocks
        assert self.num_used_blocks == sum(1 for rc in self._refcount if rc > 0)
