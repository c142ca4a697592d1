"""Drive the Engine with hand-made Launches (as a scheduler would) and check its tokens against transformers."""
import pytest
import torch

from executor.engine import Engine
from executor.kv_pool import KVPool
from executor.model import build_model
from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.kv_cache import KVCache, chain_keys

BLOCK = 4
NUM_LAYERS = 2


def _engine(model, num_blocks=48, temperature=0.0, seed=0) -> tuple[Engine, KVCache]:
    cache = KVCache(num_blocks, BLOCK)
    pool = KVPool.for_model(model.config, num_blocks, BLOCK, torch.float32, "cpu")
    return Engine(model, pool, cache, "cpu", seed=seed, temperature=temperature), cache


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _finish(engine: Engine, launch: Launch, now: float = 1.0) -> None:
    engine.start(launch, now)
    done = engine.poll(now + 1.0)
    assert [d[0] for d in done] == [launch] and now <= done[0][1] <= now + 1.0


def _decode(engine: Engine, cache: KVCache, ids: tuple[int, ...]) -> None:
    for rid in ids:  # the scheduler grows each sequence by the token this step writes
        cache.extend(rid, cache.num_tokens(rid) + 1)
    _finish(engine, Launch(DECODE, 66, decode_ids=ids))
    cache.check_invariants()


def _prefill(ids_and_chunks, layer_start, layer_end, decode_ids=(), lane=PREFILL) -> Launch:
    chunks = tuple(PrefillChunk(rid, start, n) for rid, start, n in ids_and_chunks)
    return Launch(lane, 66, decode_ids=decode_ids, prefill=chunks, layer_start=layer_start, layer_end=layer_end,
                  num_layers=NUM_LAYERS)


def test_layer_groups_then_decode_match_greedy(hf_checkpoint):
    _check_layer_groups_then_decode(hf_checkpoint, use_triton=False)


@pytest.mark.parametrize("hf_checkpoint", ["llama"], indirect=True)
def test_layer_groups_then_decode_match_greedy_triton(hf_checkpoint):
    _check_layer_groups_then_decode(hf_checkpoint, use_triton=True)


def _check_layer_groups_then_decode(ckpt, use_triton: bool) -> None:
    engine, cache = _engine(ckpt.ours(use_triton))
    prompts = {0: _prompt(11, 1), 1: _prompt(6, 2)}
    for rid, p in prompts.items():
        engine.add_request(rid, p)
        cache.allocate(rid, len(p))
    both = [(0, 0, 11), (1, 0, 6)]
    _finish(engine, _prefill(both, 0, 1))  # layer group 1 of 2: no token yet
    assert engine.output_tokens(0) == []
    _finish(engine, _prefill(both, 1, 2))  # layer group 2: the first token
    for _ in range(4):
        _decode(engine, cache, (0, 1))
    for rid, p in prompts.items():
        assert engine.output_tokens(rid) == ckpt.greedy(p, 5)


def test_chunked_prefill_mixed_with_decode(hf_checkpoint):
    ckpt = hf_checkpoint
    engine, cache = _engine(ckpt.ours(use_triton=False))
    a, b = _prompt(7, 3), _prompt(13, 4)
    for rid, p in ((0, a), (1, b)):
        engine.add_request(rid, p)
    cache.allocate(0, len(a))
    _finish(engine, _prefill([(0, 0, 7)], 0, NUM_LAYERS))
    cache.allocate(1, len(b))
    cache.extend(0, 8)
    # one mixed iteration on the decode lane: request 0 decodes while request 1's first chunk runs
    _finish(engine, _prefill([(1, 0, 5)], 0, NUM_LAYERS, decode_ids=(0,), lane=DECODE))
    assert engine.output_tokens(1) == []
    cache.extend(0, 9)
    # then a mixed launch whose prefill runs only the first layer group: decode runs apart, all layers
    _finish(engine, _prefill([(1, 5, 8)], 0, 1, decode_ids=(0,), lane=DECODE))
    _finish(engine, _prefill([(1, 5, 8)], 1, NUM_LAYERS))
    _decode(engine, cache, (0, 1))
    assert engine.output_tokens(0) == ckpt.greedy(a, 4)
    assert engine.output_tokens(1) == ckpt.greedy(b, 2)


