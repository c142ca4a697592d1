"""Decoder-only transformer shapes (Llama / Qwen2 family): parameters, bytes and FLOPs per GPU.

All per-GPU quantities divide the sharded parts by the tensor-parallel degree `tp`; KV heads are
replicated when tp exceeds their number.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from sim.hardware import GpuSpec


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int = 2
    tp: int = 1
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        dims = (self.num_layers, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim,
                self.intermediate, self.vocab, self.dtype_bytes, self.tp)
        if min(dims) <= 0:
            raise ValueError(f"ModelSpec {self.name!r}: all sizes must be positive, got {dims}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelSpec {self.name!r}: num_heads {self.num_heads} not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.num_heads % self.tp:
            raise ValueError(f"ModelSpec {self.name!r}: tp={self.tp} must divide num_heads {self.num_heads}")

    # ---- shapes -----------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def heads_per_gpu(self) -> int:
        return self.num_heads // self.tp

    @property
    def kv_heads_per_gpu(self) -> int:
        return math.ceil(self.num_kv_heads / self.tp)  # replicated when tp > num_kv_heads

    # ---- parameters and bytes ---------------------------------------------------------------------
    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (all GPUs): attention, SwiGLU MLP, two RMSNorms."""
        attention = self.hidden * (self.q_dim + 2 * self.kv_dim) + self.q_dim * self.hidden
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def params(self) -> int:
        """Total parameters (all GPUs), embeddings and LM head included."""
        embeddings = self.vocab * self.hidden * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * self.layer_params + embeddings + self.hidden

    @property
    def weight_bytes(self) -> float:
        """Weight bytes held by one GPU (every matrix sharded by tp)."""
        return self.params * self.dtype_bytes / self.tp

    @property
    def layer_weight_bytes(self) -> float:
        """Bytes one forward pass reads per layer per GPU."""
        return self.layer_params * self.dtype_bytes / self.tp

    @property
    def lm_head_bytes(self) -> float:
        return self.vocab * self.hidden * self.dtype_bytes / self.tp

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes of one token on one GPU, all layers (K and V)."""
        return 2 * self.num_layers * self.kv_heads_per_gpu * self.head_dim * self.dtype_bytes

    @property
    def activation_bytes_per_token_layer(self) -> float:
        """HBM traffic of activations per token per layer per GPU: each GEMM reads its input and writes its
        output once (qkv, o, gate_up, SiLU-mul, down), plus norms and residual adds (~8 hidden-size rows)."""
        sharded = 2 * self.q_dim + 2 * self.kv_dim + 6 * self.intermediate
        return self.dtype_bytes * (8 * self.hidden + sharded / self.tp)

    # ---- FLOPs (per GPU) --------------------------------------------------------------------------
    @property
    def linear_flops_per_token_layer(self) -> float:
        """GEMM FLOPs of one token through one layer: 2 per weight (multiply-add)."""
        return 2.0 * (self.layer_params - 2 * self.hidden) / self.tp

    @property
    def lm_head_flops_per_token(self) -> float:
        return 2.0 * self.vocab * self.hidden / self.tp

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query token, key token) pair in one layer: QK^T and PV, 2 FLOPs each per dim."""
        return 4.0 * self.heads_per_gpu * self.head_dim

    def attention_flops_layer(self, new_len: int, reused_len: int) -> float:
        """Causal attention FLOPs of `new_len` tokens after `reused_len` cached ones, one layer, one GPU."""
        return self.attention_flops_per_pair * causal_attention_pairs(new_len, reused_len)


def causal_attention_pairs(new_len: int, reused_len: int) -> float:
    """(query, key) pairs of causal attention for `new_len` new tokens after `reused_len` cached ones."""
    return new_len * reused_len + new_len * (new_len + 1) / 2


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int,
           tied: bool = False) -> ModelSpec:
    return ModelSpec(name, layers, hidden, heads, kv, hidden // heads, inter, vocab, tie_word_embeddings=tied)


# Public config.json numbers of the Hugging Face checkpoints.
MODELS: dict[str, ModelSpec] = {
    "llama3-8b": _llama("llama3-8b", 32, 4096, 32, 8, 14336, 128256),
    "llama3-70b": _llama("llama3-70b", 80, 8192, 64, 8, 28672, 128256),
    "qwen2.5-7b": _llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064),
    "qwen2.5-32b": _llama("qwen2.5-32b", 64, 5120, 40, 8, 27648, 152064),
    "tiny": _llama("tiny", 2, 64, 4, 2, 128, 512),
}

def from_hf_config(path_or_dict: str | Path | Mapping[str, Any], tp: int = 1, dtype_bytes: int = 2) -> ModelSpec:
    """ModelSpec from a transformers config (LlamaConfig / Qwen2Config fields): a dict, a config.json
    path or a checkpoint directory holding one. Reads the file only; never downloads.

    dtype_bytes is the serving dtype (bf16), not the config's `dtype`, which is often float32.
    """
    if isinstance(path_or_dict, Mapping):
        cfg, default_name = dict(path_or_dict), "hf-model"
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            path = path / "config.json"
        cfg, default_name = json.loads(path.read_text()), path.parent.name
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return ModelSpec(
        name=cfg.get("_name_or_path") or default_name,
        num_layers=int(cfg["num_hidden_layers"]),
        hidden=hidden,
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]),
        dtype_bytes=dtype_bytes,
        tp=tp,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def get_model(name_or_path: str | Path, tp: int = 1) -> ModelSpec:
    """Built-in model by name (case-insensitive), else a transformers config path."""
    key = str(name_or_path).lower()
    if key in MODELS:
        return replace(MODELS[key], tp=tp)
    if Path(name_or_path).exists():
        return from_hf_config(name_or_path, tp=tp)
    raise KeyError(f"unknown model {name_or_path!r}: not a config path; known models: {', '.join(MODELS)}")


def kv_capacity_blocks(model: ModelSpec, gpu: GpuSpec, block_size: int, memory_fraction: float = 0.9,
                       activation_reserve_gib: float = 1.0) -> int:
    """KV blocks of `block_size` tokens that fit on one GPU (one TP shard) after weights and a reserve
    for activations, within `memory_fraction` of HBM (the rest: CUDA context, allocator slack, graphs)."""
    if block_size <= 0 or not 0 < memory_fraction <= 1:
        raise ValueError(f"block_size must be positive and memory_fraction in (0, 1], got "
                         f"{block_size}, {memory_fraction}")
    budget = gpu.hbm_bytes * memory_fraction - activation_reserve_gib * 2**30
    free = budget - model.weight_bytes
    if free < model.kv_bytes_per_token * block_size:
        raise ValueError(
            f"{model.name} (tp={model.tp}) does not fit on {gpu.name}: weights {model.weight_bytes / 2**30:.1f} "
            f"GiB per GPU vs {budget / 2**30:.1f} GiB usable; raise tp or use a larger GPU")
    return int(free // (model.kv_bytes_per_token * block_size))
