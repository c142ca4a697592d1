"""Synthetic prompts: shared hash blocks give identical prefix tokens; everything is seeded and bounded."""
from executor.prompts import prompt_for, synthetic_prompt
from yoda.request import Request


def test_shared_hash_blocks_share_tokens():
    a = Request(1, 0.0, prompt_len=40, output_len=1, block_hashes=(7, 8, 9), hash_block_size=16)
    b = Request(2, 0.0, prompt_len=37, output_len=1, block_hashes=(7, 8, 5), hash_block_size=16)
    ta, tb = prompt_for(a, 100), prompt_for(b, 100)
    assert len(ta) == 40 and len(tb) == 37
    assert ta[:32] == tb[:32] and ta[32:37] != tb[32:37]
    assert ta == prompt_for(a, 100) and all(0 <= t < 100 for t in ta + tb)


def test_partial_last_block_is_a_prefix_of_the_full_block():
    full = synthetic_prompt(32, [3, -4], 16, request_seed=1, vocab_size=50)
    part = synthetic_prompt(20, [3, -4], 16, request_seed=2, vocab_size=50)
    assert part == full[:20]


def test_unhashed_tail_depends_on_request_and_seed():
    base = synthetic_prompt(30, [1 << 70], 8, request_seed=1, vocab_size=1000)
    assert base[:8] == synthetic_prompt(30, [1 << 70], 8, request_seed=2, vocab_size=1000)[:8]
    assert base[8:] != synthetic_prompt(30, [1 << 70], 8, request_seed=2, vocab_size=1000)[8:]
    assert base != synthetic_prompt(30, [1 << 70], 8, request_seed=1, vocab_size=1000, seed=1)
