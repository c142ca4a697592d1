"""Built-in configs carry the public numbers; RoPE frequencies match transformers'."""
import json

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from executor.config import BUILTIN_CONFIGS, has_qkv_bias, head_dim, load_config, rope_parameters
from executor.model import build_model, rope_inv_freq


def test_builtin_numbers():
    c = load_config("llama3-8b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.vocab_size, head_dim(c)) == (4096, 14336, 32, 32, 8, 128256, 128)
    assert rope_parameters(c)["rope_type"] == "llama3" and rope_parameters(c)["rope_theta"] == 500000.0
    c = load_config("llama3-70b")
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads) == (8192, 28672, 80, 64)
    c = load_config("qwen2.5-7b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, head_dim(c)) == (
        3584, 28, 28, 4, 128)
    assert has_qkv_bias(c) and not has_qkv_bias(load_config("tiny"))
    assert rope_parameters(c)["rope_theta"] == 1000000.0
    c = load_config("tiny")
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (2, 64, 4, 2, 128, 512, 4096)
    assert load_config("tiny") is not load_config("tiny")  # fresh objects: callers may edit them


@pytest.mark.parametrize("name", sorted(BUILTIN_CONFIGS))
def test_rope_frequencies_match_transformers(name):
    config = load_config(name)
    kind = rope_parameters(config)["rope_type"]
    want, _ = ROPE_INIT_FUNCTIONS[kind](config, "cpu") if kind != "default" else (None, None)
    if want is None:
        theta, dim = rope_parameters(config)["rope_theta"], head_dim(config)
        want = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
    torch.testing.assert_close(rope_inv_freq(config), want)


def test_config_json_path_and_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 32,
                                                      "num_attention_heads": 2, "num_key_value_heads": 1}))
    assert load_config(str(tmp_path)).hidden_size == 32
    with pytest.raises(ValueError, match="neither"):
        load_config("llama4-400b")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    with pytest.raises(ValueError, match="Llama/Qwen2"):
        load_config(str(tmp_path))


def test_random_weights_are_seeded_and_layers_can_be_cut():
    a, b = build_model("tiny", seed=1), build_model("tiny", seed=1)
    assert torch.equal(a.layers[1].qkv, b.layers[1].qkv)
    assert not torch.equal(a.layers[1].qkv, build_model("tiny", seed=2).layers[1].qkv)
    assert build_model("tiny", num_layers=1).num_layers == 1
