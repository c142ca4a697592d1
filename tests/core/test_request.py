"""Request, SLO and RequestRecord: validation, TTFT targets, and block keys at the KV cache's block size."""
import pytest
from hypothesis import given, settings, strategies as st

from yoda.request import SLO, Request, RequestRecord


def req(prompt_len: int, hashes=(), hbs: int = 512, **kw) -> Request:
    return Request(0, 0.0, prompt_len, 8, block_hashes=tuple(hashes), hash_block_size=hbs, **kw)


# ---- block_keys ------------------------------------------------------------------------------------------
def test_splitting_512_token_hashes_into_16_token_blocks():
    r = req(1100, (7, 9, 11))  # hash blocks: [0,512) [512,1024) [1024,1100) partial
    keys = r.block_keys(16)
    assert len(keys) == 1100 // 16 == 68  # only full 16-token blocks, the partial last hash block included
    assert keys[:32] == [7 * 32 + j for j in range(32)]
    assert keys[32:64] == [9 * 32 + j for j in range(32)]
    assert keys[64:] == [11 * 32 + j for j in range(4)]
    assert len(set(keys)) == len(keys)


def test_split_keys_are_distinct_across_neighbouring_hashes():
    # hash h's last sub-block and hash h+1's first must not collide
    keys = req(1024, (3, 4)).block_keys(256)
    assert keys == [3 * 2, 3 * 2 + 1, 4 * 2, 4 * 2 + 1] and len(set(keys)) == 4


def test_same_block_size_keeps_hashes_of_full_blocks():
    assert req(40, (5, 6, 7), hbs=16).block_keys(16) == [5, 6]  # 40 tokens: 2 full blocks, 1 partial
    assert req(48, (5, 6, 7), hbs=16).block_keys(16) == [5, 6, 7]


def test_grouping_16_token_hashes_into_64_token_blocks():
    hashes = tuple(range(100, 110))  # 10 hash blocks of 16 tokens
    r = req(150, hashes, hbs=16)  # 150 tokens: 9 full 16-blocks + partial; 2 full 64-blocks
    # the hash of the last sub-block names the whole prefix (hashes are prefix-chained)
    assert r.block_keys(64) == [103, 107]
    assert req(128, hashes[:8], hbs=16).block_keys(64) == [103, 107]
    assert req(127, hashes[:8], hbs=16).block_keys(64) == [103]  # the second 64-block is not full
    assert req(200, hashes[:7], hbs=16).block_keys(64) == [103]  # hashes run out before the 2nd group ends


def test_only_full_blocks_get_keys():
    assert req(511, (1,)).block_keys(512) == []
    assert req(15, (1,), hbs=16).block_keys(16) == []
    assert req(513, (1, 2)).block_keys(512) == [1]
    assert req(1000, ()).block_keys(16) == []


def test_fewer_hashes_than_blocks_keys_only_hashed_blocks():
    assert len(req(2048, (1, 2)).block_keys(16)) == 64


def test_indivisible_block_sizes_raise():
    with pytest.raises(ValueError, match="one must divide the other"):
        req(2048, (1, 2, 3, 4)).block_keys(48)
    with pytest.raises(ValueError, match="one must divide the other"):
        req(2048, tuple(range(128)), hbs=16).block_keys(24)


@settings(max_examples=200, deadline=None)
@given(prompt_len=st.integers(1, 3000), hbs_exp=st.integers(4, 9), bs_exp=st.integers(4, 9),
       seed=st.integers(0, 10**6))
def test_block_keys_properties(prompt_len, hbs_exp, bs_exp, seed):
    hbs, bs = 2**hbs_exp, 2**bs_exp
    num_hashes = -(-prompt_len // hbs)
    hashes = tuple(seed * 10_000 + i for i in range(num_hashes))
    keys = req(prompt_len, hashes, hbs=hbs).block_keys(bs)
    assert len(keys) == prompt_len // bs  # every full block keyed (hashes cover the whole prompt)
    assert len(set(keys)) == len(keys)
    # the same prompt prefix gives the same keys: a longer prompt with the same leading hashes agrees
    longer = req(prompt_len + 3 * max(hbs, bs), hashes + tuple(range(-1, -10, -1)), hbs=hbs).block_keys(bs)
    full_hash_blocks = prompt_len // hbs  # a partial last hash block names different content
    stable = (full_hash_blocks * hbs) // bs
    assert longer[:stable] == keys[:stable]


# ---- validation and SLO targets ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(prompt_len=0), dict(output_len=0), dict(arrival_at=-1.0),
                                dict(hash_block_size=0)])
def test_request_validation(kw):
    args = dict(request_id=1, arrival_at=0.0, prompt_len=10, output_len=10) | kw
    with pytest.raises(ValueError):
        Request(**args)


@pytest.mark.parametrize("kw", [dict(ttft_ms=0), dict(tbt_ms=-1), dict(percentile=0), dict(percentile=101),
                                dict(ttft_ms_per_token=-0.1)])
def test_slo_validation(kw):
    with pytest.raises(ValueError):
        SLO(**kw)


def test_ttft_target_grows_with_prompt_length():
    slo = SLO(ttft_ms=500, tbt_ms=50, ttft_ms_per_token=0.25)
    assert slo.ttft_target_s(100) == pytest.approx(0.5)
    assert slo.ttft_target_s(2000) == pytest.approx(0.5)  # 0.25 * 2000 = 500 ms: equal
    assert slo.ttft_target_s(8000) == pytest.approx(2.0)
    assert SLO(ttft_ms=500).ttft_target_s(10**6) == pytest.approx(0.5)
    assert slo.tbt_s == pytest.approx(0.05) and slo.ttft_s == pytest.approx(0.5)


# ---- records ----------------------------------------------------------------------------------------------
def test_record_latencies():
    r = RequestRecord(1, 1.0, 10, 4, token_at=[1.2, 1.25, 1.35, 1.4], finished_at=1.4)
    assert r.finished
    assert r.ttft_s == pytest.approx(0.2)
    assert r.e2e_s == pytest.approx(0.4)
    assert r.tpot_s == pytest.approx(0.2 / 3)
    assert r.tbt_gaps_s() == pytest.approx([0.05, 0.1, 0.05])


def test_record_edge_cases():
    one = RequestRecord(1, 0.0, 10, 1, token_at=[0.3], finished_at=0.3)
    assert one.tpot_s is None and one.tbt_gaps_s() == [] and one.ttft_s == pytest.approx(0.3)
    rejected = RequestRecord(2, 0.0, 10, 1, finished_at=0.0, rejected_reason="too long")
    assert not rejected.finished and rejected.ttft_s is None and rejected.e2e_s is None
    running = RequestRecord(3, 0.0, 10, 5, token_at=[0.1])
    assert not running.finished and running.e2e_s is None
    rec = RequestRecord.for_request(Request(9, 2.5, 100, 7, session_id="s"))
    assert (rec.request_id, rec.arrival_at, rec.prompt_len, rec.output_len, rec.session_id) == (9, 2.5, 100, 7, "s")
