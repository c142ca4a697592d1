"""On a GPU: the engine on green-context partitions, with decode CUDA graphs, gives transformers' greedy tokens
while prefill and decode run at the same time on their own streams."""
import pytest
import torch

from executor.engine import Engine
from executor.kv_pool import KVPool
from executor.partitions import PartitionManager
from yoda.backend import DECODE, PREFILL, Launch, PrefillChunk
from yoda.kv_cache import KVCache

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _wait(engine: Engine, count: int) -> list:
    done = []
    while len(done) < count:
        done += engine.poll(0.0)
    return done


def test_partitioned_engine_with_graphs_matches_greedy(hf_checkpoint):
    ckpt = hf_checkpoint
    model = ckpt.ours(use_triton=True, device="cuda")
    cache = KVCache(64, 4)
    pool = KVPool.for_model(model.config, 64, 4, torch.float32, "cuda")
    parts = PartitionManager.create("cuda")
    engine = Engine(model, pool, cache, "cuda", parts, use_cuda_graphs=True)
    engine.capture_decode_graphs(max_batch=4, max_context_len=64)
    prefill_sms = parts.menu[0].prefill_sms if parts.is_partitioned else parts.num_sms
    decode_sms = parts.menu[0].decode_sms if parts.is_partitioned else parts.num_sms
    prompts = {0: list(range(3, 14)), 1: list(range(40, 57))}
    for rid, p in prompts.items():
        engine.add_request(rid, p)
    cache.allocate(0, len(prompts[0]))
    engine.start(Launch(PREFILL, prefill_sms, prefill=(PrefillChunk(0, 0, 11),), layer_end=2, num_layers=2), 0.0)
    _wait(engine, 1)
    cache.allocate(1, len(prompts[1]))
    for step in range(4):  # request 0 decodes while request 1 prefills layer by layer on the other partition
        cache.extend(0, cache.num_tokens(0) + 1)
        engine.start(Launch(DECODE, decode_sms, decode_ids=(0,)), 0.0)
        if step < 2:
            engine.start(Launch(PREFILL, prefill_sms, prefill=(PrefillChunk(1, 0, 17),), layer_start=step,
                                layer_end=step + 1, num_layers=2), 0.0)
        _wait(engine, 2 if step < 2 else 1)
    cache.extend(1, 18)
    engine.start(Launch(DECODE, decode_sms, decode_ids=(1,)), 0.0)
    _wait(engine, 1)
    assert engine.output_tokens(0) == ckpt.greedy(prompts[0], 5)
    assert engine.output_tokens(1) == ckpt.greedy(prompts[1], 2)
