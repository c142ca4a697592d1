"""GpuSpec, ModelSpec and KV capacity."""
import json

import pytest

from sim.hardware import GPUS, GpuSpec, get_gpu
from sim.model_spec import MODELS, from_hf_config, get_model, kv_capacity_blocks


def test_builtin_gpus():
    h100 = get_gpu("H100")
    assert (h100.num_sms, h100.bf16_tflops, h100.hbm_gbps, h100.hbm_gib) == (132, 989.0, 3350.0, 80.0)
    assert GPUS["a100"].num_sms == 108 and GPUS["h200"].hbm_gbps == 4800.0
    assert GPUS["a100"].max_contention_slowdown == 0.20 and h100.max_contention_slowdown == 0.30


def test_unknown_gpu_lists_names():
    with pytest.raises(KeyError, match="a100.*h100"):
        get_gpu("v100")


def test_bad_gpu_spec():
    with pytest.raises(ValueError, match="saturation"):
        GpuSpec("x", 10, 1.0, 1.0, 1.0, bandwidth_saturation_fraction=0.0)


def test_bandwidth_share_saturates():
    gpu = GPUS["h100"]
    shares = [gpu.bandwidth_share(s) for s in range(0, 133, 4)]
    assert shares == sorted(shares) and shares[0] == 0.0
    assert gpu.bandwidth_share(132) == pytest.approx(1.0)
    assert gpu.bandwidth_share(200) == pytest.approx(1.0)
    assert gpu.bandwidth_share(66) > 0.95  # DESIGN 1: half the SMs ~ full bandwidth
    assert gpu.bandwidth_share(8) < 0.4
    assert gpu.compute_share(66) == pytest.approx(0.5)


def test_partition_sizes():
    assert GPUS["h100"].partition_sizes() == [16, 32, 48, 64, 80, 96, 112, 128, 132]


def test_llama3_8b_numbers():
    m = MODELS["llama3-8b"]
    assert m.params == pytest.approx(8.03e9, rel=0.005)
    assert m.kv_bytes_per_token == 128 * 1024
    assert m.weight_bytes == pytest.approx(16.06e9, rel=0.005)
    assert m.linear_flops_per_token_layer * m.num_layers == pytest.approx(2 * 6.98e9, rel=0.01)
    # causal: token i attends 1 + i (+ reused) keys
    assert m.attention_flops_layer(2, 3) == m.attention_flops_per_pair * (2 * 3 + 3)


@pytest.mark.parametrize("name, billions", [("llama3-70b", 70.55), ("qwen2.5-7b", 7.62), ("qwen2.5-32b", 32.76)])
def test_builtin_model_sizes(name, billions):
    assert MODELS[name].params / 1e9 == pytest.approx(billions, rel=0.01)


def test_tensor_parallel_shards():
    m = get_model("llama3-70b", tp=8)
    assert m.tp == 8 and m.kv_heads_per_gpu == 1
    assert m.kv_bytes_per_token == 80 * 2 * 128 * 2
    assert m.weight_bytes == pytest.approx(MODELS["llama3-70b"].weight_bytes / 8)
    with pytest.raises(ValueError, match="tp"):
        get_model("llama3-8b", tp=3)


def test_tiny_model():
    m = MODELS["tiny"]
    assert (m.num_layers, m.hidden, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate, m.vocab) == \
        (2, 64, 4, 2, 16, 128, 512)


def test_from_hf_llama_config(tmp_path):
    from transformers import LlamaConfig  # slow import (~3 s): only where needed

    cfg = LlamaConfig(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256)
    m = from_hf_config(cfg.to_dict())
    assert m.params == MODELS["llama3-8b"].params and m.kv_bytes_per_token == 128 * 1024
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert from_hf_config(tmp_path, tp=2).weight_bytes == pytest.approx(m.weight_bytes / 2)
    assert get_model(tmp_path / "config.json").num_layers == 32


def test_from_hf_qwen2_config():
    from transformers import Qwen2Config

    d = Qwen2Config(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                    intermediate_size=18944, vocab_size=152064).to_dict()
    m = from_hf_config(d)
    assert m.head_dim == 128 and m.params == MODELS["qwen2.5-7b"].params
    default = from_hf_config(Qwen2Config().to_dict())
    assert default.num_kv_heads == default.num_heads and default.dtype_bytes == 2


def test_unknown_model():
    with pytest.raises(KeyError, match="llama3-8b"):
        get_model("gpt-9")


def test_kv_capacity_llama3_8b_h100():
    tokens = kv_capacity_blocks(MODELS["llama3-8b"], GPUS["h100"], block_size=16) * 16
    # (80 GB * 0.9 - 16 GB weights) / 128 KiB per token ~ 430K-460K tokens
    assert 400_000 < tokens < 480_000


def test_kv_capacity_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        kv_capacity_blocks(MODELS["llama3-70b"], GPUS["h100"], block_size=16)
    assert kv_capacity_blocks(get_model("llama3-70b", tp=8), GPUS["h100"], 16) > 0
