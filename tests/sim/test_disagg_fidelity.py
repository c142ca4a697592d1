"""PD disaggregation as SGLang PD, vLLM's disaggregated connectors and Mooncake behave: the user sees the
first token once the decode instance holds the KV and admits the request; the KV of one prefill batch
streams side by side; decode admission counts the blocks the decode GPU already caches."""
import pytest

from sim.cluster import Link
from sim.hardware import get_gpu
from sim.latency import LAYER_GROUP_LAUNCH_S
from sim.model_spec import get_model
from sim.run import SimConfig, make_latency, simulate
from yoda.request import Request

GPU, MODEL = get_gpu("h100"), get_model("llama3-8b")


def _records(requests, **kw):
    # the roofline source: the expected times below are priced with it
    cfg = SimConfig(policy="disagg", num_instances=2, block_size=16, record_timeline=False, check_every=1,
                    latency="roofline", **kw)
    return {r.request_id: r for r in simulate(requests, cfg).records}


def test_ttft_waits_for_decode_admission():
    # 300 blocks: request 0 (3000 + 200 tokens) holds ~200 on the decode GPU, so request 1 (2000 tokens)
    # is admitted there, and its first token reaches the user, only when request 0 finishes
    recs = _records([Request(0, 0.0, 3000, 200), Request(1, 0.05, 2000, 5)], kv_blocks=300)
    assert recs[1].token_at[0] == pytest.approx(recs[0].finished_at, abs=1e-12)
    assert recs[1].ttft_s > 1.0  # the prefill alone takes well under 100 ms


def test_a_prefill_batch_kv_streams_side_by_side():
    # two 4000-token prompts prefilled together: both transfers share the link and end together, after
    # 2 x 4000 tokens of KV have crossed it (sent once the prefill ends)
    recs = _records([Request(0, 0.0, 4000, 3), Request(1, 0.0, 4000, 3)], kv_stream=False)
    prefill = make_latency("roofline", MODEL, GPU).prefill_s([4000, 4000], [0, 0], GPU.num_sms) + LAYER_GROUP_LAUNCH_S
    link = Link()
    expected = prefill + link.latency_s + 2 * 4000 * MODEL.kv_bytes_per_token / (link.bandwidth_gbps * 1e9)
    assert recs[0].token_at[0] == pytest.approx(expected, rel=1e-9)
    assert recs[1].token_at[0] == pytest.approx(expected, rel=1e-9)


def test_decode_admission_counts_blocks_the_decode_gpu_already_holds():
    # request 1 follows up on request 0's 16K-token document while request 0 still decodes: the decode GPU
    # lacks room for a second copy, but it holds the document, so only request 1's tail needs blocks
    doc = tuple(range(1, 33))  # 32 blocks of 512 tokens
    requests = [Request(0, 0.0, 16384 + 100, 400, block_hashes=doc + (100,)),
                Request(1, 1.0, 16384 + 200, 4, block_hashes=doc + (200,))]
    recs = _records(requests, kv_blocks=1500)
    assert recs[1].token_at[1] < recs[0].finished_at