def test_prefix_reuse_gives_same_tokens(hf_checkpoint):
    ckpt = hf_checkpoint
    engine, cache = _engine(ckpt.ours(use_triton=False))
    shared = _prompt(8, 5)
    a, b = shared + _prompt(3, 6), shared + _prompt(5, 7)
    engine.add_request(0, a)
    cache.allocate(0, len(a), chain_keys([11, 22]))  # the first two full blocks hold the shared tokens
    _finish(engine, _prefill([(0, 0, len(a))], 0, NUM_LAYERS))
    cache.commit(0)
    engine.add_request(1, b)
    assert cache.allocate(1, len(b), chain_keys([11, 22, 33])).num_reused_blocks == 2
    _finish(engine, _prefill([(1, 8, len(b) - 8)], 0, NUM_LAYERS))  # only the new tokens are computed
    _decode(engine, cache, (1,))
    assert engine.output_tokens(1) == ckpt.greedy(b, 2)


def test_temperature_sampling_is_seeded():
    model = build_model("tiny", seed=3)
    outs = []
    for _ in range(2):
        engine, cache = _engine(model, temperature=1.0, seed=7)
        engine.add_request(0, _prompt(9, 8))
        cache.allocate(0, 9)
        _finish(engine, _prefill([(0, 0, 9)], 0, NUM_LAYERS))
        for _ in range(5):
            _decode(engine, cache, (0,))
        outs.append(engine.output_tokens(0))
    assert outs[0] == outs[1] and len(outs[0]) == 6 and all(0 <= t < 512 for t in outs[0])
    engine.free(0)
    with pytest.raises(KeyError):
        engine.output_tokens(0)


def test_bad_launches_raise():
    engine, cache = _engine(build_model("tiny"))
    engine.add_request(0, _prompt(5, 9))
    cache.allocate(0, 5)
    with pytest.raises(ValueError, match="no sampled token"):
        engine.start(Launch(DECODE, 66, decode_ids=(0,)), 0.0)
    with pytest.raises(ValueError, match="waiting at layer"):
        engine.start(_prefill([(0, 0, 5)], 1, NUM_LAYERS), 0.0)
    with pytest.raises(ValueError, match="model has"):
        engine.start(Launch(PREFILL, 66, prefill=(PrefillChunk(0, 0, 5),), layer_end=3, num_layers=3), 0.0)
    engine.add_request(1, _prompt(9, 10))
    cache.allocate(1, 4)  # too few blocks for the prompt
    with pytest.raises(ValueError, match="cannot hold"):
        engine.start(_prefill([(1, 0, 9)], 0, NUM_LAYERS), 0.0)
    assert engine.poll(1.0) == [] and engine.num_in_flight == 0


def test_one_launch_per_lane():
    engine, cache = _engine(build_model("tiny"))
    for rid in (0, 1):
        engine.add_request(rid, _prompt(5, rid))
        cache.allocate(rid, 5)
    engine.start(_prefill([(0, 0, 5)], 0, 1), 0.0)
    with pytest.raises(ValueError, match="busy"):
        engine.start(_prefill([(1, 0, 5)], 0, 1), 0.0)
    with pytest.raises(ValueError, match="still running"):
        engine.start(_prefill([(0, 0, 5)], 1, 2, lane=DECODE), 0.0)
    engine.start(_prefill([(1, 0, 5)], 0, 2, lane=DECODE), 0.5)  # the other lane is free
    assert [launch.lane for launch, _ in engine.poll(2.0)] == [PREFILL, DECODE]
