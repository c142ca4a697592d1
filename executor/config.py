"""Built-in model configs by name, as transformers config objects (never downloads).

`load_config("llama3-8b")` gives the public Llama-3.1-8B numbers (llama3 RoPE scaling, 128K context);
any name not built in is read as a path to a HF `config.json` (or a folder holding one).
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

_LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama3(hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=8,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(_LLAMA3_ROPE_SCALING), tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    )


def _qwen25_7b() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151643,
    )


def _tiny() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    )


BUILTIN_CONFIGS = {
    "llama3-8b": lambda: _llama3(4096, 14336, 32, 32),
    "llama3-70b": lambda: _llama3(8192, 28672, 80, 64),
    "qwen2.5-7b": _qwen25_7b,
    "tiny": _tiny,
}

_CONFIG_CLASSES = {"llama": LlamaConfig, "qwen2": Qwen2Config}


def load_config(name_or_path: str) -> PretrainedConfig:
    """A fresh config object for a built-in name, or one read from a local config.json."""
    if name_or_path in BUILTIN_CONFIGS:
        return BUILTIN_CONFIGS[name_or_path]()
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"{name_or_path!r} is neither a built-in config {sorted(BUILTIN_CONFIGS)} nor a config.json")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type", "llama")
    if model_type not in _CONFIG_CLASSES:
        raise ValueError(f"{path}: model_type {model_type!r} is not a Llama/Qwen2-family decoder")
    return _CONFIG_CLASSES[model_type](**{k: v for k, v in raw.items() if k != "model_type"})


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config: PretrainedConfig) -> dict:
    """RoPE settings as one dict with `rope_theta` and `rope_type`, across transformers 4.x and 5.x."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        out = dict(params)
    else:
        out = dict(getattr(config, "rope_scaling", None) or {})
        out["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    out.setdefault("rope_type", out.pop("type", "default"))
    return out


def has_qkv_bias(config: PretrainedConfig) -> bool:
    """Qwen2 always has q/k/v biases; Llama only when attention_bias is set."""
    return config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
